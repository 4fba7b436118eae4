"""The benchmark protocols' numbers (15 corruptions x 5 severities; ImageNet-C mCE against AlexNet), the extra 4
and all-19 numbers shown apart, what a result without the 15 x 5 says instead, and the long-format CSV.

Expectations are computed here by hand from the published numbers (typed in below from the source), not
through robustkit.report.
"""

from __future__ import annotations

import csv
import json
import statistics

import pytest

from cli_helpers import assert_one_line_error, invoke
from handmade import corr_result, fgsm_result, make_run
from robustkit import report
from robustkit.report import protocols

BENCH = ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
         "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression"]
EXTRA = ["speckle_noise", "gaussian_blur", "spatter", "saturate"]
# The "Average" column of the "AlexNet ImageNet-C Error" table (hendrycks/robustness README.md): the mean AlexNet
# error over the five severities, typed in independently of the per-severity numbers in robustkit.
ALEXNET_AVERAGE = {
    "gaussian_noise": 0.886428, "shot_noise": 0.894468, "impulse_noise": 0.922640, "defocus_blur": 0.819880,
    "glass_blur": 0.826268, "motion_blur": 0.785948, "zoom_blur": 0.798360, "snow": 0.866816, "frost": 0.826572,
    "fog": 0.819324, "brightness": 0.564592, "contrast": 0.853204, "elastic_transform": 0.646056,
    "pixelate": 0.717840, "jpeg_compression": 0.606500, "speckle_noise": 0.845388, "gaussian_blur": 0.787108,
    "spatter": 0.717512, "saturate": 0.658248,
}
ALEXNET_CLEAN = 0.4345


def grid(names, acc=lambda c, s: 0.5):
    return {(c, s): acc(c, s) for c in names for s in range(1, 6)}


def test_the_15_and_the_4_are_the_corruption_packages():
    from robustkit.corruptions import COMMON, EXTRA as CEXTRA

    assert list(protocols.COMMON) == BENCH == list(COMMON)
    assert list(protocols.EXTRA) == EXTRA == list(CEXTRA)


def test_alexnet_table_agrees_with_the_published_averages():
    """Each row's five severities average to the source's 'Average' column (catches a mistyped cell)."""
    table = protocols.ALEXNET_IMAGENET_C_ERRORS
    assert set(table) == set(ALEXNET_AVERAGE)
    for name, errors in table.items():
        assert len(errors) == 5 and statistics.fmean(errors) == pytest.approx(ALEXNET_AVERAGE[name], abs=1e-6), name
    assert protocols.ALEXNET_CLEAN_ERROR == ALEXNET_CLEAN


def imagenet_result(clean=0.75):
    # every cell 0.5 (error 0.5), except gaussian_noise: accuracies 0.9 .. 0.5 (errors 0.1 .. 0.5, sum 1.5);
    # the 4 extra are there too and must not enter mCE.
    cells = grid(BENCH + EXTRA)
    cells.update({("gaussian_noise", s): 1.0 - 0.1 * s for s in range(1, 6)})
    return corr_result(cells, clean=clean, preset="imagenet-c", num_classes=1000)


def test_imagenet_mce_by_hand():
    n = protocols.protocol_numbers(imagenet_result())
    # CE_c = sum_s E / sum_s E_AlexNet = sum_s E / (5 x AlexNet average)
    ce = {c: 2.5 / (5 * ALEXNET_AVERAGE[c]) for c in BENCH}
    ce["gaussian_noise"] = 1.5 / (5 * 0.886428)
    assert n.protocol == "ImageNet-C" and n.complete
    assert n.mce == pytest.approx(sum(ce.values()) / 15, rel=1e-6)
    # relative: sum_s (E - E_clean) / sum_s (E_AlexNet - E_AlexNet,clean); clean error 0.25
    rel = {c: (5 * 0.5 - 5 * 0.25) / (5 * ALEXNET_AVERAGE[c] - 5 * ALEXNET_CLEAN) for c in BENCH}
    rel["gaussian_noise"] = (1.5 - 5 * 0.25) / (5 * 0.886428 - 5 * ALEXNET_CLEAN)
    assert n.relative_mce == pytest.approx(sum(rel.values()) / 15, rel=1e-6)
    # the mean accuracy over the 15 x 5 next to it: 14 x 5 cells of 0.5 and gaussian_noise 0.9..0.5 (mean 0.7)
    assert n.accuracy == pytest.approx((14 * 0.5 + 0.7) / 15)
    assert n.by_severity[1] == pytest.approx((14 * 0.5 + 0.9) / 15)
    # the released ImageNet-C files (preset "released:imagenet-c") are an ImageNet-C result too: the same mCE
    released = protocols.protocol_numbers({**imagenet_result(), "preset": "released:imagenet-c", "source": "released"})
    assert released.protocol == "ImageNet-C" and released.mce == pytest.approx(sum(ce.values()) / 15, rel=1e-6)
    # shown in the CLI table's caption and in the JSON
    from rich.console import Console

    console = Console(width=200, record=True, color_system=None)
    console.print(report.corruption_table(imagenet_result()))
    text = " ".join(console.export_text().split())  # the caption wraps at the table's width
    assert f"AlexNet-normalised mCE {100 * sum(ce.values()) / 15:.1f}%" in text
    assert f"relative mCE {100 * sum(rel.values()) / 15:.1f}%" in text
    # generated images evaluated as floats are not what AlexNet's errors were measured on: the caption says so,
    # and not for images stored as released (--storage released) or for the released files
    assert "evaluated as floats" in text and "--storage released" in text
    for extra in ({"storage": "released"}, {"source": "released", "storage": "released"}):
        console = Console(width=200, record=True, color_system=None)
        console.print(report.corruption_table({**imagenet_result(), **extra}))
        assert "evaluated as floats" not in console.export_text()


def test_a_resnet50_like_result_lands_near_its_published_mce():
    """A model with exactly 0.767 x AlexNet's error in every cell has mCE 76.7 % (the published ResNet-50's)."""
    table = protocols.ALEXNET_IMAGENET_C_ERRORS
    cells = {(c, s): 1 - 0.767 * table[c][s - 1] for c in BENCH for s in range(1, 6)}
    n = protocols.protocol_numbers(corr_result(cells, clean=0.7613, preset="imagenet-c", num_classes=1000))
    assert n.mce == pytest.approx(0.767)
    assert protocols.published_mce("torchvision:resnet50")[0] == 0.767
    assert protocols.published_mce("torchvision:vit_b_16") is None and protocols.published_mce("runs/x") is None


def test_no_alexnet_mce_for_other_classes_or_missing_clean():
    r = imagenet_result()
    r["num_classes"] = 10  # e.g. STL-10 at 96 px gets the imagenet-c preset: AlexNet's errors do not apply
    n = protocols.protocol_numbers(r)
    assert n.mce is None and "1000 classes" in n.mce_note and n.accuracy is not None and not n.alexnet_applies
    n = protocols.protocol_numbers(imagenet_result(clean=None))
    assert n.mce is not None and n.relative_mce is None and "clean accuracy" in n.mce_note


def test_cifar_protocol_extra_and_all_19_by_hand(tmp_path):
    # accuracy depends on the corruption's position and the severity, so the means differ
    acc = lambda c, s: 0.95 - 0.02 * (BENCH + EXTRA).index(c) - 0.05 * s  # noqa: E731
    cells = grid(BENCH + EXTRA, acc)
    bench = [acc(c, s) for c in BENCH for s in range(1, 6)]
    extra = [acc(c, s) for c in EXTRA for s in range(1, 6)]
    r = corr_result(cells, preset="cifar-10-c")
    n = protocols.protocol_numbers(r)
    assert n.protocol == "CIFAR-10-C / CIFAR-100-C" and n.mce is None
    assert n.accuracy == pytest.approx(sum(bench) / 75)
    assert n.by_severity[3] == pytest.approx(sum(acc(c, 3) for c in BENCH) / 15)
    assert n.extra_accuracy == pytest.approx(sum(extra) / 20)
    assert n.all_accuracy == pytest.approx((sum(bench) + sum(extra)) / 95)
    # JSON: protocol first, labelled, and mean_common_accuracy is the 15 x 5 number
    data = json.loads(report.write_corruption_outputs(r, tmp_path)[0].read_text())
    p = data["protocol"]
    assert data["mean_common_accuracy"] == pytest.approx(sum(bench) / 75) == p["corruption_accuracy"]
    assert p["extra_corruptions"] == EXTRA and p["extra_accuracy"] == pytest.approx(sum(extra) / 20)
    assert p["all19_accuracy"] == pytest.approx((sum(bench) + sum(extra)) / 95) and p["missing"] == []
    assert data["mean_corruption_accuracy"] == pytest.approx((sum(bench) + sum(extra)) / 95)
    # the CLI table: three labelled summary lines, the extra ones said to be outside the benchmark
    from rich.console import Console

    console = Console(width=200, record=True, color_system=None)
    console.print(report.corruption_table(r))
    text = console.export_text()
    lines = {ln.split("│")[1].strip(): ln for ln in text.splitlines() if ln.count("│") > 2}
    assert f"{100 * sum(bench) / 75:.1f}" in lines["benchmark 15"]
    assert f"{100 * sum(extra) / 20:.1f}" in lines["extra 4"]
    assert f"{100 * (sum(bench) + sum(extra)) / 95:.1f}" in lines["all 19"]
    assert "validation corruptions, not part of the benchmark number" in " ".join(text.split())


def test_missing_corruptions_are_named_instead_of_a_number(tmp_path):
    cells = grid(BENCH)
    del cells[("fog", 2)]
    for s in range(1, 6):
        del cells[("glass_blur", s)]
    r = corr_result(cells, preset="imagenet-c", num_classes=1000)
    n = protocols.protocol_numbers(r)
    assert n.accuracy is None and n.mce is None and n.missing == ["glass_blur", "fog s2"]
    assert "missing glass_blur, fog s2" in n.missing_text()
    assert 2 not in n.by_severity and 1 not in n.by_severity  # glass_blur lacks every severity
    # the demo's severities 1, 3, 5: one item for the severities
    n135 = protocols.protocol_numbers(corr_result({k: v for k, v in grid(BENCH).items() if k[1] in (1, 3, 5)}))
    assert n135.missing == ["severities 2, 4"] and set(n135.by_severity) == {1, 3, 5}

    from rich.console import Console

    console = Console(width=200, record=True, color_system=None)
    console.print(report.corruption_table(r))
    text = console.export_text()
    flat = " ".join(text.split())
    assert "no ImageNet-C number" in flat and "missing glass_blur, fog s2" in flat and "mCE" not in flat
    bench_line = next(ln for ln in text.splitlines() if "benchmark 15" in ln)
    assert bench_line.split("│")[-2].strip() == "–"  # no protocol number printed
    data = json.loads(report.write_corruption_outputs(r, tmp_path)[0].read_text())
    assert data["mean_common_accuracy"] is None and data["protocol"]["missing"] == ["glass_blur", "fog s2"]
    # the multi-run report says it too, and prints no number in the protocol column
    root = tmp_path / "runs"
    make_run(root, "partial", dataset="folder:/x/imagenet", corr=r)
    md = report.write_report([root]).read_text()
    row = next(ln for ln in md.split("## Benchmark protocols")[1].splitlines() if ln.startswith("| partial"))
    assert "| missing |" in row
    assert "partial: no ImageNet-C number (it needs the 15 benchmark corruptions x 5 severities): missing " \
           "glass_blur, fog s2." in md


# ------------------------------------------------------------------------------------- long CSV
def csv_runs(root):
    make_run(root, "a", method="gradaug", semi=True, labels=250, seed=1,
             fgsm=fgsm_result({0.0: 0.9, 0.05: 0.5, 0.1: 0.3}, attack_params={"seed": 7}),
             corr=corr_result({("fog", 1): 0.8, ("saturate", 2): 0.7, ("noise", 1): 0.6}, seed=3))
    make_run(root, "b", labels=None, corr=corr_result({("fog", 1): 0.75}, clean=0.85, preset="released:cifar10-c",
                                                       source="released", model_source="runs/b"))
    return root


def test_report_csv_long_format(tmp_path):
    root = csv_runs(tmp_path / "runs")
    out = tmp_path / "res" / "results.csv"
    res = invoke("report", root, "--csv", out, "--out", tmp_path / "rep")
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["run", "model_source", "method", "labels", "seed", "arch", "dataset", "kind", "attack",
                             "eps", "corruption", "severity", "corruption_set", "preset", "eval_seed", "accuracy",
                             "n", "clean_accuracy", "source", "storage"]
    assert len(rows) == 3 + 3 + 1  # a: 3 epsilons + 3 corruption cells; b: 1 cell
    a_attack = [r for r in rows if r["run"] == "a" and r["kind"] == "attack"]
    assert [(r["eps"], r["accuracy"]) for r in a_attack] == [("0.0", "0.9"), ("0.05", "0.5"), ("0.1", "0.3")]
    assert {r["method"] for r in a_attack} == {"gradaug-semi"} and a_attack[0]["attack"] == "fgsm"
    assert a_attack[0]["eval_seed"] == "7" and a_attack[0]["seed"] == "1" and a_attack[0]["labels"] == "250"
    assert a_attack[0]["corruption"] == "" and a_attack[0]["source"] == "generated"
    by_corr = {r["corruption"]: r for r in rows if r["run"] == "a" and r["kind"] == "corruption"}
    assert by_corr["fog"]["corruption_set"] == "benchmark" and by_corr["saturate"]["corruption_set"] == "extra"
    assert by_corr["noise"]["corruption_set"] == "other" and by_corr["saturate"]["severity"] == "2"
    assert by_corr["saturate"]["accuracy"] == "0.7" and by_corr["fog"]["eval_seed"] == "3"
    assert by_corr["fog"]["n"] == "100" and by_corr["fog"]["eps"] == "" and by_corr["fog"]["preset"] == "cifar-10-c"
    (b,) = [r for r in rows if r["run"] == "b"]
    assert b["source"] == "released" and b["labels"] == "all" and b["model_source"] == "runs/b"
    assert b["clean_accuracy"] == "0.85" and b["preset"] == "released:cifar10-c"
    assert by_corr["fog"]["storage"] == "float"   # a file from before the setting: computed floats
    assert b["storage"] == "released" and a_attack[0]["storage"] == ""
    assert not list(out.parent.glob(".*.tmp"))  # written through a temp file, nothing left over
    # documented: every column in --help
    help_text = " ".join(invoke("report", "--help").output.split())
    for column in report.long_table.COLUMNS:
        assert column in help_text, column


def test_report_csv_into_a_folder_is_one_line(tmp_path):
    root = csv_runs(tmp_path / "runs")
    assert_one_line_error(invoke("report", root, "--csv", tmp_path), "--csv", "is a folder")
