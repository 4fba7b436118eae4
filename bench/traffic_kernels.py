"""Memory traffic of the corruptions that run robustkit's Triton kernels on CUDA, predicted on a machine without a
GPU: the torch ops as dispatched (bench/profile_corruptions.py's counter) plus the bytes each kernel launch counts,
with the kernels run in Triton's interpreter on the CPU where CUDA would launch them; next to it, the same
corruption with the kernels switched off (the torch ops they replace). Bytes are what any device has to move; the
images/s columns divide the H100's peak and a typical reached bandwidth by them (ceilings, not measurements).

    python bench/traffic_kernels.py [--images 2] [--size 224] [--severity 3] [--json FILE]   # ~2 min, CPU
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"   # before Triton defines the kernels

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from profile_corruptions import H100_GBPS, dispatched_ops  # noqa: E402

from robustkit.corruptions import _triton, corrupt, glass_triton, jpeg_triton, spatter_triton  # noqa: E402

NAMES = ("jpeg_compression", "glass_blur", "spatter")
REACHED_GBPS = 1500.0   # what jpeg, glass and spatter's torch ops reached on the H100 (bench/RESULTS.md)


def _instrument() -> None:
    """Run the kernels on CPU tensors (the interpreter; their launches count their own bytes: _triton.bytes_moved),
    and keep the interpreter's own tensor copies out of the dispatch counter."""
    from torch.utils._python_dispatch import _disable_current_modes

    def quiet(module, name):
        launch = getattr(module, name)

        def run(*args, **kwargs):
            with _disable_current_modes():
                return launch(*args, **kwargs)

        setattr(module, name, run)

    quiet(jpeg_triton, "roundtrip")
    quiet(glass_triton, "shuffle")
    for name in ("canny", "distance", "water_mask", "blend"):
        quiet(spatter_triton, name)
    _triton.on_gpu = lambda t: True   # as on CUDA: the kernels' gate opened to CPU tensors
    spatter_triton.BLOCK_H, spatter_triton.BLOCK_W = 64, 128   # fewer programs to interpret; the same bytes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--severity", type=int, default=3)
    ap.add_argument("--preset", default="imagenet-c")
    ap.add_argument("--corruptions", default=",".join(NAMES))
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    _instrument()
    x = torch.rand(args.images, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    rows = []
    print(f"# {args.size} px, severity {args.severity}, preset {args.preset}, {args.images} images; MB per image")
    print(f"{'corruption':18s} {'torch ops':>10s} {'kernels':>8s} {'total':>7s} {'before':>7s} "
          f"{'peak ceiling/s':>15s} {f'at {REACHED_GBPS:,.0f} GB/s':>16s}")
    for name in args.corruptions.split(","):
        kernels = {"jpeg_compression": jpeg_triton, "glass_blur": glass_triton, "spatter": spatter_triton}[name]
        t0 = time.time()
        kernels_before = _triton.bytes_moved()
        _, _, ops = dispatched_ops(lambda: corrupt(x, name, args.severity, args.preset, seed=1), x.device)
        with_kernels = (ops, _triton.bytes_moved() - kernels_before)
        kernels.KERNELS.enabled = False
        try:
            _, _, before = dispatched_ops(lambda: corrupt(x, name, args.severity, args.preset, seed=1), x.device)
        finally:
            kernels.KERNELS.enabled = True
        n = args.images
        mb = [v / n / 1e6 for v in (*with_kernels, sum(with_kernels), before)]
        row = dict(name=name, torch_ops_mb=mb[0], kernels_mb=mb[1], total_mb=mb[2], before_mb=mb[3],
                   peak_ceiling_images_per_s=H100_GBPS * 1e3 / mb[2], at_reached_images_per_s=REACHED_GBPS * 1e3 / mb[2],
                   seconds=time.time() - t0)
        rows.append(row)
        print(f"{name:18s} {mb[0]:10.2f} {mb[1]:8.2f} {mb[2]:7.2f} {mb[3]:7.2f} {row['peak_ceiling_images_per_s']:15,.0f} "
              f"{row['at_reached_images_per_s']:16,.0f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(size=args.size, severity=args.severity, preset=args.preset,
                                                   images=args.images, torch=torch.__version__, rows=rows), indent=1))
        print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
