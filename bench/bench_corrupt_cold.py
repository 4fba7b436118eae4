"""CIFAR-10-C as a user runs it: the corrupt job in a fresh process, as shipped, with the corruptions' warm-up off
or in another order, with each cell read back at once, or with Python's default thread switch interval.

A process pays each corruption's first call once (CUDA modules loaded, Triton set up and its kernels loaded, tables
cached): on an H100 on 2026-11-27 the cold grid's cells took 4.19 s against 3.49 s warm, although a thread warms
the corruptions up ahead of the grid (``robustkit/corruptions/warm_up.py``). That cold run cannot be repeated in the
process that made it, so here each run is a process of its own (this script again, with ``--child``): it loads
the checkpoint's test images, runs ``robustkit.jobs.run_corruptions`` (19 x 5 cells by default) cut at its
progress reports (setup, first cell with the model build and the clean pass, the other cells, the result files),
and reports the warm-up's own figures: cells warmed ahead or reached by the grid first, the thread's busy time, the
grid's wait for it. Variants, each run ``--repeats`` times, interleaved:

* ``shipped``: robustkit as it is (on CUDA: the warm-up in grid order; elsewhere none; each cell's counts read
  back while the device works on the cells after it, ``robustkit.jobs.CELLS_AHEAD``)
* ``read-each-cell``: as shipped, but each cell's counts read back before the next cell is launched (one host
  sync per cell, as before 2026-11-27's fifth session)
* ``switch-5ms``: as shipped, but Python's lock handed between threads at its default interval, 5 ms, instead of
  ``robustkit.jobs.SWITCH_INTERVAL_S`` (0.2 ms) while the grid runs
* ``no-warm-up``: the thread never starts
* ``warm-up``: the thread in grid order, on any device (= shipped on CUDA)
* ``corruption-first``: the thread warms each corruption's first cell first, then the others

The checkpoint is a baseline ``--arch`` trained for ``--steps`` steps on ``--data`` (the accuracy does not matter
here, only the shapes and the kernels). No target: the CIFAR-10-C target is bench_pipeline's (the corrupt stage
after training and FGSM in one process); this says what a fresh ``robustkit corrupt`` pays on top, and which
warm-up hides the most of it.

    python bench/bench_corrupt_cold.py --device cuda --data folder:PATH [--variants shipped,no-warm-up] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (captured_flights, captured_warm_ups, flight_line, header, load_average,  # noqa: E402
                    resolve_data, setup_device, table, timed_job, warm_up_line, write_json)

VARIANTS = {   # name -> (robustkit.jobs settings, warm_up.for_grid's arguments; None: the warm-up off)
    "shipped": ({}, {}),
    "read-each-cell": ({"CELLS_AHEAD": 0}, {}),
    "switch-5ms": ({"SWITCH_INTERVAL_S": 0.005}, {}),
    "no-warm-up": ({}, None),
    "warm-up": ({}, {"force": True}),
    "corruption-first": ({}, {"force": True, "order": "corruption-first"}),
}

DEFAULT_VARIANTS = ("shipped", "read-each-cell", "switch-5ms", "no-warm-up", "corruption-first")


def parse_variants(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in names if v not in VARIANTS]
    if bad or not names:
        raise ValueError(f"unknown variant {bad[0]!r} (use {', '.join(VARIANTS)})" if bad else "no variant given")
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="folder:PATH (or folder:ARCHIVE.tar.gz), or digits [the extracted "
                                                "shared CIFAR archive]")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--arch", default="wrn-28-2")
    p.add_argument("--steps", type=int, default=20, help="training steps of the checkpoint [20]")
    p.add_argument("--labels", type=int, default=250, help="labeled images the checkpoint trains on [250]")
    p.add_argument("--limit", type=int, default=None, help="test images [all]")
    p.add_argument("--corruptions", default="all")
    p.add_argument("--severities", default="1..5")
    p.add_argument("--batch-size", type=int, default=None, help="evaluation batch [robustkit corrupt's default]")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help=f"a comma list of {', '.join(VARIANTS)} [{','.join(DEFAULT_VARIANTS)}]")
    p.add_argument("--repeats", type=int, default=2, help="fresh processes per variant, interleaved [2]")
    p.add_argument("--timeout", type=float, default=300, help="seconds a run may take before it counts as failed")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads, here and in each run")
    p.add_argument("--json", default=None, help="also write every run as JSON here")
    # (a run: this script in a process of its own)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    return p


def child(args) -> int:
    """One cold run; its figures as one JSON line on stdout."""
    from robustkit import jobs
    from robustkit.corruptions import parse_corruptions, parse_severities, warm_up
    from robustkit.jobs import run_corruptions

    device = setup_device(args.device, args.threads)
    if device is None:
        return 2
    names, sevs = parse_corruptions(args.corruptions), parse_severities(args.severities)
    settings, for_grid = VARIANTS[args.child]
    for name, value in settings.items():
        setattr(jobs, name, value)
    if for_grid is None:
        warm_up.wanted = lambda device: False
    results = []

    def job(progress):
        results.append(run_corruptions([args.checkpoint], names, sevs, device=str(device), limit=args.limit,
                                       batch_size=args.batch_size, out=args.out, force=True, progress=progress)[0])

    with captured_warm_ups(**(for_grid or {})) as made, captured_flights() as flights:
        run = timed_job(job, device, len(names) * len(sevs))
    stats = made[0].stats() if made else None
    if stats is not None:
        stats["warmed_in_order"] = [f"{name} s{sev}" for name, sev in made[0].warmed]
    print(json.dumps({"variant": args.child, "setup_s": run.setup, "first_cell_s": run.cells[0],
                      "other_cells_s": sum(run.cells[1:]), "files_s": run.tail, "total_s": run.total,
                      "batch_size": results[0]["batch_size"], "fuse_conv": results[0]["fuse_conv"],
                      "cells_ahead": jobs.CELLS_AHEAD, "switch_interval_s": jobs.SWITCH_INTERVAL_S,
                      "warm_up": stats, "reads": flights[0].stats() if flights else None}))
    return 0


def one_run(args, variant: str, checkpoint: Path, out: Path) -> dict:
    """``variant`` in a fresh process: its figures, with the process's whole wall time, or why it failed."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", variant, "--checkpoint", str(checkpoint),
           "--out", str(out), "--device", args.device, "--corruptions", args.corruptions,
           "--severities", args.severities]
    for flag, value in (("--limit", args.limit), ("--batch-size", args.batch_size), ("--threads", args.threads)):
        if value is not None:
            cmd += [flag, str(value)]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"variant": variant, "failed": f"took more than {args.timeout:g} s"}
    wall = time.perf_counter() - t0
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        why = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        return {"variant": variant, "failed": why[:200]}
    return {**json.loads(lines[-1]), "process_s": wall}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child:
        return child(args)
    try:
        variants = parse_variants(args.variants)
    except ValueError as e:
        print(f"error: --variants: {e}", file=sys.stderr)
        return 2
    if args.repeats < 1:
        print("error: --repeats must be >= 1", file=sys.stderr)
        return 2
    from robustkit.config import TrainConfig
    from robustkit.errors import RobustkitError
    from robustkit.train import fit

    device = setup_device(args.device, args.threads)
    if device is None:
        return 2
    args.device = str(device)
    spec, data_desc = resolve_data(args.data)
    header("the corrupt job in fresh processes: as shipped, the corruptions' warm-up off or in another order, each "
           "cell read back at once, the default thread switch interval", device)
    print(f"# data {data_desc} | {args.arch}, baseline, {args.steps} steps | corruptions {args.corruptions}, "
          f"severities {args.severities} | variants {', '.join(variants)}, {args.repeats} run(s) each, interleaved")
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-cold-") as tmp:
        try:
            cfg = TrainConfig(dataset=spec, labels=args.labels, method="baseline", arch=args.arch, steps=args.steps,
                              eval_limit=args.limit, seed=0, device=str(device))
            fitted = fit(cfg, Path(tmp) / "run", progress=False)
        except RobustkitError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        for r in range(args.repeats):
            for v in variants:
                print(f"{v}, run {r + 1} ...", file=sys.stderr, flush=True)
                runs.append(one_run(args, v, fitted.checkpoint, Path(tmp) / f"{v}-{r}"))
    rows, summary = [], {}
    for v in variants:
        ok = [r for r in runs if r["variant"] == v and "failed" not in r]
        failed = [r["failed"] for r in runs if r["variant"] == v and "failed" in r]
        if not ok:
            rows.append([v, "0", "-", "-", "-", "-", "-", "-", f"failed: {failed[0]}"])
            continue
        med = {k: statistics.median(r[k] for r in ok) for k in
               ("process_s", "setup_s", "first_cell_s", "other_cells_s", "files_s", "total_s")}
        summary[v] = med
        spread = f"{min(r['total_s'] for r in ok):.2f}-{max(r['total_s'] for r in ok):.2f}"
        rows.append([v, str(len(ok)), f"{med['process_s']:.2f}", f"{med['setup_s']:.2f}", f"{med['first_cell_s']:.2f}",
                     f"{med['other_cells_s']:.2f}", f"{med['files_s']:.2f}", f"{med['total_s']:.2f}",
                     spread + (f"; {len(failed)} failed: {failed[0]}" if failed else "")])
    print()
    print(table(["variant", "runs", "process", "setup", "first cell*", "other cells", "result files", "corrupt job",
                 "job min-max"], rows, align="lrrrrrrrl"))
    print("seconds, medians over the runs; process: the whole child process (Python, imports, CUDA set-up, the job, "
          "exit); corrupt job = setup + cells + result files; * with the model build and the clean pass")
    for v in variants:
        last = next((r for r in reversed(runs) if r["variant"] == v and "failed" not in r), None)
        if last is not None:
            print(f"{v} (its last run): {warm_up_line(last['warm_up'])}; {flight_line(last['reads'])}")
    if "no-warm-up" in summary:
        base = summary["no-warm-up"]["total_s"]
        for v, med in summary.items():
            if v != "no-warm-up":
                print(f"{v}: the corrupt job {base - med['total_s']:+.2f} s against no warm-up (positive: faster)")
    if args.json:
        write_json(args.json, {"variants": variants, "runs": runs, "medians": summary})
    print(f"# after: {load_average()}")
    return 0 if all("failed" not in r for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
