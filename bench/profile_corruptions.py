"""What holds each slow corruption back on a GPU, and where the time of an ImageNet-C cell goes.

Per corruption: images/s, ms per batch, kernel launches, host-device syncs, float64 ops, the top ops by
device time (CPU: self time), and host dispatch vs device compute: launch-bound or bandwidth/compute-bound.
--eval-cell splits robustkit's cell step (corruption_accuracies) into corruption, uint8->float/layout/
normalise, network and the rest, and times each corruption's one-off first call. --json writes it all.

    python bench/profile_corruptions.py --device cpu --size 64 --batch-size 8       # seconds
    python bench/profile_corruptions.py --device cuda --eval-cell --json profile.json

How each figure is counted:

* timing: the same batch (synthetic images, as bench_corruptions.py makes them) corrupted ``--batches``
  times with a new seed each time, after one warm-up call; CUDA events give the elapsed time, the host's
  own clock the time the host took to issue the batches (it only waits inside syncs);
* launches: on CUDA the device kernels of the profiled batch (copies and memsets counted apart); on the
  CPU the aten ops as dispatched (under a TorchDispatchMode, one batch), views and bare allocations left
  out: each launches about one kernel on CUDA (``dispatched_ops``, recorded on CUDA too);
* syncs: on CUDA the warnings of ``torch.cuda.set_sync_debug_mode("warn")`` over one batch (every op that
  makes the host wait: ``.item()``, ``bool(tensor)``, ``torch.equal``, copies from pageable host memory);
  the profiler's cudaStreamSynchronize / cudaDeviceSynchronize / cudaEventSynchronize / cudaMemcpy calls
  are counted too, and their summed duration is the host's wait. On the CPU nothing syncs: the count is
  of the aten ops that would read a value back on CUDA (``_local_scalar_dense``, ``equal``, ``nonzero``);
  copies of small CPU tables to the device are not seen there;
* compute vs dispatch: on CUDA, compute = the time the device is busy (union of kernels, copies and
  memsets of the profiled batch), dispatch = the host's time per batch minus its waits in syncs. "device"
  bound when the device is busy >= 80 % of the elapsed time; otherwise "launch" bound when dispatch >=
  compute (the host issues work slower than the device runs it), else "sync" bound (round trips leave the
  device idle). On the CPU, compute = the time inside top-level aten ops, dispatch = the rest (Python);
* float64 ops: those dispatched ops with a float64 tensor on the images' device among their inputs or
  outputs, by name (on the CPU this includes small tables that CUDA runs build on the host, then copy);
* memory traffic: per dispatched op, the bytes of every tensor argument (read once) and result (written
  once), a broadcast dimension counted once, ``out=`` tensors and the targets of ``copy_``/``fill_``/random
  draws only written, the source of a gather only as much as it gathers (:func:`op_traffic`); divided by
  the images, and by the H100's peak bandwidth (3.35 TB/s) for the rate no chain of unfused kernels can
  beat. It is what a device has to move, whatever it is, so it is measured on the CPU as well: a bandwidth-
  bound corruption gets faster only by moving fewer bytes;
* top ops: aten ops by the device time of the kernels they launch themselves (CPU: by self time), with
  their share of the device's busy time (CPU: of the batch); ``other`` is the rest, so shares sum to 1.

The eval cell (``--eval-cell``) runs what robustkit's ImageNet-C evaluation runs, on device-resident uint8
images (as ``robustkit corrupt`` keeps a set that fits): the model from ``load_model("torchvision:ARCH")``
(random weights, eval, channels_last and bf16 autocast on CUDA, as robustkit.jobs sets them), and per batch
(a) ``corrupt`` on the float batch, (b) ``as_float`` + ``_layout`` + the model wrapper's normalisation,
(c) the network on the normalised batch with the argmax count, (d) ``corruption_accuracies`` itself over
all the images, per batch; other = d - (a + b + c) (batch slicing, seeds, gaps between the parts). The
first call of each corruption in the process is timed apart: it pays one-off costs (cached tables, FFT
plans, kernels loaded on first use), and bench_imagenet.py's timed cells include them. ``--network-variants``
times the network step (c) again, from the plain network (the cell runs it as ``robustkit corrupt`` does on the
device: on CUDA folded and fused since 2026-11-27): as it is (``plain``), with batch norms folded into the
convolutions before them (``folded``),
folded and then each convolution + bias (+ residual) + ReLU run as one cuDNN call (``fused``, as ``corrupt
--fuse-conv``), cudnn.benchmark on (``tuned``), replayed from a CUDA graph (``graphs``), compiled by TorchInductor
(``compiled``), or combinations (``folded+tuned+graphs``): what each would save a whole
19 x 5 grid, its one-off cost, and whether it predicts what the default step does.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
import warnings
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch
from torch.autograd import DeviceType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_corruptions import CPU_IMAGES, CUDA_IMAGES, synthetic_images  # noqa: E402
from common import (as_corrupt_runs, header, load_average, machine, setup_device, sync, table, timed,  # noqa: E402
                    write_json)

SLOW = "glass_blur,jpeg_compression,zoom_blur,spatter,motion_blur,snow"
BATCH_LABEL = "robustkit profiled batch"
SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")
READBACK_OPS = ("aten::_local_scalar_dense", "aten::equal", "aten::nonzero")
DEVICE_BOUND = 0.8   # device busy at least this share of the elapsed time: "device" bound


# --------------------------------------------------------------------------------------------------
# Timing


def time_calls(step: Callable[[int], object], calls: int, device: torch.device) -> tuple[float, float]:
    """(elapsed seconds, host seconds) per call of ``step(i)`` for i in 0..calls-1, run back to back.

    Elapsed: CUDA events around the calls on CUDA (the device drained before), the host clock elsewhere.
    Host: the time until the host has issued the last call (it waits for the device only inside syncs).
    """
    sync(device)
    cuda = device.type == "cuda"
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
    t0 = time.perf_counter()
    for i in range(calls):
        step(i)
    host = time.perf_counter() - t0
    if not cuda:
        return host / calls, host / calls
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1000 / calls, host / calls


# Ops that overwrite their first argument without reading it (its old bytes are not traffic).
WRITE_ONLY = {"copy_", "fill_", "zero_", "uniform_", "normal_", "random_", "bernoulli_", "exponential_",
              "geometric_", "cauchy_", "log_normal_"}
# Ops that read only as many elements of their source (the first argument) as they write.
GATHERING = {"gather", "index_select", "index", "take", "_unsafe_index"}
# Ops that return a view of their argument's data though the dispatcher does not mark them as views.
NO_TRAFFIC = {"_unsafe_view", "lift_fresh", "alias"}
H100_GBPS = 3350.0   # NVIDIA H100 SXM5 80GB HBM3, peak (the data sheet's 3.35 TB/s)


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a kernel has to touch to read or write all of ``t``: its elements, a broadcast dimension (stride 0,
    as ``expand`` makes) counted once; sliced views count their own elements, not their storage's."""
    return math.prod(n for n, st in zip(t.shape, t.stride()) if st != 0) * t.element_size()


def op_traffic(name: str, args: tuple, kwargs: dict, out) -> int:
    """Bytes one aten op reads and writes in the memory-traffic model: every tensor argument read once
    (``out=`` and the first argument of :data:`WRITE_ONLY` ops only written; the source of
    :data:`GATHERING` ops read as much as they write), every tensor result written once. A lower bound
    for a kernel that reads its inputs once (a matrix product re-reads tiles from cache, not memory)."""
    from torch.utils._pytree import tree_flatten

    if name in NO_TRAFFIC:
        return 0
    written = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
    write = sum(tensor_bytes(t) for t in written)
    positional = list(args)
    if name in WRITE_ONLY and positional:
        positional = positional[1:]
    elif name in GATHERING and positional and isinstance(positional[0], torch.Tensor):
        positional = positional[1:]
        write *= 2   # the source elements read, as many as the output holds (same dtype)
    reads = [t for t in tree_flatten((positional, {k: v for k, v in kwargs.items() if k != "out"}))[0]
             if isinstance(t, torch.Tensor)]
    return write + sum(tensor_bytes(t) for t in reads)


def dispatched_ops(step: Callable[[], object], device: torch.device) -> tuple[int, dict[str, int], int]:
    """(aten ops one call of ``step`` dispatches, views and bare allocations left out; those of them that read
    or write a float64 tensor on ``device``, counted by name; the bytes they move, by :func:`op_traffic`)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    total = traffic = 0
    float64: dict[str, int] = {}

    class CountOps(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            nonlocal total, traffic
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            base = func.__name__.split(".")[0]
            name = f"aten::{base}"
            if func.is_view or name.startswith("aten::empty"):
                return out
            total += 1
            traffic += op_traffic(base, args, kwargs, out)
            if any(isinstance(t, torch.Tensor) and t.dtype == torch.float64 and t.device.type == device.type
                   for t in tree_flatten((args, kwargs, out))[0]):
                float64[name] = float64.get(name, 0) + 1
            return out

    with CountOps():
        step()
    return total, dict(sorted(float64.items(), key=lambda kv: -kv[1])), traffic


def count_syncs(step: Callable[[], object]) -> int:
    """Synchronising CUDA operations in one call of ``step``, as torch's sync debug mode reports them."""
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    return sum("synchroniz" in str(w.message) for w in caught)


# --------------------------------------------------------------------------------------------------
# One profiled batch


def profile_events(step: Callable[[], object], device: torch.device):
    """torch.profiler events (CPU, and CUDA on CUDA) of one call of ``step`` inside :data:`BATCH_LABEL`."""
    from torch.profiler import ProfilerActivity, profile, record_function

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    with profile(activities=activities, record_shapes=True) as prof:
        with record_function(BATCH_LABEL):
            step()
        sync(device)
    return prof.events()


def _top_level(event) -> bool:
    """Whether an aten op was called from outside every other aten op."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return False
        parent = parent.cpu_parent
    return True


def _busy_us(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of (start, end) intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def summarize_profile(events, device: torch.device, top: int) -> dict:
    """Counts and times of one profiled batch (see the module docstring): launches, syncs, top ops with
    shares, and ``busy_ms`` (device busy on CUDA; time inside top-level aten ops on the CPU)
    with ``batch_ms`` (the host's time for the batch under the profiler)."""
    label = next(e for e in events if e.name == BATCH_LABEL and e.device_type == DeviceType.CPU)
    aten = [e for e in events if e.device_type == DeviceType.CPU and e.name.startswith("aten::")]
    top_level = [e for e in aten if _top_level(e)]
    cuda = device.type == "cuda"
    out: dict = {"aten_ops_top": len(top_level), "aten_ops_all": len(aten), "batch_ms": label.cpu_time_total / 1000}
    by_name: dict[str, list[float]] = {}
    if cuda:
        on_device = [e for e in events if e.device_type == DeviceType.CUDA and e.name != BATCH_LABEL
                     and not getattr(e, "is_user_annotation", False)]
        kernels = [e for e in on_device if not e.name.startswith(("Memcpy", "Memset"))]
        copies: dict[str, int] = {}
        for e in on_device:
            if e.name.startswith("Memcpy"):
                kind = e.name.split()[1] if len(e.name.split()) > 1 else "?"
                copies[kind] = copies.get(kind, 0) + 1
        window = (label.time_range.start, label.time_range.end)
        syncs = [e for e in events if e.device_type == DeviceType.CPU and re.sub(r"_v\d+$", "", e.name) in SYNC_CALLS
                 and window[0] <= e.time_range.start <= window[1]]
        busy = _busy_us([(e.time_range.start, e.time_range.end) for e in on_device])
        total = sum(e.time_range.elapsed_us() for e in on_device)
        for e in aten:
            if e.self_device_time_total > 0:
                entry = by_name.setdefault(e.name, [0, 0.0])
                entry[0] += 1
                entry[1] += e.self_device_time_total
        out.update(launches=len(kernels), launches_counted="device kernels", copies=copies,
                   memsets=sum(e.name.startswith("Memset") for e in on_device),
                   sync_calls=len(syncs), sync_wait_ms=sum(e.time_range.elapsed_us() for e in syncs) / 1000,
                   busy_ms=busy / 1000)
    else:
        total = label.cpu_time_total
        for e in aten:
            entry = by_name.setdefault(e.name, [0, 0.0])
            entry[0] += 1
            entry[1] += e.self_cpu_time_total
        out.update(readbacks=sum(e.name in READBACK_OPS for e in aten),
                   busy_ms=sum(e.cpu_time_total for e in top_level) / 1000)
    ranked = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:top]
    out["top_ops"] = [{"name": name, "calls": calls, "ms": us / 1000, "share": us / total if total else 0.0}
                      for name, (calls, us) in ranked]
    out["other_share"] = 1.0 - sum(op["share"] for op in out["top_ops"])
    return out


def bound(compute_ms: float, dispatch_ms: float, elapsed_ms: float, cuda: bool) -> str:
    """What limits a batch, from its compute and dispatch times (see the module docstring)."""
    if not cuda:   # nothing overlaps: the larger part of the elapsed time
        return "ops" if compute_ms >= dispatch_ms else "python/dispatch"
    if compute_ms >= DEVICE_BOUND * elapsed_ms:
        return "device"
    return "launch" if dispatch_ms >= compute_ms else "sync"


# --------------------------------------------------------------------------------------------------
# The two sections


def profile_corruption(x: torch.Tensor, name: str, severity: int, preset: str, batches: int, top: int) -> dict:
    """Everything the corruption table prints for one corruption (times in ms per batch)."""
    from robustkit.corruptions import corrupt
    from robustkit.corruptions._triton import bytes_moved

    device = x.device
    cuda = device.type == "cuda"
    corrupt(x, name, severity, preset, seed=0)                      # warm-up: caches, plans, kernels
    elapsed, host = time_calls(lambda i: corrupt(x, name, severity, preset, seed=1 + i), batches, device)
    prof = summarize_profile(profile_events(lambda: corrupt(x, name, severity, preset, seed=batches + 1), device),
                             device, top)
    kernels_before = bytes_moved()   # robustkit's Triton kernels (CUDA), which the dispatch counter does not see
    dispatched, float64, traffic = dispatched_ops(lambda: corrupt(x, name, severity, preset, seed=batches + 2), device)
    traffic += bytes_moved() - kernels_before
    n = x.shape[0]
    row = {"name": name, "severity": severity, "batch_size": n, "ms": elapsed * 1000,
           "images_per_s": n / elapsed, "host_ms": host * 1000, **prof, "dispatched_ops": dispatched,
           "float64_ops": sum(float64.values()), "float64_op_names": float64,
           "traffic_mb_per_image": traffic / n / 1e6, "traffic_gb_per_s": traffic / elapsed / 1e9,
           "h100_bandwidth_ceiling_images_per_s": n / (traffic / (H100_GBPS * 1e9))}
    if cuda:
        row["syncs"] = count_syncs(lambda: corrupt(x, name, severity, preset, seed=batches + 3))
        row["syncs_counted"] = 'torch.cuda.set_sync_debug_mode("warn") warnings'
        row["compute_ms"] = prof["busy_ms"]
        row["dispatch_ms"] = max(0.0, row["host_ms"] - prof["sync_wait_ms"])
    else:
        row["launches"] = dispatched
        row["launches_counted"] = "aten ops as dispatched (views and allocations left out)"
        row["syncs"] = prof["readbacks"]
        row["syncs_counted"] = "aten ops that would read back on CUDA (" + ", ".join(READBACK_OPS) + ")"
        inside = min(1.0, prof["busy_ms"] / prof["batch_ms"]) if prof["batch_ms"] > 0 else 0.0
        row["compute_ms"] = inside * row["ms"]
        row["dispatch_ms"] = row["ms"] - row["compute_ms"]
    row["bound"] = bound(row["compute_ms"], row["dispatch_ms"], row["ms"], cuda)
    return row


def robustkit_arch(arch: str) -> bool:
    """Whether ``arch`` names one of robustkit's own architectures (wrn-D-K) rather than a torchvision model."""
    from robustkit.errors import RobustkitError
    from robustkit.models import check_arch

    try:
        check_arch(arch)
    except RobustkitError:
        return False
    return True


def eval_cell(names: list[str], severity: int, preset: str, arch: str, n_images: int, batch_size: int,
              size: int, device: torch.device, variants: list[str] = ()) -> dict:
    """Where the time of an ImageNet-C (or, with a wrn-D-K at 32 px, CIFAR-10-C) cell step goes (see the module
    docstring); ms per batch."""
    from robustkit.corruptions import corrupt
    from robustkit.evaluate import _layout, as_float, corruption_accuracies
    from robustkit.jobs import _device_and_amp
    from robustkit.models import create_model
    from robustkit.sources.models import Normalized, _finish, load_model

    _, use_amp, autocast, channels_last = _device_and_amp(str(device), None, None)   # as robustkit corrupt sets them
    n_classes = 1000
    if robustkit_arch(arch):   # robustkit's own (wrn-28-2: a CIFAR-10-C cell); random weights, CIFAR-like statistics
        n_classes = 10
        model = _finish(Normalized(create_model(arch, num_classes=n_classes), (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)),
                        device, channels_last)
    else:
        model, _ = load_model(f"torchvision:{arch}", num_classes=n_classes, device=device, channels_last=channels_last)
    if not isinstance(model, Normalized):
        raise SystemExit(f"error: torchvision:{arch} did not resolve to robustkit's Normalized wrapper")
    # the cell runs the network as robustkit corrupt does on this device (folded + fused on CUDA since 2026-11-27);
    # the variants start from the plain one
    plain = model.model
    network, switched, n_fused = as_corrupt_runs(plain, device)
    model.model = network
    starts = list(range(0, n_images, batch_size))
    one_batch = synthetic_images(min(batch_size, n_images), size, seed=size).to(device)
    images = one_batch.repeat(len(starts), 1, 1, 1)[:n_images]      # resident uint8, as a set that fits
    labels = torch.randint(0, n_classes, (n_images,), generator=torch.Generator().manual_seed(0)).to(device)
    batches = [images[s:s + batch_size] for s in starts]
    targets = [labels[s:s + batch_size] for s in starts]
    floats = [as_float(b) for b in batches]
    n = len(starts)

    def normalise(x: torch.Tensor) -> torch.Tensor:  # Normalized.forward without the network
        return (x - model.mean.to(x.dtype)) / model.std.to(x.dtype)

    laid_out = [_layout(f, channels_last) for f in floats]
    normalised = [normalise(x) for x in laid_out]
    correct = torch.zeros((), dtype=torch.long, device=device)

    def network_step(i: int) -> None:
        with torch.no_grad(), autocast():
            correct.add_((network(normalised[i]).argmax(1) == targets[i]).sum())

    parts = {"to_float": lambda i: as_float(batches[i]), "layout": lambda i: _layout(floats[i], channels_last),
             "normalise": lambda i: normalise(laid_out[i]), "network": network_step}
    ms = {}
    for part, step in parts.items():
        step(0)                                                     # warm-up
        ms[part] = time_calls(step, n, device)[0] * 1000
    convert = ms["to_float"] + ms["layout"] + ms["normalise"]
    rows = []
    for name in names:
        first, _ = timed(lambda: corrupt(floats[0], name, severity, preset, seed=0), device)
        alone = time_calls(lambda i: corrupt(floats[i], name, severity, preset, seed=1 + i), n, device)[0]
        cell = time_calls(lambda i: corruption_accuracies([model], images, labels, name, severity, preset=preset,
                                                          batch_size=batch_size, autocast=autocast,
                                                          channels_last=channels_last), 1, device)[0]
        rows.append({"name": name, "first_call_ms": first * 1000, "corruption_ms": alone * 1000,
                     "cell_ms": cell * 1000 / n})
    others = []
    if variants:   # the default step's count over the batches of the cell's size, for the variants to match
        with torch.no_grad(), autocast():
            reference = int(sum((network(x).argmax(1) == t).sum() for x, t in zip(normalised, targets)
                                if x.shape[0] == normalised[0].shape[0]))
    for v in variants:   # after the cell's own parts, so that their first calls are the process's first
        others.append(network_variant(v, plain, normalised, targets, use_amp, device, reference))
        if "ms" in others[-1]:
            others[-1]["vs_default"] = ms["network"] / others[-1]["ms"]
    corruption = sum(r["corruption_ms"] for r in rows) / len(rows)
    cell = sum(r["cell_ms"] for r in rows) / len(rows)
    other = cell - corruption - convert - ms["network"]
    parts_ms = {"corruption": corruption, "convert": convert, "network": ms["network"], "other": other}
    batch = n_images / n                                            # images per batch, on average
    return {"arch": arch, "images": n_images, "batch_size": batch_size, "batches": n, "severity": severity,
            "amp": use_amp, "channels_last": channels_last, "parts_ms": parts_ms, "cell_ms": cell,
            "convert_detail_ms": {k: ms[k] for k in ("to_float", "layout", "normalise")},
            "shares": {k: v / cell for k, v in parts_ms.items()},
            "cell_images_per_s": batch / (cell / 1000),
            "model_alone_images_per_s": batch / ((ms["normalise"] + ms["network"]) / 1000),
            "first_calls_total_s": sum(r["first_call_ms"] for r in rows) / 1000, "per_corruption": rows,
            "network_ms": ms["network"], "default_switches": switched, "default_convolutions_fused": n_fused,
            "network_variants": others}


NETWORK_PARTS = ("plain", "folded", "fused", "tuned", "graphs", "compiled")


def parse_network_variants(text: str | None) -> list[str]:
    """"tuned,graphs,tuned+graphs" -> the variants, each a '+'-joined set of NETWORK_PARTS."""
    variants = [v.strip() for v in (text or "").split(",") if v.strip()]
    for v in variants:
        bad = [part for part in v.split("+") if part not in NETWORK_PARTS]
        if bad:
            from robustkit.errors import RobustkitError

            raise RobustkitError(f"--network-variants: unknown part {bad[0]!r} in {v!r} (use "
                                 f"{', '.join(NETWORK_PARTS)}, joined by '+')")
    return variants


def network_variant(variant: str, network: torch.nn.Module, inputs: list[torch.Tensor], targets: list[torch.Tensor],
                    use_amp: bool, device: torch.device, reference: int) -> dict:
    """The network step of the cell (forward + argmax count) run another way, over the batches of the
    cell's size, starting from the plain ``network``: ``plain`` as it is, ``folded`` with each batch norm that
    follows a convolution folded into it (robustkit.models.fold), ``fused`` folded and then each convolution +
    bias (+ residual) + ReLU as one cuDNN call (robustkit.models.fuse; on the CPU the same ops as folded; a cuDNN
    that refuses them is said in the row),
    ``tuned`` with cudnn.benchmark on (robustkit's evaluation runs with it off), ``compiled`` by
    TorchInductor (fixed shapes, as ``corrupt --compile``), ``graphs`` replayed from one CUDA graph captured on
    a static input buffer (CUDA only). Returns ms per batch at steady state, the one-off seconds before it
    (tuning, compilation, capture: the first call), and its count of correct predictions over the timed batches
    next to ``reference``, the default step's count over the same batches (equal: the same predictions, or
    as many right)."""
    parts = set(variant.split("+"))
    cuda = device.type == "cuda"
    folds = fused = None
    if parts & {"folded", "fused"}:
        from robustkit.models.fold import fold_batchnorm

        network, folds, why = fold_batchnorm(network)
        if why:
            return {"variant": variant, "skipped": f"nothing folded: {why}"}
    if "fused" in parts:
        from robustkit.models import fuse

        network, fused, _, why = fuse.fuse_conv_relu(network)
        if why:
            return {"variant": variant, "skipped": f"nothing fused: {why}"}
    if "graphs" in parts and not cuda:
        return {"variant": variant, "skipped": "CUDA graphs need CUDA"}
    full = [i for i, x in enumerate(inputs) if x.shape[0] == inputs[0].shape[0]]
    old_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = "tuned" in parts
    try:
        if "compiled" in parts:
            from torch import _dynamo

            _dynamo.reset()   # a compilation of its own: its one-off is not a cache hit of an earlier variant
        forward = torch.compile(network, dynamic=False) if "compiled" in parts else network
        correct = torch.zeros((), dtype=torch.long, device=device)

        def autocast():   # as robustkit's evaluation, without autocast's weight cache (not allowed in a capture)
            return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False) if use_amp \
                else torch.autocast(device.type, enabled=False)

        if "graphs" in parts:
            static_x = inputs[full[0]].clone()

            def prepare() -> Callable[[int], object]:
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side), torch.no_grad(), autocast():
                    for _ in range(2):   # warm-up outside the capture: tuning, compilation, lazy module loads
                        forward(static_x)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph), torch.no_grad(), autocast():
                    static_out = forward(static_x)

                def replay(i: int) -> None:
                    static_x.copy_(inputs[full[i]])
                    graph.replay()
                    correct.add_((static_out.argmax(1) == targets[full[i]]).sum())
                return replay
        else:
            def prepare() -> Callable[[int], object]:
                def step(i: int) -> None:
                    with torch.no_grad(), autocast():
                        correct.add_((forward(inputs[full[i]]).argmax(1) == targets[full[i]]).sum())
                step(0)
                return step
        one_off, step = timed(prepare, device)
        correct.zero_()
        ms = time_calls(step, len(full), device)[0] * 1000
    except Exception as exc:  # noqa: BLE001  (what a variant cannot do here is a row, not the end of the profile)
        return {"variant": variant, "skipped": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:120]}"}
    finally:
        torch.backends.cudnn.benchmark = old_benchmark
    refused = None
    if fused is not None:
        from robustkit.models import fuse

        refused = fuse._CudnnFusion.failed   # then the separate ops ran: the row times the folded network
    return {"variant": variant, "one_off_s": one_off, "ms": ms, "batch": int(inputs[full[0]].shape[0]),
            "correct": int(correct), "reference_correct": reference, "batch_norms_folded": folds,
            "convolutions_fused": fused, "fusion_refused": refused}


# --------------------------------------------------------------------------------------------------
# Printing


def print_corruptions(rows: list[dict], cuda: bool) -> None:
    head = ["corruption", "images/s", "ms/batch", "launches", "syncs", "float64 ops", "compute ms",
            "dispatch ms", "bound", "MB/image", "GB/s", "H100 ceiling/s"]
    print(table(head, [[r["name"], f"{r['images_per_s']:,.0f}", f"{r['ms']:.2f}", r["launches"], r["syncs"],
                        r["float64_ops"], f"{r['compute_ms']:.2f}", f"{r['dispatch_ms']:.2f}", r["bound"],
                        f"{r['traffic_mb_per_image']:.1f}", f"{r['traffic_gb_per_s']:,.0f}",
                        f"{r['h100_bandwidth_ceiling_images_per_s']:,.0f}"] for r in rows]))
    print(f"launches: {rows[0]['launches_counted']}; syncs: {rows[0]['syncs_counted']}")
    print(f"MB/image: memory traffic of the ops as dispatched (each tensor argument read once, each result written "
          f"once; on CUDA, the Triton kernels of jpeg_compression, glass_blur and spatter as their launches count "
          f"them); "
          f"GB/s: that traffic over the measured time; H100 ceiling/s: images/s if the traffic ran at the "
          f"H100's peak {H100_GBPS:,.0f} GB/s with nothing else in the way (a ceiling a kernel per op cannot pass)")
    if cuda:
        print("compute: device busy (kernels, copies, memsets); dispatch: host time per batch minus its waits in syncs")
    else:
        print("compute: time inside top-level aten ops; dispatch: the rest (Python between ops)")
    what = "device time of the kernels each op launches" if cuda else "self CPU time"
    for r in rows:
        extra = (f"; sync calls seen by the profiler {r['sync_calls']} ({r['sync_wait_ms']:.2f} ms waiting); "
                 f"copies {r['copies'] or 'none'}; memsets {r['memsets']}") if cuda else ""
        names = ", ".join(f"{k} {v}" for k, v in list(r["float64_op_names"].items())[:5])
        print(f"\n## {r['name']} (severity {r['severity']}): top ops by {what}; "
              f"aten ops {r['aten_ops_top']} top-level / {r['aten_ops_all']} in all{extra}; "
              f"float64 ops {r['float64_ops']}" + (f" ({names}{', ...' if len(r['float64_op_names']) > 5 else ''})"
                                                   if names else ""))
        print(table(["op", "calls", "ms", "share"],
                    [[op["name"], op["calls"], f"{op['ms']:.3f}", f"{op['share']:.1%}"] for op in r["top_ops"]]
                    + [["(other)", "", "", f"{r['other_share']:.1%}"]]))


def print_cell(cell: dict) -> None:
    detail = ", ".join(f"{k} {v:.2f}" for k, v in cell["convert_detail_ms"].items())
    labels = {"corruption": "(a) corruption, mean over the corruptions",
              "convert": f"(b) uint8->float, layout, normalise ({detail})",
              "network": "(c) network forward + argmax count", "other": "other: (d) - (a + b + c)"}
    rows = [[labels[k], f"{cell['parts_ms'][k]:.2f}", f"{cell['shares'][k]:.1%}"] for k in labels]
    rows.append(["(d) cell step (corruption_accuracies)", f"{cell['cell_ms']:.2f}", "100.0%"])
    print(table(["part", "ms/batch", "share of (d)"], rows))
    print(f"cells: {cell['cell_images_per_s']:,.0f} images/s; model alone (normalise + network, as bench_imagenet's "
          f"ceiling): {cell['model_alone_images_per_s']:,.0f} images/s; cells at "
          f"{cell['cell_images_per_s'] / cell['model_alone_images_per_s']:.0%} of it")
    print(f"first calls (one-off per corruption and process, inside bench_imagenet's timed cells): "
          f"{cell['first_calls_total_s']:.2f} s over {len(cell['per_corruption'])} corruptions\n")
    if cell["network_variants"]:
        batch = cell["images"] / cell["batches"]
        grid = 19 * 5 + 1   # the grid's cells + the clean pass, in units of the cell's images
        how = f": {cell['default_switches']}" if cell.get("default_switches") else ""
        rows = [[f"default (as robustkit corrupt runs it{how})", "-", f"{cell['network_ms']:.2f}",
                 f"{batch / cell['network_ms'] * 1000:,.0f}", "1.00x",
                 f"{grid * cell['network_ms'] * cell['batches'] / 1000:.2f}", "-"]]
        for v in cell["network_variants"]:
            if "skipped" in v:
                rows.append([v["variant"], "-", "-", "-", "-", "-", f"skipped: {v['skipped']}"])
                continue
            rows.append([v["variant"], f"{v['one_off_s']:.2f}", f"{v['ms']:.2f}", f"{v['batch'] / v['ms'] * 1000:,.0f}",
                         f"{v['vs_default']:.2f}x", f"{grid * v['ms'] * cell['batches'] / 1000:.2f}",
                         f"{v['correct']} / {v['reference_correct']}"
                         + (f" (cuDNN refused the fused calls: {v['fusion_refused']})" if v.get("fusion_refused") else "")])
        print(table(["network step", "one-off s", "ms/batch", "images/s", "vs default", "19 x 5 grid + clean, s",
                     "right: variant / default"], rows))
        print("one-off: the first call (cudnn tuning, compilation, capture); the grid column is the network's share "
              "of a whole 19 x 5 grid over the cell's images (+ the clean pass) at that rate, one-offs excluded; "
              "right: correct predictions over the timed batches (random weights: a check that the variant computes "
              "what the default does, not an accuracy)\n")
    print(table(["corruption", "first call ms", "corruption ms/batch", "cell ms/batch", "corruption share"],
                [[r["name"], f"{r['first_call_ms']:.1f}", f"{r['corruption_ms']:.2f}", f"{r['cell_ms']:.2f}",
                  f"{r['corruption_ms'] / r['cell_ms']:.0%}"] for r in cell["per_corruption"]]))


# --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="cpu, cuda or auto [auto]")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads [torch's default]")
    p.add_argument("--size", type=int, default=224, help="image side in px [224]")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"images per batch [bench_corruptions' at 224 px: {CUDA_IMAGES[224]} on CUDA, "
                        f"{CPU_IMAGES[224]} on the CPU]")
    p.add_argument("--batches", type=int, default=None, help="timed batches per corruption [10 on CUDA, 3 on the CPU]")
    p.add_argument("--severity", type=int, default=3)
    p.add_argument("--corruptions", default=SLOW, help=f"all, common, extra or a comma list [{SLOW}]")
    p.add_argument("--preset", default="imagenet-c")
    p.add_argument("--top", type=int, default=8, help="ops listed per corruption [8]")
    p.add_argument("--eval-cell", action="store_true", help="also split an ImageNet-C cell step into its parts")
    p.add_argument("--cell-corruptions", default="all", help="corruptions the cell averages over [all]")
    p.add_argument("--arch", default=None,
                   help="model of the cell: a torchvision name, or robustkit's (wrn-28-2 with --size 32: a CIFAR-10-C "
                        "cell) [resnet50 on CUDA, resnet18 on the CPU]")
    p.add_argument("--images", type=int, default=None,
                   help="images of the cell [4 batches]; the cell runs over all of them, in batches of --batch-size")
    p.add_argument("--network-variants", default="",
                   help="with --eval-cell: also time the cell's network step run other ways, a comma list of "
                        f"{', '.join(NETWORK_PARTS)} or '+'-joined sets of them (tuned+graphs) [none]")
    p.add_argument("--json", default=None, help="also write everything printed as JSON to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = setup_device(args.device, args.threads)
    if device is None:
        return 2
    from robustkit.corruptions import parse_corruptions, resolve_preset
    from robustkit.errors import RobustkitError

    cuda = device.type == "cuda"
    try:
        names = parse_corruptions(args.corruptions)
        cell_names = parse_corruptions(args.cell_corruptions) if args.eval_cell else []
        variants = parse_network_variants(args.network_variants)
        preset = resolve_preset(args.preset, args.size)
    except RobustkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    bs = args.batch_size or (CUDA_IMAGES[224] if cuda else CPU_IMAGES[224])
    batches = args.batches or (10 if cuda else 3)
    header(f"what holds the corruptions back: {args.size} px, batch {bs}, severity {args.severity}, preset {preset}, "
           f"{batches} timed batches", device)
    cell = None
    if args.eval_cell:   # first, so that its first calls of the corruptions are the process's first
        arch = args.arch or ("resnet50" if cuda else "resnet18")
        n_images = args.images or 4 * bs
        kind = "CIFAR-10-C" if args.size <= 64 else "ImageNet-C"
        cell_title = (f"{kind} cell: {arch}, {n_images} images resident on the device, batch {bs}, "
                      f"severity {args.severity}, {len(cell_names)} corruptions")
        print(f"{cell_title}: running", flush=True)
        cell = eval_cell(cell_names, args.severity, preset, arch, n_images, bs, args.size, device, variants)
    x = synthetic_images(bs, args.size, seed=args.size).to(device).float() / 255
    rows = []
    for name in names:
        rows.append(profile_corruption(x, name, args.severity, preset, batches, args.top))
        print(f"{name}: {rows[-1]['images_per_s']:,.0f} images/s", flush=True)
    print()
    print_corruptions(rows, cuda)
    if cell is not None:
        print(f"\n# {cell_title}")
        print_cell(cell)
    print(f"# after: {load_average()}")
    if args.json:
        write_json(args.json, {"date": date.today().isoformat(), "machine": machine(device), "device": device.type,
                               "command": f"python {' '.join(sys.argv)}", "size": args.size, "batch_size": bs,
                               "batches": batches, "severity": args.severity, "preset": preset,
                               "corruptions": rows, "eval_cell": cell})
        print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
