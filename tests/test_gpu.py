"""CUDA tests: skipped without a GPU, run by bench/gpu_check.sh on the GPU machine (``pytest -m cuda``).

They check that the CUDA path computes what the CPU path computes (or what torchattacks computes), not
how fast it is (that is bench/).
"""

from __future__ import annotations

import contextlib
import json

import pytest
import torch

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _crop_flip_reference(images, dy, dx, flips, pad=4):
    """Reflect-pad, crop at (dy, dx), flip: written independently of robustkit.data.augment (F.pad, slices)."""
    padded = torch.nn.functional.pad(images.float(), (pad, pad, pad, pad), mode="reflect")
    h, w = images.shape[-2:]
    out = torch.stack([padded[i, :, y:y + h, x:x + w] for i, (y, x) in enumerate(zip(dy.tolist(), dx.tolist()))])
    return torch.where(flips.view(-1, 1, 1, 1), out.flip(-1), out)


def test_augment_and_batch_indices_on_the_device():
    """Like is compared with like. A CPU generator and a CUDA generator are different random streams, so
    their crops differ by design; what must hold: the same draws give the same crops and flips on either
    device, and a CUDA generator's own stream is reproducible and gives the crops its draws name.

    Pixels are compared exactly as uint8 (x * 255 rounded back). As floats they may differ by one float32
    rounding: ``div_(255.0)`` on CUDA multiplies by the reciprocal of the scalar (PyTorch's
    div_true_kernel_cuda; "may lose one bit of precision"), the CPU divides; for 126 of the 256 uint8 values
    the two round differently, by at most 7.9e-8 relative, below one ulp (2**-23 relative)."""
    from robustkit import data as D
    from robustkit.rng import generator

    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    cpu = D.augment(images, torch.Generator().manual_seed(4))
    gpu = D.augment(images.cuda(), torch.Generator().manual_seed(4))  # the same CPU draws, moved: same crops
    assert gpu.device.type == "cuda"
    assert torch.equal((gpu.cpu() * 255).round(), (cpu * 255).round())   # the same pixels, exactly
    assert torch.allclose(gpu.cpu(), cpu, rtol=2**-23, atol=0)           # /255: one rounding at most
    a = D.augment(images.cuda(), generator("cuda", 1, "augment", 0))
    b = D.augment(images.cuda(), generator("cuda", 1, "augment", 0))
    assert torch.equal(a, b)  # device generator: reproducible
    g = generator("cuda", 1, "augment", 0)   # replay its draws (augment's order: rows, columns, flips)
    dy, dx = (torch.randint(0, 9, (64,), generator=g, device="cuda").cpu() for _ in range(2))
    flips = torch.randint(0, 2, (64,), generator=g, dtype=torch.bool, device="cuda").cpu()
    assert torch.equal((a.cpu() * 255).round(), _crop_flip_reference(images, dy, dx, flips))
    for step in (0, 7, 40):
        idx = D.batch_indices(100, 32, 5, step, "cuda")
        assert idx.device.type == "cuda" and torch.equal(idx.cpu(), D.batch_indices(100, 32, 5, step))


@pytest.mark.parametrize("method, semi", [("baseline", False), ("gradaug", False), ("gradaug", True)])
def test_training_on_cuda(tmp_path, method, semi):
    from robustkit.checkpoint import load_checkpoint
    from robustkit.config import TrainConfig
    from robustkit.train import fit

    cfg = TrainConfig(dataset="digits", arch="wrn-10-1", labels=100, batch_size=32, method=method, semi=semi,
                      steps=20, eval_every=10, device="cuda")
    res = fit(cfg, tmp_path / "r", progress=False)
    assert res.test_acc is not None
    model, info = load_checkpoint(tmp_path / "r", device="cpu")  # a CUDA checkpoint loads on the CPU
    assert info["config"]["amp"] is None and all(torch.isfinite(p).all() for p in model.parameters())


def test_fgsm_and_pgd_on_cuda_equal_torchattacks():
    import torchattacks

    from digits_net import load_fixed
    from robustkit.attacks import fgsm_sweep, pgd_images

    model, x, _, y = load_fixed()
    model, x, y = model.cuda(), x.cuda(), y.cuda()
    records = fgsm_sweep(model, x, y, [0.0, 0.05], batch_size=128, amp=False, channels_last=False)
    for r in records:
        hits = sum(int((model(torchattacks.FGSM(model, eps=r["eps"])(xb, yb)).argmax(1) == yb).sum())
                   for xb, yb in zip(x.split(128), y.split(128)))
        assert r["accuracy"] == hits / len(y)
    bf16 = fgsm_sweep(model, x, y, [0.0, 0.05], batch_size=128)  # CUDA defaults: bf16 + channels_last
    assert all(abs(a["accuracy"] - b["accuracy"]) <= 0.05 for a, b in zip(records, bf16))
    torch.cuda.manual_seed(9)
    ref = torchattacks.PGD(model, eps=0.05, alpha=0.02, steps=3)(x[:64], y[:64])
    ours = pgd_images(model, x[:64], y[:64], 0.05, 0.02, 3, torch.Generator("cuda").manual_seed(9))
    assert torch.allclose(ours, ref, atol=1e-6)


def test_corruptions_on_cuda_match_the_cpu():
    from robustkit.corruptions import CORRUPTIONS, DETERMINISTIC, corrupt

    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 32, 32, generator=g)
    for name in CORRUPTIONS:
        cpu = corrupt(x, name, 3, "cifar-10-c", seed=1)
        gpu = corrupt(x.cuda(), name, 3, "cifar-10-c", seed=1)
        assert gpu.device.type == "cuda" and gpu.shape == cpu.shape and torch.isfinite(gpu).all()
        if name in DETERMINISTIC:
            if name in ("jpeg_compression", "pixelate"):  # integer arithmetic (float64 / int32): the same 8-bit levels; the
                # final level -> [0, 1] division may differ by one float32 ulp (CUDA divides by a scalar as a
                # multiplication by its reciprocal: mean 1.4e-8 measured on an H100, 2026-11-26)
                assert torch.equal((gpu.cpu() * 255).round(), (cpu * 255).round()), name
                continue
            assert (gpu.cpu() - cpu).abs().mean() <= 1e-4, name
        else:  # other random streams on the GPU: compare the strength of the change
            d_cpu, d_gpu = (cpu - x).abs().mean(), (gpu.cpu() - x).abs().mean()
            assert abs(d_cpu - d_gpu) <= 0.25 * d_cpu + 1e-3, (name, float(d_cpu), float(d_gpu))


def test_jpeg_triton_kernels_on_cuda_equal_the_cpu_bit_for_bit():
    """jpeg_compression on CUDA runs two Triton kernels (robustkit/corruptions/jpeg_triton.py): integer arithmetic
    throughout and the CPU's own k / 255 table, so the float32 pixels equal the CPU torch path's exactly, at 224 px
    and at sizes that are not whole MCUs, every quality of both presets, float and level inputs."""
    from robustkit.corruptions import jpeg, jpeg_triton
    from robustkit.corruptions.presets import CIFAR_10_C, IMAGENET_C

    assert jpeg_triton.triton is not None, "Triton is missing: CUDA jpeg_compression takes the slow torch path"
    g = torch.Generator().manual_seed(5)
    smooth = torch.nn.functional.interpolate(torch.rand(4, 3, 28, 28, generator=g), size=224, mode="bicubic")
    cases = [smooth.clamp(-0.1, 1.1), torch.rand(4, 3, 224, 224, generator=g), torch.rand(3, 3, 37, 45, generator=g)]
    qualities = sorted(set(CIFAR_10_C["jpeg_compression"]) | set(IMAGENET_C["jpeg_compression"]) | {1, 100})
    for x in cases:
        for q in qualities:
            gpu = jpeg.jpeg_roundtrip(x.cuda(), q)
            assert jpeg_triton.KERNELS.failed is None, jpeg_triton.KERNELS.failed
            assert torch.equal(gpu.cpu(), jpeg.jpeg_roundtrip(x, q)), (tuple(x.shape), q)
        levels = torch.round(x.clamp(0, 1) * 255)
        assert torch.equal(jpeg.jpeg_roundtrip_u8(levels.cuda(), 85).cpu(), jpeg.jpeg_roundtrip_u8(levels, 85))
    # the torch-ops path on CUDA (what ran before the kernels) gives the same 8-bit levels
    jpeg_triton.KERNELS.enabled = False
    try:
        torch_ops = jpeg.jpeg_roundtrip(cases[1].cuda(), 50)
    finally:
        jpeg_triton.KERNELS.enabled = True
    assert torch.equal((torch_ops.cpu() * 255).round(), (jpeg.jpeg_roundtrip(cases[1], 50) * 255).round())


def test_glass_triton_shuffle_on_cuda_equals_the_cpu():
    """glass_blur's shuffle on CUDA runs a Triton kernel (robustkit/corruptions/glass_triton.py); with the same
    offsets it moves the same pixels as the CPU's pointer jumping, at 224 px, every severity of both presets."""
    from robustkit.corruptions import _ops, blur, glass_triton
    from robustkit.corruptions.presets import CIFAR_10_C, IMAGENET_C

    assert glass_triton.triton is not None, "Triton is missing: CUDA glass_blur takes the torch path"
    for preset, params in (("imagenet-c", IMAGENET_C["glass_blur"]), ("cifar-10-c", CIFAR_10_C["glass_blur"])):
        size = 224 if preset == "imagenet-c" else 32
        x = torch.randint(0, 256, (4, 3, size, size), generator=torch.Generator().manual_seed(size), dtype=torch.uint8)
        for severity, (_, delta, passes) in enumerate(params, 1):
            offsets = blur.glass_offsets(4, size, size, delta, passes, torch.Generator().manual_seed(severity),
                                         torch.device("cpu"))
            gpu = blur.glass_shuffle(x.cuda(), offsets.cuda(), delta)
            assert glass_triton.KERNELS.failed is None, glass_triton.KERNELS.failed
            assert torch.equal(gpu.cpu(), blur.glass_shuffle(x, offsets, delta)), (preset, severity)
            # glass_blur's own call: the float first blur in, its truncated levels shuffled, float32 k / 255 out
            first = x.float() / 255 + 0.3 / 255
            gpu = glass_triton.shuffle(first.cuda(), offsets.cuda(), delta, levels=True)
            cpu = _ops.unit_float(blur.glass_shuffle(first.clamp(0, 1).mul(255).to(torch.uint8), offsets, delta))
            assert torch.equal(gpu.cpu(), cpu), (preset, severity)


@pytest.mark.parametrize("unroll", [True, False], ids=["taps-unrolled", "taps-in-a-loop"])
def test_spatter_chamfer_kernels_on_cuda_equal_the_cpu_bit_for_bit(unroll, monkeypatch):
    """spatter's chamfer distance on CUDA runs three Triton kernels (robustkit/corruptions/spatter_triton.py): the
    same float32 sums in the same order as the CPU's torch path, so the same bits, on 224 px maps of Canny-like
    densities and on the single-source displacement table; with the taps unrolled (shipped) and in a loop."""
    from robustkit.corruptions import spatter_triton, weather

    assert spatter_triton.triton is not None, "Triton is missing: CUDA spatter takes the torch path"
    monkeypatch.setattr(spatter_triton, "UNROLL_TAPS", unroll)
    g = torch.Generator().manual_seed(7)
    maps = [torch.rand(6, 1, 224, 224, generator=g) < torch.tensor([0.0, 0.001, 0.01, 0.05, 0.13, 0.3]).view(6, 1, 1, 1)]
    centre = torch.zeros(1, 1, 81, 81, dtype=torch.bool)
    centre[..., 40, 40] = True
    for sources in maps + [centre, torch.rand(3, 1, 37, 45, generator=g) < 0.05]:
        gpu = weather.chamfer_distance(sources.cuda(), 20.0)
        assert spatter_triton.KERNELS.failed is None, spatter_triton.KERNELS.failed
        cpu = weather.chamfer_distance(sources, 20.0)
        assert torch.equal(gpu.cpu().view(torch.int32), cpu.view(torch.int32)), tuple(sources.shape)


def test_spatter_canny_kernels_on_cuda_equal_the_cpu():
    """spatter's Canny edges on CUDA run Triton kernels (robustkit/corruptions/spatter_triton.py): integer
    arithmetic and a growth that ends in the same set in any order, so the same edges as the CPU's torch path, on
    224 px liquid layers of every water severity and on random images."""
    from robustkit.corruptions import _ops, spatter_triton, weather
    from robustkit.corruptions.presets import params

    g = torch.Generator().manual_seed(8)
    images = [torch.randint(0, 256, (4, 1, 224, 224), generator=g).float()]
    for severity in (1, 2, 3):
        loc, scale, sigma, thresh = params("imagenet-c", "spatter", severity)[:4]
        liquid = _ops.gaussian_filter(loc + scale * torch.randn((8, 1, 224, 224), generator=g), float(sigma))
        images.append(torch.floor(torch.where(liquid < thresh, 0.0, liquid).clamp(0, 1) * 255))
    for img in images:
        gpu = weather.canny(img.cuda(), 50, 150)
        assert spatter_triton.KERNELS.failed is None, spatter_triton.KERNELS.failed
        assert torch.equal(gpu.cpu(), weather.canny(img, 50, 150))


def test_spatter_water_mask_and_blend_kernels_on_cuda_equal_the_cpu():
    """The rest of spatter's water drops on CUDA (robustkit/corruptions/spatter_triton.py: box blur + floor +
    histogram, then emboss + box blur + round + liquid layer, then the blend): the CPU's float32 operations in its
    order (IEEE division, no FMA contraction), so the same bits from the same distance map and liquid layer."""
    from robustkit.corruptions import _ops, spatter_triton, weather
    from robustkit.corruptions.presets import params

    g = torch.Generator().manual_seed(9)
    for severity in (1, 2, 3):
        loc, scale, sigma, thresh, strength = params("imagenet-c", "spatter", severity)[:5]
        liquid = _ops.gaussian_filter(loc + scale * torch.randn((8, 1, 224, 224), generator=g), float(sigma))
        liquid8 = torch.floor(torch.where(liquid < thresh, 0.0, liquid).clamp(0, 1) * 255)
        dist = weather.chamfer_distance(weather.canny(liquid8, 50, 150), 20.0)
        cpu = weather.water_mask(liquid8 / 255)
        gpu = spatter_triton.water_mask(dist.cuda(), liquid8.cuda())
        assert torch.equal(gpu.cpu().view(torch.int32), cpu.view(torch.int32)), severity
        x = torch.rand(8, 3, 224, 224, generator=g)
        peak = cpu.amax(dim=(2, 3), keepdim=True)
        colour = weather._rgb(175.0, 238.0, 238.0)
        ref = x + torch.where(peak > 0, cpu / peak.clamp(min=1e-12), 0.0) * strength * colour
        out = spatter_triton.blend(x.cuda(), cpu.cuda(), peak.cuda(), float(strength), colour)
        assert spatter_triton.KERNELS.failed is None, spatter_triton.KERNELS.failed
        assert torch.equal(out.cpu().view(torch.int32), ref.view(torch.int32)), severity


def test_released_storage_on_cuda_equals_the_cpu():
    """--storage released on the device: the same float input gives the same stored 8-bit levels (truncation,
    and for imagenet-c the JPEG at quality 85 in integer arithmetic)."""
    from robustkit.corruptions.storage import store

    x = torch.rand(8, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    for preset in ("imagenet-c", "cifar-10-c"):
        cpu, gpu = store(x, "fog", preset), store(x.cuda(), "fog", preset)
        assert torch.equal((gpu.cpu() * 255).round(), (cpu * 255).round()), preset


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A baseline WRN-10-1 run on digits (30 steps on the CPU), shared by the evaluation tests here (read only)."""
    from robustkit.config import TrainConfig
    from robustkit.train import fit

    run = tmp_path_factory.mktemp("digits") / "r"
    cfg = TrainConfig(dataset="digits", arch="wrn-10-1", labels=100, batch_size=32, method="baseline", steps=30,
                      device="cpu")
    fit(cfg, run, progress=False)
    return run


def test_corruption_job_on_cuda_equals_batch_wise_cpu_numbers_closely(digits_run, tmp_path):
    from robustkit.jobs import run_corruptions

    names = ["gaussian_blur", "contrast", "pixelate"]  # deterministic: the same images on both devices
    cpu = run_corruptions([digits_run], names, [2], device="cpu", out=tmp_path / "cpu")[0]
    gpu = run_corruptions([digits_run], names, [2], device="cuda", amp=False, channels_last=False,
                          out=tmp_path / "gpu")[0]
    # corrupt's CUDA default: batch norms folded, convolution + ReLU fused (cuDNN); the CPU runs the plain network.
    # At most two images apart per cell (the H100, 2026-11-27: gaussian_blur s2 146 vs 144 of 300 right); + 1e-12:
    # 146/300 - 144/300 is a hair above 2/300 in floats
    assert (gpu["fuse_conv"], gpu["fold_bn"], cpu["fuse_conv"], cpu["fold_bn"]) == (True, True, False, False)
    for a, b in zip(cpu["results"], gpu["results"]):
        assert abs(a["accuracy"] - b["accuracy"]) <= 2 / a["n"] + 1e-12, (a, b)


def test_corruption_grid_on_cuda_is_warmed_up_ahead_and_gives_the_same_numbers(digits_run, tmp_path, monkeypatch):
    """On CUDA the grid's first calls are made ahead in a thread (robustkit.corruptions.warm_up), on the grid's
    stream, Triton kernels included (glass_blur, spatter, jpeg_compression). Without error, and with the same
    accuracies as the grid with the warm-up off: at most one image apart per cell (bf16 network; the corrupted
    images are the same, each cell's noise being seeded per batch, but an atomic-add in a kernel may round in
    another order from run to run)."""
    from robustkit.corruptions import warm_up
    from robustkit.jobs import run_corruptions

    names = ["gaussian_noise", "glass_blur", "spatter", "jpeg_compression", "fog"]
    made, real = [], warm_up.for_grid
    monkeypatch.setattr(warm_up, "for_grid", lambda *a, **kw: made.append(real(*a, **kw)) or made[-1])
    warmed = run_corruptions([digits_run], names, [1, 5], device="cuda", out=tmp_path / "warmed")[0]
    (warm,) = made
    assert warm.errors == {} and len(warm.warmed) >= 1, (warm.errors, warm.warmed)
    monkeypatch.setattr(warm_up, "wanted", lambda device: False)
    plain = run_corruptions([digits_run], names, [1, 5], device="cuda", out=tmp_path / "plain")[0]
    assert len(made) == 2 and list(made[1].warmed) == []
    for a, b in zip(plain["results"], warmed["results"]):
        assert (a["corruption"], a["severity"]) == (b["corruption"], b["severity"])
        assert abs(a["accuracy"] - b["accuracy"]) <= 1 / a["n"] + 1e-12, (a, b)


def test_the_corruptions_tables_reach_the_device_without_a_pageable_copy():
    """The small tables the corruptions make on the CPU (filter matrices, kernels, frost textures) go to the device
    through page-locked memory (robustkit.corruptions._ops.to_device): a copy from pageable memory makes the host
    wait until the stream's queued work is done, ~95 ms at a time for the warm-up thread in a cold CIFAR-10-C grid
    (H100, 2026-11-27). Every corruption's calls, with the tables' caches emptied, copy nothing pageable to the
    device, and the tables hold the values the CPU made. (A pass before, not profiled, makes what robustkit does not
    copy itself: cuFFT's plans, whose creation copies from pageable memory inside aten::_fft_r2c, 8 bytes to 7 MB
    in that trace; the warm-up makes them for the grid's batch sizes ahead of the grid.)"""
    from torch.profiler import ProfilerActivity, profile

    from robustkit.corruptions import CORRUPTIONS, _ops, corrupt, weather

    if _ops._pinned(torch.ones(1)) is None:
        pytest.skip(f"no page-locked memory on this machine ({_ops._NO_PINNED_MEMORY}): the plain copy is made")
    x = torch.rand(4, 3, 32, 32, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    for name in CORRUPTIONS:
        for sev in (1, 5):
            corrupt(x, name, sev, preset="cifar-10-c", seed=0)
    torch.cuda.synchronize()
    _ops._on_device_cached.cache_clear()
    weather._frost_bank.cache_clear()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for name in CORRUPTIONS:
            for sev in (1, 5):
                corrupt(x, name, sev, preset="cifar-10-c", seed=0)
        torch.cuda.synchronize()
    events = prof.events()   # (device copies: events of their own, or kernels of the op that made them)
    names = [e.name for e in events] + [k.name for e in events for k in getattr(e, "kernels", [])]
    # the tables' own copies were seen (the check is not empty), and none from pageable memory
    assert any("Memcpy HtoD (Pinned -> Device)" in name for name in names), sorted(set(names))[:40]
    pageable = [name for name in names if "Pageable -> Device" in name]
    assert pageable == [], pageable
    table = torch.arange(12, dtype=torch.float64).view(3, 4) / 7
    on = _ops.to_device(table, "cuda", torch.float32)
    assert on.device.type == "cuda" and on.dtype == torch.float32 and torch.equal(on.cpu(), table.float())


def _table_for_the_stream_test(n: int) -> torch.Tensor:   # (a module-level builder: on_device caches by it)
    return torch.arange(n, dtype=torch.float64) / 3


def test_a_table_made_on_one_stream_is_ready_on_another():
    """on_device's tables are copied without the host waiting (queued on the stream that first asks); another
    stream that asks for the same table waits for that copy on the device: with the first stream's queue held up
    by ~50 ms of work, the second still reads the table's values."""
    from robustkit.corruptions import _ops

    _ops._on_device_cached.cache_clear()
    first, second = torch.cuda.Stream(), torch.cuda.Stream()
    want = _table_for_the_stream_test(1 << 16).float()
    with torch.cuda.stream(first):
        torch.cuda._sleep(100_000_000)   # ~50 ms of queued work before the copy
        _ops.on_device(_table_for_the_stream_test, 1 << 16, device="cuda", dtype=torch.float32)
    with torch.cuda.stream(second):
        got = _ops.on_device(_table_for_the_stream_test, 1 << 16, device="cuda", dtype=torch.float32) * 1
        seen = got.to("cpu")
    torch.cuda.synchronize()
    assert torch.equal(seen, want)
    _ops._on_device_cached.cache_clear()


def test_corruption_grid_on_cuda_reads_its_cells_ahead_and_gives_the_same_numbers(digits_run, tmp_path, monkeypatch):
    """On CUDA each cell's counts come back through a non-blocking copy and an event, read while the device
    works on the cells after it (robustkit.evaluate.InFlight, jobs.CELLS_AHEAD); spatter syncs inside its own
    cells. The numbers are those of the grid that reads every cell at once (CELLS_AHEAD 0): at most one image
    apart per cell, as the warm-up test above allows."""
    from robustkit import jobs

    names = ["gaussian_noise", "spatter", "contrast", "fog", "zoom_blur"]
    ahead = jobs.run_corruptions([digits_run], names, [1, 3, 5], device="cuda", out=tmp_path / "ahead")[0]
    monkeypatch.setattr(jobs, "CELLS_AHEAD", 0)
    at_once = jobs.run_corruptions([digits_run], names, [1, 3, 5], device="cuda", out=tmp_path / "at-once")[0]
    assert ahead["complete"] and len(ahead["results"]) == len(at_once["results"]) == 15
    for a, b in zip(at_once["results"], ahead["results"]):
        assert (a["corruption"], a["severity"], a["n"]) == (b["corruption"], b["severity"], b["n"])
        assert abs(a["accuracy"] - b["accuracy"]) <= 1 / a["n"] + 1e-12, (a, b)


def test_prefetched_host_batches_equal_the_data(tmp_path):
    """Streamed through the two reused pinned buffers with asynchronous copies: a buffer refilled before its
    copy to the GPU finished would show up as a wrong batch (all batches are kept and compared at the end)."""
    from robustkit.prefetch import device_batches

    images = torch.randint(0, 256, (1000, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(1000)
    got = list(device_batches(images, labels, 300, torch.device("cuda")))
    assert [s for s, _, _ in got] == [0, 300, 600, 900]
    assert torch.equal(torch.cat([x.cpu() for _, x, _ in got]), images)
    assert torch.equal(torch.cat([y.cpu() for _, _, y in got]), labels)
    path = tmp_path / "x.u8"                       # a memory map, as a cached folder is read
    path.write_bytes(images.numpy().tobytes())
    mm = torch.from_file(str(path), shared=False, size=images.numel(), dtype=torch.uint8).view(images.shape)
    kept = []
    for _, x, _ in device_batches(mm, labels, 7, torch.device("cuda")):
        kept.append(x)
        torch.cuda._sleep(200_000)                 # GPU busy meanwhile: the copies overlap the work
    assert torch.equal(torch.cat(kept).cpu(), images)


def test_resident_and_streamed_evaluation_give_the_same_numbers(monkeypatch):
    """On the GPU the set is resident when it fits (placement); streamed, every accuracy is the same."""
    from digits_net import load_fixed
    from robustkit import prefetch
    from robustkit.attacks import fgsm_sweep
    from robustkit.evaluate import accuracy, corruption_accuracies

    model, _, u8, y = load_fixed()
    model = model.cuda()
    placed, where = prefetch.place(u8, torch.device("cuda"))
    assert where == "resident" and placed.device.type == "cuda"

    def run(images):
        return (accuracy(model, images, y.cuda(), 64),
                corruption_accuracies([model], images, y.cuda(), "contrast", 3, preset="cifar-10-c", batch_size=64),
                [r["accuracy"] for r in fgsm_sweep(model, images, y.cuda(), [0.0, 0.05], batch_size=64, amp=False,
                                                   channels_last=False)])

    assert run(placed) == run(u8)                  # resident vs streamed from host memory


def test_folder_decoded_by_nvjpeg_matches_the_cpu(tmp_path, monkeypatch):
    """The default decoder is the CPU one on a GPU machine too: exactly torchvision's standard evaluation
    (PIL loader, Resize(256), CenterCrop(224)). nvJPEG only with decode="gpu", in its own cache entry.

    Its tolerance: nvJPEG's IDCT and chroma upsampling round differently from libjpeg-turbo's; the issue
    measured a mean of 1.53/255 after Resize(256) + CenterCrop(224) on an H100 (these images, quality 90),
    and the GPU path resizes the tensor with torchvision's tensor transform, which itself differs from
    Pillow's resize by 1/255 on about 18 % of pixels (0.18/255 mean, measured on the CPU). A bound of
    2.5/255 leaves that margin and still fails a real fault: swapped channels, a shifted crop or a wrong
    colour conversion move the mean by tens of levels."""
    import numpy as np
    from PIL import Image
    from torchvision import transforms as T

    from robustkit.sources import data as sdata

    monkeypatch.setenv("ROBUSTKIT_CACHE", str(tmp_path / "cache"))
    g = torch.Generator().manual_seed(0)
    files = []
    for i in range(6):
        d = tmp_path / "f" / "val" / f"c{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        img = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=(300, 260 + 10 * i))[0]
        Image.fromarray((img.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(d / f"{i}.jpg", quality=90)
        files.append(d / f"{i}.jpg")
    files.sort(key=lambda p: (p.parent.name, p.name))
    cpu = sdata.load_folder(tmp_path / "f", resize=256, crop=224)              # default: decode="cpu"
    standard = T.Compose([T.Resize(256), T.CenterCrop(224), T.PILToTensor()])
    assert torch.equal(cpu.images, torch.stack([standard(Image.open(f).convert("RGB")) for f in files]))
    before = sdata.DECODED["count"]
    gpu = sdata.load_folder(tmp_path / "f", resize=256, crop=224, decode="gpu", device="cuda")
    assert sdata.DECODED["count"] == before + 6                                  # its own cache entry
    assert gpu.images.shape == cpu.images.shape and torch.equal(gpu.labels, cpu.labels)
    diff = (gpu.images.float() - cpu.images.float()).abs().mean()
    assert diff < 2.5, float(diff)                                               # /255, argued above


def _make_step(mode, method="gradaug"):
    from robustkit.config import TrainConfig
    from robustkit.methods import METHODS
    from robustkit.models import create_model
    from robustkit.step import make_step

    torch.manual_seed(0)
    model = create_model("wrn-10-1", num_classes=10).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    cfg = TrainConfig(method=method, resolutions=[32, 28, 24], subnets=3, min_width=0.8)
    step = make_step(mode, model=model, net=model, optimizer=opt, cfg=cfg, spec=METHODS[method],
                     autocast=contextlib.nullcontext, amp=False, memory_format=torch.contiguous_format, num_classes=10)
    return model, opt, step


def _global_rel(a: list, b: list) -> float:
    """||a - b|| / ||a|| over all the tensors together (per-tensor ratios blow up on near-zero BN biases)."""
    num = sum(((x.double() - y.double()) ** 2).sum() for x, y in zip(a, b))
    return float(num.sqrt() / sum((x.double() ** 2).sum() for x in a).sqrt())


@pytest.mark.parametrize("method, mode", [("baseline", "graphs"), ("gradaug", "graphs"), ("gradaug", "graphs-inductor"),
                                          ("baseline", "graphs-fp16"), ("gradaug", "graphs-fp16")])
def test_each_captured_part_replays_its_uncaptured_computation(method, mode):
    """After capture (step 2), replaying a part's graph gives what calling the part gives, on the same state:
    the full network's gradient sum, each sub-network's (at its own width and resolution), the SGD update.
    Tolerance 1e-4 relative: cuDNN's backward kernels sum with atomics, so two uncaptured calls differ by
    ~3e-5 already (H100, 2026-11-26); the update is exact. graphs-inductor: the same with TorchInductor's
    compiled passes inside the graphs (unmeasured on a GPU so far)."""
    from robustkit.methods import Batch
    from robustkit.rng import generator

    model, opt, st = _make_step(mode, method)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.rand(32, 3, 32, 32, generator=g).cuda(), torch.randint(0, 10, (32,), generator=g).cuda())
               for _ in range(3)]
    for i, (x, y) in enumerate(batches):
        st(Batch(x, y, step=i, total_steps=10), generator("cpu", 0, "train", i), 0.1)
    assert st.captured and st.mode == mode
    x, y = batches[0]
    plan = st._load(Batch(x, y, step=7, total_steps=10), generator("cpu", 0, "train", 7), 0.05)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    st.graphs["full"].replay()
    replayed = [t.clone() for t in st.grads]
    model.load_state_dict(state)
    st._full()
    assert _global_rel(replayed, st.grads) < 1e-4
    for slot, sub in enumerate(plan):
        st.masks[slot].fill(sub.width)
        st.graphs[("sub", slot, sub.resolution)].replay()
        replayed = [t.clone() for t in st.sub_grads[slot]]
        st._sub(slot, sub.resolution)
        assert _global_rel(replayed, st.sub_grads[slot]) < 1e-4, sub
    # the update adds the slots' gradients into the full pass's sums in place: every input it reads or writes
    # (weights, momentum, gradient sums, KL) goes back to its state before the replay
    params = [p.detach().clone() for p in st.params]
    bufs = [opt.state[p]["momentum_buffer"].clone() for p in st.params]
    grads, kl = [g.clone() for g in st.grads], st.kl.clone()
    st.graphs["update"].replay()
    replayed = [p.detach().clone() for p in st.params]
    with torch.no_grad():
        torch._foreach_copy_(st.params, params)
        torch._foreach_copy_([opt.state[p]["momentum_buffer"] for p in st.params], bufs)
        torch._foreach_copy_(st.grads, grads)
        st.kl.copy_(kl)
    st._update()
    assert _global_rel(replayed, [p.detach() for p in st.params]) == 0.0
    assert _global_rel(replayed, params) > 1e-4   # the update did move the weights


def test_the_captured_fp16_step_follows_torchs_grad_scaler_loop():
    """graphs-fp16 (float16 autocast, loss scaling on the device, captured) against a plain loop with
    torch.amp.GradScaler on the same batches: from 2^22 the scale is halved at each overflowing step and doubled
    after 2 clean ones; the scales agree at every step, the weights within 1e-3 (cuDNN's backward kernels sum
    with atomics: uncaptured runs differ by ~3e-5 per step already)."""
    from robustkit.methods import Batch
    from robustkit.models import create_model
    from robustkit.rng import generator

    model, _, st = _make_step("graphs-fp16", "baseline")
    st.scale.fill_(2.0**22)
    st.growth_interval = 2
    torch.manual_seed(0)
    ref = create_model("wrn-10-1", num_classes=10).cuda()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**22, growth_interval=2)
    g = torch.Generator().manual_seed(1)
    scales = []
    for i in range(10):
        x, y = torch.rand(32, 3, 32, 32, generator=g).cuda(), torch.randint(0, 10, (32,), generator=g).cuda()
        st(Batch(x, y, step=i, total_steps=10), generator("cpu", 0, "train", i), 0.05)
        ref_opt.zero_grad(set_to_none=True)
        for group in ref_opt.param_groups:
            group["lr"] = 0.05
        with torch.autocast("cuda", dtype=torch.float16):
            logits = ref(x)
        scaler.scale(torch.nn.functional.cross_entropy(logits.float(), y)).backward()
        scaler.step(ref_opt)
        scaler.update()
        assert float(st.scale) == scaler.get_scale(), i
        scales.append(float(st.scale))
    assert st.captured and st.mode == "graphs-fp16"
    assert scales[0] < 2.0**22 and any(b > a for a, b in zip(scales, scales[1:]))
    assert _global_rel([p.detach() for p in ref.parameters()], [p.detach() for p in model.parameters()]) < 1e-3


@pytest.mark.parametrize("mode", ["graphs-streams", "graphs-inductor-streams"])
def test_sub_networks_side_by_side_on_streams_replay_the_sequential_step(mode):
    """graphs-streams replays the sub-networks' graphs on one stream each, side by side. Twenty steps: after the
    full pass, the slots' graphs run side by side, then each again alone on the main stream; every slot's gradients
    and KL must agree between the two (1e-4 relative to the slot's own gradient: cuDNN's atomics, as above), so
    a race between the slots (shared memory or workspaces) shows up in its own slot. Then whole replayed steps
    (streams) vs the same steps with the slots in sequence move the weights alike (relative to the move)."""
    from robustkit.methods import Batch
    from robustkit.rng import generator

    notes = []
    model, opt, st = _make_step(mode, "gradaug")
    st.note = notes.append
    g = torch.Generator().manual_seed(2)
    batches = [(torch.rand(32, 3, 32, 32, generator=g).cuda(), torch.randint(0, 10, (32,), generator=g).cuda())
               for _ in range(4)]
    for i, (x, y) in enumerate(batches[:3]):
        st(Batch(x, y, step=i, total_steps=10), generator("cpu", 0, "train", i), 0.1)
    assert st.captured and st.mode == mode and len(st.streams) == 3 and notes == []
    for i in range(20):
        x, y = batches[i % 4]
        plan = st._load(Batch(x, y, step=10 + i, total_steps=40), generator("cpu", 0, "train", 10 + i), 0.05)
        st.graphs["full"].replay()
        for slot, sub in enumerate(plan):
            st.masks[slot].fill(sub.width)
        st._replay_subs(plan, side_by_side=True)
        side_by_side = [([t.clone() for t in st.sub_grads[k]], st.sub_kl[k].clone()) for k in range(len(plan))]
        st._replay_subs(plan, side_by_side=False)
        for slot, (grads, kl) in enumerate(side_by_side):
            assert _global_rel(st.sub_grads[slot], grads) < 1e-4, (i, slot)
            assert abs(float(st.sub_kl[slot] - kl)) <= 1e-4 * abs(float(kl)), (i, slot)
    # whole steps: streams vs sequence, from the same state
    x, y = batches[3]
    plan = st._load(Batch(x, y, step=50, total_steps=60), generator("cpu", 0, "train", 50), 0.05)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    bufs = [opt.state[p]["momentum_buffer"].clone() for p in st.params]
    before = [p.detach().clone() for p in st.params]
    st._run_parts(plan, replay=True)
    moved = [p.detach() - b for p, b in zip(st.params, before)]
    model.load_state_dict(state)
    with torch.no_grad():
        torch._foreach_copy_([opt.state[p]["momentum_buffer"] for p in st.params], bufs)
    streams, st.streams = st.streams, None   # the same graphs, replayed one after the other on the main stream
    st._run_parts(plan, replay=True)
    st.streams = streams
    moved_in_sequence = [p.detach() - b for p, b in zip(st.params, before)]
    assert _global_rel(moved_in_sequence, moved) < 1e-3


def _train_weights(tmp_path, name, mode, method="gradaug", semi=False, cutmix=None, steps=6):
    from robustkit.config import TrainConfig
    from robustkit.train import fit

    cfg = TrainConfig(dataset="digits", arch="wrn-10-1", labels=100, batch_size=32, method=method, semi=semi,
                      cutmix_prob=cutmix, steps=steps, eval_every=steps, log_every=1, device="cuda", amp=False,
                      channels_last=False)
    fit(cfg, tmp_path / name, progress=False, step_mode=mode)
    ck = torch.load(tmp_path / name / "checkpoint.pt", weights_only=True, map_location="cpu")
    losses = [json.loads(line)["train_loss"] for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    params = [v for k, v in ck["model"].items() if v.is_floating_point() and "running" not in k and k not in ("mean", "std")]
    return params, losses


@pytest.mark.parametrize("method, semi, cutmix", [("gradaug", False, None), ("gradaug", True, None),
                                                  ("gradaug", False, 0.5), ("baseline", False, None)])
def test_captured_training_follows_the_eager_sliced_training(tmp_path, method, semi, cutmix):
    """fit with the default captured masked steps vs fit with eager sliced steps on CUDA (fp32, NCHW), 6 steps: the same
    losses step by step and the same weights, to 1e-2 relative (all parameters together).
    Measured on an H100, 2026-11-26: losses within 2e-3 relative, weights 3e-3. Two *uncaptured* runs (static
    vs eager) drift apart at the same rate there (cuDNN's backward sums with atomics; 6 SGD steps at lr 0.1 on
    a fresh WRN-10-1 amplify it), so this bounds gross errors; the exact check of the capture is
    test_each_captured_part_replays_its_uncaptured_computation, of the masking tests/test_step.py (CPU)."""
    from robustkit.step import choose_mode

    default = choose_mode(None, method, torch.device("cuda"), 1)[0]   # graphs-streams for GradAug, graphs otherwise
    fast, fast_losses = _train_weights(tmp_path, "g", default, method, semi, cutmix)
    eager, eager_losses = _train_weights(tmp_path, "e", "eager", method, semi, cutmix)
    assert len(fast_losses) == len(eager_losses) == 6
    for a, b in zip(fast_losses, eager_losses):
        assert abs(a - b) <= 1e-2 * abs(b)
    assert _global_rel(fast, eager) < 1e-2


@pytest.mark.parametrize("precision", ["bf16-channels-last", "fp32"])
@pytest.mark.parametrize("arch", ["wrn-28-2", "resnet18"])
def test_folded_and_fused_networks_on_cuda_match_the_plain_one(arch, precision, monkeypatch):
    """`corrupt --fold-bn` / `--fuse-conv` on CUDA: the real cuDNN fused calls run (none refused) and give the plain
    network's logits; each precision on its own (a refusal in one does not hide the other). fp32 without TF32:
    only the order of summation and one rounding per fused step differ, so 1e-3 covers 28 layers of float32. bf16
    under autocast, channels_last (how corrupt runs them): the fused kernel rounds to bf16 once where the separate
    ops round after each step, so its logits are no further from the fp32 network's than the plain bf16 network's
    are (twice that, for slack: not a tolerance picked to pass)."""
    import torchvision

    import robustkit.models.fuse as fuse
    from robustkit.models import create_model
    from robustkit.models.fold import fold_batchnorm
    from test_fold import _trained_looking

    calls = []
    real_relu, real_add = fuse._CONV_RELU, fuse._CONV_ADD_RELU
    monkeypatch.setattr(fuse, "_CONV_RELU", lambda *a: calls.append("relu") or real_relu(*a))
    monkeypatch.setattr(fuse, "_CONV_ADD_RELU", lambda *a: calls.append("add") or real_add(*a))
    monkeypatch.setattr(fuse._CudnnFusion, "failed", None)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    size = 32 if arch.startswith("wrn") else 64
    plain = create_model(arch) if arch.startswith("wrn") else torchvision.models.resnet18(num_classes=10)
    plain = _trained_looking(plain).cuda()
    folded, _, _ = fold_batchnorm(plain)
    fused, n, with_residual, _ = fuse.fuse_conv_relu(folded)
    x = torch.rand(256, 3, size, size, device="cuda")
    with torch.no_grad():
        exact = plain(x)
    if precision == "fp32":
        with torch.no_grad():
            torch.testing.assert_close(folded(x), exact, rtol=1e-3, atol=1e-3)
            torch.testing.assert_close(fused(x), exact, rtol=1e-3, atol=1e-3)
    else:
        plain_cl, fused_cl = (m.to(memory_format=torch.channels_last) for m in (plain, fused))
        xc = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            plain_bf16, fused_bf16 = plain_cl(xc).float(), fused_cl(xc).float()
        assert (fused_bf16 - exact).abs().max() <= 2 * (plain_bf16 - exact).abs().max()
    assert fuse._CudnnFusion.failed is None, f"cuDNN refused the fused calls: {fuse._CudnnFusion.failed}"
    assert calls.count("relu") == n - with_residual and calls.count("add") == with_residual


def test_prefetched_batches_made_on_a_side_stream_equal_the_batches_made_in_line(tmp_path):
    """fit(prefetch=True): each step's batch made on a side stream while the step before runs equals the batch
    made on the step's own stream, bit for bit, also while that stream is held up by queued work (a GradAug-semi
    run: labeled and unlabeled views), and after the batches before it were freed."""
    from robustkit.config import TrainConfig
    from robustkit.train import _BatchesAhead, _Run

    cfg = TrainConfig(dataset="digits", arch="wrn-10-1", labels=100, batch_size=32, method="gradaug", semi=True,
                      steps=40, eval_every=40, device="cuda")
    run = _Run.open(cfg, tmp_path / "r", resume=False, device=None, sync_bn=None, compile=None, step_mode=None)
    ahead = _BatchesAhead(run.batches)
    big = torch.rand(2048, 2048, device="cuda")
    for step in range(12):
        for _ in range(20):   # the step's stream busy (~ms): a batch read too early would show
            big = (big @ big).clamp_(-1, 1)
        got = ahead.at(step)
        want = run.batches.at(step)
        for a, b in ((got.x, want.x), (got.y, want.y), (got.xu, want.xu)):
            assert torch.equal(a, b), step
        assert got.x.is_contiguous(memory_format=torch.channels_last) == want.x.is_contiguous(memory_format=torch.channels_last)
        del got, want
    assert ahead.ahead is not None and ahead.ahead[0] == 12


@pytest.mark.parametrize("mode", ["graphs", "graphs-fp16"])
def test_training_with_prefetched_batches_follows_training_without(tmp_path, mode):
    """The same run with and without fit(prefetch=True): the same batches, so the same training up to cuDNN's
    atomics (~3e-5 per step): weights within 1e-3 after 30 steps, the same metrics lines."""
    from robustkit.checkpoint import load_checkpoint
    from robustkit.config import TrainConfig
    from robustkit.train import fit

    weights = {}
    for prefetch in (False, True):
        cfg = TrainConfig(dataset="digits", arch="wrn-10-1", labels=100, batch_size=32, method="baseline", steps=30,
                          eval_every=15, log_every=5, device="cuda")
        res = fit(cfg, tmp_path / f"r{prefetch}", progress=False, step_mode=mode, prefetch=prefetch)
        assert res.step_mode == mode
        model, _ = load_checkpoint(tmp_path / f"r{prefetch}", device="cpu")
        weights[prefetch] = [p.detach() for p in model.parameters()]
    assert _global_rel(weights[False], weights[True]) < 1e-3
    lines = [[json.loads(x)["step"] for x in (tmp_path / f"r{p}" / "metrics.jsonl").read_text().splitlines()]
             for p in (False, True)]
    assert lines[0] == lines[1]
    recorded = {p: {json.loads(x)["prefetch"] for x in (tmp_path / f"r{p}" / "metrics.jsonl").read_text().splitlines()}
                for p in (False, True)}
    assert recorded == {False: {False}, True: {True}}


def test_fit_prefetches_batches_on_cuda_by_default(tmp_path):
    """fit's default on CUDA (prefetch=None): batches made on a side stream, as its metrics lines record."""
    from robustkit.config import TrainConfig
    from robustkit.train import fit

    cfg = TrainConfig(dataset="digits", arch="wrn-10-1", labels=100, batch_size=32, method="baseline", steps=4,
                      eval_every=4, log_every=2, device="cuda")
    fit(cfg, tmp_path / "r", progress=False)
    records = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert {r["prefetch"] for r in records} == {True} and {r["step_mode"] for r in records} == {"graphs"}
