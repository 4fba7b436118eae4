"""Helpers shared by the benchmarks: the CIFAR archive, timing, machine line, tables, the corrupt job's clock.

Kept out of the package on purpose: nothing here is product code, and the two scripts must run from a
plain checkout (``python bench/bench_train.py``) without installing anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TypeVar

import torch

from robustkit.jobs import Progress   # (every script puts the repository on sys.path before importing this)

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = "cifar10-jpeg75.tar.gz"
T = TypeVar("T")


# --------------------------------------------------------------------------------------------------
# Data


def find_archive() -> Path | None:
    """The shared CIFAR-10 JPEG archive: ``$ROBUSTKIT_SHARED[/data]``, ``<repo>/../shared/data``, ``<repo>/shared/data``."""
    candidates: list[Path] = []
    if os.environ.get("ROBUSTKIT_SHARED"):
        shared = Path(os.environ["ROBUSTKIT_SHARED"])
        candidates += [shared / "data" / ARCHIVE, shared / ARCHIVE]
    candidates += [REPO.parent / "shared" / "data" / ARCHIVE, REPO / "shared" / "data" / ARCHIVE]
    return next((p for p in candidates if p.is_file()), None)


def bench_cache_dir() -> Path:
    """Where the benches keep the extracted archive: ``$ROBUSTKIT_CACHE/bench`` (default ``~/.cache/robustkit/bench``)."""
    env = os.environ.get("ROBUSTKIT_CACHE")
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "robustkit"
    return base / "bench"


def extracted_archive(archive: Path, dest: Path | None = None) -> Path:
    """Extract ``archive`` once into ``dest`` (default: the bench cache) and return the folder holding train/ and test/.

    Extraction goes into a private temporary folder next to the target and is renamed into place, so a
    concurrent bench (or an interrupted one) never sees a half-extracted tree. Only regular files with
    plain relative names are written (tarfile's ``data`` filter where available).
    """
    dest = dest or bench_cache_dir() / archive.name.removesuffix(".tar.gz")
    if (dest / "train").is_dir() and (dest / "test").is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest.parent))
    try:
        print(f"note: extracting {archive} into {dest} (once; ~20 MB packed, 60,000 files)", file=sys.stderr)
        with tarfile.open(archive, "r:gz") as tf:
            if hasattr(tarfile, "data_filter"):
                tf.extractall(tmp, filter="data")
            else:  # pragma: no cover - Python without extraction filters
                members = [m for m in tf.getmembers() if (m.isfile() or m.isdir()) and not m.name.startswith(("/", ".."))
                           and ".." not in Path(m.name).parts]
                tf.extractall(tmp, members=members)
        roots = [p for p in (tmp, *tmp.iterdir()) if (p / "train").is_dir() and (p / "test").is_dir()]
        if not roots:
            raise SystemExit(f"error: {archive} holds no train/ and test/ folders; is it the CIFAR-10 JPEG archive?")
        try:
            roots[0].rename(dest)
        except OSError:
            if not (dest / "train").is_dir():  # someone else won the race only if dest is complete
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def resolve_data(arg: str | None, allow_digits: bool = True) -> tuple[str, str]:
    """``--data`` -> (robustkit dataset spec, human description).

    ``None``: the extracted shared archive if it can be found, else ``digits`` (or an error when digits
    is not acceptable for this bench).
    """
    if arg is None:
        archive = find_archive()
        if archive is None:
            if not allow_digits:
                raise SystemExit(f"error: {ARCHIVE} not found (looked in $ROBUSTKIT_SHARED, {REPO.parent / 'shared/data'}): "
                                 "give --data folder:PATH with train/ and test/ inside")
            return "digits", "digits (shared CIFAR archive not found)"
        folder = extracted_archive(archive)
        return f"folder:{folder}", f"CIFAR-10 JPEG q75 ({folder})"
    if arg == "digits":
        if not allow_digits:
            raise SystemExit("error: this bench needs CIFAR-10-sized data: give --data folder:PATH")
        return "digits", "digits (sklearn 8x8 upscaled to 32 px)"
    if arg.startswith("folder:"):
        path = Path(arg.split(":", 1)[1]).expanduser()
        if path.is_file() and path.name.endswith(".tar.gz"):
            path = extracted_archive(path)
        if not (path / "train").is_dir():
            raise SystemExit(f"error: {path} has no train/ folder: --data folder:PATH needs PATH/train/<class>/*.jpg")
        return f"folder:{path.resolve()}", f"folder {path.resolve()}"
    raise SystemExit(f"error: --data takes folder:PATH or digits, got {arg!r}")


# --------------------------------------------------------------------------------------------------
# Timing and reporting


def setup_device(device_arg: str, threads: int | None) -> torch.device | None:
    """Resolve ``--device`` and apply ``--threads``; on a bad device print the one-line error, return None."""
    from robustkit.checkpoint import resolve_device
    from robustkit.errors import RobustkitError

    try:
        device = resolve_device(device_arg)
    except RobustkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return None
    if threads:
        torch.set_num_threads(threads)
    return device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], T], device: torch.device | None = None) -> tuple[float, T]:
    """(wall seconds, result) of ``fn()``, the device synchronised before and after."""
    if device is not None:
        sync(device)
    t0 = time.perf_counter()
    out = fn()
    if device is not None:
        sync(device)
    return time.perf_counter() - t0, out


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
        return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"
    except OSError:  # pragma: no cover - not on every platform
        return "load average n/a"


def machine(device: torch.device) -> str:
    """One line naming the hardware and software the figures come from."""
    cpu = platform.processor() or platform.machine()
    parts = [f"{cpu}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads", f"torch {torch.__version__}"]
    if device.type == "cuda":
        parts.insert(0, f"{torch.cuda.get_device_name(device)}")
    return ", ".join(parts)


def header(title: str, device: torch.device) -> None:
    print(f"# {title}")
    print(f"# date {date.today().isoformat()} | {machine(device)}")
    print(f"# command: python {' '.join(sys.argv)}")
    print(f"# before: {load_average()}")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None) -> str:
    """A plain fixed-width table; ``align`` is one 'l'/'r' per column (default: first left, rest right)."""
    align = align or "l" + "r" * (len(headers) - 1)
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align)).rstrip()

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


def target(name: str, measured: float, goal: float, unit: str, lower_is_better: bool = True) -> dict:
    """One benchmark target as bench/gpu_check.sh collects it (see :func:`report_targets`)."""
    met = measured <= goal if lower_is_better else measured >= goal
    return {"name": name, "measured": float(measured), "goal": float(goal), "unit": unit,
            "lower_is_better": bool(lower_is_better), "met": bool(met)}


def report_targets(targets: Sequence[dict], json_path: str | None = None, details: dict | None = None) -> None:
    """Print each target as MET / NOT MET; with ``json_path`` also write
    ``{"targets": [{"name", "measured", "goal", "unit", "lower_is_better", "met"}, ...], **details}`` (atomically;
    ``details``: the measurements behind the targets, which summarize_targets.py does not read)."""
    for t in targets:
        sign = "<=" if t["lower_is_better"] else ">="
        print(f"target {t['name']}: {t['measured']:,.4g} {t['unit']} (goal {sign} {t['goal']:,.4g} {t['unit']}): "
              f"{'MET' if t['met'] else 'NOT MET'}")
    if json_path:
        write_json(json_path, {"targets": list(targets), **(details or {})})


def write_json(json_path: str | Path, data: dict) -> None:
    """Write ``data`` as indented JSON to ``json_path`` atomically (temporary file, then rename)."""
    path = Path(json_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------
# Training runs


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of a run's metrics.jsonl, in order."""
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]


def timed_seconds(records: Sequence[dict], warmup: int, total: int) -> float:
    """Wall time of training steps warmup+1 .. total, from a run's metrics records.

    fit's ``elapsed_s`` is cumulative training time at each log point (synchronised by the loss read-back)
    and sums log windows only, so evaluation and checkpoint writes fall outside it: the time of the timed
    steps is the record at ``total`` minus the one at ``warmup`` (0 when there is no warm-up).
    """
    at = {r["step"]: r for r in records}
    if total not in at or (warmup and warmup not in at):
        raise SystemExit(f"error: metrics.jsonl lacks the log points {warmup} and {total}: fit's logging changed?")
    return at[total]["elapsed_s"] - (at[warmup]["elapsed_s"] if warmup else 0.0)


# --------------------------------------------------------------------------------------------------
# The corrupt job (robustkit.jobs.run_corruptions) cut at its progress reports

class CellClock(Progress):
    """The job's progress reports as times: setup done (``set_total``) and each cell done (``advance``).

    A report is timed on the host as it comes, without draining the device first: the grid reports a cell once its
    counts have been read back (robustkit.evaluate.InFlight), so the device has finished that cell by then, while
    the cells launched after it stay queued. Until 2026-11-27 (fifth H100 run) each report synchronised the device:
    that emptied the queue the grid keeps ahead of the device (robustkit.jobs.CELLS_AHEAD) at every cell, so any
    pause of the grid's thread (a first call, a thread holding Python's lock) left the device idle, which a user's
    run does not do. ``sync_each`` brings that back (to compare)."""

    def __init__(self, device: torch.device, sync_each: bool = False):
        self.device = device
        self.sync_each = sync_each
        self.marks: list[float] = []

    def set_total(self, total: int) -> None:
        self._mark()

    def advance(self, n: int = 1, label: str | None = None) -> None:
        self._mark()

    def _mark(self) -> None:
        if self.sync_each:
            sync(self.device)
        self.marks.append(time.perf_counter())


@dataclass
class TimedRun:
    """One call of the corrupt job cut at its progress reports, in seconds."""
    setup: float          # start -> setup done: model resolved, data cache loaded and placed on the device
    cells: list[float]    # each cell, in the job's order; the first also holds the model build and the clean pass
    tail: float           # last report -> end: the result files (without cells: also the model build and clean pass)

    @property
    def total(self) -> float:
        return self.setup + sum(self.cells) + self.tail


def timed_job(job: Callable[[Progress], object], device: torch.device, n_cells: int,
              sync_each: bool = False) -> TimedRun:
    """Run ``job(progress)`` (one call of the corrupt job with one model) and cut its time at its reports (the device
    drained before the start and after the end only, unless ``sync_each``: see :class:`CellClock`)."""
    clock = CellClock(device, sync_each)
    sync(device)
    start = time.perf_counter()
    job(clock)
    sync(device)
    marks = [start, *clock.marks, time.perf_counter()]
    if len(marks) != n_cells + 3:
        raise SystemExit(f"error: the corrupt job reported progress {len(clock.marks)} times for {n_cells} cells "
                         f"(expected {n_cells + 1}): did its Progress calls change?")
    gaps = [b - a for a, b in zip(marks, marks[1:])]
    return TimedRun(setup=gaps[0], cells=gaps[1:-1], tail=gaps[-1])


class HostTrace:
    """torch.profiler over a block, every thread (the CPU's calls, and the CUDA runtime's and kernels where the device
    is CUDA): :meth:`longest` lists the longest single host-side calls (an aten op, a cudaLaunchKernel that loaded a
    module, a synchronisation, ...), each with its thread (the block's own, or another: a warm-up thread) and when it
    started; ``path`` (optional): the whole trace, gzipped Chrome JSON (chrome://tracing, Perfetto). The profiler
    slows what it watches: a traced run's time is not a figure to report. Where this torch's profiler cannot watch
    every thread (older versions), it watches the block's own (:attr:`all_threads` says which)."""

    MARK = "HostTrace:mark"

    def __init__(self, device: torch.device, path: str | os.PathLike | None = None):
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.all_threads = True
        try:
            from torch._C._profiler import _ExperimentalConfig

            config = _ExperimentalConfig(profile_all_threads=True, enable_cuda_sync_events=True)
        except (ImportError, TypeError):
            config, self.all_threads = None, False
        self._profile = torch.profiler.profile(activities=activities, experimental_config=config)
        self.path = Path(path) if path else None

    def __enter__(self) -> HostTrace:
        self._profile.__enter__()
        with torch.profiler.record_function(self.MARK):   # names the block's thread among the profiler's
            pass
        return self

    def __exit__(self, *exc) -> None:
        self._profile.__exit__(*exc)
        if self.path is not None:
            import gzip

            self.path.parent.mkdir(parents=True, exist_ok=True)
            raw = self.path.with_name(self.path.name + ".tmp")
            self._profile.export_chrome_trace(str(raw))
            with open(raw, "rb") as src, gzip.open(self.path, "wb") as dst:
                shutil.copyfileobj(src, dst)
            raw.unlink()

    def longest(self, top: int = 12) -> list[dict]:
        """The ``top`` longest host-side calls, each as the innermost call that holds most (>= 90 %) of its time:
        name, the outermost op it ran in (None: it is one), thread ('block' or 'other'), start (s from the first
        call traced) and ms."""
        from torch.autograd import DeviceType

        events = [e for e in self._profile.events() if e.device_type == DeviceType.CPU]
        block = next((e.thread for e in events if e.name == self.MARK), None)
        events = [e for e in events if e.name != self.MARK]
        if not events:
            return []

        def length(e) -> float:
            return e.time_range.elapsed_us()

        def outermost(e):
            while e.cpu_parent is not None:
                e = e.cpu_parent
            return e

        # an op and the calls under it that take all of its time are one stall: keep the innermost of such a chain
        inner = [e for e in events if not any(length(c) >= 0.9 * length(e) for c in e.cpu_children)]
        origin = min(e.time_range.start for e in events)
        worst = sorted(inner, key=lambda e: -length(e))[:top]
        return [{"name": e.name, "in": outermost(e).name if e.cpu_parent is not None else None,
                 "thread": "block" if e.thread == block else "other",
                 "start_s": (e.time_range.start - origin) / 1e6, "ms": length(e) / 1e3} for e in worst]


def trace_lines(calls: list[dict]) -> list[str]:
    """:meth:`HostTrace.longest`'s calls, one line each."""
    return [f"  {c['ms']:8.1f} ms at {c['start_s']:6.2f} s  {c['thread']:5s}  {c['name']}"
            + (f" (in {c['in']})" if c["in"] else "") for c in calls]


@contextlib.contextmanager
def _kept(owner, name: str, **kw):
    """Within: every object ``owner.name(...)`` makes is kept in the list yielded; ``kw`` go to each call."""
    made, real = [], getattr(owner, name)

    def keeping(*args, **given):
        made.append(real(*args, **{**given, **kw}))
        return made[-1]

    setattr(owner, name, keeping)
    try:
        yield made
    finally:
        setattr(owner, name, real)


def captured_warm_ups(**for_grid_kw):
    """Within: every corruption warm-up the corrupt job starts (robustkit.corruptions.warm_up.for_grid) is kept in
    the list yielded, for its :meth:`stats`; ``for_grid_kw`` (``force``, ``order``) go to each call."""
    from robustkit.corruptions import warm_up

    return _kept(warm_up, "for_grid", **for_grid_kw)


def captured_flights():
    """Within: every corruption grid's reader of cells (robustkit.evaluate.InFlight, made by robustkit.jobs) is kept
    in the list yielded, for its :meth:`stats`."""
    from robustkit import jobs

    return _kept(jobs, "InFlight")


def flight_line(stats: dict | None) -> str:
    """One line of a grid's reads (InFlight.stats): how many waited for the device (the host was ahead of it, as it
    should be) and how long."""
    if not stats or not stats["reads"]:
        return "cells read: none"
    return (f"cells read: {stats['reads']}, up to {stats['ahead']} ahead; {stats['waits']} waited for the device "
            f"({stats['wait_s']:.2f} s in all), {stats['reads'] - stats['waits']} found it done (the host behind)")


def warm_up_line(stats: dict | None) -> str:
    """One line of a warm-up's :meth:`stats` (None or no cells: it did not run, as off CUDA)."""
    if not stats or not stats["cells"]:
        return "corruption warm-up: did not run (CUDA only)"
    slow = ", ".join(f"{label} {s:.2f} s" for label, s in stats["slowest"])
    return (f"corruption warm-up: {stats['warmed']} of {stats['cells']} cells warmed ahead, {stats['taken_by_grid']} "
            f"reached by the grid first, {stats['errors']} failed; thread busy {stats['thread_busy_s']:.2f} s, the "
            f"grid waited {stats['grid_waited_s']:.2f} s for it; slowest calls: {slow}")


def as_corrupt_runs(network: torch.nn.Module, device: torch.device, options=None) -> tuple[torch.nn.Module, str,
                                                                                         int | None]:
    """(``network`` as ``robustkit corrupt`` runs it on ``device`` with ``options`` (a ModelOptions; default: none
    given): batch norms folded and convolution + ReLU fused where robustkit.jobs.resolve_switches decides so, what
    was switched on ('' if nothing, else e.g. 'folded + fused'), how many convolutions were fused (None: not asked
    for)); ``network`` itself is left as it was. Compiling and cudnn.benchmark, which wrap the network, are the
    caller's."""
    from robustkit.jobs import ModelOptions, resolve_switches

    ran = resolve_switches(options or ModelOptions(), device)
    fused = None
    if ran.fold_bn:
        from robustkit.models.fold import fold_batchnorm

        network = fold_batchnorm(network)[0]
    if ran.fuse_conv:
        from robustkit.models.fuse import fuse_conv_relu

        network, fused, _, _ = fuse_conv_relu(network)
    return network, " + ".join(w for w, on in (("folded", ran.fold_bn), ("fused", ran.fuse_conv)) if on), fused
