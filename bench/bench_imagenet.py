"""ImageNet-sized corruption evaluation: robustkit ``corrupt`` end to end vs the usual way, same run.

Both sides evaluate the same ResNet (torchvision, random weights: speed does not depend on them) on the
same 224 px images (a folder of JPEGs of mixed sizes made here, ImageNet-style: Resize(256) +
CenterCrop(224)), for the same corruptions and severities:

* robustkit: ``robustkit.jobs.run_corruptions`` - the folder decoded once into the memory-mapped cache
  (timed separately: it is paid once per dataset, not per cell), each batch corrupted in torch on the
  device, bf16 + channels_last on CUDA;
* reference: what papers' scripts do - a torch DataLoader (``--workers`` processes) whose dataset opens
  each JPEG with PIL, resizes and crops it, applies ``imagecorruptions.corrupt`` per image (numpy, CPU),
  then the model in fp32 - for every (corruption, severity), one loader over all of them.

Images/s count evaluated images (one image x one cell = one). The imagecorruptions reference needs the
three shims bench_corruptions.py explains (current numpy / scikit-image), applied in the workers.

Printed next to each other, same run:

* robustkit's **steady-state** images/s over the cells, the **one-off costs** of a run in seconds, and the
  **model-only ceiling**: the same model, batch size, dtype and layout on device-resident images, forward only:
  what the cells would reach if corruptions and data cost nothing;
* the reference at **steady state**: its start-up (one DataLoader for all cells: workers spawned once, first
  batch) is measured and taken out, the ratio is robustkit's steady rate / the reference's, and the share of start-up in
  the reference's time is printed (below 5 % the run was long enough; otherwise give more ``--ref-images``);
* **ImageNet-C extrapolated**: 50,000 images x 19 corruptions x 5 severities = 4,750,000 image-cells, in
  minutes, as one-off + 4,750,000 / steady rate, next to the old figure (4,750,000 at the first run's mean
  rate, which charges its one-off costs once per image-cell of this run: ~50 times over from 5,000 images x
  19 cells) and the model-only ceiling; the decode of the 50,000 images is once per dataset (cached) and
  printed apart. Target (CUDA only, from a run of >= 5,000 images over all 19 corruptions): <= 8 minutes,
  MET / NOT MET (``--json PATH`` writes it for bench/gpu_check.sh, with the figures behind it).

How the extrapolation is measured: robustkit's job (``run_corruptions``, what ``robustkit corrupt`` calls)
runs three times in this process on the cached folder, each time cut at the moments the job reports through
its ``Progress``: setup done (model resolved, data cache loaded and placed on the device), and each cell done
(once the cell's counts are read back; each report is timed as it comes, without draining the device, so the cells
the grid keeps queued ahead stay queued: see bench/common.py CellClock):

1. the **cold run**: the job as a user runs it, first in the process (its mean rate is the old figure);
2. the **warm run**: the same job again. Every corruption, cuDNN/cuFFT plan and lazy initialisation has been
   paid; its cells after the first (whose interval also holds the model build and the clean pass) give the
   **steady rate**;
3. the job **without cells**: the work every run pays once (setup, model build, clean pass, result files).

one-off = the job without cells + what the first run in a process pays more than the second (each corruption's
first call, plans, lazy init, first imports): cold - warm (0 if negative: noise), printed part by part (setup,
the first cell with the model build and the clean pass, each corruption's cells, the result files). Check,
printed: one-off + this run's image-cells / steady rate against the cold run's measured time; it holds when the
warm run is the per-run work plus its cells at the steady rate. The warm run and the job without cells add about the cold run's time again.

Not in the one-off: first calls of severities this run does not evaluate (a full run builds each severity's
tables and plans once: ``--severities 1,2,3,4,5`` measures them). The clean pass and the data placement in it
are those of this run's images and grow with them (on the H100, 5,000 images through ResNet-50 alone take 0.4 s).

    python bench/bench_imagenet.py                           # CPU: resnet18, 8 images, 4 corruptions, severity 3
    python bench/bench_imagenet.py --device cuda --arch resnet50 --images 5000 --corruptions all --severities 3 \
        --batch-size 256 --ref-images 140 --ref-batch-size 1 --workers 14 --json imagenet.json
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_corruptions import shimmed_imagecorruptions  # noqa: E402
from common import (TimedRun, as_corrupt_runs, header, report_targets, setup_device, sync, table, target,  # noqa: E402
                    timed_job, write_json)

from robustkit.corruptions import STORAGES  # noqa: E402
from robustkit.jobs import Progress  # noqa: E402


def make_folder(root: Path, n: int, classes: int = 10, workers: int | None = None) -> Path:
    """``n`` smooth random JPEGs of mixed sizes around 300 x 330 (ImageNet-like), written on ``workers`` threads
    [all cores, up to 16]."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    def one(i: int) -> None:
        g = torch.Generator().manual_seed(i)
        d = root / "val" / f"n{i % classes:08d}"
        h, w = 300 + 7 * (i % 9), 330 + 11 * (i % 7)
        small = torch.rand(3, 12, 12, generator=g)
        img = torch.nn.functional.interpolate(small[None], size=(h, w), mode="bicubic", align_corners=False)[0]
        img = (img + 0.05 * torch.randn(img.shape, generator=g)).clamp(0, 1)
        Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(d / f"{i}.JPEG", quality=90)

    for c in range(classes):
        (root / "val" / f"n{c:08d}").mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # 16 threads each starting torch's intra-op pool would oversubscribe the cores
    try:
        with torch.inference_mode(), ThreadPoolExecutor(workers or max(1, min(16, __import__("os").cpu_count() or 1))) as pool:
            list(pool.map(one, range(n)))
    finally:
        torch.set_num_threads(threads)
    return root


def jpeg_folder(root: Path, n: int, classes: int, workers: int | None = None) -> bool:
    """``make_folder(root, n, classes)`` unless an earlier call made these JPEGs there (a marker written last
    says so; a folder this script left half-made is made again). True where it made them. A folder that holds
    anything else is refused (ValueError), never emptied."""
    import shutil

    own, done = root / ".bench-imagenet", root / f".made-{n}-{classes}"
    if done.is_file():
        return False
    if root.exists() and any(root.iterdir()):
        if not own.is_file():
            raise ValueError(f"--folder {root} holds files this script did not make: give a new or empty folder")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    own.write_text("JPEGs made by bench/bench_imagenet.py\n")
    make_folder(root, n, classes, workers)
    done.write_text("complete\n")
    return True


class _RefDataset(torch.utils.data.Dataset):
    """PIL open -> Resize(256) -> CenterCrop(224) -> imagecorruptions.corrupt -> tensor (per image), for every
    (corruption, severity) cell in turn over the same files: item i is image i % n of cell i // n."""

    def __init__(self, files, labels, cells):
        self.files, self.labels, self.cells = files, labels, cells
        self.ic = None

    def __len__(self):
        return len(self.files) * len(self.cells)

    def __getitem__(self, i):
        from PIL import Image
        from torchvision import transforms as T

        if self.ic is None:
            self.ic = shimmed_imagecorruptions()
        cell, j = divmod(i, len(self.files))
        name, severity = self.cells[cell]
        img = T.CenterCrop(224)(T.Resize(256)(Image.open(self.files[j]).convert("RGB")))
        out = self.ic.corrupt(np.asarray(img), corruption_name=name, severity=severity)
        x = torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1).float() / 255
        return x, self.labels[j], cell


def reference(model, folder: Path, names, severities, device, workers: int, batch: int,
              n_images: int) -> tuple[float, float, dict]:
    """(total seconds, seconds for all cells at the steady rate, steady seconds per corruption) of the reference
    on the first ``n_images`` files.

    One DataLoader runs every cell, so its workers start once (a loader per cell, as a script's loop makes them,
    pays their spawn and imports per cell: on the H100 machine that was 65 % of the reference's time at 56
    images per cell, and no affordable number of images made it small). Start-up: from the loader's creation
    to the first batch's arrival; steady state: the rest, over the images after the first batch. Each later
    batch's time since the one before is charged to the corruptions of its images."""
    from torchvision.datasets import ImageFolder

    base = ImageFolder(str(folder / "val"))
    files, labels = [p for p, _ in base.samples][:n_images], [c for _, c in base.samples][:n_images]
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)
    cells = [(name, sev) for name in names for sev in severities]
    per = {name: 0.0 for name in names}
    sync(device)
    t0 = time.perf_counter()
    loader = torch.utils.data.DataLoader(_RefDataset(files, labels, cells), batch_size=batch, num_workers=workers,
                                         pin_memory=device.type == "cuda")
    t_first = t_prev = None
    first_n = seen = 0
    with torch.no_grad():
        for x, _, cell in loader:
            x = x.to(device)
            model((x - mean) / std).argmax(1)
            sync(device)
            t = time.perf_counter()
            if t_first is None:
                t_first, first_n = t, len(x)
            else:
                for c in cell.tolist():
                    per[cells[c][0]] += (t - t_prev) / len(cell)
            t_prev = t
            seen += len(x)
    t_end = time.perf_counter()
    total_n = len(cells) * len(files)
    steady_n, steady_t = seen - first_n, t_prev - t_first      # first batch to last
    steady = total_n / (steady_n / steady_t) if steady_n and steady_t > 0 else float("nan")   # all cells at that rate
    return t_end - t0, steady, per


def model_ceiling(model, batch: int, device: torch.device, amp: bool, channels_last: bool, images: int) -> float:
    """Images/s of the model alone (forward, eval, no_grad) on device-resident 224 px batches, with the same
    batch size, autocast and memory layout as the evaluation; at least ``images`` images after a warm-up."""
    import contextlib

    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp else contextlib.nullcontext
    x = torch.rand(batch, 3, 224, 224, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    steps = max(3, -(-images // batch))
    with torch.no_grad():
        for _ in range(2):                                   # warm-up: kernels, allocator, autotuning
            with autocast():
                model(x).argmax(1)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            with autocast():
                model(x).argmax(1)
        sync(device)
    return steps * batch / (time.perf_counter() - t0)


IMAGENET_C = (50_000, 19, 5)   # images, corruptions, severities
GOAL_MIN = 8.0                 # ImageNet-C on one H100, minutes (one-off + cells; decode once apart)
MIN_IMAGES = 5000              # the extrapolation is judged only from a run at least this long
CHECK_TOLERANCE = 0.05         # one-off + cells / steady rate within this share of the cold run: consistent
TARGET_NAME = "ImageNet-C 50,000 x 19 x 5, extrapolated (one-off + steady cells)"


def run_parts(cold: TimedRun, warm: TimedRun, cells: Sequence[tuple[str, int]]) -> list[tuple[str, float, float]]:
    """``(part, cold run s, warm run s)``: setup, the first cell (with the model build and the clean pass), each
    corruption's other cells, the result files; each run's parts sum to its total."""
    parts = [("setup: model resolved, data cache loaded + placed", cold.setup, warm.setup),
             (f"model build + clean pass + {cells[0][0]} s{cells[0][1]}", cold.cells[0], warm.cells[0])]
    for name in dict.fromkeys(c for c, _ in cells):
        idx = [i for i, (c, _) in enumerate(cells) if c == name and i > 0]
        if idx:
            parts.append((f"{name} ({len(idx)} cell{'s' if len(idx) > 1 else ''})",
                          sum(cold.cells[i] for i in idx), sum(warm.cells[i] for i in idx)))
    return parts + [("result files", cold.tail, warm.tail)]


def extrapolate(cold: TimedRun, warm: TimedRun, no_cells: TimedRun, images: int, ceiling: float) -> dict:
    """The figures of the extrapolation (see the module docstring), as the JSON carries them. The first-time
    costs are cold - warm, 0 when the warm run was the slower (noise)."""
    full = math.prod(IMAGENET_C)
    first_time = max(0.0, cold.total - warm.total)
    one_off = no_cells.total + first_time
    steady = images * (len(warm.cells) - 1) / sum(warm.cells[1:])
    mean = images * len(cold.cells) / cold.total
    return {"image_cells": full, "one_off_s": one_off, "per_run_s": no_cells.total, "first_time_s": first_time,
            "steady_images_per_s": steady, "mean_images_per_s": mean, "model_only_images_per_s": ceiling,
            "minutes": (one_off + full / steady) / 60, "minutes_at_mean_rate": full / mean / 60,
            "minutes_at_model_only": full / ceiling / 60, "cold_run_s": cold.total, "warm_run_s": warm.total,
            "predicted_cold_run_s": one_off + images * len(cold.cells) / steady}


def not_judged(device: torch.device, images: int, names: Sequence[str]) -> str | None:
    """Why this run's extrapolation is not judged against the target, or None when it is."""
    from robustkit.corruptions import CORRUPTIONS

    if device.type != "cuda":
        return "on CUDA"
    if images < MIN_IMAGES or set(names) != set(CORRUPTIONS):
        return f"from >= {MIN_IMAGES:,} images over all 19 corruptions"
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet18", help="torchvision model [resnet18]")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--corruptions", default="gaussian_noise,defocus_blur,fog,contrast")
    p.add_argument("--severities", default="3")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--workers", type=int, default=2, help="reference DataLoader workers")
    p.add_argument("--batch-size", type=int, default=None, help="[64 on CUDA, 8 on CPU]")
    p.add_argument("--decode", default="cpu", choices=["cpu", "gpu"], help="robustkit's folder decoder [cpu]")
    p.add_argument("--compile", action="store_true",
                   help="robustkit corrupt --compile: the network compiled by TorchInductor (also the ceiling's)")
    p.add_argument("--storage", default="float", choices=STORAGES,
                   help="robustkit corrupt --storage: released stores each corrupted image as ImageNet-C's files "
                        "(8-bit, JPEG quality 85) before the model sees it [float]")
    p.add_argument("--no-reference", action="store_true")
    p.add_argument("--ref-images", type=int, default=None,
                   help="images the reference evaluates [all]; enough that its start-up is < 5%% of its time")
    p.add_argument("--ref-batch-size", type=int, default=None,
                   help="the reference's DataLoader batch [--batch-size]; each worker builds whole batches, so with "
                        "few --ref-images a small batch (1) keeps all --workers busy (the corruptions on the CPU are its "
                        "cost, not the model)")
    p.add_argument("--json", default=None, help="also write the target and the figures behind it as JSON to this file")
    p.add_argument("--folder", default=None,
                   help="where the --images JPEGs are: made there unless an earlier run made them [a temporary folder]")
    p.add_argument("--make-folder-only", action="store_true",
                   help="make the --folder JPEGs and stop (gpu_check.sh makes them while the CUDA tests run)")
    args = p.parse_args(argv)
    if args.make_folder_only:
        if not args.folder:
            print("error: --make-folder-only needs --folder DIR", file=sys.stderr)
            return 2
        t0 = time.perf_counter()
        try:
            made = jpeg_folder(Path(args.folder), args.images, min(10, args.images), args.threads)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"{'made' if made else 'found'} {args.images} JPEGs in {args.folder} in {time.perf_counter() - t0:.1f} s")
        return 0
    device = setup_device(args.device, args.threads)
    if device is None:
        return 2
    from robustkit.corruptions import parse_corruptions, parse_severities
    from robustkit.errors import RobustkitError
    from robustkit.jobs import ModelOptions, run_corruptions
    from robustkit.sources.data import load_folder
    from robustkit.sources.models import load_model

    names, sevs = parse_corruptions(args.corruptions), parse_severities(args.severities)
    cells = [(c, s) for c in names for s in sevs]                # the job's order: corruption-major
    if len(cells) < 2:
        print("error: the steady rate needs at least 2 cells (corruptions x severities)", file=sys.stderr)
        return 2
    bs = args.batch_size or (64 if device.type == "cuda" else 8)
    cuda = device.type == "cuda"
    header(f"ImageNet-sized corruptions: robustkit corrupt vs DataLoader + imagecorruptions ({args.arch}, "
           f"{args.images} images, {len(names)} corruptions x {len(sevs)} severities, batch {bs}"
           + (", stored as released" if args.storage == "released" else "") + ")", device)
    with tempfile.TemporaryDirectory() as tmp:
        import os

        os.environ["ROBUSTKIT_CACHE"] = str(Path(tmp) / "cache")
        n_classes = min(10, args.images)
        t0 = time.perf_counter()
        root = Path(args.folder) if args.folder else Path(tmp) / "imgs"
        try:
            made = jpeg_folder(root, args.images, n_classes)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        folder = root
        print(f"{'made' if made else 'found (made earlier)'} {args.images} JPEGs in {time.perf_counter() - t0:.1f} s",
              flush=True)
        t0 = time.perf_counter()
        try:
            load_folder(folder, resize=256, crop=224, decode=args.decode, device=device)
        except RobustkitError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        t_decode = time.perf_counter() - t0
        opts = ModelOptions(data=f"folder:{folder}", num_classes=n_classes, decode=args.decode, compile=args.compile)

        def job(corruptions: Sequence[str], out: str) -> Callable[[Progress], object]:
            return lambda progress: run_corruptions(
                [f"torchvision:{args.arch}"], corruptions, sevs, device=str(device), batch_size=bs,
                storage=args.storage, out=Path(tmp) / out, force=True, options=opts, progress=progress)

        cold = timed_job(job(names, "cold"), device, len(cells))
        print(f"robustkit, cold run (as a user runs it): {cold.total:.2f} s", flush=True)
        warm = timed_job(job(names, "warm"), device, len(cells))
        no_cells = timed_job(job([], "no-cells"), device, 0)
        model, _ = load_model(f"torchvision:{args.arch}", num_classes=n_classes, device=device)
        ceiling_images = max(args.images, 10 * bs)
        eager_ceiling = plain_ceiling = None
        # the ceiling is the network as corrupt runs it: folded and fused where the device's defaults (or
        # --compile) say so; the plain network's too, in the same run, where that differs
        plain = model
        model, switched, _ = as_corrupt_runs(plain, device, opts)
        if switched:
            plain_ceiling = model_ceiling(plain, bs, device, amp=cuda, channels_last=cuda, images=ceiling_images)
        if args.compile:   # the uncompiled model too, in the same run: what compiling buys on the model alone
            from robustkit.compiling import CompiledEval

            eager_ceiling = model_ceiling(model, bs, device, amp=cuda, channels_last=cuda, images=ceiling_images)
            model = CompiledEval(model, note=lambda m: print(f"note: {m}", flush=True))
        ceiling = model_ceiling(model, bs, device, amp=cuda, channels_last=cuda, images=ceiling_images)
        del model
        fig = extrapolate(cold, warm, no_cells, args.images, ceiling)
        rate, image_cells = fig["steady_images_per_s"], len(cells) * args.images
        print(f"robustkit: folder decode ({args.decode}) + cache once {t_decode:.2f} s "
              f"({args.images / t_decode:,.0f} images/s); {rate:,.1f} images/s over the cells at steady state "
              f"({fig['mean_images_per_s']:,.1f} over the cold run); model alone {ceiling:,.1f} images/s (the "
              f"ceiling: steady cells at {rate / ceiling:.0%} of it)", flush=True)
        print("\none-off costs, measured: the cold run against the warm run, part by part (s)")
        parts = [*run_parts(cold, warm, cells), ("total", cold.total, warm.total)]
        print(table(["part", "cold run", "warm run", "cold - warm"],
                    [[what, f"{c:.2f}", f"{w:.2f}", f"{c - w:+.2f}"] for what, c, w in parts]))
        print(f"per-run work (the same job without cells): setup {no_cells.setup:.2f} s + model build, clean pass "
              f"and result files {no_cells.tail:.2f} s = {no_cells.total:.2f} s")
        print(f"one-off = per-run work {fig['per_run_s']:.2f} s + first time in the process {fig['first_time_s']:.2f} s "
              f"(cold - warm; 0 if negative: noise) = {fig['one_off_s']:.2f} s")
        print(f"steady state: the warm run's cells after its first: {len(cells) - 1} cells, "
              f"{sum(warm.cells[1:]):.2f} s, {rate:,.1f} images/s")
        off = fig["predicted_cold_run_s"] / cold.total - 1
        print(f"check: one-off {fig['one_off_s']:.2f} s + {image_cells:,} image-cells / {rate:,.1f} images/s = "
              f"{fig['predicted_cold_run_s']:.2f} s against the cold run's {cold.total:.2f} s measured ({off:+.1%}: "
              + (f"consistent, within {CHECK_TOLERANCE:.0%})" if abs(off) <= CHECK_TOLERANCE
                 else f"NOT consistent, more than {CHECK_TOLERANCE:.0%} apart)"))
        rows = [["robustkit corrupt, cold run (cells + one-off; folder cached)", f"{cold.total:.1f}",
                 f"{fig['mean_images_per_s']:,.1f}", f"{fig['mean_images_per_s'] / rate:.2f}x"],
                ["robustkit corrupt, steady state (warm run's cells after its first)", f"{sum(warm.cells[1:]):.1f}",
                 f"{rate:,.1f}", "1.00x"],
                [f"model alone ({'bf16, channels_last' if cuda else 'fp32'}{', compiled' if args.compile else ''}"
                 f"{', ' + switched if switched else ''}), ceiling", "-", f"{ceiling:,.1f}",
                 f"{ceiling / rate:.2f}x robustkit"]]
        if plain_ceiling is not None:
            rows.append([f"model alone ({'bf16, channels_last' if cuda else 'fp32'}), plain network (not {switched}"
                         f"{', not compiled' if args.compile else ''})", "-", f"{plain_ceiling:,.1f}",
                         f"{switched} {ceiling / plain_ceiling:.2f}x this"])
            fig["model_only_plain_images_per_s"] = plain_ceiling
        if eager_ceiling is not None:
            rows.append([f"model alone ({'bf16, channels_last' if cuda else 'fp32'}), not compiled", "-",
                         f"{eager_ceiling:,.1f}", f"compiled {ceiling / eager_ceiling:.2f}x this"])
            fig["model_only_uncompiled_images_per_s"] = eager_ceiling
        print(f"ImageNet-C extrapolated (50,000 x 19 x 5 = {fig['image_cells']:,} image-cells): one-off "
              f"{fig['one_off_s']:.1f} s + {fig['image_cells']:,} / {rate:,.0f} images/s (steady) = {fig['minutes']:,.1f} "
              f"min; at the cold run's mean rate (one-offs charged per image-cell: the old figure) "
              f"{fig['minutes_at_mean_rate']:,.1f} min; at the model-only ceiling {fig['minutes_at_model_only']:,.1f} min; "
              f"decoding the 50,000 images once ({args.decode}): {IMAGENET_C[0] / (args.images / t_decode) / 60:,.1f} min "
              "(cached afterwards)")
        why = not_judged(device, args.images, names)
        fig["judged"] = why is None
        details = {"extrapolation": fig}
        if why is None:
            if sevs != [1, 2, 3, 4, 5]:
                print(f"note: severities {sevs} stand for all five in the extrapolation")
            name = TARGET_NAME + (", --compile" if args.compile else "") + (", --storage released"
                                                                             if args.storage == "released" else "")
            targets = [target(name, fig["minutes"], GOAL_MIN, "min")]
        else:
            print(f"target ImageNet-C <= {GOAL_MIN:g} min: not judged (only {why})")
            targets = []
        # reported before the reference runs: a run stopped during the reference (a time limit) keeps its target
        report_targets(targets, args.json, details)
        if not args.no_reference:
            n_ref = min(args.ref_images or args.images, args.images)
            ref_model, _ = load_model(f"torchvision:{args.arch}", num_classes=n_classes, device=device,
                                      channels_last=False)
            raw = ref_model.model  # the reference normalises itself, like the scripts it stands for
            ref_cells = len(cells) * n_ref
            ref_bs = args.ref_batch_size or bs
            t_ref, t_steady, per = reference(raw, folder, names, sevs, device, args.workers, ref_bs, n_ref)
            if t_steady == t_steady:   # not NaN: there were batches after the first
                startup = max(0.0, 1 - t_steady / t_ref)
                ref_rate = ref_cells / t_steady
            else:                      # one batch in all: no steady state to measure
                startup, ref_rate = float("nan"), ref_cells / t_ref
            rows.insert(0, [f"DataLoader + imagecorruptions ({args.workers} workers, {n_ref} images, batch {ref_bs}), "
                            "steady state",
                            f"{t_ref:.1f}", f"{ref_rate:,.1f}", f"robustkit {rate / ref_rate:.2f}x"])
            print("reference per corruption, steady state (s): " + ", ".join(f"{k} {v:.1f}" for k, v in per.items()))
            if startup != startup:
                print("reference start-up: not measurable (one batch in all); the ratio includes it: give more "
                      "--ref-images than --ref-batch-size")
            else:
                print(f"reference start-up (workers, first batch): {startup:.1%} of its time "
                      + ("(< 5 %: steady state)" if startup < 0.05 else "(>= 5 %: NOT steady state; give more --ref-images)"))
            print(f"ratio at steady state: robustkit {rate / ref_rate:.2f}x the reference "
                  f"(both with their start-up: {fig['mean_images_per_s'] / (ref_cells / t_ref):.2f}x)")
            details["reference"] = {"images": n_ref, "batch_size": ref_bs, "workers": args.workers, "seconds": t_ref,
                                    "steady_images_per_s": ref_rate,
                                    "startup_share": None if startup != startup else startup,
                                    "ratio_at_steady_state": rate / ref_rate}
            if args.json:   # the target as reported above, now with the reference beside it
                write_json(args.json, {"targets": targets, **details})
    print()
    print(table(["side", "seconds", "images/s", "ratio"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
