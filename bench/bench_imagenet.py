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

    python bench/bench_imagenet.py                           # CPU: resnet18, 8 images, 4 corruptions, severity 3
    python bench/bench_imagenet.py --device cuda --arch resnet50 --images 2000 --corruptions all --severities 1..5
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
from common import header, setup_device, sync, table  # noqa: E402


def make_folder(root: Path, n: int, classes: int = 10) -> Path:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for i in range(n):
        d = root / "val" / f"n{i % classes:08d}"
        d.mkdir(parents=True, exist_ok=True)
        h, w = 300 + 7 * (i % 9), 330 + 11 * (i % 7)
        small = torch.rand(3, 12, 12, generator=g)
        img = torch.nn.functional.interpolate(small[None], size=(h, w), mode="bicubic", align_corners=False)[0]
        img = (img + 0.05 * torch.randn(img.shape, generator=g)).clamp(0, 1)
        Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(d / f"{i}.JPEG", quality=90)
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


def reference(model, folder: Path, names, severities, device, workers: int, batch: int) -> tuple[float, dict]:
    from torchvision.datasets import ImageFolder

    base = ImageFolder(str(folder / "val"))
    files, labels = [p for p, _ in base.samples], [c for _, c in base.samples]
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)
    per, total = {}, 0.0
    for name in names:
        t_name = 0.0
        for sev in severities:
            loader = torch.utils.data.DataLoader(_RefDataset(files, labels, name, sev), batch_size=batch,
                                                 num_workers=workers, pin_memory=device.type == "cuda")
            sync(device)
            t0 = time.perf_counter()
            with torch.no_grad():
                for x, y in loader:
                    x = x.to(device)
                    model((x - mean) / std).argmax(1)
            sync(device)
            t_name += time.perf_counter() - t0
        per[name] = t_name
        total += t_name
    return total, per


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
    p.add_argument("--no-reference", action="store_true")
    args = p.parse_args(argv)
    device = setup_device(args.device, args.threads)
    if device is None:
        return 2
    from robustkit.corruptions import parse_corruptions, parse_severities
    from robustkit.jobs import ModelOptions, run_corruptions
    from robustkit.sources.data import load_folder
    from robustkit.sources.models import load_model

    names, sevs = parse_corruptions(args.corruptions), parse_severities(args.severities)
    bs = args.batch_size or (64 if device.type == "cuda" else 8)
    header(f"ImageNet-sized corruptions: robustkit corrupt vs DataLoader + imagecorruptions ({args.arch}, "
           f"{args.images} images, {len(names)} corruptions x {len(sevs)} severities)", device)
    with tempfile.TemporaryDirectory() as tmp:
        import os

        os.environ["ROBUSTKIT_CACHE"] = str(Path(tmp) / "cache")
        n_classes = min(10, args.images)
        folder = make_folder(Path(tmp) / "imgs", args.images, n_classes)
        t0 = time.perf_counter()
        load_folder(folder, resize=256, crop=224)
        t_decode = time.perf_counter() - t0
        opts = ModelOptions(data=f"folder:{folder}", num_classes=n_classes)
        sync(device)
        t0 = time.perf_counter()
        run_corruptions([f"torchvision:{args.arch}"], names, sevs, device=str(device), batch_size=bs,
                        out=Path(tmp) / "ours", options=opts)
        sync(device)
        t_ours = time.perf_counter() - t0
        cells = len(names) * len(sevs) * args.images
        rows = [["robustkit corrupt (cells only; folder cached)", f"{t_ours:.1f}", f"{cells / t_ours:,.1f}", "1.00x"]]
        print(f"robustkit: folder decode + cache once {t_decode:.2f} s; {cells / t_ours:,.1f} images/s over the cells",
              flush=True)
        if not args.no_reference:
            model, _ = load_model(f"torchvision:{args.arch}", num_classes=n_classes, device=device, channels_last=False)
            raw = model.model  # the reference normalises itself, like the scripts it stands for
            t_ref, per = reference(raw, folder, names, sevs, device, args.workers, bs)
            rows.insert(0, ["DataLoader + imagecorruptions per image", f"{t_ref:.1f}", f"{cells / t_ref:,.1f}",
                            f"{t_ref / t_ours:.2f}x faster: robustkit"])
            print("reference per corruption (s): " + ", ".join(f"{k} {v:.1f}" for k, v in per.items()))
    print()
    print(table(["side", "seconds", "images/s", "ratio"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
