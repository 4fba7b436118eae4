"""Tests for robustkit.report: CE/mCE math on hand-made numbers, writers, run collection, the report."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest

from handmade import corr_result, fgsm_result, make_run
from robustkit import report
from robustkit.errors import RobustkitError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# Two corruptions x two severities, numbers chosen so every ratio is easy by hand.
MODEL = {("noise", 1): 0.8, ("noise", 2): 0.6, ("blur", 1): 0.7, ("blur", 2): 0.5}
BASE = {("noise", 1): 0.6, ("noise", 2): 0.4, ("blur", 1): 0.5, ("blur", 2): 0.3}


# ---------------------------------------------------------------------------------------- CE math
def test_corruption_errors_by_hand():
    f, b = corr_result(MODEL, clean=0.9), corr_result(BASE, clean=0.8)
    ce = report.corruption_errors(f, b)
    # noise: (0.2 + 0.4) / (0.4 + 0.6) = 0.6 ; blur: (0.3 + 0.5) / (0.5 + 0.7) = 0.8 / 1.2
    assert ce == pytest.approx({"noise": 0.6, "blur": 2 / 3})
    assert list(ce) == ["noise", "blur"]  # first-seen order kept
    assert report.mce(f, b) == pytest.approx((0.6 + 2 / 3) / 2)


def test_relative_ce_by_hand():
    f, b = corr_result(MODEL, clean=0.9), corr_result(BASE, clean=0.8)
    rel = report.relative_corruption_errors(f, b)
    # noise: ((0.2-0.1) + (0.4-0.1)) / ((0.4-0.2) + (0.6-0.2)) = 0.4 / 0.6
    # blur:  ((0.3-0.1) + (0.5-0.1)) / ((0.5-0.2) + (0.7-0.2)) = 0.6 / 0.8
    assert rel == pytest.approx({"noise": 0.4 / 0.6, "blur": 0.75})
    assert report.relative_mce(f, b) == pytest.approx((0.4 / 0.6 + 0.75) / 2)


def test_mce_averages_the_15_benchmark_corruptions_not_the_extra_4(tmp_path):
    """Hendrycks & Dietterich's mCE is over the 15 benchmark corruptions; the 4 extra (their validation set)
    get a CE of their own but must not move the mean (the report once averaged all 19)."""
    base = {("gaussian_noise", 1): 0.6, ("fog", 1): 0.5, ("speckle_noise", 1): 0.8, ("saturate", 1): 0.9}
    model = {("gaussian_noise", 1): 0.8, ("fog", 1): 0.5, ("speckle_noise", 1): 0.2, ("saturate", 1): 0.95}
    f, b = corr_result(model, clean=0.95), corr_result(base, clean=0.92)
    ce = report.corruption_errors(f, b)
    assert ce == pytest.approx({"gaussian_noise": 0.2 / 0.4, "fog": 1.0, "speckle_noise": 0.8 / 0.2,
                                "saturate": 0.05 / 0.1})
    assert report.mce(f, b) == pytest.approx((0.5 + 1.0) / 2)            # not (0.5 + 1 + 4 + 0.5) / 4
    # relative: gaussian_noise (0.2 - 0.05) / (0.4 - 0.08), fog (0.5 - 0.05) / (0.5 - 0.08)
    assert report.relative_mce(f, b) == pytest.approx((0.15 / 0.32 + 0.45 / 0.42) / 2)
    # A sweep of the extra 4 alone still has a mean CE (over what it has).
    only_extra = {k: v for k, v in model.items() if k[0] in ("speckle_noise", "saturate")}
    assert report.mce(corr_result(only_extra), b) == pytest.approx((4.0 + 0.5) / 2)
    # The report's Robustness table gives the same number.
    root = tmp_path / "runs"
    make_run(root, "base", corr=b)
    make_run(root, "model", corr=f)
    text = report.write_report(root, out_dir=tmp_path / "rep", baseline=root / "base").read_text()
    row = next(line for line in text.split("## Robustness", 1)[1].splitlines() if line.startswith("| model"))
    assert row.rstrip(" |").split("|")[-2].strip() == "75.0", row


def test_relative_ce_undefined_when_the_baseline_loses_nothing():
    """Seen in the demo: jpeg costs the baseline nothing, so its degradation is 0 up to float rounding
    (0.97 - 0.97 + ... ~ 1e-17) and the ratio exploded to ~1e5. Below one test image it is undefined."""
    clean = 0.97
    base = corr_result({("jpeg", s): 0.97 for s in (1, 2, 3)} | {("fog", 1): 0.57}, clean=clean)
    model = corr_result({("jpeg", s): a for s, a in ((1, 0.96), (2, 0.97), (3, 0.95))} | {("fog", 1): 0.77},
                        clean=0.96)
    rel = report.relative_corruption_errors(model, base)
    assert math.isnan(rel["jpeg"])
    assert rel["fog"] == pytest.approx((0.23 - 0.04) / (0.43 - 0.03))
    assert report.relative_mce(model, base) == pytest.approx(rel["fog"])  # the undefined one is left out
    # One image of degradation (n = 100) is enough to be defined.
    base_one = corr_result({("jpeg", 1): 0.96}, clean=clean)
    assert math.isfinite(report.relative_corruption_errors(corr_result({("jpeg", 1): 0.95}), base_one)["jpeg"])


def test_baseline_against_itself_is_100_percent():
    b = corr_result(BASE, clean=0.8)
    assert report.mce(b, b) == pytest.approx(1.0)
    assert report.relative_mce(b, b) == pytest.approx(1.0)
    assert all(v == pytest.approx(1.0) for v in report.corruption_errors(b, b).values())


def test_missing_cells_only_shared_cells_count():
    partial = dict(MODEL)
    del partial[("noise", 2)]  # model lacks noise s2
    base = {**BASE, ("fog", 1): 0.5}  # baseline has an extra corruption the model lacks
    ce = report.corruption_errors(corr_result(partial), corr_result(base))
    # noise over s1 only: 0.2 / 0.4 ; blur as before ; fog left out
    assert ce == pytest.approx({"noise": 0.5, "blur": 2 / 3})
    assert report.mce(corr_result(partial), corr_result(base)) == pytest.approx((0.5 + 2 / 3) / 2)
    assert math.isnan(report.mce(corr_result({("fog", 1): 0.5}), corr_result(BASE)))  # nothing shared


def test_division_by_zero_is_guarded():
    perfect = corr_result({("noise", 1): 1.0, ("blur", 1): 0.5})
    ce = report.corruption_errors(corr_result({("noise", 1): 0.9, ("blur", 1): 0.75}), perfect)
    assert math.isnan(ce["noise"]) and ce["blur"] == pytest.approx(0.5)
    assert report.mce(corr_result({("noise", 1): 0.9, ("blur", 1): 0.75}), perfect) == pytest.approx(0.5)
    # baseline loses nothing to the corruption -> relative CE undefined, not a division error
    flat = corr_result({("noise", 1): 0.8}, clean=0.8)
    assert math.isnan(report.relative_mce(corr_result({("noise", 1): 0.5}), flat))


def test_ce_errors_on_preset_mismatch_and_missing_clean():
    with pytest.raises(RobustkitError, match="preset"):
        report.corruption_errors(corr_result(MODEL, preset="imagenet-c"), corr_result(BASE))
    with pytest.raises(RobustkitError, match="clean_accuracy"):
        report.relative_corruption_errors(corr_result(MODEL, clean=None), corr_result(BASE))


def test_means_and_paper_lookup():
    r = corr_result(MODEL)
    assert report.corruption_means(r) == pytest.approx({"noise": 0.7, "blur": 0.6})
    assert report.mean_corruption_accuracy(r) == pytest.approx(np.mean(list(MODEL.values())))
    assert report.paper_number("cifar10", 250, "gradaug-semi") == (52.95, 2.15)
    assert report.paper_number("folder:/x/cifar10-jpeg75", 4000, "baseline") == (80.17, 0.68)
    assert report.paper_number("stl10", 1000, "gradaug") == (70.42, 0.81)
    assert report.paper_number("cifar100", 250, "baseline") is None  # CIFAR-100 is not CIFAR-10
    assert report.paper_number("cifar10", 500, "baseline") is None
    assert report.paper_number("digits", 250, "baseline") is None



def test_every_paper_cell_is_the_number_its_shipped_config_cites():
    """The paper's low-data table, cell by cell, against the second transcription of it in the repository: each
    shipped config (one per cell) cites its paper number in its header ("low-data table: M ± S %"). A typo or
    two swapped rows in either shows here."""
    import re

    from robustkit.config import TrainConfig, load_config_file, shipped_configs

    cited = {}
    for path in shipped_configs().values():
        m = re.search(r"low-data table: ([\d.]+) ± ([\d.]+) %", Path(path).read_text())
        cfg = TrainConfig(**load_config_file(path))
        cited[(cfg.dataset, cfg.labels, cfg.method_label)] = (float(m.group(1)), float(m.group(2)))
    table = {(ds, n, method): v for (ds, n), row in report.PAPER_LOW_DATA.items() for method, v in row.items()}
    assert cited == table
    for (ds, n, method), v in cited.items():
        assert report.paper_number(ds, n, method) == v


# ------------------------------------------------------------------------------- per-checkpoint
def test_write_fgsm_outputs(tmp_path):
    result = fgsm_result({0.1: 0.5, 0.0: 0.9, 0.05: 0.7}, run="r", method="gradaug", sha256="00")
    paths = report.write_fgsm_outputs(result, tmp_path / "eval")
    assert [p.name for p in paths] == ["fgsm.json", "fgsm.csv", "fgsm.png"]
    data = json.loads(paths[0].read_text())
    assert [r["eps"] for r in data["results"]] == [0.0, 0.05, 0.1] and data["sha256"] == "00"
    rows = list(csv.DictReader(paths[1].open()))
    assert list(rows[0]) == ["eps", "accuracy", "n"] and float(rows[2]["accuracy"]) == 0.5
    assert paths[2].read_bytes()[:8] == PNG_MAGIC and paths[2].stat().st_size > 1000
    assert not list((tmp_path / "eval").glob("*.tmp")) and not list((tmp_path / "eval").glob(".*"))


def test_write_corruption_outputs_partial(tmp_path):
    cells = dict(MODEL)
    del cells[("blur", 2)]
    result = corr_result(cells, run="r")
    result.pop("clean_accuracy")
    result["clean_accuracy"] = 0.9
    paths = report.write_corruption_outputs(result, tmp_path)
    assert [p.name for p in paths] == ["corruptions.json", "corruptions.csv", "corruptions.png"]
    data = json.loads(paths[0].read_text())
    assert data["mean_corruption_accuracy"] == pytest.approx((0.8 + 0.6 + 0.7) / 3)
    assert list(data)[:3] == ["kind", "protocol", "mean_common_accuracy"]  # the JSON leads with the protocol
    assert data["mean_common_accuracy"] is None and data["protocol"]["corruption_accuracy"] is None
    assert len(list(csv.DictReader(paths[1].open()))) == 3
    assert paths[2].read_bytes()[:8] == PNG_MAGIC
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))


def test_writers_reject_percent_accuracies(tmp_path):
    with pytest.raises(ValueError, match="fraction"):
        report.write_fgsm_outputs(fgsm_result({0.1: 55.0}), tmp_path)
    assert not list(tmp_path.iterdir())


def test_rich_tables_show_percent():
    from rich.console import Console

    console = Console(width=120, record=True, color_system=None)
    cells = dict(MODEL)
    del cells[("blur", 2)]
    console.print(report.corruption_table(corr_result(cells, clean=0.9)))
    console.print(report.fgsm_table(fgsm_result({0.0: 0.9, 0.1: 0.456})))
    text = console.export_text()
    assert "clean" in text and "90.0" in text and "70.0" in text  # noise mean (0.8 + 0.6) / 2
    assert "–" in text  # the missing blur s2 cell
    assert "45.6" in text and "-44.4" in text  # fgsm accuracy and drop against clean


def test_fgsm_points_by_eps_a_rerun_wins_and_a_result_of_another_kind_is_refused(tmp_path):
    """ε values are one point when they agree to 1e-9 (8/255 written with 12 digits), distinct otherwise (0.031 is
    not 8/255); a later record for the same ε (a re-run cell) replaces the earlier one; a writer refuses a result
    whose kind is the other's."""
    from rich.console import Console

    result = fgsm_result({0.0: 0.9, 0.031: 0.5, 8 / 255: 0.4, 0.1: 0.2})
    result["results"] += [{"eps": 0.031372549019, "accuracy": 0.3, "n": 100},   # 8/255 again, re-run
                          {"eps": 0.1, "accuracy": 0.25, "n": 100}]             # 0.1 re-run
    table = report.fgsm_table(result)
    assert table.row_count == 4
    console = Console(width=120, record=True, color_system=None)
    console.print(table)
    rows = [[c.strip() for c in line.split("│")] for line in console.export_text().splitlines() if line.startswith("│")]
    accuracies = [r[2] for r in rows]
    assert accuracies == ["90.0", "50.0", "30.0", "25.0"]    # by ε: 0, 0.031, 8/255 (re-run), 0.1 (re-run)
    other = {**fgsm_result({0.1: 0.5}), "kind": "corruptions"}
    with pytest.raises(ValueError, match="expected a 'fgsm' result, got kind 'corruptions'"):
        report.write_fgsm_outputs(other, tmp_path)
    with pytest.raises(ValueError, match="expected a 'corruptions' result, got kind 'fgsm'"):
        report.write_corruption_outputs({**corr_result(MODEL), "kind": "fgsm"}, tmp_path)
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------- run folders
def test_collect_runs_expands_folders_and_labels_methods(tmp_path):
    make_run(tmp_path / "runs", "a", method="gradaug", semi=True, test_acc=0.5)
    make_run(tmp_path / "runs" / "nested", "b", method="gradaug", test_acc=0.6)
    (tmp_path / "runs" / "empty").mkdir()
    runs = report.collect_runs([tmp_path / "runs"])
    assert [r.name for r in runs] == ["a", "b"]
    assert [r.method for r in runs] == ["gradaug-semi", "gradaug"]
    assert runs[0].final_test_accuracy == (0.5, "metrics")  # the last test_acc line wins
    # the same run given twice comes back once
    assert len(report.collect_runs([tmp_path / "runs" / "a", tmp_path / "runs"])) == 2


def test_collect_runs_errors(tmp_path):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(RobustkitError, match="no runs"):
        report.collect_runs([tmp_path / "nothing"])
    with pytest.raises(RobustkitError, match="does not exist"):
        report.collect_runs([tmp_path / "missing"])
    run = make_run(tmp_path, "bad", fgsm=fgsm_result({0.1: 0.5}))
    (run / "eval" / "fgsm.json").write_text("{not json")
    with pytest.raises(RobustkitError, match="fgsm.json"):
        report.collect_runs([run])


# --------------------------------------------------------------------------------------- report
def build_runs(root: Path) -> Path:
    """Two baseline seeds (one evaluated) and three GradAug-semi seeds (partial/complete/no eval)."""
    base_cells = {**BASE}
    make_run(root, "base-s0", seed=0, test_acc=0.44, fgsm=fgsm_result({0.0: 0.8, 0.05: 0.3}, clean=0.8),
             corr=corr_result(base_cells, clean=0.8))
    make_run(root, "base-s1", seed=1, test_acc=0.46)
    partial = dict(MODEL)
    del partial[("blur", 2)]
    for seed, acc in enumerate([0.51, 0.55, 0.49]):
        make_run(root, f"semi-s{seed}", method="gradaug", semi=True, seed=seed, test_acc=acc,
                 fgsm=fgsm_result({0.0: 0.9, 0.05: 0.5, 0.1: 0.4}) if seed == 0 else None,
                 corr=corr_result(partial if seed == 0 else MODEL) if seed < 2 else None)
    return root


@pytest.fixture()
def runs_dir(tmp_path):
    return build_runs(tmp_path / "runs")


def table_rows(md: str, heading: str) -> list[list[str]]:
    """The rows (header included, separator excluded) of the first table after ``heading``."""
    section = md.split(heading, 1)[1]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    block = []
    for ln in section.splitlines()[section.splitlines().index(lines[0]):]:
        if not ln.startswith("|"):
            break
        block.append(ln)
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in block if not ln.startswith("|--")]


def test_report_with_baseline(runs_dir):
    path = report.write_report([runs_dir], baseline=runs_dir / "base-s0")
    assert path == runs_dir / "report" / "report.md"
    md = path.read_text()

    rob = table_rows(md, "## Robustness")
    header = rob[0]
    assert header[:5] == ["Run", "Method", "Labels", "Seed", "Clean"]
    # eps 0 is the Clean column, not repeated as an FGSM column
    # The corruption columns lead with the benchmark number (blank here: "noise"/"blur" are not the 15), then the
    # mean over the evaluated cells for runs without it; the user-chosen baseline's mCE stays.
    assert header[5:] == ["FGSM ε=0.05", "FGSM ε=0.1", "Corr. acc. 15×5", "Mean evaluated", "mCE", "Rel. mCE"]
    assert all(len(r) == len(header) for r in rob)
    by_run = {r[0]: dict(zip(header, r)) for r in rob[1:]}
    assert set(by_run) == {"base-s0 (baseline)", "semi-s0", "semi-s1"}  # runs without eval left out
    assert by_run["base-s0 (baseline)"]["mCE"] == "100.0"
    assert by_run["base-s0 (baseline)"]["FGSM ε=0.1"] == ""  # union of ε columns, blank where missing
    semi0 = by_run["semi-s0"]
    assert semi0["Method"] == "gradaug-semi" and semi0["FGSM ε=0.05"] == "50.0"
    assert semi0["Mean evaluated"] == "70.0*"  # (0.8 + 0.6 + 0.7) / 3, partial
    assert semi0["Corr. acc. 15×5"] == ""  # none of the 15 benchmark corruptions: no protocol number ...
    assert "semi-s0: no CIFAR-10-C / CIFAR-100-C number" in md and "missing gaussian_noise, shot_noise" in md
    # semi-s0 lacks blur s2: noise CE 0.6, blur over s1 only 0.3 / 0.5 = 0.6 -> mCE 60 %
    assert semi0["mCE"] == "60.0"
    # semi-s1 complete: mCE = (0.6 + 2/3) / 2 = 63.3 %
    assert by_run["semi-s1"]["mCE"] == f"{100 * (0.6 + 2 / 3) / 2:.1f}"
    assert "blur s2" in md and "different ε" in md

    per_corr = table_rows(md, "## Accuracy per corruption")
    assert per_corr[0] == ["Run", "noise", "blur", "15 × 5", "Evaluated"]
    ce = table_rows(md, "### Corruption error")
    assert ce[0] == ["Run", "noise", "blur", "mCE", "Rel. mCE"]
    assert dict(zip(ce[0], ce[2]))["noise"] == "60.0"

    low = table_rows(md, "## Low-data accuracy")
    hdr = low[0]
    groups = {(r[hdr.index("Method")]): dict(zip(hdr, r)) for r in low[1:]}
    semi = groups["gradaug-semi"]
    accs = [0.51, 0.55, 0.49]
    assert semi["n"] == "3" and semi["Seeds"] == "0, 1, 2"
    assert semi["Ours"] == f"{100 * statistics.fmean(accs):.2f} ± {100 * np.std(accs, ddof=1):.2f}"
    assert semi["Paper"] == "52.95 ± 2.15"
    assert groups["baseline"]["Ours"] == f"{100 * statistics.fmean([0.44, 0.46]):.2f} ± " \
                                         f"{100 * statistics.stdev([0.44, 0.46]):.2f}"
    assert groups["baseline"]["Paper"] == "45.23 ± 1.01"

    out = runs_dir / "report"
    for name in ("fgsm_overlay.png", "corruption_overlay.png", "mce_bars.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
        assert f"]({name})" in md
    assert not (out / "mean_corruption_bars.png").exists()
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))

    # Re-running over the same folder must not pick up the report folder as a run.
    assert len(report.collect_runs([runs_dir])) == 5


def test_report_without_baseline_and_folder_dataset(tmp_path):
    root = tmp_path / "exp"
    make_run(root, "j0", dataset="folder:/data/cifar10-jpeg75", labels=4000, seed=0, test_acc=0.7,
             corr=corr_result(MODEL))
    make_run(root, "j1", dataset="folder:/data/cifar10-jpeg75", labels=4000, seed=1, test_acc=0.72,
             corr=corr_result(MODEL, preset="imagenet-c", n=50))
    out = tmp_path / "elsewhere"
    md = report.write_report([root / "j0", root / "j1"], out_dir=out).read_text()
    low = table_rows(md, "## Low-data accuracy")
    row = dict(zip(low[0], low[1]))
    assert row["Dataset"] == "folder:cifar10-jpeg75" and row["Paper"] == "80.17 ± 0.68†"
    assert "re-encoding" in md and "different corruption presets" in md and "n = 50, 100" in md
    assert "mCE" not in table_rows(md, "## Robustness")[0]
    assert (out / "mean_corruption_bars.png").read_bytes()[:8] == PNG_MAGIC
    assert not (out / "mce_bars.png").exists()


def test_report_errors(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "a", fgsm=fgsm_result({0.1: 0.5}), corr=corr_result(MODEL))
    make_run(root, "nocorr", fgsm=fgsm_result({0.1: 0.5}))
    with pytest.raises(RobustkitError, match="no corruption results"):
        report.write_report([root], baseline=root / "nocorr")
    with pytest.raises(RobustkitError, match="neither a run folder"):
        report.write_report([root], baseline="nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RobustkitError, match="no runs"):
        report.write_report([tmp_path / "empty"])
    # baseline by name and as a separate folder both work
    assert report.write_report([root / "a"], baseline="a").is_file()
    other = make_run(tmp_path / "elsewhere", "ref", corr=corr_result(BASE))
    md = report.write_report([root / "a"], baseline=other).read_text()
    assert "ref (baseline)" in md


def test_package_layout_one_job_per_file():
    """The CE formula lives in a file named for it; the package keeps every public name importable."""
    from robustkit.report import corruption_error

    assert report.mce is corruption_error.mce and report.relative_mce is corruption_error.relative_mce
    for name in report.__all__:
        assert hasattr(report, name), name


def test_runs_of_another_length_are_not_pooled_as_more_seeds(tmp_path):
    """A seed group is one setting over seeds: the same method trained 1,000 and 2,000 steps is two groups of
    two seeds, not one of four (their spread would be the training length's, reported as the seeds')."""
    root = tmp_path / "lengths"
    for steps, accs in ((1000, (0.80, 0.82)), (2000, (0.90, 0.92))):
        for seed, acc in enumerate(accs):
            make_run(root, f"ga-{steps}-s{seed}", method="gradaug", seed=seed, steps=steps, test_acc=acc,
                     fgsm=fgsm_result({0.0: acc, 0.1: acc - 0.3}, clean=acc))
    rows = table_rows(report.write_report([root]).read_text(), "## Across seeds")
    head, body = rows[0], rows[1:]
    assert [(r[head.index("Steps")], r[head.index("n")]) for r in body] == [("1,000", "2"), ("2,000", "2")]
    assert sorted(r[head.index("Clean")] for r in body) == sorted(
        f"{100 * statistics.mean(a):.1f} ± {100 * statistics.stdev(a):.1f}" for a in ((0.80, 0.82), (0.90, 0.92)))


def test_runs_of_another_label_count_or_architecture_are_not_pooled_as_more_seeds(tmp_path):
    """Likewise the number of labels and the architecture are part of the setting: three settings of two seeds each
    are three groups of n = 2, each with its own mean ± std."""
    root = tmp_path / "settings"
    settings = {(250, "wrn-28-2"): (0.50, 0.54), (4000, "wrn-28-2"): (0.80, 0.84), (250, "wrn-10-1"): (0.30, 0.36)}
    for (labels, arch), accs in settings.items():
        for seed, acc in enumerate(accs):
            make_run(root, f"b-{labels}-{arch}-s{seed}", labels=labels, arch=arch, seed=seed, test_acc=acc,
                     fgsm=fgsm_result({0.0: acc, 0.1: acc - 0.2}, clean=acc))
    rows = table_rows(report.write_report([root]).read_text(), "## Across seeds")
    head, body = rows[0], rows[1:]
    got = {(r[head.index("Labels")], r[head.index("Arch")]): (r[head.index("n")], r[head.index("Clean")]) for r in body}
    assert len(body) == 3 and got == {
        (str(labels), arch): ("2", f"{100 * statistics.mean(a):.1f} ± {100 * statistics.stdev(a):.1f}")
        for (labels, arch), a in settings.items()}


def test_across_seeds_section_and_plot(tmp_path):
    root = tmp_path / "seeds"
    for seed, (clean, adv, noise) in enumerate([(0.90, 0.50, 0.60), (0.80, 0.30, 0.40)]):
        make_run(root, f"base-s{seed}", seed=seed, test_acc=clean, fgsm=fgsm_result({0.0: clean, 0.1: adv}, clean=clean),
                 corr=corr_result({("noise", 1): noise}, clean=clean))
    for seed, (clean, adv, noise) in enumerate([(0.92, 0.70, 0.80), (0.88, 0.60, 0.70)]):
        make_run(root, f"ga-s{seed}", method="gradaug", seed=seed, test_acc=clean,
                 fgsm=fgsm_result({0.0: clean, 0.1: adv}, clean=clean),
                 corr=corr_result({("noise", 1): noise}, clean=clean))
    path = report.write_report([root], baseline=root / "base-s0")
    md = path.read_text()
    rows = table_rows(md, "## Across seeds")
    assert rows[0] == ["Method", "Dataset", "Labels", "Arch", "Steps", "n", "Seeds", "Clean", "FGSM ε=0.1", "Mean evaluated",
                       "mCE"]
    by = {r[0]: dict(zip(rows[0], r)) for r in rows[1:]}
    sd = lambda a, b: 100 * statistics.stdev([a, b])  # noqa: E731
    assert by["baseline"]["Clean"] == f"85.0 ± {sd(0.9, 0.8):.1f}" and by["baseline"]["Seeds"] == "0, 1"
    assert by["gradaug"]["FGSM ε=0.1"] == f"65.0 ± {sd(0.7, 0.6):.1f}"
    assert by["gradaug"]["Mean evaluated"] == f"75.0 ± {sd(0.8, 0.7):.1f}"
    # mCE against base-s0 (error 0.4): gradaug errors 0.2 and 0.3 -> 50 % and 75 %
    assert by["gradaug"]["mCE"] == f"62.5 ± {100 * statistics.stdev([0.5, 0.75]):.1f}"
    assert by["baseline"]["mCE"] == f"125.0 ± {100 * statistics.stdev([1.0, 1.5]):.1f}"
    assert (path.parent / "seeds.png").read_bytes()[:8] == PNG_MAGIC and "](seeds.png)" in md
