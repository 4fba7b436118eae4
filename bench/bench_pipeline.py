"""Whole pipeline wall time: GradAug-semi training on CIFAR-10 with 250 labels, then FGSM and corruption evaluation.

The stages are the library calls behind ``robustkit train --labels 250 --semi``, ``robustkit fgsm`` and
``robustkit corrupt`` (``robustkit.train.fit``, ``robustkit.jobs.run_fgsm``, ``robustkit.jobs.run_corruptions``),
run one after the other on one checkpoint, each timed by wall clock (each ends with results on disk, so
no device work is left pending):

1. data: extract the shared archive (first time only) and decode it into robustkit's dataset cache
   (first time only) - a one-off cost, reported apart from the pipeline total;
2. train: GradAug-semi, ``--steps`` steps, in-training evaluation and checkpoints at the default interval
   (every steps/10) on ``--limit`` test images;
3. fgsm: clean + eps 0.05..0.25 (step 0.05) on ``--limit`` test images;
4. corrupt: all 19 corruptions x 5 severities, preset auto (cifar-10-c at 32 px), on ``--limit`` images.

    python bench/bench_pipeline.py                        # CPU: reduced setting, ~2-5 min on 2 cores
    python bench/bench_pipeline.py --device cuda          # wrn-28-2, 1000 steps, all 10,000 test images
    python bench/bench_pipeline.py --device cuda --steps 10000 --keep
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (HostTrace, captured_flights, captured_warm_ups, flight_line, header, load_average,  # noqa: E402
                    report_targets, resolve_data, setup_device, table, target, timed_job, trace_lines,
                    warm_up_line)

from robustkit.attacks import parse_eps  # noqa: E402
from robustkit.config import TrainConfig, default_steps  # noqa: E402
from robustkit.corruptions import parse_corruptions, parse_severities  # noqa: E402
from robustkit.data import load_dataset  # noqa: E402
from robustkit.errors import RobustkitError, first_line  # noqa: E402


def cold_cells_line(cold: list[float], warm: list[float], labels: list[str], top: int = 6) -> str:
    """Where the cold run's cells took longer than the same cells run again (warm): their sum, and the ``top``
    cells with the most extra time (a gap ends at a cell's read, which may come up to robustkit.jobs.CELLS_AHEAD
    cells after its launch: a stall while launching a later cell shows at an earlier cell's read)."""
    extra = [(c - w, label) for c, w, label in zip(cold, warm, labels)]
    worst = sorted(extra, key=lambda e: -e[0])[:top]
    return (f"cells cold - warm: {sum(e for e, _ in extra):+.2f} s in all; most at the reads of "
            + ", ".join(f"{label} {e:+.2f}" for e, label in worst)
            + " (s; a gap ends at the cell's read, up to CELLS_AHEAD cells after its launch)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="folder:PATH (or folder:ARCHIVE.tar.gz) [the extracted shared CIFAR archive]")
    p.add_argument("--labels", type=int, default=250)
    p.add_argument("--steps", type=int, default=None, help="training steps [1000 on CUDA, 40 on CPU]")
    p.add_argument("--arch", default=None, help="[wrn-28-2 on CUDA, wrn-16-2 on CPU]")
    p.add_argument("--batch-size", type=int, default=None, help="labeled batch (= unlabeled batch) [64 on CUDA, 32 on CPU]")
    p.add_argument("--limit", type=int, default=None, help="test images for every evaluation [all on CUDA, 300 on CPU]")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", default=None, help="run folder [a temporary folder, deleted afterwards unless --keep]")
    p.add_argument("--keep", action="store_true", help="keep the run folder (checkpoint, metrics, eval results)")
    p.add_argument("--accuracy-seeds", default=None,
                   help="also train these seeds (e.g. 0,1,2) in each of --accuracy-modes, training only, and compare "
                        "final test accuracies (does the fast step train as well as the eager one?)")
    p.add_argument("--accuracy-modes", default="default,eager",
                   help="step modes for --accuracy-seeds (default: robustkit's for the device) [default,eager]")
    p.add_argument("--eager-seeds", type=int, default=None,
                   help="train only the first N of --accuracy-seeds in eager mode (it is the slow one) [all]")
    p.add_argument("--corrupt-batch-sizes", default=None,
                   help="also time the corrupt stage again at these evaluation batch sizes (e.g. 1000,5000; the default "
                        "is robustkit's: 5000 on CUDA at 32 px): the default's again is the stage without the process's "
                        "one-off costs; each run is cut into setup, cells and result files")
    p.add_argument("--corrupt-switches", default=None,
                   help="also time the corrupt stage again with these switches of robustkit corrupt, a comma list of "
                        "'+'-joined sets of fold-bn, fuse-conv, cudnn-benchmark, no-SWITCH (one of those off, where the "
                        "device's default turns it on: no-fuse-conv on CUDA) and bN (evaluation batch N), e.g. "
                        "fuse-conv+cudnn-benchmark,fold-bn+b10000,no-fuse-conv")
    p.add_argument("--corrupt-warm-up-batch", type=int, default=None,
                   help="the corrupt stage's first (cold) run with its corruptions' warm-up made on N images per call "
                        "(robustkit.corruptions.warm_up.for_grid's batch; robustkit's default: 2), e.g. the grid's batch")
    p.add_argument("--corrupt-sync-each-report", action="store_true",
                   help="time the corrupt stage's first (cold) run as this benchmark did until 2026-11-27: the device "
                        "synchronised at each of the job's progress reports (which empties the queue of cells the grid "
                        "keeps ahead; a user's run does not do it), to compare")
    p.add_argument("--corrupt-trace", default=None, metavar="PATH",
                   help="run the corrupt stage's first (cold) run under torch.profiler, every thread: print its longest "
                        "host-side calls and write the whole trace to PATH (gzipped Chrome JSON); the profiler slows "
                        "the run, so the CIFAR-10-C target is not judged")
    p.add_argument("--accuracy-only", action="store_true",
                   help="run only the --accuracy-seeds comparison (skip the timed pipeline)")
    p.add_argument("--compile-eval", action="store_true",
                   help="also run the fgsm and corrupt stages with --compile (TorchInductor; compilation included), "
                        "after the default ones, in the same run")
    p.add_argument("--json", default=None, help="write the targets (name, measured, goal, met) as JSON here")
    args = p.parse_args(argv)
    try:
        switches = parse_corrupt_switches(args.corrupt_switches)
    except ValueError as e:
        print(f"error: --corrupt-switches: {e}", file=sys.stderr)
        return 2
    if args.accuracy_only and not args.accuracy_seeds:
        print("error: --accuracy-only needs --accuracy-seeds (e.g. 0,1,2)", file=sys.stderr)
        return 2

    from robustkit.jobs import ModelOptions, run_corruptions, run_fgsm
    from robustkit.train import fit

    device = setup_device(args.device, args.threads)
    if device is None:
        return 2
    cuda = device.type == "cuda"
    reduced = []
    defaults = {"steps": (1000, 40), "arch": ("wrn-28-2", "wrn-16-2"), "batch_size": (64, 32), "limit": (None, 300)}
    for name, (on_cuda, on_cpu) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, on_cuda if cuda else on_cpu)
            if not cuda:
                reduced.append(f"--{name.replace('_', '-')} {on_cpu}")

    header("whole pipeline: GradAug-semi training -> FGSM sweep -> corruption grid", device)
    t0 = time.perf_counter()
    spec, data_desc = resolve_data(args.data, allow_digits=False)
    if args.accuracy_only:
        report_targets(compare_accuracy(args, spec, device), args.json)
        print(f"# after: {load_average()}")
        return 0
    train_set, test_set = load_dataset(spec, "train"), load_dataset(spec, "test")
    t_data = time.perf_counter() - t0
    n_eval = len(test_set.labels) if args.limit is None else min(args.limit, len(test_set.labels))
    eps = parse_eps("0.05..0.25", 0.05)
    names, sevs = parse_corruptions("all"), parse_severities("1..5")
    print(f"# data {data_desc} ({len(train_set.labels):,} train / {len(test_set.labels):,} test images)")
    print(f"# train: gradaug-semi, {args.arch}, {args.labels} labels, batch {args.batch_size} labeled + "
          f"{args.batch_size} unlabeled, {args.steps} steps, eval every {max(1, args.steps // 10)} steps on "
          f"{n_eval:,} images | fgsm: eps {eps} (0 = clean) on {n_eval:,} | corrupt: {len(names)} x {len(sevs)}, "
          f"preset auto, on {n_eval:,} | device {device}")
    if reduced:
        print(f"# CPU: REDUCED setting ({', '.join(reduced)} by default); not comparable with the GPU figure")

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    run_dir = out / f"cifar10-{args.labels}-gradaug-semi-s{args.seed}"
    try:
        cfg = TrainConfig(dataset=spec, labels=args.labels, semi=True, method="gradaug", arch=args.arch,
                          batch_size=args.batch_size, steps=args.steps, eval_limit=args.limit, seed=args.seed,
                          device=str(device))
        print("train ...", file=sys.stderr)
        t = time.perf_counter()
        fitted = fit(cfg, run_dir, progress=False)
        t_train = time.perf_counter() - t
        print("fgsm ...", file=sys.stderr)
        t = time.perf_counter()
        fg = run_fgsm([fitted.checkpoint], eps, limit=args.limit, device=str(device))[0]
        t_fgsm = time.perf_counter() - t
        print("corrupt ...", file=sys.stderr)
        results = []

        def corrupt_job(**kw):   # the corrupt stage, as robustkit corrupt runs it, cut at its progress reports
            return lambda progress: results.append(run_corruptions(
                [fitted.checkpoint], names, sevs, preset="auto", limit=args.limit, device=str(device),
                progress=progress, **kw)[0])

        n_cells = len(names) * len(sevs)
        # the first run's warm-up (what it hid, what the grid waited for) and its reads of the cells (ahead or not)
        warm_up_kw = {} if args.corrupt_warm_up_batch is None else {"batch": args.corrupt_warm_up_batch}
        trace = HostTrace(device, args.corrupt_trace) if args.corrupt_trace else contextlib.nullcontext()
        with captured_warm_ups(**warm_up_kw) as warm_ups, captured_flights() as flights, trace:
            runs = {"default batch": timed_job(corrupt_job(), device, n_cells, args.corrupt_sync_each_report)}
        longest = trace.longest(15) if args.corrupt_trace else None
        warm_up_stats = warm_ups[0].stats() if warm_ups else None
        flight_stats = flights[0].stats() if flights else None
        co, t_corrupt = results[0], runs["default batch"].total
        failed = {}   # label of a run again -> why it failed (the runs after it, and the targets, still count)

        def again_run(label: str, **kw):
            print(f"corrupt, {label} ...", file=sys.stderr)
            try:
                return timed_job(corrupt_job(force=True, **kw), device, n_cells)
            except Exception as exc:  # noqa: BLE001  (a switch that breaks is a row, not the end of the benchmark)
                failed[label] = f"{type(exc).__name__}: {first_line(exc)}"
                print(f"corrupt, {label}: failed ({failed[label]})", file=sys.stderr)
                return None

        again = {}   # evaluation batch -> the stage run again at it
        for bs in [int(v) for v in (args.corrupt_batch_sizes or "").split(",") if v]:
            r = again_run(f"batch {bs}", batch_size=bs, out=str(out / f"corrupt-b{bs}"))
            if r is not None:
                again[bs] = r
        runs.update({f"again, batch {bs:,}": r for bs, r in again.items()})
        switched, moved = {}, {}   # label -> the stage run again with robustkit corrupt's switches; its accuracies'
        for i, (label, kw) in enumerate(switches.items()):   # largest distance from the default run's (same batches)
            r = again_run(label, out=str(out / f"corrupt-{i}"), **kw)
            if r is not None:
                switched[label] = r
                if "batch_size" not in kw:
                    moved[label] = max(abs(a - b) for a, b in zip(_accuracies(co), _accuracies(results[-1])))
        runs.update({f"again, {label}": r for label, r in switched.items()})
        compiled = {}
        if args.compile_eval:   # as a user runs `robustkit fgsm/corrupt --compile`: compilation included
            opts = ModelOptions(compile=True)
            print("fgsm --compile ...", file=sys.stderr)
            t = time.perf_counter()
            run_fgsm([fitted.checkpoint], eps, limit=args.limit, device=str(device), out=str(out / "fgsm-compiled"),
                     force=True, options=opts)
            compiled["fgsm"] = time.perf_counter() - t
            print("corrupt --compile ...", file=sys.stderr)
            t = time.perf_counter()
            run_corruptions([fitted.checkpoint], names, sevs, preset="auto", limit=args.limit, device=str(device),
                            out=str(out / "corrupt-compiled"), force=True, options=opts)
            compiled["corrupt"] = time.perf_counter() - t
    except RobustkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if not args.keep and not args.out:
            shutil.rmtree(out, ignore_errors=True)

    total = t_train + t_fgsm + t_corrupt
    step_s = fitted.elapsed_s / args.steps  # fit's own clock: training steps only, evals and checkpoints excluded
    nonzero = [e for e in eps if e > 0]
    test_note = (f"final test acc {fitted.test_acc:.1%}" if args.limit is None else
                 f"final test acc {fitted.test_acc:.1%} on a fixed shuffled subset of {n_eval} test images")
    rows = [
        ["data (extract + decode, one-off; cached afterwards)", f"{t_data:,.1f}", "-", "not in total"],
        ["train (fit: steps + in-training evals + checkpoints)", f"{t_train:,.1f}", f"{t_train / total:.0%}",
         f"{step_s * 1000:,.0f} ms/step (steps only); {test_note}"],
        [f"fgsm (clean + {len(nonzero)} eps)", f"{t_fgsm:,.1f}", f"{t_fgsm / total:.0%}",
         f"clean {fg['clean_accuracy']:.1%}, eps {nonzero[-1]:g} {fg['results'][-1]['accuracy']:.1%}"],
        [f"corrupt ({len(names)} x {len(sevs)} cells)", f"{t_corrupt:,.1f}", f"{t_corrupt / total:.0%}",
         f"mean corruption acc {co['mean_corruption_accuracy']:.1%}; {t_corrupt / (len(names) * len(sevs)):.2f} s/cell"],
        ["total (train + fgsm + corrupt)", f"{total:,.1f}", "100%", f"{total / 60:.1f} min"],
    ]
    rows += [[f"corrupt again, evaluation batch {bs:,}", f"{r.total:,.1f}", "-",
              f"{r.total / t_corrupt:.2f}x the default batch's time"] for bs, r in again.items()]
    warm = again.get(co["batch_size"])
    rows += [[f"corrupt again, {label}", f"{r.total:,.1f}", "-",
              f"{r.total / t_corrupt:.2f}x the default batch's time"
              + (f"; {r.total / warm.total:.2f}x its run again ({warm.total:,.1f} s)" if warm else "")
              + (f"; accuracies within {100 * moved[label]:.2f} points of the default run's" if label in moved else "")]
             for label, r in switched.items()]
    rows += [[f"corrupt again, {label}", "-", "-", f"failed: {why}"] for label, why in failed.items()]
    rows += [[f"{stage} again, --compile (compilation included)", f"{s:,.1f}", "-",
              f"{(t_fgsm if stage == 'fgsm' else t_corrupt) / s:.2f}x the uncompiled stage"] for stage, s in compiled.items()]
    print()
    print(table(["stage", "seconds", "share", "notes"], rows, align="lrrl"))
    print()
    print(f"the corrupt stage cut at its progress reports (s; default batch {co['batch_size']:,}):")
    print(table(["corrupt run", "setup", "first cell*", "other cells", "per cell", "result files", "total"],
                [[name, f"{r.setup:.2f}", f"{r.cells[0]:.2f}", f"{sum(r.cells[1:]):.2f}",
                  f"{sum(r.cells[1:]) / max(1, len(r.cells) - 1):.3f}", f"{r.tail:.2f}", f"{r.total:.2f}"]
                 for name, r in runs.items()], align="lrrrrrr"))
    print("* the first cell also holds the model build and the clean pass; setup: checkpoint resolved, test data "
          "loaded and placed on the device; the first run of the process also pays each corruption's first call; "
          "each report is timed on the host as it comes, without draining the device (a cell is reported once its "
          "counts are read back, up to CELLS_AHEAD cells after its launch)")
    if warm is not None:
        print(cold_cells_line(runs["default batch"].cells, warm.cells, [f"{c} s{v}" for c in names for v in sevs]))
    made_on = "" if args.corrupt_warm_up_batch is None else f" (warm-up on {args.corrupt_warm_up_batch} images per call)"
    if args.corrupt_sync_each_report:
        made_on += " (timed with the device synchronised at each progress report)"
    print(f"the default batch's run{made_on}: {warm_up_line(warm_up_stats)}; {flight_line(flight_stats)}")
    if longest is not None:
        print(f"the default batch's run, traced ({'every thread' if trace.all_threads else 'its own thread only'}; "
              f"the profiler slows it: its times are not figures), its longest host-side calls (ms, start, thread):")
        print("\n".join(trace_lines(longest)))
        print(f"trace: {args.corrupt_trace}")
    full = default_steps(args.labels, len(train_set.labels), args.batch_size)
    print(f"at {step_s * 1000:,.0f} ms/step the default {full:,}-step training for {args.labels} labels would take "
          f"~{step_s * full / 60:,.1f} min of steps (extrapolated; plus its in-training evaluations)")
    targets = []
    if cuda:
        targets.append(target(f"GradAug-semi default {full:,}-step run, {args.labels} labels (steps only)",
                              step_s * full / 60, 3.0, "min"))
        if n_eval == 10_000 and args.arch == "wrn-28-2" and not (args.corrupt_trace or args.corrupt_sync_each_report):
            targets.append(target(f"CIFAR-10-C 19 x 5 x 10,000 images, WRN-28-2 (corrupt stage, its default batch "
                                  f"{co['batch_size']:,})", t_corrupt, 5.0, "s"))
    if args.corrupt_trace or args.corrupt_sync_each_report:
        print("target CIFAR-10-C 19 x 5 x 10,000, WRN-28-2 <= 5 s: not judged (the run was "
              + ("traced)" if args.corrupt_trace else "timed with a sync at each report)"))
    elif not (cuda and n_eval == 10_000 and args.arch == "wrn-28-2"):
        print("target CIFAR-10-C 19 x 5 x 10,000, WRN-28-2 <= 5 s: not judged (CUDA, all 10,000 test images, "
              "--arch wrn-28-2 only)")
    if args.accuracy_seeds:
        targets += compare_accuracy(args, spec, device)
    if args.keep or args.out:
        print(f"run folder: {run_dir}")
    report_targets(targets, args.json, {"corrupt_runs": {name: {"setup_s": r.setup, "cells_s": r.cells, "files_s": r.tail,
                                                                "total_s": r.total} for name, r in runs.items()},
                                        "corrupt_default_batch": co["batch_size"],
                                        "corrupt_warm_up": warm_up_stats, "corrupt_reads": flight_stats,
                                        "corrupt_runs_failed": failed, "corrupt_trace_longest": longest,
                                        "corrupt_switches_accuracy_moved": moved})
    print(f"# after: {load_average()}")
    return 0


def _accuracies(result: dict) -> list[float]:
    """The clean accuracy, then every cell's, in (corruption, severity) order."""
    cells = sorted((r["corruption"], r["severity"], r["accuracy"]) for r in result["results"])
    return [result["clean_accuracy"]] + [a for _, _, a in cells]


SWITCHES = {"fold-bn": "fold_bn", "fuse-conv": "fuse_conv", "cudnn-benchmark": "cudnn_benchmark"}


def parse_corrupt_switches(text: str | None) -> dict[str, dict]:
    """"fuse-conv+cudnn-benchmark,fold-bn+b10000" -> {label: run_corruptions keyword arguments}."""
    from robustkit.jobs import ModelOptions

    out = {}
    for item in [v.strip() for v in (text or "").split(",") if v.strip()]:
        flags, batch = {}, None
        for part in item.split("+"):
            if part in SWITCHES:
                flags[SWITCHES[part]] = True
            elif part.startswith("no-") and part[3:] in SWITCHES:   # a CUDA default turned off (--no-fuse-conv)
                flags[SWITCHES[part[3:]]] = False
            elif part.startswith("b") and part[1:].isdigit() and int(part[1:]) > 0:
                batch = int(part[1:])
            else:
                raise ValueError(f"unknown switch {part!r} in {item!r} (use {', '.join(SWITCHES)}, no-SWITCH or bN, "
                                 "joined by '+')")
        label = " ".join([f"--{'' if flags[v] else 'no-'}{k}" for k, v in SWITCHES.items() if v in flags]
                         + ([f"--batch-size {batch}"] if batch else []))
        out[label] = {"options": ModelOptions(**flags), **({"batch_size": batch} if batch else {})}
    return out


def compare_accuracy(args, spec: str, device) -> list[dict]:
    """Final test accuracy of GradAug-semi trained with each step mode over several seeds (training only)."""
    import statistics

    from robustkit.step import choose_mode
    from robustkit.train import fit

    seeds = [int(v) for v in args.accuracy_seeds.split(",")]
    default = choose_mode(None, "gradaug", device, 1)[0]
    # "default" is the device's mode: on the CPU that is "eager" itself, so one mode is run once, not twice
    modes = list(dict.fromkeys(default if m == "default" else m for m in args.accuracy_modes.split(",")))
    acc: dict[str, list[float]] = {m: [] for m in modes}
    rows = []
    for mode in modes:
        for i, seed in enumerate(seeds):
            if mode == "eager" and args.eager_seeds is not None and i >= args.eager_seeds:
                continue
            with tempfile.TemporaryDirectory(prefix="bench-acc-") as tmp:
                cfg = TrainConfig(dataset=spec, labels=args.labels, semi=True, method="gradaug", arch=args.arch,
                                  batch_size=args.batch_size, steps=args.steps, eval_every=args.steps,
                                  eval_limit=args.limit, seed=seed, device=str(device))
                print(f"accuracy: {mode} seed {seed} ...", file=sys.stderr)
                t = time.perf_counter()
                r = fit(cfg, Path(tmp) / "run", progress=False, step_mode=mode)
                wall = time.perf_counter() - t
            acc[mode].append(r.test_acc)
            rows.append([mode, seed, f"{r.test_acc:.2%}", f"{r.elapsed_s / args.steps * 1000:,.1f}", f"{wall:,.1f}"])
    print()
    print(table(["step mode", "seed", "test acc", "ms/step", "wall s"], rows, align="lrrrr"))
    out = []
    fast_modes = [m for m in modes if m != "eager"]
    ref_mode, fast_mode = ("eager", fast_modes[0]) if "eager" in modes and fast_modes else (None, None)
    if ref_mode is None:
        print(f"accuracy: no comparison with eager steps (modes run: {', '.join(modes)}; the default on "
              f"{device.type} is {default})")
    for mode, values in acc.items():
        if values:
            sd = statistics.stdev(values) if len(values) > 1 else float("nan")
            print(f"{mode}: mean {statistics.mean(values):.2%} sd {sd:.2%} over {len(values)} seeds")
    if ref_mode and acc[ref_mode] and len(acc[fast_mode]) > 1:
        fast = acc[fast_mode]
        mean, sd = statistics.mean(fast), statistics.stdev(fast)
        n = len(acc[ref_mode])
        # the eager runs use the first seeds of the fast ones: compare them seed by seed, against the spread
        diff = max(abs(a - b) for a, b in zip(acc[ref_mode], fast))
        out.append(target(f"|test acc {ref_mode} - {fast_mode}|, same seed, {args.steps} steps (goal: within 2 sd of "
                          f"{fast_mode} over {len(fast)} seeds, sd {sd:.2%})", diff * 100, max(2 * sd, 0.005) * 100,
                          "points"))
        print(f"{ref_mode} seeds {seeds[:n]}: {', '.join(f'{a:.2%}' for a in acc[ref_mode])}; {fast_mode} mean {mean:.2%}")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
