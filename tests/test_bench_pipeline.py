"""bench/bench_pipeline.py on the CPU at a tiny size: the corrupt stage is timed as the job runs it and cut at its
progress reports (setup, each of the 95 cells, the result files), read back from its JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_script

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def pipeline_script():
    return load_script(BENCH / "bench_pipeline.py")


def test_corrupt_stage_is_cut_into_its_parts(pipeline_script, cifar_folder, tmp_path, capsys, one_torch_thread):
    out = tmp_path / "pipeline.json"
    rc = pipeline_script.main(["--device", "cpu", "--data", f"folder:{cifar_folder}", "--steps", "2", "--limit", "8",
                               "--arch", "wrn-10-1", "--batch-size", "4", "--corrupt-batch-sizes", "4",
                               "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "the corrupt stage cut at its progress reports" in printed
    runs = json.loads(out.read_text())["corrupt_runs"]
    assert set(runs) == {"default batch", "again, batch 4"}
    for r in runs.values():
        assert len(r["cells_s"]) == 19 * 5 and all(c >= 0 for c in r["cells_s"])
        assert r["setup_s"] >= 0 and r["files_s"] > 0
        assert r["total_s"] == pytest.approx(r["setup_s"] + sum(r["cells_s"]) + r["files_s"])
    # the table's corrupt row is the default run's total, as the CIFAR-10-C target reads it
    row = next(line for line in printed.splitlines() if line.startswith("corrupt (19 x 5 cells)"))
    assert float(row.split()[5]) == pytest.approx(runs["default batch"]["total_s"], abs=0.051)
