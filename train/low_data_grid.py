"""Train the GradAug paper's low-data grid: (dataset, labels) x method x seed, one `robustkit train` per run.

    python train/low_data_grid.py --cifar10 folder:data/cifar10-jpeg75 --stl10 stl10 --seeds 0,1,2 --out runs/grid

Every run is ``robustkit train --config <dataset>_<labels>_<method> --dataset SPEC --seed S
--out OUT/<dataset>-<labels>-<method>-s<seed>``, called in-process (one Python + torch start-up for the whole
grid). The grid can be stopped and started again at any time: a finished run is skipped, an unfinished
one continues from its checkpoint (``--resume``), and a folder that holds a run with other settings stops
the grid instead of being mixed into the table. The first failing run stops the grid with its one-line
error (exit status of the CLI).

``--quick`` trains the same grid for 3 steps of a tiny network with label counts scaled to the folder, so a
test (tests/test_recipes.py) can run the recipe end to end in seconds and it cannot rot.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a checkout without installing

from robustkit.config import CONFIG_DIR  # noqa: E402  (robustkit/configs: the configs ship with the package)
from robustkit.scripting import in_shard, parse_shard, run_cli, torch_threads  # noqa: E402

# The paper's low-data table: dataset column -> label counts (GradAug, Yang et al. NeurIPS 2020).
GRID: dict[str, tuple[int, ...]] = {"cifar10": (250, 1000, 4000), "stl10": (1000,)}
# Every row of the paper's low-data table (Mean Teacher has no STL-10 number there, so no STL-10 config).
ALL_METHODS = ("baseline", "cutmix-p0.5", "cutmix-p0.1", "shakedrop", "gradaug", "gradaug-semi", "mean-teacher")
METHODS = ("baseline", "gradaug", "gradaug-semi")  # the default: GradAug's own rows
DEFAULT_SEEDS = (0, 1, 2)

# --quick: a few steps of a tiny network, evaluated on 50 test images; labels scaled (see quick_labels).
QUICK_FLAGS: dict[str, object] = {"steps": 3, "arch": "wrn-10-1", "batch_size": 16, "eval_limit": 50, "eval_every": 3}
QUICK_MAX_PER_CLASS = 10  # the grid's largest label count (4000) becomes this many labels per class

# Settings that make two runs of one cell the same experiment; a folder holding a run that differs in
# one of them is not silently reused.
_SAME_RUN_KEYS = ("labels", "method", "semi", "cutmix_prob", "seed", "batch_size", "steps", "eval_limit")


@dataclass(frozen=True)
class Cell:
    """One run of the grid: the paper's cell (dataset column, label count, method) and a seed."""

    dataset: str   # paper column: cifar10 | stl10
    labels: int    # the paper's label count (quick mode trains on fewer, see quick_labels)
    method: str    # a row of ALL_METHODS: baseline, cutmix-p0.5, ..., gradaug-semi, mean-teacher
    seed: int
    spec: str      # what --dataset gets: cifar10, stl10, folder:PATH, ...

    @property
    def name(self) -> str:
        return f"{self.dataset}-{self.labels}-{self.method}-s{self.seed}"

    @property
    def config(self) -> Path:
        return CONFIG_DIR / f"{self.dataset}_{self.labels}_{self.method.replace('-', '_')}.yaml"


def _int_list(text: str, flag: str) -> list[int]:
    from robustkit.errors import RobustkitError

    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise RobustkitError(f"{flag} takes a comma list of whole numbers, e.g. 0,1,2; got {text!r}") from None
    if not values:
        raise RobustkitError(f"{flag} needs at least one value, e.g. {flag} 0,1,2")
    return list(dict.fromkeys(values))


def _methods(text: str) -> list[str]:
    from robustkit.errors import RobustkitError

    if text.strip().lower() == "all":
        return list(ALL_METHODS)
    methods = [m.strip().lower().replace("_", "-") for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown or not methods:
        raise RobustkitError(f"--methods takes all or a comma list of {', '.join(ALL_METHODS)}; got {text!r}")
    return list(dict.fromkeys(methods))


def plan(specs: dict[str, str], labels: Sequence[int], methods: Sequence[str], seeds: Sequence[int]) -> list[Cell]:
    """The runs to do, in a useful order: dataset, labels, seed, method (a seed's three methods finish
    together, so a half-done grid already gives like-for-like comparisons)."""
    from robustkit.errors import RobustkitError

    wanted = set(labels)
    paper_counts = {n for counts in GRID.values() for n in counts}
    stray = sorted(wanted - paper_counts)
    if stray:
        raise RobustkitError(f"--labels {','.join(map(str, stray))} is not in the paper's grid: use some of "
                             f"{', '.join(map(str, sorted(paper_counts)))} (or robustkit train directly)")
    cells = [Cell(ds, n, m, s, spec)
             for ds, spec in specs.items() for n in GRID[ds] if n in wanted for s in seeds for m in methods
             if Cell(ds, n, m, s, spec).config.is_file()]   # rows the paper has for that column
    if not cells:
        raise RobustkitError("nothing to train: give --cifar10 SPEC and/or --stl10 SPEC (and --labels that they have)")
    return cells


def quick_labels(paper_labels: int, num_classes: int, smallest_class: int) -> int:
    """Label count for --quick: the paper's count scaled so 4000 -> 10 per class (250 -> 1, 1000 -> 3),
    capped so every class keeps unlabeled images (GradAug-semi needs some). Distinct cells stay distinct,
    so the report's mean +- std table keeps one row per cell."""
    largest = max(n for counts in GRID.values() for n in counts)
    cap = max(1, min(QUICK_MAX_PER_CLASS, smallest_class - 1))
    per_class = max(1, math.ceil(cap * paper_labels / largest))
    return per_class * num_classes


def _class_counts(spec: str, data_dir: str | None) -> tuple[int, int]:
    """(number of classes, images in the smallest class) of the training split (decode-cached by robustkit)."""
    import torch

    from robustkit.data import load_dataset

    train = load_dataset(spec, "train", data_dir)
    counts = torch.bincount(train.labels, minlength=len(train.classes))
    return len(train.classes), int(counts.min())


def cell_flags(cell: Cell, quick: dict[tuple[str, int], int] | None, data_dir: str | None = None) -> dict[str, object]:
    """The TrainConfig values a new run of ``cell`` sets on top of its config file (as CLI flags)."""
    flags: dict[str, object] = {"dataset": cell.spec, "seed": cell.seed}
    if data_dir is not None:
        flags["data_dir"] = data_dir
    if quick is not None:
        flags.update(QUICK_FLAGS, labels=quick[cell.spec, cell.labels])
    return flags


def train_args(cell: Cell, flags: dict[str, object], out: Path, device: str, progress: bool) -> list[str]:
    """`robustkit train` arguments of a new run: the cell's config file, overridden by ``flags``."""
    args = ["train", "--config", str(cell.config), "--out", str(out / cell.name), "--device", device,
            "--progress" if progress else "--no-progress"]
    for key, value in flags.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def expected_config(cell: Cell, flags: dict[str, object]):
    """The TrainConfig that `robustkit train` starts for this cell (before data-derived defaults)."""
    from robustkit.config import load_config_file, merge

    return merge(load_config_file(cell.config), flags)


def run_state(run_dir: Path, expected) -> str:
    """'new', 'unfinished' or 'finished'; RobustkitError if the folder holds a run with other settings."""
    from robustkit import checkpoint
    from robustkit.data import parse_spec
    from robustkit.errors import RobustkitError

    ckpt = run_dir / checkpoint.FILENAME
    if not ckpt.is_file():
        return "new"  # also a run killed before its first checkpoint: fit() starts it afresh
    data = checkpoint.read(ckpt)
    saved = data.get("config") or {}
    differ = [k for k in _SAME_RUN_KEYS if getattr(expected, k) is not None and saved.get(k) != getattr(expected, k)]
    if data["dataset"]["spec"] != parse_spec(expected.dataset).canonical:
        differ.insert(0, "dataset")
    if differ:
        details = ", ".join(f"{k} {saved.get(k) if k != 'dataset' else data['dataset']['spec']!r} "
                            f"(grid: {getattr(expected, k)!r})" for k in differ)
        raise RobustkitError(f"{run_dir} holds a run with other settings ({details}): use another --out, "
                             "or delete that folder to retrain it")
    return "finished" if data.get("finished") else "unfinished"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="low_data_grid.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cifar10", metavar="SPEC",
                   help="CIFAR-10 as --dataset takes it: cifar10 | folder:PATH (omit to skip)")
    p.add_argument("--stl10", metavar="SPEC", help="STL-10 as --dataset takes it: stl10 | folder:PATH (omit to skip)")
    p.add_argument("--seeds", help="comma list [0,1,2; --quick: 0]")
    p.add_argument("--out", type=Path, default=Path("runs/grid"), help="folder of the runs [runs/grid]")
    p.add_argument("--labels", default="250,1000,4000", help="label counts of the paper's grid to train [all]")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"all (every row of the paper's table) or a comma list of {', '.join(ALL_METHODS)} "
                        f"[{','.join(METHODS)}]")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N [auto]")
    p.add_argument("--data-dir", help="where torchvision's cifar10/stl10 live [robustkit's default]")
    p.add_argument("--quick", action="store_true",
                   help="the same grid, 3 steps of wrn-10-1, labels scaled: a smoke test")
    p.add_argument("--shard", metavar="I/N", help="train only cell k with k mod N == I-1 (k in --list order): one "
                                                 "job of an N-job array, e.g. Slurm's $SLURM_ARRAY_TASK_ID/N")
    p.add_argument("--list", action="store_true", help="print the cells (with their shard and state) and exit")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars [on for a terminal, off with --quick]")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from robustkit.errors import RobustkitError

    args = parse_args(argv)
    try:
        specs = {ds: spec for ds, spec in (("cifar10", args.cifar10), ("stl10", args.stl10)) if spec}
        seeds = _int_list(args.seeds, "--seeds") if args.seeds else ([0] if args.quick else list(DEFAULT_SEEDS))
        cells = plan(specs, _int_list(args.labels, "--labels"), _methods(args.methods), seeds)
        progress = args.progress if args.progress is not None else (sys.stderr.isatty() and not args.quick)
        quick = None
        if args.quick:
            counts = {spec: _class_counts(spec, args.data_dir) for spec in specs.values()}
            quick = {(c.spec, c.labels): quick_labels(c.labels, *counts[c.spec]) for c in cells}
        shard = parse_shard(args.shard)
        jobs, listing = [], []
        for k, cell in enumerate(cells):
            flags = cell_flags(cell, quick, args.data_dir)
            state = run_state(args.out / cell.name, expected_config(cell, flags))
            listing.append(f"{k:4d}  shard {k % shard[1] + 1}/{shard[1]}  {state:10s}  {cell.name}")
            if in_shard(k, shard):
                jobs.append((cell, train_args(cell, flags, args.out, args.device, progress), state))
    except RobustkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    if args.list:
        print("\n".join(listing))
        return 0

    states = [state for *_, state in jobs]
    print(f"grid: {len(jobs)} runs in {args.out}" + (f" (shard {args.shard})" if args.shard else "")
          + f" - {states.count('finished')} finished (skipped), "
          f"{states.count('unfinished')} to resume, {states.count('new')} to train"
          + (" [quick]" if args.quick else ""))
    with torch_threads(1 if args.quick else None):
        return _train_all(jobs, args, progress)


def _train_all(jobs: list[tuple[Cell, list[str], str]], args: argparse.Namespace, progress: bool) -> int:
    """Run the jobs that are not finished, in order; stop at the first failure with its exit status."""
    started = time.perf_counter()
    for i, (cell, new_args, state) in enumerate(jobs, 1):
        if state == "finished":
            continue
        run_dir = args.out / cell.name
        if state == "unfinished":
            cli_args = ["train", "--resume", str(run_dir), "--device", args.device,
                        "--progress" if progress else "--no-progress"]
        else:
            cli_args = new_args
        print(f"[{i}/{len(jobs)}] {cell.name}: {'resuming' if state == 'unfinished' else 'training'} "
              f"(config {cell.config.stem})", flush=True)
        t0 = time.perf_counter()
        code = run_cli(cli_args)
        if code != 0:
            print(f"grid stopped at {cell.name} (exit {code}): fix the error above and start the grid again; "
                  "finished runs are skipped, unfinished ones resume", file=sys.stderr)
            return code
        print(f"[{i}/{len(jobs)}] {cell.name}: {time.perf_counter() - t0:.1f} s", flush=True)
    print(f"grid done in {time.perf_counter() - started:.1f} s: evaluate with "
          f"python eval/evaluate_grid.py {args.out}" + (" --quick" if args.quick else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
