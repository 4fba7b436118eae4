"""CUDA tests: skipped without a GPU, run by bench/gpu_check.sh on the GPU machine (``pytest -m cuda``).

They check that the CUDA path computes what the CPU path computes (or what torchattacks computes), not
how fast it is (that is bench/).
"""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_augment_and_batch_indices_on_the_device():
    from robustkit import data as D
    from robustkit.rng import generator

    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    cpu = D.augment(images, torch.Generator().manual_seed(4))
    gpu = D.augment(images.cuda(), torch.Generator().manual_seed(4))  # CPU draws, moved: same crops
    assert gpu.device.type == "cuda" and torch.equal(gpu.cpu(), cpu)
    a = D.augment(images.cuda(), generator("cuda", 1, "augment", 0))
    b = D.augment(images.cuda(), generator("cuda", 1, "augment", 0))
    assert torch.equal(a, b)  # device generator: reproducible
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
            tol = 0.0 if name == "jpeg_compression" else 1e-4  # jpeg: integer arithmetic, exact in float64
            assert (gpu.cpu() - cpu).abs().mean() <= tol, name
        else:  # other random streams on the GPU: compare the strength of the change
            d_cpu, d_gpu = (cpu - x).abs().mean(), (gpu.cpu() - x).abs().mean()
            assert abs(d_cpu - d_gpu) <= 0.25 * d_cpu + 1e-3, (name, float(d_cpu), float(d_gpu))


def test_corruption_job_on_cuda_equals_batch_wise_cpu_numbers_closely(tmp_path):
    from robustkit.config import TrainConfig
    from robustkit.jobs import run_corruptions
    from robustkit.train import fit

    cfg = TrainConfig(dataset="digits", arch="wrn-10-1", labels=100, batch_size=32, method="baseline", steps=30,
                      device="cpu")
    fit(cfg, tmp_path / "r", progress=False)
    names = ["gaussian_blur", "contrast", "pixelate"]  # deterministic: the same images on both devices
    cpu = run_corruptions([tmp_path / "r"], names, [2], device="cpu", out=tmp_path / "cpu")[0]
    gpu = run_corruptions([tmp_path / "r"], names, [2], device="cuda", amp=False, channels_last=False,
                          out=tmp_path / "gpu")[0]
    for a, b in zip(cpu["results"], gpu["results"]):
        assert abs(a["accuracy"] - b["accuracy"]) <= 2 / a["n"], (a, b)


def test_prefetched_host_batches_equal_the_data():
    from robustkit.prefetch import device_batches

    images = torch.randint(0, 256, (1000, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(1000)
    got = list(device_batches(images, labels, 300, torch.device("cuda")))
    assert [s for s, _, _ in got] == [0, 300, 600, 900]
    assert torch.equal(torch.cat([x.cpu() for _, x, _ in got]), images)
    assert torch.equal(torch.cat([y.cpu() for _, _, y in got]), labels)


def test_folder_decoded_by_nvjpeg_matches_the_cpu(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    from robustkit.sources.data import load_folder

    monkeypatch.setenv("ROBUSTKIT_CACHE", str(tmp_path / "cache"))
    g = torch.Generator().manual_seed(0)
    for i in range(6):
        d = tmp_path / "f" / "val" / f"c{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        img = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=(300, 260 + 10 * i))[0]
        Image.fromarray((img.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(d / f"{i}.jpg", quality=90)
    cpu = load_folder(tmp_path / "f", resize=256, crop=224)
    gpu = load_folder(tmp_path / "f", resize=256, crop=224, device="cuda")
    assert gpu.images.shape == cpu.images.shape and torch.equal(gpu.labels, cpu.labels)
    assert (gpu.images.float() - cpu.images.float()).abs().mean() < 1.0   # decoders round differently


def _train_weights(tmp_path, name, mode, method="gradaug", semi=False, cutmix=None, steps=6, amp=False, cl=False):
    from robustkit.config import TrainConfig
    from robustkit.train import fit

    cfg = TrainConfig(dataset="digits", arch="wrn-10-1", labels=100, batch_size=32, method=method, semi=semi,
                      cutmix_prob=cutmix, steps=steps, eval_every=steps, log_every=2, device="cuda", amp=amp,
                      channels_last=cl)
    fit(cfg, tmp_path / name, progress=False, step_mode=mode)
    ck = torch.load(tmp_path / name / "checkpoint.pt", weights_only=True, map_location="cpu")
    return ck["model"], ck["optimizer"]


def _max_rel(a: dict, b: dict) -> float:
    return max(((a[k].double() - b[k].double()).norm() / (a[k].double().norm() + 1e-12)).item()
               for k in a if a[k].is_floating_point())


@pytest.mark.parametrize("method, semi, cutmix", [("gradaug", False, None), ("gradaug", True, None),
                                                  ("gradaug", False, 0.5), ("baseline", False, None)])
def test_captured_steps_replay_the_static_step(tmp_path, method, semi, cutmix):
    """CUDA graphs replay exactly the kernels the uncaptured static step runs: same weights after 6 steps
    (captured from step 2 on). Allowed: 1e-5 relative (a library may pick another algorithm inside a capture)."""
    graphs, _ = _train_weights(tmp_path, "g", "graphs", method, semi, cutmix)
    static, _ = _train_weights(tmp_path, "s", "static", method, semi, cutmix)
    assert _max_rel(graphs, static) < 1e-5


def test_captured_steps_follow_the_eager_sliced_step(tmp_path):
    """Masked + captured vs sliced + eager on CUDA (fp32, NCHW), one step: the weights after the first update
    agree to float rounding (1e-4 relative: different convolution algorithms for sliced and full shapes)."""
    fast, _ = _train_weights(tmp_path, "g", "graphs", steps=3)
    eager, _ = _train_weights(tmp_path, "e", "eager", steps=3)
    assert _max_rel(fast, eager) < 1e-3
