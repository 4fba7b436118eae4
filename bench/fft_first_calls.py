"""What the FFT corruptions' first call at a new batch size costs (cuFFT plans), in a fresh process.

defocus_blur, motion_blur and snow convolve through torch.fft, and on CUDA cuFFT makes a plan, with its work area,
for each batch size; torch keeps the plans in its cache. The corruptions' warm-up (robustkit.corruptions.warm_up)
runs every cell on 2 images ahead of the grid; this shows what the grid's own batch still paid for when only that
was warmed, and what warming the grid's batch sizes (its BATCH_SIZED corruptions) leaves. For each corruption and
severity, in this order: a call on 2 images (the warm-up's), the first call on the grid's batch, the second one
(wall ms, the device synchronised around each call).

    python bench/fft_first_calls.py --device cuda [--batch 5000] [--size 32] [--json PATH]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from bench.common import header, setup_device, table, timed, write_json  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from robustkit.corruptions import corrupt
    from robustkit.corruptions.warm_up import BATCH_SIZED

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda or cpu [cuda]")
    p.add_argument("--batch", type=int, default=5000, help="the grid's batch [5000: corrupt's default at 32 px]")
    p.add_argument("--size", type=int, default=32, help="image size in pixels [32]")
    p.add_argument("--severities", default="1,3,5", help="comma-separated [1,3,5]")
    p.add_argument("--json", default=None, help="write the figures here")
    args = p.parse_args(argv)
    if args.batch < 2:
        print("error: --batch must be >= 2", file=sys.stderr)
        return 2
    device = setup_device(args.device, None)
    if device is None:
        return 2
    header("FFT corruptions: first call on 2 images, then the first and second call on the grid's batch", device)
    preset = "cifar-10-c" if args.size <= 64 else "imagenet-c"
    images = torch.rand(args.batch, 3, args.size, args.size, device=device,
                        generator=torch.Generator(device).manual_seed(0))
    rows, out = [], []
    for name in sorted(BATCH_SIZED):
        for sev in [int(s) for s in args.severities.split(",")]:
            ms = [1e3 * timed(lambda n=n: corrupt(images[:n], name, sev, preset=preset, seed=0), device)[0]
                  for n in (2, args.batch, args.batch)]
            rows.append([f"{name} s{sev}", f"{ms[0]:.1f}", f"{ms[1]:.1f}", f"{ms[2]:.1f}", f"{ms[1] - ms[2]:+.1f}"])
            out.append({"corruption": name, "severity": sev, "two_ms": ms[0], "first_ms": ms[1], "second_ms": ms[2]})
    print(table(["cell", "2 images (ms)", f"{args.batch}: first (ms)", "second (ms)", "first - second"], rows))
    extra = sum(r["first_ms"] - r["second_ms"] for r in out)
    print(f"the grid's batch, first calls over second ones: {extra:+.1f} ms in all, after a call on 2 images each")
    if args.json:
        write_json(args.json, {"device": str(device), "batch": args.batch, "size": args.size, "cells": out,
                               "first_minus_second_ms": extra})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
