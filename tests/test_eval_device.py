"""Evaluation data on the device: where the set lives (resident vs streamed) and the streaming prefetcher.

The GPU decides with its free memory; the rule is a pure function tested here with made-up numbers, and the
streaming path runs on the CPU too (plain buffers instead of pinned ones), so these tests exercise the code
the GPU runs: the same batches in the same order, and the same accuracies as plain slicing. Each batch of a
corruption cell gets its own seed (from the index of its first image).
"""

from __future__ import annotations

import threading

import pytest
import torch

from robustkit import prefetch
from robustkit.prefetch import device_batches, place, placement

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CPU = torch.device("cpu")


def test_placement_is_resident_below_half_the_free_memory():
    gib = 1024**3
    assert placement(int(7.5 * gib), 79 * gib) == "resident"   # ImageNet val at 224 px on an 80 GB GPU
    assert placement(int(7.5 * gib), 15 * gib) == "stream"     # exactly half: stream (strictly below half only)
    assert placement(int(7.5 * gib), 15 * gib + 1) == "resident"
    assert placement(8 * gib, 12 * gib) == "stream"
    assert placement(0, 0) == "stream" and placement(1, 3) == "resident"
    assert placement(10**15, None) == "resident"                # the host: nothing to copy


def test_place_moves_or_leaves_the_images():
    x = torch.arange(24, dtype=torch.uint8).view(2, 3, 2, 2)
    same, where = place(x, CPU)
    assert where == "resident" and same is x                  # already there
    meta = torch.device("meta")                               # a device that is not the images': decided by bytes
    out, where = place(x, meta, free_bytes=48)
    assert where == "stream" and out is x                     # 24 bytes is not < half of 48: left on the host
    out, where = place(x, meta, free_bytes=49)
    assert where == "resident" and out.device == meta and out.shape == x.shape


def _memmapped(tmp_path, n=103, shape=(3, 5, 4)):
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g)
    path = tmp_path / "images.u8"
    path.write_bytes(data.numpy().tobytes())
    mm = torch.from_file(str(path), shared=False, size=data.numel(), dtype=torch.uint8).view(n, *shape)
    return data, mm


@pytest.mark.parametrize("batch_size", [1, 10, 103, 500])
def test_streamed_batches_equal_the_data_in_order(tmp_path, batch_size):
    data, mm = _memmapped(tmp_path)
    labels = torch.arange(len(data)) * 7
    got = list(device_batches(mm, labels, batch_size, CPU, stream=True))
    assert [s for s, _, _ in got] == list(range(0, len(data), batch_size))
    # collected first, compared after: a batch that aliased the reused buffer would have been overwritten
    assert torch.equal(torch.cat([x for _, x, _ in got]), data)
    assert torch.equal(torch.cat([y for _, _, y in got]), labels)
    assert all(len(x) == len(y) == min(batch_size, len(data) - s) for s, x, y in got)


def test_streamed_batches_keep_only_this_ranks_share(tmp_path):
    data, mm = _memmapped(tmp_path)
    labels = torch.arange(len(data))
    keep = lambda i: i % 3 == 1   # noqa: E731 - rank 1 of 3
    plain = list(device_batches(data, labels, 8, CPU, keep, stream=False))
    streamed = list(device_batches(mm, labels, 8, CPU, keep, stream=True))
    assert [s for s, _, _ in streamed] == [s for s, _, _ in plain] == list(range(8, len(data), 24))
    for (_, a, ya), (_, b, yb) in zip(plain, streamed):
        assert torch.equal(a, b) and torch.equal(ya, yb)


def test_stream_stops_its_thread_when_abandoned_or_failing(tmp_path, monkeypatch):
    data, mm = _memmapped(tmp_path)
    before = threading.active_count()
    gen = device_batches(mm, torch.arange(len(data)), 4, CPU, stream=True)
    next(gen)
    gen.close()                                               # the consumer stops early
    assert threading.active_count() == before

    def boom(*a, **k):
        raise OSError("disk gone")

    monkeypatch.setattr(torch.Tensor, "copy_", boom)          # the filler thread's one copy fails
    with pytest.raises(OSError, match="disk gone"):           # ... and the consumer hears of it
        list(device_batches(mm, torch.arange(len(data)), 4, CPU, stream=True))
    monkeypatch.undo()
    assert threading.active_count() == before


def test_accuracies_are_the_same_streamed_and_sliced(monkeypatch):
    """accuracy, corruption_accuracies and fgsm_sweep give identical numbers whether the batches are sliced
    or streamed through the prefetcher (forced on here: on a GPU it is the path of sets that do not fit)."""
    from digits_net import load_fixed
    from robustkit.attacks import fgsm_sweep
    from robustkit.evaluate import accuracy, corruption_accuracies

    model, _, u8, y = load_fixed()
    u8, y = u8[:150], y[:150]

    def run():
        return (accuracy(model, u8, y, 64),
                corruption_accuracies([model], u8, y, "gaussian_noise", 3, preset="cifar-10-c", batch_size=64),
                [r["accuracy"] for r in fgsm_sweep(model, u8, y, [0.0, 0.05], batch_size=64)])

    sliced = run()
    calls = []
    monkeypatch.setattr(prefetch, "streams", lambda images, device: calls.append(1) or True)
    streamed = run()
    assert len(calls) == 3                                   # all three loops went through the prefetcher
    assert streamed == sliced


class _Recorder(torch.nn.Module):
    """Records every batch it is shown; predicts class 0."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return torch.zeros(len(x), 10) + self.w


def test_every_batch_of_a_corruption_cell_gets_its_own_draws():
    """corruption_accuracies corrupts each batch with a seed derived from (seed, corruption, severity, index of the
    batch's first image), as its docstring states: the same image eight times in batches of four, so the second
    batch must not repeat the first one's noise, and each batch is what corrupt() gives with that seed."""
    from robustkit.corruptions import corrupt
    from robustkit.evaluate import corruption_accuracies
    from robustkit.rng import derive_seed

    img = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    images, labels = img.expand(8, -1, -1, -1).contiguous(), torch.zeros(8, dtype=torch.long)
    model = _Recorder()
    corruption_accuracies([model], images, labels, "gaussian_noise", 3, preset="cifar-10-c", seed=5, batch_size=4)
    assert [len(b) for b in model.seen] == [4, 4]
    for i in range(4):
        assert not torch.equal(model.seen[0][i], model.seen[1][i]), i
    for start, batch in zip((0, 4), model.seen):
        expected = corrupt(images[start:start + 4].float() / 255, "gaussian_noise", 3, "cifar-10-c",
                           seed=derive_seed(5, "gaussian_noise", 3, start))
        assert torch.equal(batch, expected), start
