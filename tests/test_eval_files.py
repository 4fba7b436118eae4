"""One result file per attack and per corruption source: evaluating a model another way adds a file, never
replaces one, and the report reads them all.

``fgsm.json`` / ``pgd.json`` / ``torchattacks-NAME.json`` hold attack sweeps; ``corruptions.json`` the
generated corruptions and ``corruptions-released.json`` the released files. Files an earlier version wrote
(every attack in ``fgsm.json``, released results in ``corruptions.json``) still serve as caches and reports.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import invoke
from torch import nn

from handmade import corr_result, fgsm_result, make_run
from robustkit.report import collect_runs, write_report

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")]


@pytest.fixture
def runs(evaluated_runs, tmp_path) -> Path:
    dst = tmp_path / "runs"
    shutil.copytree(evaluated_runs, dst)
    return dst


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _robustness_rows(text: str) -> list[list[str]]:
    section = text.split("## Robustness", 1)[1].split("\n## ", 1)[0]
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| ")][1:]


# ------------------------------------------------------------------------------------------------ attacks
def test_a_second_attack_adds_its_own_files_and_the_report_shows_both(runs, tmp_path):
    run = runs / "gradaug"
    fgsm_before = (run / "eval" / "fgsm.json").read_bytes()
    res = invoke("fgsm", run, "--attack", "pgd", "--steps", "2", "--eps", "0.05", "--limit", "30", "--no-progress",
                 "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert "recomputing" not in res.output
    assert (run / "eval" / "fgsm.json").read_bytes() == fgsm_before          # FGSM's sweep is untouched
    pgd = _json(run / "eval" / "pgd.json")
    assert pgd["attack"] == "pgd" and [r["eps"] for r in pgd["results"]] == [0.0, 0.05]
    assert (run / "eval" / "pgd.csv").is_file() and (run / "eval" / "pgd.png").stat().st_size > 0

    [loaded] = collect_runs([run])
    assert [a["attack"] for a in loaded.attacks] == ["fgsm", "pgd"] and loaded.fgsm["attack"] == "fgsm"

    text = write_report([run], out_dir=tmp_path / "rep", csv=tmp_path / "all.csv").read_text()
    assert "![Accuracy vs ε, pgd](pgd_overlay.png)" in text and (tmp_path / "rep" / "pgd_overlay.png").is_file()
    rows = _robustness_rows(text)
    # One row per attack: the FGSM row first (with the corruption numbers), then PGD's eps columns.
    assert [r[4] for r in rows] == ["fgsm", "pgd"], rows
    fgsm = _json(run / "eval" / "fgsm.json")
    assert rows[0][5] == f"{100 * fgsm['clean_accuracy']:.1f}" and rows[1][5] == f"{100 * pgd['clean_accuracy']:.1f}"
    with open(tmp_path / "all.csv") as f:
        attack_rows = [r for r in csv.DictReader(f) if r["kind"] == "attack"]
    assert sorted({(r["attack"], float(r["eps"])) for r in attack_rows}) == sorted(
        {("fgsm", e) for e in (0.0, 0.05, 0.1)} | {("pgd", e) for e in (0.0, 0.05)})


def test_a_pgd_sweep_written_by_an_older_version_to_fgsm_json_is_still_its_cache(runs):
    """Earlier versions wrote every attack to fgsm.json: a PGD run there is reused (no cell recomputed), written
    to pgd.json, and the old file is left as it was."""
    run = runs / "baseline"
    args = ("fgsm", run, "--attack", "pgd", "--steps", "2", "--eps", "0.05", "--limit", "30", "--no-progress",
            "--device", "cpu")
    assert invoke(*args).exit_code == 0
    legacy = (run / "eval" / "pgd.json").read_text()
    (run / "eval" / "fgsm.json").write_text(legacy)              # the layout an older version left
    for suffix in ("json", "csv", "png"):
        (run / "eval" / f"pgd.{suffix}").unlink()
    marked = json.loads(legacy)
    marked["results"][1]["accuracy"] = 0.123                     # a cached cell is reused, never recomputed
    (run / "eval" / "fgsm.json").write_text(json.dumps(marked))
    res = invoke(*args)
    assert res.exit_code == 0 and "recomputing" not in res.output, res.output
    assert _json(run / "eval" / "pgd.json")["results"][1]["accuracy"] == 0.123
    assert _json(run / "eval" / "fgsm.json") == marked
    # The report reads the PGD sweep once: pgd.json, the file named after it, wins over the old fgsm.json.
    (run / "eval" / "pgd.json").write_text(json.dumps({**marked, "results": marked["results"][:1]}))
    [loaded] = collect_runs([run])
    assert len(loaded.attacks) == 1 and len(loaded.fgsm["results"]) == 1


def test_fgsm_into_a_folder_whose_fgsm_json_holds_an_older_pgd_sweep_moves_it_first(runs):
    run = runs / "baseline"
    fgsm = (run / "eval" / "fgsm.json").read_text()
    old_pgd = json.dumps({**json.loads(fgsm), "attack": "pgd", "attack_params": {"steps": 2, "alpha": None, "seed": 0}})
    (run / "eval" / "fgsm.json").write_text(old_pgd)            # what an older version left after --attack pgd
    (run / "eval" / "fgsm.csv").write_text("eps,accuracy,n\n")
    res = invoke("fgsm", run, "--eps", "0.05", "--limit", "30", "--no-progress", "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert "note: moved" in res.output and "pgd.json" in res.output
    assert (run / "eval" / "pgd.json").read_text() == old_pgd   # the PGD sweep is kept, under its own name
    assert (run / "eval" / "pgd.csv").read_text() == "eps,accuracy,n\n"
    assert json.loads((run / "eval" / "fgsm.json").read_text())["attack"] == "fgsm"


def test_evaluation_folders_outside_runs_hold_one_file_per_attack(tmp_path):
    """``--out eval-x`` folders hold the result files directly; a PGD-only folder is still found."""
    folder = tmp_path / "eval-x"
    folder.mkdir()
    (folder / "pgd.json").write_text(json.dumps({**fgsm_result({0.0: 0.9, 0.1: 0.2}), "attack": "pgd"}))
    (folder / "notes.json").write_text(json.dumps({"something": "else"}))   # not a result: ignored
    [loaded] = collect_runs([tmp_path])
    assert loaded.path == folder.resolve() and loaded.fgsm["attack"] == "pgd"


# ------------------------------------------------------------------------------------ released vs generated
class _RedBins(nn.Module):
    """Class k when the image's mean red level lies in [k / K, (k + 1) / K)."""

    def __init__(self, k: int):
        super().__init__()
        self.register_buffer("centers", torch.arange(k, dtype=torch.float32) + 0.5)
        self.k = k
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = x[:, 0].mean((1, 2)) * self.k
        return -self.scale * (r[:, None] - self.centers) ** 2


def test_released_and_generated_results_of_one_model_sit_side_by_side(tmp_path):
    from PIL import Image

    k, n = 10, 12   # CIFAR-10-C has 10 classes
    model = tmp_path / "red.ts"
    torch.jit.save(torch.jit.script(_RedBins(k)), str(model))
    level = [int(round((c + 0.5) * 255 / k)) for c in range(k)]
    # Released CIFAR-10-C layout: fog.npy (5 severity blocks of n) + labels.npy; every image right but one.
    rel = tmp_path / "C10C"
    rel.mkdir()
    labels = np.arange(5 * n) % k
    arr = np.zeros((5 * n, 32, 32, 3), dtype=np.uint8)
    arr[..., 0] = np.array(level)[labels][:, None, None]
    arr[0, ..., 0] = level[(labels[0] + 1) % k]
    np.save(rel / "labels.npy", labels.astype(np.uint8))
    np.save(rel / "fog.npy", arr)
    # A test split to generate corruptions from: flat red images, one folder per class.
    folder = tmp_path / "flat" / "test"
    for c in range(k):
        (folder / f"c{c}").mkdir(parents=True)
        Image.fromarray(np.full((32, 32, 3), (level[c], 40, 0), np.uint8)).save(folder / f"c{c}" / "0.png")
    common = ("--trust-code", "--num-classes", k, "--mean", "0", "--std", "1", "--out", tmp_path / "ev", "--no-progress",
              "--device", "cpu", "--corruptions", "fog", "--severities", "1..2")
    res = invoke("corrupt", model, "--data", f"cifar10-c:{rel}", *common)
    assert res.exit_code == 0, res.output
    released = (tmp_path / "ev" / "corruptions-released.json").read_bytes()
    res = invoke("corrupt", model, "--data", f"folder:{folder}", *common)
    assert res.exit_code == 0, res.output
    assert "recomputing" not in res.output
    assert (tmp_path / "ev" / "corruptions-released.json").read_bytes() == released   # kept
    gen = _json(tmp_path / "ev" / "corruptions.json")
    assert gen["source"] == "generated" and [r["severity"] for r in gen["results"]] == [1, 2]
    assert [r["accuracy"] for r in _json(tmp_path / "ev" / "corruptions-released.json")["results"]] == \
        pytest.approx([(n - 1) / n, 1.0])

    text = write_report([tmp_path / "ev"], out_dir=tmp_path / "rep").read_text()
    section = text.split("## Generated vs released corruptions", 1)[1].split("\n## ", 1)[0]
    assert "`ev`: generated vs released" in section
    g = sum(r["accuracy"] for r in gen["results"]) / 2
    assert f"| fog | {100 * g:.1f} | {100 * ((n - 1) / n + 1) / 2:.1f} |" in section


def test_report_pairs_generated_and_released_results_in_one_run_folder(tmp_path):
    root = tmp_path / "runs"
    run = make_run(root, "wrn", corr=corr_result({("fog", 1): 0.9, ("fog", 2): 0.7}, source="generated"))
    header = {"sha256": "ab" * 32, "run": "wrn"}
    (run / "eval" / "corruptions-released.json").write_text(json.dumps(
        {**header, **corr_result({("fog", 1): 0.8, ("fog", 2): 0.4}, clean=0.85, preset="released:cifar10-c",
                                 source="released")}))
    [loaded] = collect_runs([run])
    assert loaded.corruptions["source"] == "generated" and loaded.released["source"] == "released"
    text = write_report(root, out_dir=tmp_path / "report", csv=tmp_path / "long.csv").read_text()
    section = text.split("## Generated vs released corruptions", 1)[1].split("\n## ", 1)[0]
    assert "`wrn`: generated vs released" in section and "| fog | 80.0 | 60.0 | +20.0 |" in section
    # The Benchmark protocols table has a row for each: the released files' numbers are what papers report.
    protocols = text.split("## Benchmark protocols", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in protocols.splitlines()
            if line.startswith("| ")][1:]
    assert [(r[0], r[2]) for r in rows] == [("wrn", "90.0"), ("wrn, released files", "85.0")]
    assert "wrn (released files): no CIFAR-10-C / CIFAR-100-C number" in protocols
    with open(tmp_path / "long.csv") as f:
        sources = sorted((r["source"], r["severity"]) for r in csv.DictReader(f) if r["kind"] == "corruption")
    assert sources == [("generated", "1"), ("generated", "2"), ("released", "1"), ("released", "2")]


# ------------------------------------------------------------------------------------ one folder, one dataset
def _flat_folder(root: Path, k: int, green: int) -> Path:
    from PIL import Image

    for c in range(k):
        (root / "test" / f"c{c}").mkdir(parents=True)
        red = int(round((c + 0.5) * 255 / k))
        Image.fromarray(np.full((32, 32, 3), (red, green, 0), np.uint8)).save(root / "test" / f"c{c}" / "0.png")
    return root / "test"


def test_evaluating_other_data_into_a_folder_says_the_report_would_mix_them(tmp_path):
    k = 10
    model = tmp_path / "red.ts"
    torch.jit.save(torch.jit.script(_RedBins(k)), str(model))
    a, b = _flat_folder(tmp_path / "a", k, 10), _flat_folder(tmp_path / "b", k, 200)
    common = ("--trust-code", "--num-classes", k, "--mean", "0", "--std", "1", "--out", tmp_path / "ev", "--no-progress",
              "--device", "cpu")
    res = invoke("corrupt", model, "--data", f"folder:{a}", "--corruptions", "fog", "--severities", "1", *common)
    assert res.exit_code == 0 and "note:" not in res.output, res.output
    res = invoke("fgsm", model, "--data", f"folder:{a}", "--eps", "0.1", *common)       # same data: no note
    assert res.exit_code == 0 and "note:" not in res.output, res.output
    res = invoke("fgsm", model, "--data", f"folder:{b}", "--eps", "0.1", *common)
    assert res.exit_code == 0, res.output
    assert "note: " in res.output and "would mix the two" in res.output and str(a.resolve()) in res.output

    text = write_report([tmp_path / "ev"], out_dir=tmp_path / "rep").read_text()
    assert "ev: its results are on different test data" in text


def test_the_report_does_not_flag_released_files_as_other_data(tmp_path):
    root = tmp_path / "runs"
    run = make_run(root, "wrn", dataset="digits", fgsm=fgsm_result({0.0: 0.9, 0.1: 0.5}),
                   corr=corr_result({("fog", 1): 0.9}, source="generated"))
    (run / "eval" / "corruptions-released.json").write_text(json.dumps(
        {"sha256": "ab" * 32, "dataset": "cifar10-c:/data/C10C",
         **corr_result({("fog", 1): 0.8}, preset="released:cifar10-c", source="released")}))
    text = write_report(root, out_dir=tmp_path / "report").read_text()
    assert "different test data" not in text
    corr = json.loads((run / "eval" / "corruptions.json").read_text())
    (run / "eval" / "corruptions.json").write_text(json.dumps({**corr, "dataset": "folder:/elsewhere/test"}))
    text = write_report(root, out_dir=tmp_path / "report").read_text()
    assert "wrn: its results are on different test data (digits, folder:/elsewhere/test)" in text
