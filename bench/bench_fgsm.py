"""FGSM epsilon sweep: robustkit.fgsm_sweep vs a loop of torchattacks.FGSM per epsilon.

Same model, same data, same batches, same run. The torchattacks side is what a user writes by hand:
one clean forward per batch, then for every epsilon ``FGSM(model, eps)(x, y)`` (a forward+backward)
followed by a forward to count hits. robustkit computes the input gradient once per batch and reuses
its sign for every epsilon (and its logits for the clean accuracy): one forward+backward plus one
forward per nonzero epsilon.

The exact comparison (fp32, the default): both sides in fp32, NCHW, under deterministic settings
(``robustkit.evaluate.set_deterministic``: cuDNN deterministic algorithms, no benchmark autotuning, no TF32,
``torch.use_deterministic_algorithms``). Then the accuracies must agree exactly, on the CPU and on CUDA
(checked; MISMATCH and exit status 1 if not). Otherwise (``--amp``, or ``--fast``: CUDA's defaults,
channels_last, TF32 convolutions, cuDNN's choice of algorithm) the two sides round differently, the sign of
near-zero gradient entries can flip, and the bench reports the measured difference instead of failing
(the issue measured up to 0.4 points on an H100 in fp32 without deterministic settings).

    python bench/bench_fgsm.py                        # wrn-28-2, 256 digits images at 32 px, CPU
    python bench/bench_fgsm.py --data random --n 512 --threads 1
    python bench/bench_fgsm.py --device cuda --n 10000 --batch-size 500 [--amp | --fast] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import report_targets, target  # noqa: E402

from robustkit.attacks import fgsm_sweep, parse_eps  # noqa: E402

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class LocalCNN(nn.Module):
    """Fallback when robustkit.models is unavailable: a VGG-ish BN CNN that normalises inside."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(CIFAR_STD).view(1, 3, 1, 1))

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.body = nn.Sequential(
            block(3, 32), block(32, 32), nn.MaxPool2d(2), block(32, 64), block(64, 64), nn.MaxPool2d(2),
            block(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body((x - self.mean) / self.std)


def build_model(name: str) -> tuple[nn.Module, str]:
    try:
        from robustkit.models import create_model

        return create_model(name, num_classes=10, mean=CIFAR_MEAN, std=CIFAR_STD), name
    except ImportError as e:
        print(f"note: robustkit.models not importable ({e}); using the local fallback CNN instead of {name}")
        return LocalCNN(), "local-cnn (fallback)"


def build_data(kind: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 NCHW 32 px images and int64 labels."""
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.randint(0, 10, (n,), generator=g)
    from sklearn.datasets import load_digits

    d = load_digits()
    idx = torch.randperm(len(d.images), generator=g)[:n]
    x = torch.tensor(d.images, dtype=torch.float32)[idx].unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).clamp(0, 1).repeat(1, 3, 1, 1)
    return (x * 255).round().to(torch.uint8), torch.tensor(d.target, dtype=torch.int64)[idx]


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, x: torch.Tensor, batch_size: int) -> None:
    """Set BatchNorm running statistics from the data (forwards only, no training).

    A freshly initialised net in eval mode uses running mean 0 / var 1, and a deep WRN then predicts
    the same class for every image, which would make the accuracy check below vacuous. With data
    statistics its predictions depend on the input, so agreement per epsilon means something.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.momentum) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    for xb in x.split(batch_size):
        model(xb)
    model.eval()
    for m, momentum in saved:
        m.momentum = momentum


def torchattacks_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: list[float], batch_size: int) -> list[dict]:
    """The hand-written reference: clean forward, then FGSM + forward for every epsilon."""
    import torchattacks

    hits = dict.fromkeys(eps, 0)
    attacks = {e: torchattacks.FGSM(model, eps=e) for e in eps if e > 0}
    for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
        with torch.no_grad():
            hits[0.0] += int((model(xb).argmax(1) == yb).sum())
        for e, atk in attacks.items():
            adv = atk(xb, yb)
            with torch.no_grad():
                hits[e] += int((model(adv).argmax(1) == yb).sum())
    return [{"eps": e, "accuracy": hits[e] / len(x), "n": len(x)} for e in eps]


def timed(fn: Callable[[], list[dict]], device: torch.device) -> tuple[float, list[dict]]:
    """Wall seconds of fn(); on CUDA bracketed by synchronize and measured with events."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1000.0, out
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="wrn-28-2", help="robustkit architecture name (default wrn-28-2)")
    p.add_argument("--data", choices=["random", "digits"], default="digits")
    p.add_argument("--n", type=int, default=256, help="number of images (default 256)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--eps", default="0.05..0.25", help="robustkit --eps syntax (default 0.05..0.25, + clean)")
    p.add_argument("--eps-step", type=float, default=0.05)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="bf16 autocast in fgsm_sweep (then accuracies may differ slightly)")
    p.add_argument("--fast", action="store_true", help="fp32 with CUDA's fast defaults (channels_last, TF32, no "
                                                       "deterministic algorithms): report the difference, do not fail")
    p.add_argument("--json", default=None, help="also write the targets as JSON to this file")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per side; the minimum is reported")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    exact = not (args.amp or args.fast)
    if exact:
        from robustkit.evaluate import set_deterministic

        set_deterministic()
    channels_last = False if exact else None   # None: robustkit's default (NHWC on CUDA)
    torch.manual_seed(args.seed)
    model, model_name = build_model(args.model)
    model = model.to(device).eval()
    images, labels = build_data(args.data, args.n, args.seed)
    x = (images.to(device).float() / 255).contiguous()  # both sides get the same device-resident floats
    y = labels.to(device)
    eps = parse_eps(args.eps, args.eps_step)
    calibrate_batchnorm(model, x[: 4 * args.batch_size], args.batch_size)

    # Warm-up (cudnn autotune, allocator, lazy init) on one batch, both paths.
    warm = slice(0, min(args.batch_size, args.n))
    fgsm_sweep(model, x[warm], y[warm], eps[:2], batch_size=args.batch_size, amp=args.amp, channels_last=channels_last)
    torchattacks_loop(model, x[warm], y[warm], eps[:2], args.batch_size)

    t_ours, t_ref = float("inf"), float("inf")
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits both sides alike
        t, ours = timed(lambda: fgsm_sweep(model, x, y, eps, batch_size=args.batch_size, amp=args.amp,
                                           channels_last=channels_last), device)
        t_ours = min(t_ours, t)
        t, ref = timed(lambda: torchattacks_loop(model, x, y, eps, args.batch_size), device)
        t_ref = min(t_ref, t)

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    mode = "exact (fp32, NCHW, deterministic)" if exact else ("bf16 autocast" if args.amp else "fp32, fast defaults")
    print(f"FGSM sweep  model={model_name}  data={args.data}  n={args.n}  batch={args.batch_size}  "
          f"eps={eps}  device={dev_name}  mode={mode}  torch={torch.__version__}")
    print(f"{'method':<34}{'seconds':>10}{'images/s':>12}{'speedup':>10}")
    for name, t in [("torchattacks.FGSM loop per eps", t_ref), ("robustkit.fgsm_sweep", t_ours)]:
        print(f"{name:<34}{t:>10.2f}{args.n / t:>12.1f}{t_ref / t:>9.2f}x")
    print(f"{'eps':>6}{'robustkit':>12}{'torchattacks':>14}")
    for a, b in zip(ours, ref):
        print(f"{a['eps']:>6g}{a['accuracy']:>12.4f}{b['accuracy']:>14.4f}")
    mismatch = [a["eps"] for a, b in zip(ours, ref) if a["accuracy"] != b["accuracy"]]
    worst = max(abs(a["accuracy"] - b["accuracy"]) for a, b in zip(ours, ref)) * 100   # accuracy points
    if exact:
        print("accuracies agree exactly" if not mismatch else f"MISMATCH: accuracies differ at eps {mismatch} "
              f"(up to {worst:.2f} points) under deterministic fp32")
    else:
        print(f"{mode}: largest accuracy difference {worst:.2f} points"
              + (f" (at eps {mismatch})" if mismatch else "") + "; exact only with the default (deterministic fp32)")
    targets = [target(f"fgsm {device.type} exact vs torchattacks: largest accuracy difference", worst, 0.0,
                      "points")] if exact else []
    targets.append(target(f"fgsm {device.type} {'exact' if exact else mode}: speed-up over the torchattacks loop",
                          t_ref / t_ours, 1.0, "x", lower_is_better=False))
    report_targets(targets, args.json)
    return 1 if (exact and mismatch) else 0


if __name__ == "__main__":
    raise SystemExit(main())
