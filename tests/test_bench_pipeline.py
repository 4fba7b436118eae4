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


def _small_pipeline(script, cifar_folder, out, switches: str) -> int:
    """bench_pipeline on the CPU at a tiny size: 2 steps of WRN-10-1, 8 test images, the corrupt stage again at
    evaluation batch 4 and with ``switches``; its JSON at ``out``."""
    return script.main(["--device", "cpu", "--data", f"folder:{cifar_folder}", "--steps", "2", "--limit", "8",
                        "--arch", "wrn-10-1", "--batch-size", "4", "--corrupt-batch-sizes", "4",
                        "--corrupt-switches", switches, "--json", str(out)])


def test_corrupt_stage_is_cut_into_its_parts(pipeline_script, cifar_folder, tmp_path, capsys, one_torch_thread,
                                            monkeypatch):
    import robustkit.jobs as jobs

    options = []
    real = jobs.run_corruptions

    def spy(*args, **kwargs):
        options.append((kwargs.get("options"), kwargs.get("batch_size")))
        return real(*args, **kwargs)
    monkeypatch.setattr(jobs, "run_corruptions", spy)
    out = tmp_path / "pipeline.json"
    assert _small_pipeline(pipeline_script, cifar_folder, out, "fold-bn+cudnn-benchmark+b4,fuse-conv") == 0
    printed = capsys.readouterr().out
    assert "the corrupt stage cut at its progress reports" in printed
    saved = json.loads(out.read_text())
    runs = saved["corrupt_runs"]
    assert set(runs) == {"default batch", "again, batch 4", "again, --fold-bn --cudnn-benchmark --batch-size 4",
                         "again, --fuse-conv"}
    switched = options[-2]
    assert switched[0].fold_bn and switched[0].cudnn_benchmark and switched[1] == 4
    assert options[-1][0].fuse_conv and options[-1][1] is None
    assert not any(o is not None and (o.fold_bn or o.cudnn_benchmark or o.fuse_conv) for o, _ in options[:-2])
    assert "corrupt again, --fold-bn --cudnn-benchmark --batch-size 4" in printed
    # the same batches as the default run: its accuracies are compared (on the CPU --fuse-conv is --fold-bn's ops,
    # within an image of the plain network's); another batch size draws other corruptions: not compared
    assert set(saved["corrupt_switches_accuracy_moved"]) == {"--fuse-conv"}
    assert saved["corrupt_switches_accuracy_moved"]["--fuse-conv"] <= 1 / 8 + 1e-12
    assert "accuracies within" in next(line for line in printed.splitlines() if "again, --fuse-conv" in line)
    assert saved["corrupt_runs_failed"] == {}
    # the first run's warm-up (CUDA only): here it did not run, and says so
    assert saved["corrupt_warm_up"]["cells"] == 0
    assert "the default batch's run: corruption warm-up: did not run (CUDA only)" in printed
    # and its reads of the cells: all 95, none waiting (on the CPU a cell's counts are there when it returns)
    assert saved["corrupt_reads"] == {"ahead": 8, "reads": 95, "waits": 0, "wait_s": 0.0}
    assert "cells read: 95, up to 8 ahead; 0 waited for the device" in printed
    for r in runs.values():
        assert len(r["cells_s"]) == 19 * 5 and all(c >= 0 for c in r["cells_s"])
        assert r["setup_s"] >= 0 and r["files_s"] > 0
        assert r["total_s"] == pytest.approx(r["setup_s"] + sum(r["cells_s"]) + r["files_s"])
    # the table's corrupt row is the default run's total, as the CIFAR-10-C target reads it
    row = next(line for line in printed.splitlines() if line.startswith("corrupt (19 x 5 cells)"))
    assert float(row.split()[5]) == pytest.approx(runs["default batch"]["total_s"], abs=0.051)


def test_a_corrupt_run_again_that_fails_is_a_row_and_the_targets_still_come(pipeline_script, cifar_folder, tmp_path,
                                                                            capsys, one_torch_thread, monkeypatch):
    import robustkit.jobs as jobs

    real = jobs.run_corruptions

    def breaks_when_switched(*args, **kwargs):
        if kwargs.get("options") is not None and kwargs["options"].fold_bn:
            raise RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR\ndetails")
        return real(*args, **kwargs)
    monkeypatch.setattr(jobs, "run_corruptions", breaks_when_switched)
    out = tmp_path / "pipeline.json"
    assert _small_pipeline(pipeline_script, cifar_folder, out, "fold-bn") == 0
    saved = json.loads(out.read_text())
    assert saved["corrupt_runs_failed"] == {"--fold-bn": "RuntimeError: cuDNN error: CUDNN_STATUS_INTERNAL_ERROR"}
    assert set(saved["corrupt_runs"]) == {"default batch", "again, batch 4"}
    assert "corrupt again, --fold-bn" in capsys.readouterr().out
    assert "targets" in saved


def test_corrupt_switches_parse_and_refuse_unknown_ones(pipeline_script, capsys):
    parsed = pipeline_script.parse_corrupt_switches("fold-bn, cudnn-benchmark+b10000, fuse-conv+cudnn-benchmark")
    assert list(parsed) == ["--fold-bn", "--cudnn-benchmark --batch-size 10000", "--fuse-conv --cudnn-benchmark"]
    assert parsed["--fuse-conv --cudnn-benchmark"]["options"].fuse_conv
    assert parsed["--fold-bn"]["options"].fold_bn and "batch_size" not in parsed["--fold-bn"]
    assert parsed["--cudnn-benchmark --batch-size 10000"]["batch_size"] == 10000
    # no-SWITCH: a device default turned off (fuse-conv is on by default with CUDA)
    parsed = pipeline_script.parse_corrupt_switches("no-fuse-conv,no-fuse-conv+cudnn-benchmark")
    assert list(parsed) == ["--no-fuse-conv", "--no-fuse-conv --cudnn-benchmark"]
    assert parsed["--no-fuse-conv"]["options"].fuse_conv is False
    assert parsed["--no-fuse-conv"]["options"].fold_bn is None   # the others left to the device's default
    assert parsed["--no-fuse-conv --cudnn-benchmark"]["options"].cudnn_benchmark is True
    assert pipeline_script.main(["--device", "cpu", "--corrupt-switches", "fold-bn+fast"]) == 2
    assert "unknown switch 'fast'" in capsys.readouterr().err


def test_cold_cells_line_names_the_cells_whose_reads_came_latest_against_the_warm_run(pipeline_script):
    cold, warm = [0.6, 0.04, 0.35, 0.04, 0.14], [0.45, 0.04, 0.04, 0.05, 0.04]
    line = pipeline_script.cold_cells_line(cold, warm, ["a s1", "a s2", "b s1", "b s2", "c s1"], top=3)
    assert line.startswith("cells cold - warm: +0.55 s in all; most at the reads of b s1 +0.31, a s1 +0.15, c s1 +0.10")
    assert "b s2" not in line and "a s2" not in line


def test_a_traced_cold_run_lists_its_longest_host_calls_and_is_not_judged(pipeline_script, cifar_folder, tmp_path,
                                                                          capsys, one_torch_thread):
    """--corrupt-trace: the cold run under the profiler; its longest host-side calls are printed and saved (the
    longest first, each with its thread), the whole trace is written gzipped, and no CIFAR-10-C target is judged."""
    import gzip

    out, trace = tmp_path / "pipeline.json", tmp_path / "trace" / "cold.json.gz"
    assert pipeline_script.main(["--device", "cpu", "--data", f"folder:{cifar_folder}", "--steps", "2", "--limit", "8",
                                 "--arch", "wrn-10-1", "--batch-size", "4", "--corrupt-trace", str(trace),
                                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    longest = json.loads(out.read_text())["corrupt_trace_longest"]
    assert len(longest) == 15 and [c["ms"] for c in longest] == sorted((c["ms"] for c in longest), reverse=True)
    assert {c["thread"] for c in longest} <= {"block", "other"} and "block" in {c["thread"] for c in longest}
    assert all(c["name"] != "HostTrace:mark" for c in longest)
    assert "its longest host-side calls" in printed and "not judged (the run was traced)" in printed
    assert json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]


def test_the_corrupt_job_is_timed_without_draining_the_device_at_its_reports(pipeline_script, monkeypatch):
    """timed_job syncs the device before the job starts and after it ends, and not at each progress report (which
    would empty the queue of cells the grid keeps ahead of the device: a user's run does not); ``sync_each`` (to
    compare with the figures timed so until 2026-11-27) syncs at every report too."""
    import common
    import torch

    def job(progress):
        progress.set_total(3)
        for _ in range(3):
            progress.advance(1)

    for sync_each, syncs in ((False, 2), (True, 2 + 4)):
        calls = []
        monkeypatch.setattr(common, "sync", lambda device: calls.append(device))
        run = common.timed_job(job, torch.device("cpu"), 3, sync_each=sync_each)
        assert len(calls) == syncs and len(run.cells) == 3
