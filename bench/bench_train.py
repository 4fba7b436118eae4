"""Training throughput: robustkit's training loop vs a reference loop written like the GradAug authors' recipe.

Both sides train the same architecture (robustkit's WRN, same random-width layers) on the same images
with the same batch size and the same number of sub-networks; only the way a step is fed and run differs.

* robustkit: ``robustkit.train.fit`` itself (the product loop): the split lives on the device as uint8,
  each step gathers a batch by index, crops/flips it in one batched op, then the step runner
  (robustkit/step.py: on CUDA the captured, masked step by default; ``--variants`` picks others); on CUDA
  channels_last + bf16 autocast. Step times come from the run's own
  ``metrics.jsonl`` (window timings between log points, synchronised by the loss read-back), so test
  evaluation and checkpointing are outside the timed windows.
* reference: the authors' ``train_cifar.py`` way: an in-memory dataset that hands out PIL images (as
  torchvision's CIFAR10 does), per-image CPU transforms ToTensor -> reflect pad 4 -> ToPILImage ->
  RandomCrop -> RandomHorizontalFlip -> ToTensor -> Normalize in DataLoader workers (shuffle,
  pin_memory), fp32, NCHW, cudnn.benchmark off (commented out in their script); per batch: full net CE
  backward, then each width (sorted descending) with a random resolution (bilinear, align_corners=True),
  KLDivLoss(batchmean) to the detached full softmax, backward; one SGD step, a per-step cosine scheduler,
  and the per-step ``.item()`` of loss and top-1 their logger does.

Images/s count the labeled images of a step (each goes through 1 + n sub-networks for GradAug); the
epoch time is 50,000 / (images/s): an extrapolation from the timed steps, not a measured epoch.

    python bench/bench_train.py                            # CPU: wrn-16-2, 2 warm-up + 6 timed steps (~2 min)
    python bench/bench_train.py --device cuda              # wrn-28-2, 100 warm-up + 300 timed steps
    python bench/bench_train.py --device cuda --ref-source imagefolder --workers 8
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (header, load_average, read_metrics, report_targets, resolve_data, setup_device,  # noqa: E402
                    table, target, timed_seconds)

from robustkit.checkpoint import resolve_device  # noqa: E402
from robustkit.config import TrainConfig  # noqa: E402
from robustkit.data import channel_stats, default_flip, load_dataset, parse_spec  # noqa: E402
from robustkit.models import at_width, create_model  # noqa: E402

EPOCH_IMAGES = 50_000


@dataclass
class Timing:
    """What one side measured: timed steps only (warm-up excluded)."""

    label: str
    method: str
    steps: int
    images: int
    seconds: float
    warmup_s: float
    loss: float
    mode: str = "-"     # robustkit: the step mode fit recorded
    prefetch: bool = False   # robustkit: fit(prefetch=True)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds

    @property
    def epoch_s(self) -> float:
        return EPOCH_IMAGES / self.images_per_s


# --------------------------------------------------------------------------------------------------
# robustkit side: the real fit(), timed from its metrics.jsonl


VARIANTS = {  # name -> (step mode, amp, channels_last); None = robustkit's default for the device
    "default": (None, None, None),
    "graphs": ("graphs", None, None),
    "graphs-untuned": ("graphs-untuned", None, None),
    "graphs-fp32": ("graphs", False, None),
    "graphs-nchw": ("graphs", None, False),
    "graphs-fp32-nchw": ("graphs", False, False),
    "graphs-inductor": ("graphs-inductor", None, None),   # + TorchInductor-fused passes (compiles at the start)
    "graphs-streams": ("graphs-streams", None, None),     # sub-networks side by side, one CUDA stream each
    "graphs-inductor-streams": ("graphs-inductor-streams", None, None),
    "graphs-fp16": ("graphs-fp16", None, None),          # float16 + loss scaling (cuDNN batch norm), captured
    "graphs-streams-fp16": ("graphs-streams-fp16", None, None),
    "graphs-inductor-fp16": ("graphs-inductor-fp16", None, None),   # --compile's passes in float16
    # -prefetch: fit(prefetch=True), each batch made on a side CUDA stream while the step before runs
    "graphs-prefetch": ("graphs", None, None),
    "graphs-fp16-prefetch": ("graphs-fp16", None, None),
    "graphs-streams-prefetch": ("graphs-streams", None, None),
    "graphs-streams-fp16-prefetch": ("graphs-streams-fp16", None, None),
    "graphs-inductor-prefetch": ("graphs-inductor", None, None),
    "graphs-inductor-streams-prefetch": ("graphs-inductor-streams", None, None),
    "graphs-inductor-fp16-prefetch": ("graphs-inductor-fp16", None, None),
    "static": ("static", None, None),
    "static-inductor": ("static-inductor", None, None),   # uncaptured, TorchInductor-compiled passes (also CPU)
    "static-fp16": ("static-fp16", None, None),           # uncaptured float16 + loss scaling (runs on the CPU too)
    "eager": ("eager", None, None),
    "eager-nchw": ("eager", None, False),
}


def mode_tag(t: Timing, device: torch.device) -> str:
    """'' when ``t`` ran as robustkit's default for its method on ``device`` in a long run (one of
    COMPILE_PAYS_AFTER_STEPS steps: on CUDA compiled, batches prefetched), else ' [MODE]' (' [MODE + prefetch]')."""
    from robustkit.step import COMPILE_PAYS_AFTER_STEPS, choose_mode

    default = choose_mode(None, t.method, device, 1, steps=COMPILE_PAYS_AFTER_STEPS)[0]
    if t.mode == default and t.prefetch == (device.type == "cuda"):
        return ""
    return f" [{t.mode}{' + prefetch' if t.prefetch else ''}]"


STEP_GOALS = {"gradaug": ("GradAug WRN-28-2 b128 ms/step", 10.0), "baseline": ("baseline WRN-28-2 b128 ms/step", 3.0)}


def variant_targets(timings: list[Timing], device: torch.device, named: set[str]) -> list[dict]:
    """Each timing's step against its method's step target (:data:`STEP_GOALS`), named by its mode
    (:func:`mode_tag`); a name already in ``named`` (the first variant's) is not repeated."""
    out = []
    for t in timings:
        name = STEP_GOALS[t.method][0] + mode_tag(t, device)
        if name not in named:
            named = named | {name}
            out.append(target(name, t.seconds / t.steps * 1000, STEP_GOALS[t.method][1], "ms"))
    return out


def time_robustkit(spec: str, args: argparse.Namespace, method: str, variant: str = "default") -> Timing:
    """Run ``fit`` for warm-up + timed steps and read the timed windows back from metrics.jsonl.

    ``log_every`` = gcd(warmup, steps), so one log point falls exactly at the end of the warm-up and
    the rest tile the timed steps. fit's ``elapsed_s`` sums window times only (evaluation and
    checkpoint writes happen after a window is closed), so the difference between the last record and
    the warm-up record is the wall time of the timed steps.
    """
    from robustkit.train import fit

    total = args.warmup + args.steps
    mode, amp, channels_last = VARIANTS[variant]
    # the -prefetch variants: fit(prefetch=True); "default": fit's default (on for CUDA); the others: off
    prefetch = True if variant.endswith("-prefetch") else None if variant == "default" else False
    if args.no_amp:
        amp = False
    cfg = TrainConfig(dataset=spec, arch=args.arch, method=method, batch_size=args.batch_size, steps=total,
                      subnets=args.subnets, log_every=math.gcd(args.warmup, args.steps), eval_every=total,
                      eval_limit=256, device=args.device, amp=amp, channels_last=channels_last, seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        run_dir = Path(tmp) / f"rk-{method}"
        t0 = time.perf_counter()
        fit(cfg, run_dir, progress=False, step_mode=mode, prefetch=prefetch)
        wall = time.perf_counter() - t0
        records = read_metrics(run_dir)
    seconds = timed_seconds(records, args.warmup, total)
    timed_records = [r for r in records if r["step"] > args.warmup]
    window = math.gcd(args.warmup, args.steps)
    loss = sum(r["train_loss"] for r in timed_records) / len(timed_records)
    cuda = resolve_device(args.device).type == "cuda"
    amp_on = (amp if amp is not None else cuda)
    cl_on = (channels_last if channels_last is not None else cuda)
    step_mode = records[-1].get("step_mode", "?")
    prefetch = bool(records[-1].get("prefetch", prefetch))   # what fit did
    precision = "fp16" if step_mode.endswith("-fp16") else "bf16" if amp_on else "fp32"
    label = (f"robustkit fit [{step_mode}{' + prefetch' if prefetch else ''}] (" + precision
             + (", channels_last)" if cl_on else ", NCHW)"))
    print(f"  {label} {method}: {wall:.1f} s wall for the whole fit() call "
          f"(data load, {total} steps, eval of 256 images, checkpoint); {len(timed_records)} timed windows of {window}",
          file=sys.stderr)
    return Timing(label, method, args.steps, args.steps * args.batch_size, seconds, timed_seconds(records, 0, args.warmup),
                  loss, step_mode, prefetch)


# --------------------------------------------------------------------------------------------------
# reference side: DataLoader + per-image CPU transforms + fp32, as in the authors' train_cifar.py


class InMemoryImages(torch.utils.data.Dataset):
    """uint8 HWC images held in memory, handed out as PIL images like torchvision's CIFAR10 does."""

    def __init__(self, images_nhwc: np.ndarray, labels: np.ndarray, transform) -> None:
        self.images, self.labels, self.transform = images_nhwc, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


class ReflectPad:
    """The authors' Lambda (reflect-pad a CHW tensor), as a picklable callable for DataLoader workers."""

    def __init__(self, pad: int) -> None:
        self.pad = pad

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x.unsqueeze(0), (self.pad,) * 4, mode="reflect").squeeze(0)


def reference_loader(spec: str, args: argparse.Namespace, device: torch.device):
    """(DataLoader, number of classes, image size) over the same training images robustkit trains on."""
    from torchvision import datasets, transforms

    data = load_dataset(spec, "train")
    mean, std = channel_stats(data.images)
    size = int(data.images.shape[-1])
    steps = [transforms.ToTensor(), ReflectPad(4), transforms.ToPILImage(), transforms.RandomCrop(size)]
    if default_flip(spec):
        steps.append(transforms.RandomHorizontalFlip())
    steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
    transform = transforms.Compose(steps)
    if args.ref_source == "imagefolder":
        parsed = parse_spec(spec)
        if parsed.name != "folder":
            raise SystemExit("error: --ref-source imagefolder needs --data folder:PATH")
        ds = datasets.ImageFolder(os.path.join(parsed.path, "train"), transform=transform)
    else:
        ds = InMemoryImages(data.images.permute(0, 2, 3, 1).contiguous().numpy(), data.labels.numpy(), transform)
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                                         pin_memory=device.type == "cuda")
    return loader, len(data.classes), size


def time_reference(spec: str, args: argparse.Namespace, method: str, device: torch.device) -> Timing:
    """The hand-written recipe loop for warm-up + timed steps (epochs restart the DataLoader, as theirs do)."""
    loader, num_classes, size = reference_loader(spec, args, device)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    random.seed(args.seed)
    # Normalisation happens in the CPU transform, as in the recipe, so the model's own is the identity.
    model = create_model(args.arch, num_classes=num_classes, mean=[0.0] * 3, std=[1.0] * 3).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    total = args.warmup + args.steps
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total)
    resolutions = sorted({max(8, round(size * f)) for f in (1.0, 7 / 8, 3 / 4)}, reverse=True)  # as robustkit's default
    old_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = args.ref_cudnn_benchmark
    step, images, losses = 0, 0, []
    t_start = t_timed = time.perf_counter()
    warm_s = 0.0
    model.train()
    try:
        while step < total:
            for x, y in loader:  # a new iterator (and new workers) every epoch, like their loop
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                optimizer.zero_grad()
                full = model(x)
                loss = F.cross_entropy(full, y)
                loss.backward()
                loss_value = loss.item()
                _top1 = (full.argmax(1) == y).float().mean().item()  # their per-step accuracy meter
                if method == "gradaug":
                    widths = [args.min_width, *np.random.uniform(args.min_width, 1.0, args.subnets - 1)]
                    target = F.softmax(full.detach(), dim=1)
                    for w in sorted(widths, reverse=True):
                        r = resolutions[random.randint(0, len(resolutions) - 1)]
                        with at_width(model, float(w)):
                            out = model(F.interpolate(x, (r, r), mode="bilinear", align_corners=True))
                        kl = F.kl_div(F.log_softmax(out, dim=1), target, reduction="batchmean")
                        kl.backward()
                        loss_value += kl.item()
                optimizer.step()
                scheduler.step()
                step += 1
                if step == args.warmup:
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    t_timed = time.perf_counter()
                    warm_s = t_timed - t_start
                elif step > args.warmup:
                    images += len(y)
                    losses.append(loss_value)
                if step == total:
                    break
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t_timed
    finally:
        torch.backends.cudnn.benchmark = old_benchmark
    label = f"reference loop (DataLoader x{args.workers} workers, {args.ref_source}, per-image CPU aug, fp32)"
    return Timing(label, method, args.steps, images, seconds, warm_s, sum(losses) / len(losses))


def time_loader_only(spec: str, args: argparse.Namespace, device: torch.device) -> Timing:
    """The reference's data path alone (workers, transforms, collate, copy to the device), no model.

    This is the most images/s the reference loop could reach on an infinitely fast accelerator with
    these workers; the first batch (worker start-up) is not timed.
    """
    loader, _, _ = reference_loader(spec, args, device)
    batches = args.loader_batches
    it = iter(loader)
    next(it)
    t0 = time.perf_counter()
    images = done = 0
    for _ in range(batches):
        try:
            x, y = next(it)
        except StopIteration:  # a small dataset: one epoch is all there is
            break
        x = x.to(device, non_blocking=True)
        images, done = images + len(y), done + 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    del it
    label = f"  reference DataLoader alone (x{args.workers} workers, no model)"
    return Timing(label, "-", max(done, 1), images, seconds, 0.0, float("nan"))


# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="folder:PATH | digits [the extracted shared CIFAR archive, else digits]")
    p.add_argument("--arch", default=None, help="robustkit architecture [wrn-28-2 on CUDA, wrn-16-2 on CPU]")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=None, help="timed steps after warm-up [300 on CUDA, 6 on CPU]")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first [100 on CUDA, 2 on CPU]")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--workers", type=int, default=None,
                   help="reference DataLoader workers [4 as in the authors' config, at most the CPU count]")
    p.add_argument("--method", choices=["gradaug", "baseline"], default="gradaug", help="what is compared with the reference")
    p.add_argument("--subnets", type=int, default=3, help="GradAug sub-networks per step (both sides)")
    p.add_argument("--min-width", type=float, default=0.8)
    p.add_argument("--ref-source", choices=["memory", "imagefolder"], default="memory",
                   help="reference data: in-memory arrays like torchvision CIFAR10 (default) or ImageFolder JPEGs")
    p.add_argument("--ref-cudnn-benchmark", action="store_true", help="give the reference cudnn.benchmark=True too")
    p.add_argument("--loader-batches", type=int, default=None,
                   help="batches for the reference-DataLoader-alone row [100 on CUDA, 20 on CPU; 0 skips it]")
    p.add_argument("--no-amp", action="store_true", help="robustkit in fp32 as well (isolates the data-path gain)")
    p.add_argument("--no-ratio", action="store_true", help="skip timing robustkit's other method")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", default=None,
                   help=f"robustkit step variants for --method, comma-separated, from {', '.join(VARIANTS)} "
                        "[default; on CUDA: default,eager]; the first one also runs the other method and gives the "
                        "targets (named with the variant when it is not the default)")
    p.add_argument("--ref-steps", type=int, default=None, help="timed steps of the reference loop [--steps]")
    p.add_argument("--json", default=None, help="write the targets (name, measured, goal, met) as JSON here")
    args = p.parse_args(argv)

    device = setup_device(args.device, args.threads)
    if device is None:
        return 2
    cuda = device.type == "cuda"
    reduced = []
    if args.arch is None:
        args.arch = "wrn-28-2" if cuda else "wrn-16-2"
        reduced += [] if cuda else ["--arch wrn-16-2"]
    if args.steps is None:
        args.steps = 300 if cuda else 6
        reduced += [] if cuda else ["--steps 6"]
    if args.warmup is None:
        args.warmup = 100 if cuda else 2
    if args.loader_batches is None:
        args.loader_batches = 100 if cuda else 20
    if args.workers is None:
        args.workers = min(4, os.cpu_count() or 1)
    if args.steps < 1 or args.warmup < 1:
        print("error: --steps and --warmup must be >= 1", file=sys.stderr)
        return 2
    spec, data_desc = resolve_data(args.data)

    header("training throughput: robustkit fit vs the GradAug authors' recipe loop", device)
    print(f"# data {data_desc} | arch {args.arch} | batch {args.batch_size} | subnets {args.subnets} "
          f"(widths [{args.min_width}, 1], resolutions size x (1, 7/8, 3/4)) | warm-up {args.warmup} + "
          f"{args.steps} timed steps | device {device}")
    if reduced:
        print(f"# CPU: reduced setting ({', '.join(reduced)} by default); few steps with random sub-network sizes: expect run-to-run spread")
    print(f"# reference: {args.ref_source} data, {args.workers} workers, pin_memory={cuda}, fp32, "
          f"cudnn.benchmark={args.ref_cudnn_benchmark}; robustkit: per variant, as labelled in the table "
          "(cuDNN benchmark off while training; the captured step tunes its fixed shapes once)")

    load_dataset(spec, "train"), load_dataset(spec, "test")  # decode/cache once, outside every timing
    other = "baseline" if args.method == "gradaug" else "gradaug"
    variants = (args.variants or ("default,eager" if cuda else "default")).split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        print(f"error: unknown --variants {', '.join(unknown)} (choose from {', '.join(VARIANTS)})", file=sys.stderr)
        return 2
    timings = []
    for v in variants:
        print(f"running robustkit {args.method} [{v}] ...", file=sys.stderr)
        timings.append(time_robustkit(spec, args, args.method, v))
    ours = timings[0]
    print("running reference ...", file=sys.stderr)
    ref_args = argparse.Namespace(**{**vars(args), "steps": args.ref_steps or args.steps})
    ref = time_reference(spec, ref_args, args.method, device)
    loader_only = time_loader_only(spec, args, device) if args.loader_batches > 0 else None
    ours_other = None
    if not args.no_ratio:
        print(f"running robustkit {other} ...", file=sys.stderr)
        ours_other = time_robustkit(spec, args, other, variants[0])   # the same variant as the targets' row

    rows = []
    for t in [ref] + ([loader_only] if loader_only else []) + timings + ([ours_other] if ours_other else []):
        speed = f"{t.images_per_s / ref.images_per_s:.2f}x" if t.method == ref.method else "-"
        rows.append([t.label, t.method, f"{t.images_per_s:,.1f}", f"{t.seconds / t.steps * 1000:,.1f}",
                     f"{t.epoch_s:,.1f}", speed, f"{t.warmup_s:.1f}" if t.method != "-" else "-",
                     f"{t.loss:.3f}" if t.method != "-" else "-"])
    print()
    print(table(["side", "method", "images/s", "ms/step", "s/epoch*", "speedup", "warm-up s", "loss"], rows,
                align="llrrrrrr"))
    print(f"* time per epoch of {EPOCH_IMAGES:,} images, extrapolated from {args.steps} timed steps of "
          f"{args.batch_size} (not a measured epoch); loss = mean train loss over the timed steps (CE + KL terms)")
    if loader_only:
        print(f"  the DataLoader-alone row bounds the reference from above: its {loader_only.images_per_s:,.0f} images/s "
              f"are what it could reach if the model cost nothing")
    if ours_other:
        g, b = (ours, ours_other) if ours.method == "gradaug" else (ours_other, ours)
        print(f"robustkit GradAug / baseline cost per step: {g.seconds / g.steps / (b.seconds / b.steps):.2f}x "
              f"({args.subnets} sub-networks)")
    speedup = ours.images_per_s / ref.images_per_s
    targets = []
    if cuda:
        g = ours if ours.method == "gradaug" else ours_other
        b = ours if ours.method == "baseline" else ours_other
        if g is not None:
            targets += variant_targets([g], device, set())
            targets.append(target("GradAug epoch of 50,000 images" + mode_tag(g, device), g.epoch_s, 4.0, "s"))
        if args.method == "gradaug":
            targets.append(target("GradAug speed-up over the authors' loop" + mode_tag(ours, device), speedup, 7.0, "x",
                                  lower_is_better=False))
        if b is not None:
            targets += variant_targets([b], device, set())
        targets += variant_targets(timings[1:], device, {t["name"] for t in targets})
    report_targets(targets, args.json)
    print(f"# after: {load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
