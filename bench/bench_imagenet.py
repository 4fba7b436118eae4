"""ImageNet-sized corruption evaluation: robustkit ``corrupt`` end to end vs the usual way, same run.

Both sides evaluate the same ResNet (torchvision, random weights: speed does not depend on them) on the
same 224 px images (a folder of JPEGs of mixed sizes made here, ImageNet-style: Resize(256) +
CenterCrop(224)), for the same corruptions and severities:

* robustkit: ``robustkit.jobs.run_corruptions`` - the folder decoded once into the memory-mapped cache
  (timed separately: it is paid once per dataset, not per cell), each batch corrupted in torch on the
  device, bf16 + channels_last on CUDA;
* reference: what papers' scripts do - a torch DataLoader (``--workers`` processes) whose dataset opens
  each JPEG with PIL, resizes and crops it, applies ``imagecorruptions.corrupt`` per image (numpy, CPU),
  then the model in fp32 - once per (corruption, severity).

Images/s count evaluated images (one image x one cell = one). The imagecorruptions reference needs the
three shims bench_corruptions.py explains (current numpy / scikit-image), applied in the workers.

Printed next to each other, same run:

* robustkit's images/s over the cells (model build and the clean pass included) and the **model-only
  ceiling**: the same model, batch size, dtype and layout on device-resident images, forward only: what the
  cells would reach if corruptions and data cost nothing;
* the reference at **steady state**: its start-up (DataLoader workers spawned per cell, first batch) is
  measured and taken out, the ratio is robustkit / the reference's steady rate, and the share of start-up in
  the reference's time is printed (below 5 % the run was long enough; otherwise give more ``--ref-images``);
* **ImageNet-C extrapolated**: 50,000 images x 19 corruptions x 5 severities at robustkit's measured rate,
  in minutes; the decode of the 50,000 images is once per dataset (cached) and printed apart. Target
  (CUDA only, from a run of >= 5,000 images over all 19 corruptions): <= 8 minutes, MET / NOT MET
  (``--json PATH`` writes it for bench/gpu_check.sh).

    python bench/bench_imagenet.py                           # CPU: resnet18, 8 images, 4 corruptions, severity 3
    python bench/bench_imagenet.py --device cuda --arch resnet50 --images 5000 --corruptions all --severities 3 \
        --batch-size 256 --ref-images 1024 --workers 14 --json imagenet.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_corruptions import shimmed_imagecorruptions  # noqa: E402
from common import header, report_targets, setup_device, sync, table, target  # noqa: E402


def make_folder(root: Path, n: int, classes: int = 10) -> Path:
    """``n`` smooth random JPEGs of mixed sizes around 300 x 330 (ImageNet-like), written on all cores."""
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
    with torch.inference_mode(), ThreadPoolExecutor(max(1, min(16, __import__("os").cpu_count() or 1))) as pool:
        list(pool.map(one, range(n)))
    return root


class _RefDataset(torch.utils.data.Dataset):
    """PIL open -> Resize(256) -> CenterCrop(224) -> imagecorruptions.corrupt -> tensor (per image)."""

    def __init__(self, files, labels, name, severity):
        self.files, self.labels, self.name, self.severity = files, labels, name, severity
        self.ic = None

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image
        from torchvision import transforms as T

        if self.ic is None:
            self.ic = shimmed_imagecorruptions()
        img = T.CenterCrop(224)(T.Resize(256)(Image.open(self.files[i]).convert("RGB")))
        out = self.ic.corrupt(np.asarray(img), corruption_name=self.name, severity=self.severity)
        x = torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1).float() / 255
        return x, self.labels[i]


def reference(model, folder: Path, names, severities, device, workers: int, batch: int,
              n_images: int) -> tuple[float, float, dict]:
    """(total seconds, steady-state seconds, seconds per corruption) of the reference on the first
    ``n_images`` files. Steady state: per cell, the time from the first batch's arrival to the end, over the
    images after the first batch; start-up (workers spawned, first batch) is the rest."""
    from torchvision.datasets import ImageFolder

    base = ImageFolder(str(folder / "val"))
    files, labels = [p for p, _ in base.samples][:n_images], [c for _, c in base.samples][:n_images]
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)
    per, total, steady_t, steady_n = {}, 0.0, 0.0, 0
    for name in names:
        t_name = 0.0
        for sev in severities:
            loader = torch.utils.data.DataLoader(_RefDataset(files, labels, name, sev), batch_size=batch,
                                                 num_workers=workers, pin_memory=device.type == "cuda")
            sync(device)
            t0 = time.perf_counter()
            t_first, seen = None, 0
            with torch.no_grad():
                for x, _ in loader:
                    x = x.to(device)
                    model((x - mean) / std).argmax(1)
                    if t_first is None:
                        sync(device)
                        t_first, first_n = time.perf_counter(), len(x)
                    seen += len(x)
            sync(device)
            t_end = time.perf_counter()
            t_name += t_end - t0
            steady_t += t_end - t_first
            steady_n += seen - first_n
        per[name] = t_name
        total += t_name
    cells = len(names) * len(severities) * len(files)
    steady = cells / (steady_n / steady_t) if steady_n and steady_t > 0 else float("nan")   # all cells at that rate
    return total, steady, per


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
GOAL_MIN = 8.0                 # ImageNet-C on one H100, minutes (cells; decode once apart)
MIN_IMAGES = 5000              # the extrapolation is judged only from a run at least this long


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
    p.add_argument("--no-reference", action="store_true")
    p.add_argument("--ref-images", type=int, default=None,
                   help="images the reference evaluates [all]; enough that its start-up is < 5%% of its time")
    p.add_argument("--json", default=None, help="also write the targets as JSON to this file")
    args = p.parse_args(argv)
    device = setup_device(args.device, args.threads)
    if device is None:
        return 2
    from robustkit.corruptions import CORRUPTIONS, parse_corruptions, parse_severities
    from robustkit.errors import RobustkitError
    from robustkit.jobs import ModelOptions, run_corruptions
    from robustkit.sources.data import load_folder
    from robustkit.sources.models import load_model

    names, sevs = parse_corruptions(args.corruptions), parse_severities(args.severities)
    bs = args.batch_size or (64 if device.type == "cuda" else 8)
    cuda = device.type == "cuda"
    header(f"ImageNet-sized corruptions: robustkit corrupt vs DataLoader + imagecorruptions ({args.arch}, "
           f"{args.images} images, {len(names)} corruptions x {len(sevs)} severities, batch {bs})", device)
    with tempfile.TemporaryDirectory() as tmp:
        import os

        os.environ["ROBUSTKIT_CACHE"] = str(Path(tmp) / "cache")
        n_classes = min(10, args.images)
        t0 = time.perf_counter()
        folder = make_folder(Path(tmp) / "imgs", args.images, n_classes)
        print(f"made {args.images} JPEGs in {time.perf_counter() - t0:.1f} s", flush=True)
        t0 = time.perf_counter()
        try:
            load_folder(folder, resize=256, crop=224, decode=args.decode, device=device)
        except RobustkitError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        t_decode = time.perf_counter() - t0
        opts = ModelOptions(data=f"folder:{folder}", num_classes=n_classes, decode=args.decode)
        sync(device)
        t0 = time.perf_counter()
        run_corruptions([f"torchvision:{args.arch}"], names, sevs, device=str(device), batch_size=bs,
                        out=Path(tmp) / "ours", options=opts)
        sync(device)
        t_ours = time.perf_counter() - t0
        cells = len(names) * len(sevs) * args.images
        rate = cells / t_ours
        model, _ = load_model(f"torchvision:{args.arch}", num_classes=n_classes, device=device)
        ceiling = model_ceiling(model, bs, device, amp=cuda, channels_last=cuda, images=max(args.images, 10 * bs))
        del model
        print(f"robustkit: folder decode ({args.decode}) + cache once {t_decode:.2f} s "
              f"({args.images / t_decode:,.0f} images/s); {rate:,.1f} images/s over the cells; model alone "
              f"{ceiling:,.1f} images/s (the ceiling: cells at {rate / ceiling:.0%} of it)", flush=True)
        rows = [["robustkit corrupt (cells; folder cached)", f"{t_ours:.1f}", f"{rate:,.1f}", "1.00x"],
                [f"model alone ({'bf16, channels_last' if cuda else 'fp32'}), ceiling", "-", f"{ceiling:,.1f}",
                 f"{ceiling / rate:.2f}x robustkit"]]
        if not args.no_reference:
            n_ref = min(args.ref_images or args.images, args.images)
            ref_model, _ = load_model(f"torchvision:{args.arch}", num_classes=n_classes, device=device,
                                      channels_last=False)
            raw = ref_model.model  # the reference normalises itself, like the scripts it stands for
            ref_cells = len(names) * len(sevs) * n_ref
            t_ref, t_steady, per = reference(raw, folder, names, sevs, device, args.workers, bs, n_ref)
            if t_steady == t_steady:   # not NaN: there were batches after the first
                startup = max(0.0, 1 - t_steady / t_ref)
                ref_rate = ref_cells / t_steady
            else:                      # one batch per cell: no steady state to measure
                startup, ref_rate = float("nan"), ref_cells / t_ref
            rows.insert(0, [f"DataLoader + imagecorruptions ({args.workers} workers, {n_ref} images), steady state",
                            f"{t_ref:.1f}", f"{ref_rate:,.1f}", f"robustkit {rate / ref_rate:.2f}x"])
            print("reference per corruption (s): " + ", ".join(f"{k} {v:.1f}" for k, v in per.items()))
            if startup != startup:
                print("reference start-up: not measurable (one batch per cell); the ratio includes it: give more "
                      "--ref-images than --batch-size")
            else:
                print(f"reference start-up (workers, first batch per cell): {startup:.1%} of its time "
                      + ("(< 5 %: steady state)" if startup < 0.05 else "(>= 5 %: NOT steady state; give more --ref-images)"))
            print(f"ratio at steady state: robustkit {rate / ref_rate:.2f}x the reference "
                  f"(with its start-up: {rate / (ref_cells / t_ref):.2f}x)")
    print()
    print(table(["side", "seconds", "images/s", "ratio"], rows))
    total = IMAGENET_C[0] * IMAGENET_C[1] * IMAGENET_C[2]
    minutes = total / rate / 60
    print(f"ImageNet-C extrapolated (50,000 x 19 x 5 = {total:,} image-cells at {rate:,.0f} images/s): "
          f"{minutes:,.1f} min; at the model-only ceiling {total / ceiling / 60:,.1f} min; decoding the 50,000 "
          f"images once ({args.decode}): {IMAGENET_C[0] / (args.images / t_decode) / 60:,.1f} min (cached afterwards)")
    judged = cuda and args.images >= MIN_IMAGES and set(names) == set(CORRUPTIONS)
    if judged:
        if sevs != [1, 2, 3, 4, 5]:
            print(f"note: severities {sevs} stand for all five in the extrapolation")
        report_targets([target("ImageNet-C 50,000 x 19 x 5, extrapolated (cells)", minutes, GOAL_MIN, "min")],
                       args.json)
    else:
        why = "on CUDA" if not cuda else f"from >= {MIN_IMAGES:,} images over all 19 corruptions"
        print(f"target ImageNet-C <= {GOAL_MIN:g} min: not judged (only {why})")
        report_targets([], args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
