"""bench/bench_corrupt_cold.py on the CPU at a tiny size: each run a fresh process, cut into its parts, with the
warm-up's own figures per variant; bad variants are one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_script

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def cold_script():
    return load_script(BENCH / "bench_corrupt_cold.py")


def test_each_variant_runs_in_a_fresh_process_and_reports_its_warm_up(cold_script, tmp_path, capsys):
    out = tmp_path / "cold.json"
    rc = cold_script.main(["--device", "cpu", "--data", "digits", "--arch", "wrn-10-1", "--steps", "1",
                           "--limit", "8", "--corruptions", "contrast,glass_blur", "--severities", "1,2",
                           "--variants", "no-warm-up,corruption-first,read-each-cell", "--repeats", "1", "--threads", "1",
                           "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    saved = json.loads(out.read_text())
    off, first, at_once = saved["runs"]
    assert (off["variant"], first["variant"], at_once["variant"]) == ("no-warm-up", "corruption-first", "read-each-cell")
    assert (off["cells_ahead"], first["cells_ahead"], at_once["cells_ahead"]) == (8, 8, 0)   # jobs.CELLS_AHEAD
    assert off["switch_interval_s"] == at_once["switch_interval_s"] == 0.0002   # jobs.SWITCH_INTERVAL_S
    for run in (off, first, at_once):
        assert run["total_s"] == pytest.approx(run["setup_s"] + run["first_cell_s"] + run["other_cells_s"]
                                               + run["files_s"])
        assert run["process_s"] > run["total_s"] > 0 and run["batch_size"] == 250   # corrupt's CPU default
    assert off["warm_up"]["cells"] == 0                       # the thread never started
    warmed = first["warm_up"]
    # every cell warmed ahead or taken by the grid, each corruption's first cell first (the order is the child's)
    assert warmed["cells"] == 4 and warmed["warmed"] + warmed["taken_by_grid"] == 4 and warmed["errors"] == 0
    # in the child's order: each corruption's first cell first (the thread starts before the model build, so it
    # reaches glass_blur s1 and contrast s2 before the grid does; a cell the grid reached first is not in the list)
    order = ["contrast s1", "glass_blur s1", "contrast s2", "glass_blur s2"]
    done = warmed["warmed_in_order"]
    assert done == [c for c in order if c in done] and {"glass_blur s1", "contrast s2"} <= set(done)
    assert "corruption-first (its last run): corruption warm-up: " in printed
    assert "no-warm-up (its last run): corruption warm-up: did not run" in printed
    assert "read-each-cell (its last run): " in printed and "cells read: 4, up to 0 ahead" in printed
    assert (at_once["reads"]["reads"], at_once["reads"]["ahead"], first["reads"]["ahead"]) == (4, 0, 8)
    assert "corruption-first: the corrupt job" in printed and "against no warm-up" in printed
    assert set(saved["medians"]) == {"no-warm-up", "corruption-first", "read-each-cell"}


def test_unknown_variants_and_repeats_are_one_line(cold_script, capsys):
    assert cold_script.main(["--device", "cpu", "--variants", "shipped,fast"]) == 2
    assert "unknown variant 'fast'" in capsys.readouterr().err
    assert cold_script.main(["--device", "cpu", "--repeats", "0"]) == 2
    assert "--repeats must be >= 1" in capsys.readouterr().err


def test_a_run_that_fails_is_a_row_and_the_exit_status(cold_script, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cold_script, "one_run", lambda args, variant, checkpoint, out: {
        "variant": variant, "failed": "RuntimeError: CUDA error: out of memory"})
    rc = cold_script.main(["--device", "cpu", "--data", "digits", "--arch", "wrn-10-1", "--steps", "1",
                           "--limit", "8", "--variants", "shipped", "--repeats", "1"])
    assert rc == 1
    assert "failed: RuntimeError: CUDA error: out of memory" in capsys.readouterr().out


def test_gpu_check_stage_flags_parse(cold_script):
    """gpu_check.sh's quick-cold stage passes flags the script accepts, for the shipped variants."""
    import re
    import shlex

    script = (BENCH / "gpu_check.sh").read_text().replace("\\\n", " ")
    start = script.index("\n    quick-cold)")
    stage = script[start:script.index(";;", start)]
    (command,) = re.findall(r"\"\$PY\" bench/bench_corrupt_cold.py (.*)", stage)
    args = cold_script.build_parser().parse_args(shlex.split(command.replace("$TARGETS", "/tmp/t")
                                                            .replace("$CIFAR", "/tmp/c")))
    assert args.device == "cuda" and args.repeats >= 2 and args.json == "/tmp/t/cold.json"
    assert cold_script.parse_variants(args.variants) == ["shipped", "read-each-cell", "switch-5ms", "no-warm-up",
                                                          "corruption-first"]
