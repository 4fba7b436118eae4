"""Where the time of a training step goes: the step's parts on the device, the loop's host work around them,
and the kinds of kernels inside.

bench_train.py says how fast ``fit`` trains; this script says why, so the next change aims at the right
thing. For one step runner (robustkit/step.py, ``--mode``) on random data it measures, in ms per step:

* ``data``: the step's batch as ``fit`` makes it (``batch_indices`` + ``augment`` on the device), synced;
* ``step``: the step runner's call (plan draw, input fills, the parts), synced;
* ``loop``: data + step back to back without syncing, as ``fit`` runs them (the real cost per step);
* ``host``: the CPU time of issuing one loop iteration: when it is close to ``loop``, the GPU waits for
  Python (launch-bound); when far below, the GPU is the bottleneck;
* each part alone (full pass, one masked sub-network per resolution, the update), replayed (graphs) or
  called (static), synced;
* the device time of one loop iteration by kernel kind (convolution, batch norm, elementwise, reduction,
  optimizer, copy, Triton fused, other), from torch.profiler (on the CPU: the aten operators' self time).

    python bench/profile_train.py --device cuda                          # WRN-28-2, batch 128, GradAug, graphs
    python bench/profile_train.py --device cuda --mode graphs-inductor --method baseline
    python bench/profile_train.py --device cpu --arch wrn-10-1 --batch-size 16 --steps 2   # a quick check
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import header, setup_device, sync, table, write_json  # noqa: E402

from robustkit.config import TrainConfig  # noqa: E402
from robustkit.data import augment, batch_indices  # noqa: E402
from robustkit.methods import METHODS, Batch  # noqa: E402
from robustkit.models import create_model  # noqa: E402
from robustkit.rng import generator  # noqa: E402
from robustkit.step import STATIC_MODES, choose_mode, make_step  # noqa: E402

KINDS = [  # (kind, pattern over CUDA kernel or aten operator names), first match wins
    ("triton fused", r"triton|^cpp_fused|inductor"),
    # (batch norm before convolution: cuDNN's batch-norm kernels, which the -fp16 modes run, are named cudnn::...)
    ("batch norm", r"batch_norm|batchnorm|bn_|bnfw|bnbw|welford"),
    ("convolution", r"conv|cudnn|implicit_gemm|xmma|sm\d+_|gemm|wgrad|dgrad|winograd|mkldnn"),
    ("optimizer", r"sgd|multi_tensor|foreach"),
    ("reduction", r"reduce|sum|mean|softmax|log_softmax|nll|cross_entropy|argmax"),
    ("copy", r"copy|memcpy|memset|fill|cat|index|gather|contiguous"),
    ("elementwise", r"elementwise|vectorized|unrolled|relu|clamp|threshold|mul|add|div|where|lt|upsample|interpolate"),
]


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, pattern in KINDS:
        if re.search(pattern, low):
            return kind
    return "other"


def _timed_ms(fn, device: torch.device, repeats: int) -> float:
    """Mean ms of ``fn()`` over ``repeats`` calls, the device synchronised before and after all of them."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / repeats * 1000


def build(args: argparse.Namespace, device: torch.device):
    """The model, the step runner and a batch maker, as ``fit`` builds them (random uint8 images)."""
    cuda = device.type == "cuda"
    torch.manual_seed(args.seed)
    model = create_model(args.arch, num_classes=10).to(device)
    memory_format = torch.channels_last if cuda else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    cfg = TrainConfig(method=args.method, subnets=args.subnets, batch_size=args.batch_size, resolutions=[32, 28, 24])
    autocast = functools.partial(torch.autocast, device.type, dtype=torch.bfloat16) if cuda else contextlib.nullcontext
    step = make_step(args.mode, model=model, net=model, optimizer=opt, cfg=cfg, spec=METHODS[args.method],
                     autocast=autocast, amp=cuda, memory_format=memory_format, num_classes=10,
                     note=lambda m: print(f"note: {m}", file=sys.stderr))
    g = torch.Generator().manual_seed(args.seed)
    pool = torch.randint(0, 256, (args.pool, 3, 32, 32), generator=g, dtype=torch.uint8).to(device)
    labels = torch.randint(0, 10, (args.pool,), generator=g).to(device)

    def batch(i: int) -> Batch:
        idx = batch_indices(args.pool, args.batch_size, args.seed, i, device)
        x = augment(pool[idx], generator(device, args.seed, "augment", i)).contiguous(memory_format=memory_format)
        return Batch(x, labels[idx], step=i, total_steps=10**6)

    def run(b: Batch) -> dict:
        return step(b, generator("cpu", args.seed, "train", b.step), 0.05)

    return step, batch, run


def part_times(step, batch, device: torch.device, repeats: int) -> dict[str, float]:
    """ms of each part of a static step alone (replayed when captured), on the state after the warm-up."""
    if not hasattr(step, "_run_parts"):
        return {}
    step._load(batch(0), generator("cpu", 0, "train", 0), 0.05)
    call = (lambda key, fn: step.graphs[key].replay) if step.captured else (lambda key, fn: fn)
    parts = {"full": call("full", step._full)}
    if step.subnets:   # (slot 0 stands for every slot: the same pass on its own buffers)
        step.masks[0].fill(0.9)
        for r in sorted(set(step.cfg.resolutions), reverse=True):
            parts[f"sub {r}px"] = call(("sub", 0, r), functools.partial(step._sub, 0, r))
    parts["update"] = call("update", step._update)
    return {name: _timed_ms(fn, device, repeats) for name, fn in parts.items()}


def kernel_kinds(loop_once, device: torch.device, steps: int) -> tuple[dict[str, float], list[tuple[str, float]]]:
    """Device time per loop iteration by kernel kind (ms), and the top kernels, from torch.profiler."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sync(device)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            loop_once()
        sync(device)
    by_kind: dict[str, float] = {}
    by_name: dict[str, float] = {}
    for e in prof.key_averages():
        if cuda:   # kernels (and memcpy/memset) run on the device; the aten operators that launched them do not
            if e.device_type != DeviceType.CUDA:
                continue
            us = e.self_device_time_total
        else:
            if not e.key.startswith("aten::"):
                continue
            us = e.self_cpu_time_total
        ms = us / 1000 / steps
        kind = kind_of(e.key)
        by_kind[kind] = by_kind.get(kind, 0.0) + ms
        by_name[e.key] = by_name.get(e.key, 0.0) + ms
    top = sorted(by_name.items(), key=lambda kv: -kv[1])
    return by_kind, top


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--arch", default="wrn-28-2")
    p.add_argument("--method", default="gradaug", choices=["baseline", "cutmix", "gradaug"])
    p.add_argument("--mode", default=None, help=f"step mode: eager, {', '.join(STATIC_MODES)} [training's default on CUDA (graphs-streams for gradaug, graphs otherwise), static on the CPU]")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--subnets", type=int, default=3)
    p.add_argument("--pool", type=int, default=5000, help="random training images held on the device")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--steps", type=int, default=100, help="timed steps per measurement")
    p.add_argument("--profile-steps", type=int, default=5)
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="write every figure here as JSON")
    args = p.parse_args(argv)
    device = setup_device(args.device, args.threads)
    if device is None:
        return 2
    if args.mode is None:
        args.mode = choose_mode(None, args.method, device, 1)[0] if device.type == "cuda" else "static"
    if args.mode != "eager" and args.mode not in STATIC_MODES:
        print(f"error: unknown --mode {args.mode} (eager, {', '.join(STATIC_MODES)})", file=sys.stderr)
        return 2
    if args.mode.startswith("graphs") and device.type != "cuda":
        print(f"error: --mode {args.mode} needs --device cuda (on the CPU: static or static-inductor)", file=sys.stderr)
        return 2
    header(f"Where a training step's time goes: {args.method}, {args.arch}, batch {args.batch_size}, step mode "
           f"{args.mode}", device)
    step, batch, run = build(args, device)

    t0 = time.perf_counter()
    for i in range(args.warmup):
        run(batch(i))
    sync(device)
    warm_s = time.perf_counter() - t0
    print(f"warm-up: {args.warmup} steps in {warm_s:.1f} s (capture/compilation included); mode now {step.mode}",
          file=sys.stderr)

    counter = iter(range(args.warmup, 10**9))
    ready = batch(0)
    data_ms = _timed_ms(lambda: batch(next(counter)), device, args.steps)
    step_ms = _timed_ms(lambda: run(ready), device, args.steps)
    loop_ms = _timed_ms(lambda: run(batch(next(counter))), device, args.steps)
    # host: issuing one iteration while the device is kept busy (the queue never runs dry for long)
    sync(device)
    host = []
    for _ in range(args.steps):
        t = time.perf_counter()
        run(batch(next(counter)))
        host.append(time.perf_counter() - t)
    sync(device)
    host_ms = sorted(host)[len(host) // 2] * 1000
    parts = part_times(step, batch, device, args.steps)
    kinds, top = kernel_kinds(lambda: run(batch(next(counter))), device, args.profile_steps)

    print()
    rows = [["data (indices + augment)", f"{data_ms:.3f}"], ["step call", f"{step_ms:.3f}"],
            ["loop (data + step, as fit runs)", f"{loop_ms:.3f}"], ["host time of one loop iteration (median)", f"{host_ms:.3f}"]]
    rows += [[f"part: {name}", f"{ms:.3f}"] for name, ms in parts.items()]
    print(table(["measure", "ms/step"], rows))
    if device.type == "cuda":
        bound = "host-bound (the GPU waits for Python)" if host_ms > 0.8 * loop_ms else "device-bound"
        print(f"the loop is {bound}: host {host_ms:.3f} ms vs loop {loop_ms:.3f} ms per step")
    total = sum(kinds.values()) or 1.0
    print()
    print(table(["kernel kind" if device.type == "cuda" else "operator kind (CPU self time)", "ms/step", "share"],
                [[k, f"{v:.3f}", f"{v / total:.0%}"] for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])]))
    print()
    print(table(["top kernels" if device.type == "cuda" else "top operators", "ms/step", "kind"],
                [[name[:90], f"{ms:.3f}", kind_of(name)] for name, ms in top[: args.top]]))
    result = {"device": str(device), "arch": args.arch, "method": args.method, "mode": step.mode,
              "batch_size": args.batch_size, "warmup_s": warm_s, "data_ms": data_ms, "step_ms": step_ms,
              "loop_ms": loop_ms, "host_ms": host_ms, "parts_ms": parts, "kinds_ms": kinds,
              "top": [{"name": n, "ms": ms, "kind": kind_of(n)} for n, ms in top[: args.top]]}
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
