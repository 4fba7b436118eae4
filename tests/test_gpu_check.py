"""bench/gpu_check.sh on a machine without a GPU: valid bash, and a clear refusal instead of half a run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.sh"


def test_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_without_a_gpu_it_refuses_with_one_line(tmp_path):
    shared = tmp_path / "shared"
    (shared / "wheels").mkdir(parents=True)
    env = {**os.environ, "ROBUSTKIT_SHARED": str(shared), "PYTHON": sys.executable,
           "GPU_CHECK_LOG": str(tmp_path / "gpu.log"), "GPU_CHECK_OUT": str(tmp_path / "out")}
    res = subprocess.run(["bash", str(SCRIPT), "tests"], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2
    assert "torch sees no CUDA GPU here" in res.stdout and "Traceback" not in res.stdout + res.stderr
    assert "torch sees no CUDA GPU here" in (tmp_path / "gpu.log").read_text()



def _stand_in_python(tmp_path: Path, train_sleep: float, every_stage: bool = False) -> dict:
    """The environment for a run on a machine without a GPU with a stand-in python: its CUDA check passes, pip
    installs nothing, the device header is one line (so the script reaches its stages within a second),
    bench_train "runs" by sleeping, bench_pipeline returns at once (``every_stage``: so do the other benchmarks
    and pytest); the rest is real python."""
    fake = tmp_path / "python"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        'for a in "$@"; do case "$a" in\n'
        "  *cuda.is_available*|pip) exit 0 ;;\n"
        "  -) cat > /dev/null; echo '# stand-in python'; exit 0 ;;\n"
        f"  bench/bench_train.py) sleep {train_sleep}; exit 0 ;;\n"
        "  bench/bench_pipeline.py) exit 0 ;;\n"
        + ("  bench/summarize_targets.py) break ;;\n  bench/*.py|pytest) exit 0 ;;\n" if every_stage else "")
        + "esac; done\n"
        f'exec {sys.executable} "$@"\n')
    fake.chmod(0o755)
    shared = tmp_path / "shared"
    (shared / "wheels").mkdir(parents=True)
    return {**os.environ, "ROBUSTKIT_SHARED": str(shared), "PYTHON": str(fake), "GPU_CHECK_LOG": str(tmp_path / "gpu.log"),
            "GPU_CHECK_OUT": str(tmp_path / "out"), "GPU_CHECK_SUMMARY": str(tmp_path / "summary.json")}


def test_a_failed_wheel_install_stops_the_setup_with_one_line(tmp_path):
    """The setup installs the wheels while the archive is extracted and the GPU is checked: a failed install is
    still waited for and refused (exit 2, one line naming its log), before any stage runs."""
    env = _stand_in_python(tmp_path, train_sleep=0)
    fake = Path(env["PYTHON"])
    fake.write_text(fake.read_text().replace("*cuda.is_available*|pip) exit 0 ;;",
                                             "*cuda.is_available*) exit 0 ;;\n  pip) sleep 1; echo no wheel; exit 1 ;;"))
    res = subprocess.run(["bash", str(SCRIPT), "quick-train"], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 2, res.stdout + res.stderr
    log = (tmp_path / "gpu.log").read_text()
    assert "error: installing" in log and "setup-pip.log" in log and "no wheel" in log
    assert "## bench: train" not in log and "Traceback" not in res.stdout + res.stderr


def test_a_timeout_still_leaves_the_summary(tmp_path):
    """The device machine's calls run the script under `timeout`: the stage it stops is named in the summary,
    which is still written, and the exit status is timeout's 124."""
    env = _stand_in_python(tmp_path, train_sleep=30)
    res = subprocess.run(["timeout", "4", "bash", str(SCRIPT), "quick-train", "quick-pipeline"], capture_output=True,
                         text=True, env=env, timeout=60)
    assert res.returncode == 124, res.stdout + res.stderr
    log = (tmp_path / "gpu.log").read_text()
    summary = log[log.index("## summary"):]
    assert "bench: train (quick)" in summary and "stopped by a signal" in summary
    assert "pipeline" not in summary


def test_a_stage_that_would_start_past_the_budget_is_skipped(tmp_path):
    """GPU_CHECK_BUDGET=8: the first stage starts well within it (the setup takes about a second, more on a
    loaded machine: a budget of 1 s skipped it there too) and runs 10 s; the next would start past the budget:
    skipped, and said so in the summary."""
    env = {**_stand_in_python(tmp_path, train_sleep=10), "GPU_CHECK_BUDGET": "8"}
    res = subprocess.run(["bash", str(SCRIPT), "quick-train", "quick-pipeline"], capture_output=True, text=True, env=env,
                         timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    log = (tmp_path / "gpu.log").read_text()
    summary = log[log.index("## summary"):]
    assert "bench: train (quick)" in summary and "rc=0" in summary
    assert "bench: pipeline (quick)" in summary and "skipped (out of time)" in summary


def _quick_target(tmp_path: Path) -> dict:
    import json

    summary = json.loads((tmp_path / "summary.json").read_text())
    [t] = [t for t in summary["targets"] if t["name"].startswith("gpu_check.sh quick")]
    return t


def test_quick_reports_its_own_time_as_a_target(tmp_path):
    """`quick` must fit one device command of <= 6 minutes: its whole time (setup included) is a target in the
    summary JSON, MET when every stage ran within the goal."""
    env = _stand_in_python(tmp_path, train_sleep=0, every_stage=True)
    res = subprocess.run(["bash", str(SCRIPT), "quick"], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    log = (tmp_path / "gpu.log").read_text()
    for stage in ("tests: cuda", "bench: train (quick)", "bench: pipeline (quick)", "bench: imagenet (quick)"):
        assert f"## {stage}" in log
    assert "## bench: profile" not in log            # quick-profile is a stage of its own
    t = _quick_target(tmp_path)
    assert t["met"] is True and t["goal"] == 6 and t["unit"] == "min" and 0 <= t["measured"] < 1
    assert "NOT ALL STAGES RAN" not in t["name"]


def test_quick_is_timed_without_the_stages_asked_for_after_it(tmp_path):
    """`quick quick-train`: the second bench_train (4 s here) is not part of quick's time."""
    env = _stand_in_python(tmp_path, train_sleep=4, every_stage=True)
    res = subprocess.run(["bash", str(SCRIPT), "quick", "quick-train"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    t = _quick_target(tmp_path)
    log = (tmp_path / "gpu.log").read_text()
    assert log.count("## bench: train (quick)") == 2
    assert t["met"] is True and t["measured"] * 60 < 7.5   # quick's own bench_train sleeps 4 s too; both: 8


def test_quick_with_a_skipped_stage_is_not_met(tmp_path):
    """A `quick` that skipped a stage (out of GPU_CHECK_BUDGET) did not do its job in the time: NOT MET, and
    the target's name says why, however short the run was."""
    env = {**_stand_in_python(tmp_path, train_sleep=3, every_stage=True), "GPU_CHECK_BUDGET": "2"}
    res = subprocess.run(["bash", str(SCRIPT), "quick"], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "skipped (out of time)" in (tmp_path / "gpu.log").read_text()
    t = _quick_target(tmp_path)
    assert t["met"] is False and "NOT ALL STAGES RAN" in t["name"]


def test_the_summary_names_the_commit_and_says_when_the_files_differ_from_it(tmp_path):
    """The working tree sent to the GPU machine can carry the .git of an earlier commit: the commit in the summary
    then gets '+changes', so a figure is never filed under a commit whose files did not run."""
    from conftest import load_script

    summarize = load_script(SCRIPT.parent / "summarize_targets.py")
    repo = tmp_path / "repo"
    repo.mkdir()

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                       capture_output=True)

    git("init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("commit", "-qm", "one")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                          text=True).stdout.strip()
    assert summarize.working_tree_commit(repo) == head
    (repo / "a.py").write_text("x = 2\n")
    assert summarize.working_tree_commit(repo) == head + "+changes"
    assert summarize.working_tree_commit(tmp_path / "nowhere") == "?"


def test_every_stage_is_named_in_the_unknown_stage_message_and_in_the_header():
    """A stage added to the script's case is listed where a user looks: the unknown-stage error and the header."""
    import re

    text = SCRIPT.read_text()
    handled = set(re.findall(r"^    ([a-z][a-z-]*)\)", text, flags=re.M))
    message = re.search(r"unknown stage \$s \(use (.*)\)\"", text).group(1)
    listed = set(re.findall(r"[a-z][a-z-]*", message))
    assert handled - {"quick-end"} <= listed and listed <= handled | {"quick"}
    header = text.split("set -uo pipefail")[0]
    for stage in handled - {"quick-end", "quick-tests", "quick-train", "quick-pipeline", "quick-eval"}:
        assert re.search(rf"^#\s+{stage}\b", header, flags=re.M), f"{stage} is not described in the header"


def _pytest_stand_in(tmp_path: Path, fail_half: str | None = None) -> dict:
    """A stand-in python whose pytest records its -k expression, sleeps 3 s, and fails where the expression
    holds ``fail_half``."""
    env = _stand_in_python(tmp_path, train_sleep=0)
    fake = Path(env["PYTHON"])
    record = tmp_path / "pytest-k.txt"
    fail = f'  case "$k" in *"{fail_half}"*) exit 1 ;; esac\n' if fail_half else ""
    fake.write_text(fake.read_text().replace(
        "esac; done\n",
        "esac; done\n"
        'if [ "$2" = pytest ]; then k=""; prev=""; for a in "$@"; do [ "$prev" = -k ] && k=$a; prev=$a; done\n'
        f'  echo "$k" >> {record}; sleep 3\n' + fail + "  echo '3 passed'; exit 0\nfi\n"))
    return env


def test_quick_tests_run_the_cuda_tests_in_two_complementary_halves_side_by_side(tmp_path):
    """quick-tests: two pytest processes at once (the stage takes one sleep, not two), whose -k expressions
    together select what GPU_TESTS_K selects, each test once; both outputs in the log."""
    import time

    env = {**_pytest_stand_in(tmp_path), "GPU_TESTS_K": "not inductor"}
    t0 = time.monotonic()
    res = subprocess.run(["bash", str(SCRIPT), "quick-tests"], capture_output=True, text=True, env=env, timeout=60)
    took = time.monotonic() - t0
    assert res.returncode == 0, res.stdout + res.stderr
    ks = sorted((tmp_path / "pytest-k.txt").read_text().splitlines())
    evaluation = "corruption or triton or jpeg or glass or spatter or table or released"
    assert ks == [f"(not inductor) and ({evaluation})", f"(not inductor) and not ({evaluation})"]
    assert took < 5.5, f"the two halves ran one after the other ({took:.1f} s for two 3-s halves)"
    log = (tmp_path / "gpu.log").read_text()
    assert log.count("3 passed") == 2 and "# the evaluation half" in log and "# the other half" in log
    assert "tests: cuda (two halves side by side) rc=0" in " ".join(log.split())


@pytest.mark.parametrize("half", ["and (", "and not ("])
def test_a_failing_half_of_the_cuda_tests_fails_the_stage(tmp_path, half):
    env = _pytest_stand_in(tmp_path, fail_half=half)
    res = subprocess.run(["bash", str(SCRIPT), "quick-tests"], capture_output=True, text=True, env=env, timeout=60)
    summary = (tmp_path / "gpu.log").read_text().split("## summary")[1]
    assert "tests: cuda (two halves side by side) rc=1" in " ".join(summary.split()), res.stdout


def test_the_fp16_stage_asks_for_variants_and_modes_that_exist():
    """quick-fp16 runs bench_train with the -fp16 variants and profile_train with an -fp16 mode: each name it
    passes is one those scripts know (a typo would cost a GPU call)."""
    import re

    sys.path.insert(0, str(SCRIPT.parent))
    import bench_train

    from robustkit.step import STATIC_MODES

    script = SCRIPT.read_text().replace("\\\n", " ")
    start = script.index("\n    quick-fp16)")
    stage = script[start:script.index(";;", start)]
    variants = [v for group in re.findall(r"--variants (\S+)", stage) for v in group.split(",")]
    modes = re.findall(r"--mode (\S+)", stage)
    assert {"graphs-fp16", "graphs-streams-fp16"} <= set(variants) and modes == ["graphs-fp16"]
    assert all(v in bench_train.VARIANTS for v in variants), variants
    assert all(m in STATIC_MODES for m in modes + [bench_train.VARIANTS[v][0] for v in variants if v != "default"])
    # and every other stage's variants and modes (quick-step's compiled, prefetched ones too)
    every = [v for group in re.findall(r"--variants ([\w,-]+)", script) for v in group.split(",")]
    assert "graphs-inductor-streams-prefetch" in every and "graphs-inductor-prefetch" in every
    assert all(v in bench_train.VARIANTS for v in every), [v for v in every if v not in bench_train.VARIANTS]
    every_mode = re.findall(r"--mode (?!\$)([\w-]+)", script)
    assert all(m in STATIC_MODES + ("eager",) for m in every_mode), every_mode


def test_quick_makes_the_imagenet_jpegs_while_the_tests_run_and_the_stage_reads_them(tmp_path):
    """quick: the ImageNet benchmark's JPEGs are made in the background from the tests stage on (a stand-in
    that takes 3 s), and the imagenet stage, which waits for them, gets the same --folder."""
    env = _stand_in_python(tmp_path, train_sleep=0, every_stage=True)
    fake = Path(env["PYTHON"])
    calls = tmp_path / "imagenet-calls.txt"
    fake.write_text(fake.read_text().replace(
        "for a in \"$@\"; do case",
        f'case "$*" in *bench_imagenet.py*--make-folder-only*) sleep 3; echo "made $*" >> {calls}; exit 0 ;;\n'
        f'  *bench_imagenet.py*) echo "stage $*" >> {calls}; exit 0 ;; esac\n'
        "for a in \"$@\"; do case", 1))
    res = subprocess.run(["bash", str(SCRIPT), "quick"], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    made, stage = (tmp_path / "imagenet-calls.txt").read_text().splitlines()   # the stage after the making
    assert made.startswith("made ") and stage.startswith("stage ")
    folder = made.split("--folder ")[1].split()[0]
    assert f"--folder {folder} " in stage and "--images 5000" in made and "--images 5000" in stage


def test_without_the_tests_stage_the_imagenet_stage_makes_its_jpegs_itself(tmp_path):
    """quick-eval alone: nothing runs in the background beside the timed stages."""
    env = _stand_in_python(tmp_path, train_sleep=0, every_stage=True)
    fake = Path(env["PYTHON"])
    calls = tmp_path / "imagenet-calls.txt"
    fake.write_text(fake.read_text().replace(
        "for a in \"$@\"; do case", f'case "$*" in *bench_imagenet.py*) echo "$*" >> {calls}; exit 0 ;; esac\n'
        "for a in \"$@\"; do case", 1))
    res = subprocess.run(["bash", str(SCRIPT), "quick-eval"], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    (only,) = calls.read_text().splitlines()
    assert "--make-folder-only" not in only and "--folder" in only


def test_bench_train_names_each_variants_target_by_its_mode_and_prefetch():
    """quick-fp16 times four variants per method in one bench_train run: each gets its own target line (MET or
    NOT MET next to its figure), named by its step mode and whether batches were prefetched; a long run's default
    (compiled, prefetched on CUDA) has the plain name, the issue's targets."""
    sys.path.insert(0, str(SCRIPT.parent))
    import bench_train

    cuda = torch.device("cuda")
    t = lambda mode, prefetch=False: bench_train.Timing("x", "baseline", 10, 1280, 0.03, 1.0, 2.0, mode, prefetch)  # noqa: E731
    # the plain name: what a long run gets by default on CUDA (compiled, batches prefetched)
    assert bench_train.mode_tag(t("graphs-inductor", True), cuda) == ""
    assert bench_train.mode_tag(t("graphs-inductor"), cuda) == " [graphs-inductor]"
    assert bench_train.mode_tag(t("graphs"), cuda) == " [graphs]"
    assert bench_train.mode_tag(t("graphs", True), cuda) == " [graphs + prefetch]"
    assert bench_train.mode_tag(t("eager"), torch.device("cpu")) == ""
    assert bench_train.mode_tag(t("graphs-fp16"), cuda) == " [graphs-fp16]"
    assert bench_train.mode_tag(t("graphs-fp16", True), cuda) == " [graphs-fp16 + prefetch]"
    timings = [t("graphs-inductor", True), t("graphs-fp16"), t("graphs", True), t("graphs-fp16", True)]
    timings[1].seconds = 0.02   # 2 ms per step: MET; the others 3.0 ms: met too (<= 3)
    timings[2].seconds = 0.04
    got = bench_train.variant_targets(timings, cuda, {"baseline WRN-28-2 b128 ms/step"})
    assert [(g["name"], round(g["measured"], 3), g["met"]) for g in got] == [
        ("baseline WRN-28-2 b128 ms/step [graphs-fp16]", 2.0, True),
        ("baseline WRN-28-2 b128 ms/step [graphs + prefetch]", 4.0, False),
        ("baseline WRN-28-2 b128 ms/step [graphs-fp16 + prefetch]", 3.0, True)]
