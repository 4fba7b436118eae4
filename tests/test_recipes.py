"""The paper-reproduction recipes: robustkit/configs/*.yaml, train/low_data_grid.py and eval/evaluate_grid.py.

The end-to-end test runs the recipes in --quick mode on the ``cifar_folder`` fixture (a real slice of the
shared CIFAR-10 archive). That folder also stands in for STL-10 (no STL-10 data on these machines): what is
tested there is the recipe's plumbing for the second dataset column, not STL-10 itself.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

from robustkit.config import CONFIG_DIR
from robustkit.scripting import torch_threads

REPO = Path(__file__).resolve().parents[1]
PAPER_CELLS = {("cifar10", 250), ("cifar10", 1000), ("cifar10", 4000), ("stl10", 1000)}
METHODS = ("baseline", "gradaug", "gradaug_semi", "cutmix_p0.5", "cutmix_p0.1", "shakedrop", "mean_teacher")


def _load(relpath: str):
    """Import a recipe script as a module (they are scripts, not part of the package)."""
    path = REPO / relpath
    name = f"recipes_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


grid = _load("train/low_data_grid.py")
evaluate = _load("eval/evaluate_grid.py")


# ----------------------------------------------------------------------------------------------- configs

def test_every_paper_cell_has_a_config_and_nothing_else():
    expected = {f"{ds}_{n}_{m}.yaml" for ds, n in PAPER_CELLS for m in METHODS
                if not (ds == "stl10" and m == "mean_teacher")}  # the paper has no STL-10 Mean Teacher number
    assert {p.name for p in CONFIG_DIR.glob("*.yaml")} == expected


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_config_loads_merges_and_says_what_it_is(path):
    from robustkit.config import load_config_file, merge

    cfg = merge(load_config_file(path), {})
    ds, labels, method = re.fullmatch(r"(cifar10|stl10)_(\d+)_([\w.]+)", path.stem).groups()
    assert (cfg.dataset, cfg.labels, cfg.method_label) == (ds, int(labels), method.replace("_", "-"))
    # WRN-28-2 and the authors' optimiser, explicitly.
    assert (cfg.arch, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.nesterov) == ("wrn-28-2", 0.1, 0.9, 5e-4, True)
    if cfg.method == "gradaug":
        assert (cfg.subnets, cfg.min_width) == (3, 0.8)
        # CIFAR: the authors' resolutions; STL-10: derived from the image size (so --dataset may change).
        assert cfg.resolutions == ([32, 28, 24] if ds == "cifar10" else None)
    assert cfg.steps is None and cfg.seed == 0  # length and seed come from robustkit / the grid
    header = path.read_text().splitlines()[0]
    assert header.startswith("# ") and ("CIFAR-10" if ds == "cifar10" else "STL-10") in header


# ----------------------------------------------------------------------------------------------- planning

def test_quick_labels_scale_distinct_cells_and_leave_unlabeled_images():
    # 30 images per class (the fixture): 4000 -> 10 per class, 1000 -> 3, 250 -> 1.
    assert [grid.quick_labels(n, 10, 30) for n in (250, 1000, 4000)] == [10, 30, 100]
    # A folder with 5 images in its smallest class keeps one unlabeled image per class.
    assert grid.quick_labels(4000, 10, 5) == 40
    assert grid.quick_labels(250, 3, 2) == 3


def test_plan_names_configs_and_order():
    cells = grid.plan({"cifar10": "folder:/x", "stl10": "stl10"}, [250, 1000], ["baseline", "gradaug-semi"], [0, 1])
    names = [c.name for c in cells]
    assert names[:4] == ["cifar10-250-baseline-s0", "cifar10-250-gradaug-semi-s0",
                         "cifar10-250-baseline-s1", "cifar10-250-gradaug-semi-s1"]
    assert len(cells) == 2 * 2 * 2 + 1 * 2 * 2  # cifar10: 250, 1000; stl10: 1000
    assert all(c.config.is_file() for c in cells)
    assert {c.spec for c in cells if c.dataset == "stl10"} == {"stl10"}


def test_plan_rejects_label_counts_outside_the_paper_grid():
    from robustkit.errors import RobustkitError

    with pytest.raises(RobustkitError, match="not in the paper's grid"):
        grid.plan({"cifar10": "cifar10"}, [500], ["baseline"], [0])


# ----------------------------------------------------------------------------------------------- errors

def test_a_failing_run_stops_the_grid_with_its_one_line_error(tmp_path, capsys):
    code = grid.main(["--cifar10", f"folder:{tmp_path / 'missing'}", "--labels", "250", "--seeds", "0",
                      "--out", str(tmp_path / "runs"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2
    assert "error: dataset folder" in err and "does not exist" in err and "Traceback" not in err
    assert "grid stopped at cifar10-250-baseline-s0" in err
    assert not list((tmp_path / "runs").rglob("checkpoint.pt"))  # stopped at the first run


# ----------------------------------------------------------------------------------------------- end to end

def _mtimes(root: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in root.rglob("checkpoint.pt")}


def test_quick_grid_then_quick_evaluation(cifar_folder, tmp_path, capsys):
    from robustkit import checkpoint
    from robustkit.train import fit

    spec, out = f"folder:{cifar_folder}", tmp_path / "grid"
    common = ["--out", str(out), "--device", "cpu", "--quick"]
    # An interrupted run (checkpoint at step 1 of 3) of the STL-10 cell (the CIFAR slice stands in).
    stl = grid.Cell("stl10", 1000, "baseline", 0, spec)
    with torch_threads(1):
        fit(grid.expected_config(stl, grid.cell_flags(stl, {(spec, 1000): 30})), out / stl.name, stop_at=1,
            progress=False)
    # All three methods at 250 labels (quick: 1 per class) ...
    assert grid.main(["--cifar10", spec, "--labels", "250", *common]) == 0
    assert "0 finished (skipped), 0 to resume, 3 to train" in capsys.readouterr().out
    # ... and the STL-10 cell, which is resumed, not restarted.
    assert grid.main(["--stl10", spec, "--labels", "1000", "--methods", "baseline", *common]) == 0
    text = capsys.readouterr().out
    assert "0 finished (skipped), 1 to resume, 0 to train" in text and f"{stl.name}: resuming" in text
    runs = {"cifar10-250-baseline-s0", "cifar10-250-gradaug-s0", "cifar10-250-gradaug-semi-s0", stl.name}
    assert set(_mtimes(out)) == runs
    for name in runs:
        data = checkpoint.read(out / name / "checkpoint.pt")
        cfg = data["config"]
        assert data["finished"] and data["step"] == 3 and cfg["arch"] == "wrn-10-1" and cfg["seed"] == 0
        assert cfg["labels"] == (10 if name.startswith("cifar10-250") else 30)
        assert (cfg["method"], cfg["semi"]) == {"baseline": ("baseline", False), "gradaug": ("gradaug", False),
                                                "gradaug-semi": ("gradaug", True)}[name.split("-", 2)[2][:-3]]
    assert [m["step"] for m in checkpoint.read(out / stl.name / "checkpoint.pt")["metrics"]] == [1, 3]

    # A second invocation trains nothing: every checkpoint is left untouched.
    before = _mtimes(out)
    assert grid.main(["--cifar10", spec, "--labels", "250", *common]) == 0
    assert "3 finished (skipped), 0 to resume, 0 to train" in capsys.readouterr().out
    assert grid.main(["--stl10", spec, "--labels", "1000", "--methods", "baseline", *common]) == 0
    assert "1 finished (skipped), 0 to resume, 0 to train" in capsys.readouterr().out
    assert _mtimes(out) == before

    # A full-size grid into the same folder refuses to mix with the quick runs.
    assert grid.main(["--cifar10", spec, "--labels", "250", "--methods", "baseline", "--seeds", "0",
                      "--out", str(out), "--device", "cpu"]) == 2
    assert "holds a run with other settings" in capsys.readouterr().err

    # Quick evaluation: FGSM 0.05..0.25 + 2 corruptions x 2 severities on 50 images, then the reports.
    # ... as a 2-job array (each evaluates its share, no reports), then the reports once.
    assert evaluate.main([str(out), "--quick", "--device", "cpu", "--shard", "1/2"]) == 0
    assert "shard 1/2: 2 of 4 checkpoints" in capsys.readouterr().out
    assert not (out / "report").exists()
    assert evaluate.main([str(out), "--quick", "--device", "cpu", "--shard", "2/2"]) == 0
    assert evaluate.main([str(out), "--quick", "--device", "cpu", "--report-only"]) == 0
    for name in runs:
        fgsm = json.loads((out / name / "eval" / "fgsm.json").read_text())
        assert [r["eps"] for r in fgsm["results"]] == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2, 0.25])
        assert fgsm["n"] == 50 and fgsm["limit"] == 50
        corr = json.loads((out / name / "eval" / "corruptions.json").read_text())
        assert {(r["corruption"], r["severity"]) for r in corr["results"]} == {
            (c, s) for c in ("gaussian_noise", "contrast") for s in (1, 3)}
        assert corr["complete"] and corr["preset"] == "cifar-10-c"

    report_dir = out / "report"
    overall = (report_dir / "report.md").read_text()
    for name in runs:
        assert re.search(rf"^\| {re.escape(name)} \|", overall, re.M), name
    low_data = overall[overall.index("## Low-data accuracy"):]
    rows = re.findall(r"^\| folder:\S+ \| (\d+) \| ([\w-]+) \| wrn-10-1 \| 3 \| 1 \|", low_data, re.M)
    assert sorted(rows) == [("10", "baseline"), ("10", "gradaug"), ("10", "gradaug-semi"), ("30", "baseline")]

    # One report per (dataset, labels), with that group's seed-0 baseline for CE/mCE.
    slice_name = cifar_folder.name
    by_group = {
        f"{slice_name}-10": ("cifar10-250-baseline-s0", ["cifar10-250-gradaug-s0", "cifar10-250-gradaug-semi-s0"]),
        f"{slice_name}-30": ("stl10-1000-baseline-s0", []),
    }
    index = (report_dir / "index.md").read_text()
    for folder, (base, others) in by_group.items():
        text = (report_dir / folder / "report.md").read_text()
        assert f"baseline `{base}`" in text and f"| {base} (baseline) | baseline |" in text
        assert all(f"| {o} |" in text for o in others)
        assert re.search(rf"^\| {re.escape(base)} \(baseline\) \| 100\.0 \| 100\.0 \| 100\.0 \|", text, re.M)
        assert f"[{folder}]({folder}/report.md)" in index and f"baseline `{base}`" in index
        assert (report_dir / folder / "mce_bars.png").is_file()


def test_methods_all_is_every_row_of_the_paper_table_with_its_number():
    from robustkit.config import load_config_file, merge, resolve
    from robustkit.report import paper_number

    cells = grid.plan({"cifar10": "cifar10", "stl10": "stl10"}, [250, 1000, 4000], grid._methods("all"), [0])
    assert len(cells) == 3 * 7 + 6
    for cell in cells:
        cfg = resolve(merge(load_config_file(cell.config), {}), n_labeled=cell.labels, n_train=50000, image_size=32,
                      flip_default=True)
        assert cfg.method_label == cell.method, cell        # the config trains what the row is called
        assert paper_number(cell.dataset, cell.labels, cfg.method_label) is not None, cell


def test_shard_i_of_n_takes_the_cells_k_with_k_mod_n_equal_to_i_minus_1():
    """README (Grids): `--shard I/N` trains cell k of `--list` when k mod N = I - 1: shard 1 starts at the first
    cell, shard N at cell N - 1."""
    from robustkit.scripting import in_shard

    assert [k for k in range(10) if in_shard(k, (1, 4))] == [0, 4, 8]
    assert [k for k in range(10) if in_shard(k, (4, 4))] == [3, 7]
    assert [k for k in range(3) if in_shard(k, (1, 1))] == [0, 1, 2]

def test_grid_shards_split_the_cells_and_list_shows_them(tmp_path, capsys):
    from robustkit.scripting import in_shard, parse_shard

    args = ["--cifar10", "cifar10", "--stl10", "stl10", "--methods", "all", "--out", str(tmp_path / "g"), "--list"]
    assert grid.main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == (3 * 7 + 6) * 3 and all("new" in ln for ln in lines)   # 3 seeds, nothing trained
    shards = [{k for k in range(len(lines)) if in_shard(k, (i, 4))} for i in range(1, 5)]
    assert set().union(*shards) == set(range(len(lines))) and sum(map(len, shards)) == len(lines)
    assert grid.main([*args, "--shard", "2/4"]) == 0 and "shard 2/4" in capsys.readouterr().out
    from robustkit.errors import RobustkitError

    for bad in ("0/4", "5/4", "x"):
        with pytest.raises(RobustkitError, match="--shard"):
            parse_shard(bad)
