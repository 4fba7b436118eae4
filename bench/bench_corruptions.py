"""robustkit corruptions vs imagecorruptions: images per second, per corruption, same images, same run.

    python bench/bench_corruptions.py            # ~2-3 min on 2 CPU cores (+ CUDA when present)
    python bench/bench_corruptions.py --quick    # seconds: a smoke run of the same table

imagecorruptions works on one uint8 HWC numpy image at a time; robustkit on a float (N, 3, H, W)
batch on the images' device. Both are timed on the same synthetic images, averaged over the chosen
severities; robustkit is warmed up once per corruption and shape (caches such as the resized frost
textures are built then, as they would be once per evaluation). imagecorruptions 1.1.2 crashes on
today's numpy/scikit-image in glass_blur, gaussian_blur and fog; this script shims those two calls
(``multichannel=`` and ``np.float_``) for the reference only.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
import warnings
from datetime import date
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import report_targets, target  # noqa: E402

from robustkit.corruptions import corrupt, parse_corruptions, parse_severities  # noqa: E402

GOAL_224 = 50_000   # images/s of every corruption at 224 px on one H100 (CUDA only)
CPU_IMAGES = {32: 512, 224: 16}        # robustkit's batch per image size on the CPU (--our-images)
CUDA_IMAGES = {32: 10_000, 224: 256}   # and on CUDA (--cuda-images)


def size_map(text: str) -> dict[int, int]:
    """``"32:512,224:16"`` -> ``{32: 512, 224: 16}`` (image side -> count); a malformed text is an argparse error."""
    try:
        return {int(k): int(v) for k, v in (p.split(":") for p in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give SIZE:COUNT pairs, e.g. 32:512,224:16") from None


def size_map_text(counts: dict[int, int]) -> str:
    """The inverse of :func:`size_map`."""
    return ",".join(f"{k}:{v}" for k, v in counts.items())


def shimmed_imagecorruptions():
    """imagecorruptions with its two crashes on current numpy/scikit-image patched (bench only)."""
    warnings.filterwarnings("ignore")
    import skimage.filters

    import imagecorruptions
    import imagecorruptions.corruptions as icc

    plain = skimage.filters.gaussian

    def gaussian(image, sigma=1, multichannel=None, **kw):
        if multichannel:
            kw["channel_axis"] = -1
        return plain(image, sigma=sigma, **kw)

    icc.gaussian = gaussian
    if not hasattr(np, "float_"):
        np.float_ = np.float64
    return imagecorruptions


def synthetic_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth random colour patterns with a little noise, uint8 (n, 3, size, size)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    out = torch.zeros(n, 3, size, size)
    for _ in range(4):
        f = torch.rand(n, 3, 2, generator=g) * 6 + 0.5
        phase = torch.rand(n, 3, 1, 1, generator=g) * 6.28
        amp = torch.rand(n, 3, 1, 1, generator=g)
        out += amp * torch.sin(6.28 * (f[..., 0, None, None] * yy + f[..., 1, None, None] * xx) + phase)
    lo, hi = out.amin((1, 2, 3), keepdim=True), out.amax((1, 2, 3), keepdim=True)
    out = (out - lo) / (hi - lo) * 0.8 + 0.1 + 0.05 * torch.rand(n, 3, size, size, generator=g)
    return (out.clamp(0, 1) * 255).round().to(torch.uint8)


def time_reference(ic, images: torch.Tensor, name: str, severities: list[int]) -> float:
    """Seconds per image for imagecorruptions (one numpy image at a time)."""
    arrays = [im.permute(1, 2, 0).numpy().copy() for im in images]
    t0 = time.perf_counter()
    for s in severities:
        for a in arrays:
            ic.corrupt(a, severity=s, corruption_name=name)
    return (time.perf_counter() - t0) / (len(arrays) * len(severities))


CUDA_REPEATS = 5   # timed passes per corruption on CUDA (the median is reported); --cuda-repeats


def time_ours(images: torch.Tensor, name: str, severities: list[int], preset: str, repeats: int = 1) -> float:
    """Seconds per image for robustkit on one batch (CUDA events on CUDA, else perf_counter): the median of
    ``repeats`` timed passes over ``severities``, after one untimed call (kernels, caches). A pass of a
    launch-bound corruption lasts a few ms on CUDA, so a single pass reads any pause of the host (a garbage
    collection, another process) as the corruption's own time: fog at 224 px read 49,325 images/s once
    (2026-11-27, fifth H100 run) against 72,515 and 77,588 in the two runs before, the code unchanged."""
    x = images.float() / 255
    corrupt(x, name, severities[0], preset, seed=1)  # warm-up: kernels, caches
    cuda = x.device.type == "cuda"
    times = []
    for _ in range(max(1, repeats)):
        if cuda:
            torch.cuda.synchronize(x.device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        for i, s in enumerate(severities):
            corrupt(x, name, s, preset, seed=2 + i)
        if cuda:
            end.record()
            torch.cuda.synchronize(x.device)
            times.append(start.elapsed_time(end) / 1000)
        else:
            times.append(time.perf_counter() - t0)
    return statistics.median(times) / (x.shape[0] * len(severities))


ALWAYS_TIMED = ("torch ops", "taps in a loop")   # kernel variants timed in every CUDA run (the rest: --kernel-settings)


def kernel_variants(name: str) -> list[tuple[str, list[tuple[object, str, object]]]] | None:
    """The corruptions that run robustkit's own Triton kernels on CUDA, and what to time next to the default in
    the same run: the torch ops they replaced, and other launch settings (label, [(object, attribute, value)])."""
    from robustkit.corruptions import glass_triton, jpeg_triton, spatter_triton

    if name == "jpeg_compression":
        m = jpeg_triton
        settings = [(f"warps {a}+{b}", [(m, "MCU_WARPS", a), (m, "COLOUR_WARPS", b)])
                    for a, b in ((4, 4), (2, 4), (1, 2), (1, 8)) if (a, b) != (m.MCU_WARPS, m.COLOUR_WARPS)]
        return [("torch ops", [(m.KERNELS, "enabled", False)])] + settings
    if name == "spatter":
        m = spatter_triton
        settings = [(f"warps {a}, tile {b}x{c}", [(m, "WARPS", a), (m, "BLOCK_H", b), (m, "BLOCK_W", c)])
                    for a, b, c in ((4, 16, 32), (2, 8, 32), (8, 8, 32), (4, 4, 32), (4, 8, 64))
                    if (a, b, c) != (m.WARPS, m.BLOCK_H, m.BLOCK_W)]
        return [("torch ops", [(m.KERNELS, "enabled", False)]), ("taps in a loop", [(m, "UNROLL_TAPS", False)])] + settings
    if name == "glass_blur":
        m = glass_triton
        settings = [(f"warps {a}, block {b}", [(m, "WARPS", a), (m, "BLOCK", b)])
                    for a, b in ((1, 512), (2, 512), (8, 512), (4, 256), (4, 1024)) if (a, b) != (m.WARPS, m.BLOCK)]
        return [("torch ops", [(m.KERNELS, "enabled", False)])] + settings
    return None


def time_kernel_variants(images: torch.Tensor, name: str, sevs: list[int], t_ref: float, settings: bool,
                         repeats: int = 1) -> None:
    """For a corruption with Triton kernels on CUDA (robustkit/corruptions/*_triton.py): time, in the same run,
    the variants in :data:`ALWAYS_TIMED` (the torch ops they replaced; spatter's distance taps in a loop) and
    (``settings``) other launch settings, each compiled anew (seconds each); print one line each under the
    corruption's, with the variant's first call (its compile on a machine that never built it)."""
    from robustkit.corruptions import glass_triton, jpeg_triton, spatter_triton

    variants = kernel_variants(name)
    if variants is None:
        return
    module = {"jpeg_compression": jpeg_triton, "glass_blur": glass_triton, "spatter": spatter_triton}[name]
    if not images.is_cuda or not module.KERNELS.ready():
        print(f"  (the line above ran the torch ops: the Triton kernels {module.KERNELS.failed or 'are not usable here'})")
        return
    print("  (the line above: the Triton kernels as shipped; below, the same run; first call: with the variant's "
          "compile, or its load from Triton's cache)")
    for label, changes in [v for v in variants if settings or v[0] in ALWAYS_TIMED]:
        saved = [(obj, attr, getattr(obj, attr)) for obj, attr, _ in changes]
        try:
            for obj, attr, value in changes:
                setattr(obj, attr, value)
            first = time.perf_counter()
            corrupt(images.float() / 255, name, sevs[0], "imagenet-c", seed=1)
            torch.cuda.synchronize(images.device)
            first = time.perf_counter() - first
            t = time_ours(images, name, sevs, "imagenet-c", repeats)
        finally:
            for obj, attr, value in saved:
                setattr(obj, attr, value)
        print(f"  {label:16s} {'':>11s} {'':>10s} {'':>7s} {1 / t:11.0f} {t_ref / t:7.0f}x  first call {first:.2f} s",
              flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny counts: a smoke run in seconds")
    ap.add_argument("--corruptions", default="all", help="all, common, extra or a comma list")
    ap.add_argument("--severities", default="1..5")
    ap.add_argument("--sizes", default="32,224")
    ap.add_argument("--ref-images", type=size_map, default="32:64,224:3", help="imagecorruptions images per size")
    ap.add_argument("--our-images", type=size_map, default=size_map_text(CPU_IMAGES), help="robustkit batch per size (CPU)")
    ap.add_argument("--cuda-images", type=size_map, default=size_map_text(CUDA_IMAGES), help="robustkit batch per size (CUDA)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1, like the single-threaded reference; 0: torch's default)")
    ap.add_argument("--cuda-repeats", type=int, default=CUDA_REPEATS,
                    help=f"timed passes per corruption on CUDA, the median reported [{CUDA_REPEATS}]")
    ap.add_argument("--no-reference", action="store_true", help="skip imagecorruptions")
    ap.add_argument("--no-cpu", action="store_true",
                    help="skip robustkit on the CPU (a GPU check: gpu_check.sh's quick times only the CUDA column)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                    help="auto: add the CUDA column when a GPU is visible; cuda: require one")
    ap.add_argument("--kernel-settings", action="store_true",
                    help="CUDA: also time robustkit's Triton kernels (jpeg_compression, glass_blur, spatter) at other "
                         "warps / tile sizes (each compiles anew: ~1 min in all); the torch ops they replaced are "
                         "always timed next to them")
    ap.add_argument("--json", default=None, help="also write the targets (CUDA, 224 px: >= 50,000 images/s per "
                                                 "corruption) as JSON to this file")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    names = parse_corruptions(args.corruptions)
    sevs = parse_severities(args.severities)
    sizes = [int(s) for s in args.sizes.split(",")]
    ref_n, our_n, cuda_n = args.ref_images, args.our_images, args.cuda_images
    if args.quick:
        sevs = sevs[:1] if len(sevs) > 1 else sevs
        ref_n = {k: min(v, 4 if k <= 64 else 1) for k, v in ref_n.items()}
        our_n = {k: min(v, 32 if k <= 64 else 4) for k, v in our_n.items()}
        cuda_n = {k: min(v, 256 if k <= 64 else 16) for k, v in cuda_n.items()}
    ic = None if args.no_reference else shimmed_imagecorruptions()
    has_cuda = torch.cuda.is_available() and args.device != "cpu"
    if args.device == "cuda" and not has_cuda:
        raise SystemExit("error: --device cuda but no CUDA GPU is visible")

    print(f"# robustkit corruptions benchmark, {date.today().isoformat()}")
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads" + (f", {torch.cuda.get_device_name()}" if has_cuda else ""))
    print(f"# command: python {' '.join(sys.argv)}")
    print(f"# severities {sevs}; preset imagenet-c; images/s (higher is better); ratio = ours / imagecorruptions"
          + (f"; cuda: the median of {args.cuda_repeats} timed passes" if has_cuda else ""))
    targets: list[dict] = []
    for size in sizes:
        head = f"{'corruption':18s} {'imagecorr.':>11s} {'ours cpu':>10s} {'ratio':>7s}"
        head += f" {'ours cuda':>11s} {'ratio':>8s}" if has_cuda else ""
        print(f"\n## {size} px (reference n={ref_n.get(size, 4)}, ours cpu n={our_n.get(size, 32)}"
              + (f", cuda n={cuda_n.get(size, 256)}" if has_cuda else "") + ")")
        print(head)
        ref_imgs = synthetic_images(ref_n.get(size, 4), size, seed=size)
        cpu_imgs = synthetic_images(our_n.get(size, 32), size, seed=size)
        gpu_imgs = synthetic_images(cuda_n.get(size, 256), size, seed=size).cuda() if has_cuda else None
        tot_ref = tot_cpu = tot_gpu = 0.0
        for name in names:
            t_ref = time_reference(ic, ref_imgs, name, sevs) if ic else float("nan")
            t_cpu = float("nan") if args.no_cpu else time_ours(cpu_imgs, name, sevs, "imagenet-c")
            tot_ref, tot_cpu = tot_ref + t_ref, tot_cpu + t_cpu
            line = f"{name:18s} {1 / t_ref:11.1f} {1 / t_cpu:10.1f} {t_ref / t_cpu:6.1f}x"
            if has_cuda:
                t_gpu = time_ours(gpu_imgs, name, sevs, "imagenet-c", args.cuda_repeats)
                tot_gpu += t_gpu
                line += f" {1 / t_gpu:11.0f} {t_ref / t_gpu:7.0f}x"
                if size == 224:
                    targets.append(target(f"corruption {name} at 224 px on CUDA", 1 / t_gpu, GOAL_224, "images/s",
                                          lower_is_better=False))
            print(line, flush=True)
            if has_cuda:
                time_kernel_variants(gpu_imgs, name, sevs, t_ref, args.kernel_settings, args.cuda_repeats)
        line = f"{'all (per image)':18s} {1 / tot_ref:11.2f} {1 / tot_cpu:10.2f} {tot_ref / tot_cpu:6.1f}x"
        if has_cuda:
            line += f" {1 / tot_gpu:11.1f} {tot_ref / tot_gpu:7.0f}x"
        print(line)
        print(f"# one pass of all {len(names)} corruptions: imagecorruptions {tot_ref * 1000:.1f} ms/image, "
              f"ours cpu {tot_cpu * 1000:.2f} ms/image" + (f", cuda {tot_gpu * 1e6:.1f} us/image" if has_cuda else ""))
    print()
    if not has_cuda:
        print(f"# targets (>= {GOAL_224:,} images/s per corruption at 224 px) are judged on CUDA only")
    elif 224 not in sizes:
        print("# targets are judged at 224 px: add 224 to --sizes")
    report_targets(targets, args.json)


if __name__ == "__main__":
    main()
