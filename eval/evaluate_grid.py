"""Evaluate every checkpoint below RUNS_DIR (FGSM sweep + corruptions) and write the comparison reports.

    python eval/evaluate_grid.py runs/grid                  # eps 0.05..0.25, all corruptions x 5 severities

1. ``robustkit fgsm RUNS_DIR`` and ``robustkit corrupt RUNS_DIR`` (in-process; both resume cell by cell and
   skip results that are already on disk for the same checkpoint and settings);
2. ``robustkit report`` once over all runs -> ``RUNS_DIR/report/report.md``: the robustness table of every
   run and the low-data table (mean +- std over seeds next to the paper's numbers). No baseline there:
   CE/mCE divide by a baseline's errors, and a 250-label baseline is no yardstick for a 4000-label model;
3. ``robustkit report`` once per (dataset, labels) group, with that group's seed-0 baseline run as
   ``--baseline`` -> ``RUNS_DIR/report/<dataset>-<labels>/report.md``: CE/mCE of GradAug and GradAug-semi
   against the plain network trained on the same labels (the paper's comparison);
4. ``RUNS_DIR/report/index.md`` links them all.

``--quick`` evaluates 50 test images, 2 corruptions x 2 severities (the smoke test of the recipes).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a checkout without installing

from robustkit.scripting import run_cli, torch_threads  # noqa: E402

QUICK = {"limit": 50, "corruptions": "gaussian_noise,contrast", "severities": "1,3"}
_METHOD_ORDER = ("baseline", "gradaug", "gradaug-semi")


@dataclass
class Group:
    """Runs trained on the same data with the same number of labels: one CE/mCE report."""

    dataset: str
    labels: int | None
    runs: list  # robustkit.report.RunResult, baseline first, then GradAug, GradAug-semi; by seed
    baseline: object | None
    folder: str = ""


def group_runs(runs_dir: Path) -> list[Group]:
    """Group the run folders below ``runs_dir`` by (dataset, labels) from their config.yaml; pick each
    group's baseline: the method-'baseline' run with seed 0 (else its lowest seed) that has corruption
    results (CE/mCE need them)."""
    from robustkit.report import collect_runs

    groups: dict[tuple[str, int | None], list] = {}
    for run in collect_runs([runs_dir]):
        if run.has_config:
            groups.setdefault((run.dataset, run.labels), []).append(run)

    def order(run) -> tuple:
        rank = _METHOD_ORDER.index(run.method) if run.method in _METHOD_ORDER else len(_METHOD_ORDER)
        return rank, run.method, run.seed if run.seed is not None else 10**9, run.name

    result, used = [], set()
    for (dataset, labels), members in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or 10**9)):
        members.sort(key=order)
        candidates = [r for r in members if r.method == "baseline" and r.corruptions]
        base = min(candidates, key=lambda r: (r.seed != 0, r.seed if r.seed is not None else 10**9), default=None)
        folder = group_folder(dataset, labels, used)
        result.append(Group(dataset, labels, members, base, folder))
    return result


def group_folder(dataset: str, labels: int | None, used: set[str]) -> str:
    """``cifar10-jpeg75-250`` for folder:/x/cifar10-jpeg75 with 250 labels; unique within ``used``."""
    name = dataset.split(":", 1)[-1].rstrip("/").split("/")[-1] or "data"
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{name}-{'all' if labels is None else labels}")
    folder, k = base, 2
    while folder in used:
        folder, k = f"{base}-{k}", k + 1
    used.add(folder)
    return folder


def unfinished_runs(runs_dir: Path) -> list[str]:
    """Names of runs whose checkpoint is not the end of training (they are evaluated, but say so)."""
    from robustkit import checkpoint

    return [f.parent.name for f in checkpoint.find_checkpoints([runs_dir]) if not checkpoint.read(f).get("finished")]


def write_index(report_dir: Path, groups: Sequence[Group]) -> Path:
    """index.md: the overall report and one line per (dataset, labels) report, with its baseline."""
    from robustkit.io import write_text

    lines = ["# Low-data grid: reports", "",
             "- [All runs](report.md): robustness of every run, low-data table (mean ± std over seeds vs the paper).",
             "", "Per (dataset, labels), CE/mCE against the baseline trained on the same labels:", ""]
    for g in groups:
        labels = "all" if g.labels is None else g.labels
        base = f"baseline `{g.baseline.name}`" if g.baseline is not None else "no baseline run: no CE/mCE"
        lines.append(f"- [{g.folder}]({g.folder}/report.md): `{g.dataset}`, {labels} labels, "
                     f"{len(g.runs)} runs, {base}")
    return write_text(report_dir / "index.md", "\n".join(lines) + "\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="evaluate_grid.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs_dir", type=Path, metavar="RUNS_DIR", help="folder holding the runs (e.g. runs/grid)")
    p.add_argument("--eps", default="0.05..0.25", help="FGSM epsilons: A..B (step 0.05), a comma list [0.05..0.25]")
    p.add_argument("--limit", type=int, help="evaluate N test images (a fixed shuffle) [all; --quick: 50]")
    p.add_argument("--corruptions", help="all | common | extra | comma list [all; --quick: gaussian_noise,contrast]")
    p.add_argument("--severities", help="1..5 or a comma list [1..5; --quick: 1,3]")
    p.add_argument("--preset", default="auto", help="imagenet-c | cifar-10-c | auto (cifar-10-c up to 64 px) [auto]")
    p.add_argument("--batch-size", type=int, help="images per batch [1000 on CUDA, 250 on CPU]")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N [auto]")
    p.add_argument("--quick", action="store_true", help="50 images, 2 corruptions x 2 severities: a smoke test")
    p.add_argument("--shard", metavar="I/N", help="evaluate only checkpoint k with k mod N == I-1 (sorted paths), no "
                                                 "reports: one job of an array; then run once with --report-only")
    p.add_argument("--report-only", action="store_true", help="write the reports from the results on disk")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars [on for a terminal, off with --quick]")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from robustkit.errors import RobustkitError

    args = parse_args(argv)
    with torch_threads(1 if args.quick else None):
        try:
            return _evaluate(args)
        except RobustkitError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code


def _evaluate(args: argparse.Namespace) -> int:
    runs_dir: Path = args.runs_dir
    quick = QUICK if args.quick else {}
    limit = args.limit if args.limit is not None else quick.get("limit")
    corruptions = args.corruptions or quick.get("corruptions", "all")
    severities = args.severities or quick.get("severities", "1..5")
    progress = args.progress if args.progress is not None else (sys.stderr.isatty() and not args.quick)
    common = ["--device", args.device, "--progress" if progress else "--no-progress"]
    common += ["--limit", str(limit)] if limit is not None else []
    common += ["--batch-size", str(args.batch_size)] if args.batch_size is not None else []

    late = unfinished_runs(runs_dir)  # also: a clear error if RUNS_DIR holds no checkpoint
    if late:
        print(f"note: {len(late)} run(s) are not finished; their latest checkpoint is evaluated: "
              f"{', '.join(late[:6])}{' ...' if len(late) > 6 else ''}")
    from robustkit import checkpoint
    from robustkit.scripting import in_shard, parse_shard

    shard = parse_shard(args.shard)
    targets = [str(runs_dir)]
    if args.shard:
        files = sorted(str(f) for f in checkpoint.find_checkpoints([runs_dir]))
        targets = [f for k, f in enumerate(files) if in_shard(k, shard)]
        print(f"shard {args.shard}: {len(targets)} of {len(files)} checkpoints")
        if not targets:
            return 0
    steps = [] if args.report_only else [
        ("fgsm", ["fgsm", *targets, "--eps", args.eps, *common]),
        ("corruptions", ["corrupt", *targets, "--corruptions", corruptions, "--severities", severities,
                         "--preset", args.preset, *common]),
    ]
    for what, cli_args in steps:
        t0 = time.perf_counter()
        print(f"{what}: robustkit {' '.join(cli_args)}", flush=True)
        code = run_cli(cli_args)
        if code != 0:
            print(f"evaluation stopped in {what} (exit {code}): fix the error above and start again; "
                  "finished cells are kept", file=sys.stderr)
            return code
        print(f"{what}: {time.perf_counter() - t0:.1f} s", flush=True)
    if args.shard:
        print(f"shard {args.shard} done; when every shard is: python eval/evaluate_grid.py {runs_dir} --report-only")
        return 0

    report_dir = runs_dir / "report"
    groups = group_runs(runs_dir)
    reports = [(["report", str(runs_dir), "--out", str(report_dir)], report_dir / "report.md")]
    for g in groups:
        cli_args = ["report", *(str(r.path) for r in g.runs), "--out", str(report_dir / g.folder)]
        if g.baseline is not None:
            cli_args += ["--baseline", str(g.baseline.path)]
        reports.append((cli_args, report_dir / g.folder / "report.md"))
    for cli_args, path in reports:
        code = run_cli(cli_args, quiet=True)
        if code != 0:
            return code
        print(f"wrote {path}")
    print(f"wrote {write_index(report_dir, groups)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
