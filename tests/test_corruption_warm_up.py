"""The corruptions' first calls made ahead of an evaluation grid, in a thread (robustkit.corruptions.warm_up): every
cell once, in order, none twice; a cell the grid reaches first is the grid's, a running one is waited for; errors
stay in the thread; closing stops it; the grid's numbers do not change; only on CUDA in the product."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from robustkit.corruptions import warm_up
from robustkit.corruptions.warm_up import WarmUp

CELLS = [("fog", 1), ("fog", 2), ("glass_blur", 1), ("contrast", 5)]


def _alive() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "robustkit-corruption-warm-up"]


def test_every_cell_is_called_once_in_order_in_its_own_thread():
    calls = []
    with WarmUp(CELLS, lambda name, sev: calls.append((name, sev, threading.current_thread().name))) as warm:
        warm.join()
    assert calls == [(n, s, "robustkit-corruption-warm-up") for n, s in CELLS]
    assert warm.warmed == CELLS and warm.errors == {} and not _alive()


def test_a_cell_the_grid_reaches_first_is_the_grids_and_a_running_one_is_waited_for():
    go, started, finished = threading.Event(), threading.Event(), []

    def call(name, sev):
        if (name, sev) == CELLS[0]:
            started.set()
            assert go.wait(10)
            time.sleep(0.05)
        finished.append((name, sev))

    warm = WarmUp(CELLS, call)
    assert started.wait(10)
    t = time.perf_counter()
    warm.ready(CELLS[1])            # not started: taken over at once, the thread will skip it
    assert time.perf_counter() - t < 1 and finished == []
    threading.Timer(0.1, go.set).start()
    warm.ready(CELLS[0])            # running: returns only once its call is over
    assert finished[:1] == [CELLS[0]]
    warm.close()
    assert warm.warmed == [CELLS[0], *CELLS[2:]] and finished == warm.warmed
    warm.ready(("fog", 4))          # a cell it never had: nothing to wait for


def test_an_error_stays_in_the_thread_and_the_other_cells_go_on():
    def call(name, sev):
        if name == "glass_blur":
            raise RuntimeError("no kernel for you")

    with WarmUp(CELLS, call) as warm:
        warm.join()
    assert warm.errors == {("glass_blur", 1): "RuntimeError: no kernel for you"}
    assert warm.warmed == [c for c in CELLS if c[0] != "glass_blur"]


def test_closing_ends_the_thread_after_the_call_under_way():
    go, started = threading.Event(), threading.Event()

    def call(name, sev):
        started.set()
        assert go.wait(10)

    warm = WarmUp(CELLS, call)
    assert started.wait(10)
    threading.Timer(0.1, go.set).start()
    warm.close()
    assert warm.warmed == CELLS[:1] and not _alive()


def test_for_grid_runs_on_cuda_only_in_the_product():
    images = torch.zeros(4, 3, 32, 32)
    assert warm_up.wanted(torch.device("cuda")) and warm_up.wanted(torch.device("cuda:1"))
    assert not warm_up.wanted(torch.device("cpu"))
    for warm in (warm_up.for_grid(CELLS, images, torch.device("cpu"), preset="cifar-10-c", storage="float"),
                 warm_up.for_grid([], images, torch.device("cpu"), preset="cifar-10-c", storage="float", force=True)):
        with warm:
            assert not _alive()
            warm.ready(CELLS[0])
            warm.join()
        assert list(warm.warmed) == []


@pytest.mark.parametrize("storage", ["float", "released"])
def test_for_grid_calls_the_real_corruptions_on_two_images_of_the_grids_shape(storage, monkeypatch):
    """Forced on the CPU: each cell's corruption runs once with the grid's preset and storage, on 2 images of the
    grid's channels and size, made on the device."""
    import robustkit.corruptions as corruptions

    seen = []
    real = corruptions.corrupt

    def spy(x, name, severity, preset, seed, storage):
        seen.append((tuple(x.shape), x.dtype, x.device.type, name, severity, preset, storage))
        return real(x, name, severity, preset=preset, seed=seed, storage=storage)
    monkeypatch.setattr(corruptions, "corrupt", spy)
    images = torch.zeros(7, 1, 24, 20, dtype=torch.uint8)
    with warm_up.for_grid(CELLS, images, torch.device("cpu"), preset="cifar-10-c", storage=storage,
                          force=True) as warm:
        warm.join()
    assert warm.errors == {} and warm.warmed == CELLS
    assert seen == [((2, 1, 24, 20), torch.float32, "cpu", n, s, "cifar-10-c", storage) for n, s in CELLS]


def test_for_grid_can_warm_up_on_the_grids_batch_and_refuses_an_empty_one(monkeypatch):
    """``batch``: the calls run on that many images (the grid's batch: what depends on its size is made too)."""
    import robustkit.corruptions as corruptions

    shapes = []
    monkeypatch.setattr(corruptions, "corrupt", lambda x, *a, **k: shapes.append(tuple(x.shape)))
    images = torch.zeros(7, 3, 8, 8, dtype=torch.uint8)
    with warm_up.for_grid(CELLS, images, torch.device("cpu"), preset="cifar-10-c", storage="float", force=True,
                          batch=5) as warm:
        warm.join()
    assert shapes == [(5, 3, 8, 8)] * len(CELLS)
    for bad in ({"batch": 0}, {"grid_batch": 0}):
        with pytest.raises(ValueError, match="batch and grid_batch must be >= 1"):
            warm_up.for_grid(CELLS, images, torch.device("cpu"), preset="cifar-10-c", storage="float", force=True,
                             **bad)


def test_the_fft_corruptions_are_warmed_up_on_each_of_the_grids_batch_sizes(monkeypatch):
    """``grid_batch``: defocus and motion blur (FFT convolutions: a cuFFT plan per batch size) are called on every
    batch size the grid uses (the full batch, then the last one's), the others still on ``batch`` images; without
    an FFT corruption among the cells, nothing larger than ``batch`` is made."""
    import robustkit.corruptions as corruptions
    from robustkit import prefetch

    calls = []
    monkeypatch.setattr(corruptions, "corrupt", lambda x, name, sev, **k: calls.append((name, sev, tuple(x.shape))))
    images = torch.zeros(23, 3, 8, 8, dtype=torch.uint8)
    cells = [("fog", 1), ("defocus_blur", 2), ("motion_blur", 5), ("contrast", 1)]
    with warm_up.for_grid(cells, images, torch.device("cpu"), preset="cifar-10-c", storage="float", force=True,
                          grid_batch=10) as warm:
        warm.join()
    assert calls == [("fog", 1, (2, 3, 8, 8)), ("defocus_blur", 2, (10, 3, 8, 8)), ("defocus_blur", 2, (3, 3, 8, 8)),
                     ("motion_blur", 5, (10, 3, 8, 8)), ("motion_blur", 5, (3, 3, 8, 8)), ("contrast", 1, (2, 3, 8, 8))]
    assert warm.warmed == cells

    # not enough memory beside the grid (a quarter of the free memory, counted for 3 channels even where the
    # images are grey, as the corruptions make them): the FFT corruptions stay on 2 images too
    need = warm_up.SIZED_MEMORY_FACTOR * 4 * 10 * 3 * 8 * 8
    grey = torch.zeros(23, 1, 8, 8, dtype=torch.uint8)
    for imgs, free, sizes in ((images, 4 * need - 4, [2]), (images, 4 * need, [10, 3]), (grey, 4 * need - 4, [2]),
                              (grey, 4 * need, [10, 3])):
        monkeypatch.setattr(prefetch, "free_memory", lambda device, free=free: free)
        calls.clear()
        with warm_up.for_grid([("motion_blur", 1)], imgs, torch.device("cpu"), preset="cifar-10-c",
                              storage="float", force=True, grid_batch=10) as warm:
            warm.join()
        assert [c[2][0] for c in calls] == sizes, (imgs.shape, free)

    made = []
    real_rand = torch.rand
    monkeypatch.setattr(torch, "rand", lambda shape, **kw: made.append(tuple(shape)) or real_rand(shape, **kw))
    with warm_up.for_grid([("fog", 1)], images, torch.device("cpu"), preset="cifar-10-c", storage="float",
                          force=True, grid_batch=10) as warm:
        warm.join()
    assert made == [(2, 3, 8, 8)]


def test_the_batch_sized_corruptions_are_those_that_run_an_fft(monkeypatch):
    """BATCH_SIZED lists every corruption whose call runs torch.fft (a cuFFT plan per batch size on CUDA), no other."""
    from robustkit.corruptions import CORRUPTIONS, corrupt

    ffts = []
    real = torch.fft.rfft2
    monkeypatch.setattr(torch.fft, "rfft2", lambda *a, **k: ffts.append(1) or real(*a, **k))
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    uses = set()
    for name in CORRUPTIONS:
        ffts.clear()
        corrupt(x, name, 3, preset="cifar-10-c", seed=0)
        if ffts:
            uses.add(name)
    assert uses == set(warm_up.BATCH_SIZED)


@pytest.mark.parametrize(("n", "grid_batch", "sizes"), [(23, 10, [10, 3]), (20, 10, [10]), (7, 10, [7]),
                                                        (10_000, 5_000, [5_000]), (50_000, 256, [256, 80])])
def test_grid_batches_are_the_full_batch_and_the_last_ones(n, grid_batch, sizes):
    from robustkit.prefetch import device_batches

    assert warm_up.grid_batches(n, grid_batch) == sizes
    if n < 1000:   # the grid's own batches (robustkit.evaluate.device_batches), one process
        seen = {len(y) for _, _, y in device_batches(torch.zeros(n, 1), torch.zeros(n), grid_batch, torch.device("cpu"),
                                                     lambda i: True)}
        assert seen == set(sizes)


def test_grid_batches_under_torchrun_are_those_of_this_rank():
    """Batches are dealt round-robin to the ranks (robustkit.distributed.mine): a rank warms the sizes of its own."""
    from robustkit.prefetch import device_batches

    for n, bs, world in ((10_000, 5_000, 4), (7_000, 3_000, 2), (23, 10, 2), (23, 10, 3)):
        for rank in range(world):
            keep = (lambda r: lambda i: i % world == r)(rank)
            mine = {len(y) for _, _, y in device_batches(torch.zeros(n, 1), torch.zeros(n), bs, torch.device("cpu"),
                                                        keep)}
            assert warm_up.grid_batches(n, bs, keep) == sorted(mine, reverse=True), (n, bs, world, rank)
    assert warm_up.grid_batches(10_000, 5_000, lambda i: i % 4 == 3) == []   # a rank with no batch warms none


def test_the_thread_lets_go_of_its_images_when_it_ends():
    """``finished`` runs as the thread's last act, also after a failed call: for_grid drops its images there."""
    ended = []
    with WarmUp(CELLS, lambda name, sev: 1 / 0, finished=lambda: ended.append(threading.current_thread().name)) as w:
        w.join()
    assert ended == ["robustkit-corruption-warm-up"] and len(w.errors) == len(CELLS)


def _grid(runs, tmp_path, name, **kw):   # (runs: evaluated_runs, read only: results go to tmp_path)
    from robustkit.jobs import run_corruptions

    return run_corruptions([runs / "baseline" / "checkpoint.pt"], ["gaussian_noise", "glass_blur", "contrast"],
                           [1, 3], limit=60, batch_size=25, device="cpu", out=tmp_path / name, **kw)[0]


def test_the_grids_numbers_do_not_change_with_the_warm_up(evaluated_runs, tmp_path, monkeypatch):
    runs = evaluated_runs
    """The same grid with the warm-up forced on (here on the CPU) gives the same accuracies, bit for bit: the
    warm-up's calls draw from their own generators and their outputs are thrown away. The warm-up made the calls
    the grid had not reached, and no thread of it is left when the grid returns."""
    plain = _grid(runs, tmp_path, "plain")
    made = []
    real = warm_up.for_grid

    def forced(*a, **kw):
        made.append(real(*a, **{**kw, "force": True}))
        return made[-1]
    monkeypatch.setattr(warm_up, "for_grid", forced)
    warmed = _grid(runs, tmp_path, "warmed")
    assert [r["accuracy"] for r in warmed["results"]] == [r["accuracy"] for r in plain["results"]]
    assert warmed["clean_accuracy"] == plain["clean_accuracy"]
    (warm,) = made
    assert warm.errors == {} and len(warm.warmed) >= 1 and not _alive()
    assert set(warm.warmed) <= {(c, s) for c in ("gaussian_noise", "glass_blur", "contrast") for s in (1, 3)}


def test_the_grid_asks_before_each_cell_and_closes_the_warm_up_before_the_result_files(evaluated_runs, tmp_path,
                                                                                     monkeypatch):
    """The grid hands the warm-up only the cells still to do (a resumed grid's done cells are not warmed), asks
    ``ready(cell)`` right before that cell's call, and closes the warm-up before it writes the result files."""
    import robustkit.jobs as jobs
    import robustkit.report as report

    log = []

    class Recorder:
        def __init__(self, cells, images, device, **kw):
            self.cells = list(cells)
            log.append(("start", tuple(self.cells), tuple(images.shape[1:]), kw["preset"], kw["storage"],
                        kw["grid_batch"]))

        def ready(self, cell):
            log.append(("ready", cell))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            log.append(("close",))

    monkeypatch.setattr(warm_up, "for_grid", Recorder)
    real_cells, real_files = jobs.corruption_counts, report.write_corruption_outputs
    monkeypatch.setattr(jobs, "corruption_counts",
                        lambda models, images, labels, name, sev, **kw: log.append(("cell", (name, sev)))
                        or real_cells(models, images, labels, name, sev, **kw))
    monkeypatch.setattr(report, "write_corruption_outputs", lambda *a, **kw: log.append(("files",)) or real_files(*a, **kw))
    from robustkit.jobs import run_corruptions

    ckpt = evaluated_runs / "baseline" / "checkpoint.pt"
    run_corruptions([ckpt], ["contrast"], [1], limit=30, device="cpu", out=tmp_path / "r", batch_size=7)
    log.clear()
    run_corruptions([ckpt], ["contrast", "fog"], [1, 2], limit=30, device="cpu", out=tmp_path / "r", storage="float",
                    batch_size=7)
    todo = [("contrast", 2), ("fog", 1), ("fog", 2)]
    assert log[0][:2] == ("start", tuple(todo)) and log[0][3:] == ("cifar-10-c", "float", 7)   # 7: the grid's batch
    assert log[1:] == [entry for cell in todo for entry in (("ready", cell), ("cell", cell))] + [("close",), ("files",)]


def test_a_context_that_fails_is_an_error_of_each_cell_not_of_the_thread():
    """Where the thread cannot even enter its device and stream (``context``), each cell records the error and the
    grid makes every call itself; nothing is printed from the thread."""
    def broken():
        raise RuntimeError("no such device")

    with WarmUp(CELLS, lambda name, sev: None, context=broken) as warm:
        warm.join()
    assert warm.warmed == [] and warm.errors == {c: "RuntimeError: no such device" for c in CELLS}


def test_it_counts_where_the_time_went():
    """stats(): cells warmed and taken over by the grid, each call's seconds, the grid's wait for a running call."""
    go, started = threading.Event(), threading.Event()

    def call(name, sev):
        if (name, sev) == CELLS[0]:
            started.set()
            assert go.wait(10)
            time.sleep(0.1)

    warm = WarmUp(CELLS, call)
    assert started.wait(10)
    warm.ready(CELLS[1])                 # pending: the grid's, no wait
    threading.Timer(0.05, go.set).start()
    warm.ready(CELLS[0])                 # running: waited for (>= the 0.1 s sleep after the go)
    warm.close()
    stats = warm.stats(slowest=1)
    assert (stats["cells"], stats["warmed"], stats["taken_by_grid"], stats["errors"]) == (4, 3, 1, 0)
    assert warm.taken == [CELLS[1]] and set(warm.call_s) == {CELLS[0], *CELLS[2:]}
    assert 0.1 <= stats["grid_waited_s"] < 5 and stats["thread_busy_s"] >= 0.1   # (both hold the 0.1 s sleep)
    assert stats["slowest"] == [["fog s1", warm.call_s[CELLS[0]]]]


def test_the_corruption_first_order_warms_each_corruptions_first_cell_before_the_rest():
    cells = [(n, s) for n in ("fog", "glass_blur", "contrast") for s in (2, 1, 5)]
    assert warm_up.warm_up_order(cells) == cells
    assert warm_up.warm_up_order(cells, "corruption-first") == [
        ("fog", 2), ("glass_blur", 2), ("contrast", 2),
        ("fog", 1), ("fog", 5), ("glass_blur", 1), ("glass_blur", 5), ("contrast", 1), ("contrast", 5)]
    with pytest.raises(ValueError, match="unknown warm-up order 'random'"):
        warm_up.warm_up_order(cells, "random")
    images = torch.zeros(2, 1, 8, 8)
    with warm_up.for_grid(CELLS, images, torch.device("cpu"), preset="cifar-10-c", storage="float", force=True,
                          order="corruption-first") as warm:
        warm.join()
    assert warm.warmed == [("fog", 1), ("glass_blur", 1), ("contrast", 5), ("fog", 2)]
