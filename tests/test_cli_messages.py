"""Command-line messages and tables from the README audit: PGD-only flags, non-PyTorch files, unknown
source prefixes, and the order of the rows in the printed tables and the heatmap."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_one_line_error, invoke
from handmade import corr_result, fgsm_result

from robustkit import report
from robustkit.corruptions import CORRUPTIONS
from robustkit.jobs import run_fgsm


# ------------------------------------------------------------------------------ --steps / --alpha
@pytest.fixture
def calls(monkeypatch):
    """Replace run_fgsm (the CLI imports it when the command runs) by a recorder: no model, no data."""
    import robustkit.jobs

    seen = []

    def fake(paths, eps, **kw):
        seen.append(kw)
        return []
    monkeypatch.setattr(robustkit.jobs, "run_fgsm", fake)
    return seen


@pytest.mark.parametrize("args,fragments", [
    (["--eps", "0.05", "--steps", "5"], ["--attack fgsm"]),
    (["--alpha", "0.01"], ["--attack fgsm"]),
    (["--attack", "FGSM", "--steps", "5", "--alpha", "0.01"], ["--attack FGSM"]),
    (["--attack", "torchattacks:PGD", "--steps", "5"], ["--attack-param steps="]),
])
def test_pgd_flags_without_pgd_are_refused(args, fragments, calls):
    res = invoke("fgsm", "runs/x", *args, "--no-progress")
    assert_one_line_error(res, "--steps and --alpha are for --attack pgd", *fragments)
    assert calls == []


def test_pgd_flags_reach_pgd_and_defaults_stay_run_fgsms(calls):
    assert invoke("fgsm", "runs/x", "--attack", "pgd", "--steps", "5", "--alpha", "0.01", "--no-progress").exit_code == 0
    assert (calls[-1]["steps"], calls[-1]["alpha"]) == (5, 0.01)
    assert invoke("fgsm", "runs/x", "--attack", "pgd", "--no-progress").exit_code == 0
    assert "steps" not in calls[-1] and "alpha" not in calls[-1]   # run_fgsm's defaults: 10 steps, 2.5 eps / steps
    assert inspect.signature(run_fgsm).parameters["steps"].default == 10
    assert invoke("fgsm", "runs/x", "--no-progress").exit_code == 0
    assert calls[-1]["attack"] == "fgsm" and "steps" not in calls[-1]


def test_fgsm_default_sweep_is_the_papers_epsilons_with_clean(monkeypatch):
    """`robustkit fgsm` with no --eps sweeps 0.05..0.25 in steps of 0.05 (README; the paper's FGSM columns),
    with eps 0 (clean) first."""
    import robustkit.jobs
    from robustkit.report.paper import PAPER_FGSM_EPS

    seen = []
    monkeypatch.setattr(robustkit.jobs, "run_fgsm", lambda paths, eps, **kw: seen.append(eps) or [])
    assert invoke("fgsm", "runs/x", "--no-progress").exit_code == 0
    assert seen == [pytest.approx([0.0, *PAPER_FGSM_EPS])]
    assert seen[0] == pytest.approx([0.0, 0.05, 0.10, 0.15, 0.20, 0.25])


def test_ctrl_c_is_one_line_and_exit_status_130(monkeypatch):
    """Ctrl-C during a command: `error: interrupted`, no traceback, exit status 130 (128 + SIGINT, what shells
    and job schedulers read as an interrupt)."""
    import robustkit.jobs

    def interrupted(*args, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(robustkit.jobs, "run_fgsm", interrupted)
    res = invoke("fgsm", "runs/x", "--no-progress")
    assert res.exit_code == 130 and res.output.strip() == "error: interrupted", res.output


# --------------------------------------------------------------------------- files that are not PyTorch
class _Custom:
    """Pickled by reference to this module: weights_only=True must refuse it (it could run code)."""

    def __init__(self):
        self.x = 1


def test_a_file_that_is_not_pytorch_is_not_called_dangerous(tmp_path):
    (tmp_path / "bad" / "r1").mkdir(parents=True)
    (tmp_path / "bad" / "r1" / "checkpoint.pt").write_text("garbage")   # the audit's case: a run folder
    (tmp_path / "binary.pt").write_bytes(b"\x00\x01\x02garbage\xff")
    for source in (tmp_path / "bad" / "r1", tmp_path / "binary.pt"):
        for command in ("fgsm", "corrupt"):
            res = invoke(command, source, "--no-progress")
            assert_one_line_error(res, "not a readable PyTorch file", "neither a zip archive nor a pickle")
            assert "run code" not in res.output


@pytest.mark.parametrize("zip_format", [True, False])
def test_a_pickle_of_a_custom_object_still_gets_the_security_message(tmp_path, zip_format):
    path = tmp_path / "evil.pt"
    torch.save({"format": "robustkit-checkpoint", "payload": _Custom()}, path,
               _use_new_zipfile_serialization=zip_format)
    res = invoke("fgsm", path, "--no-progress")
    assert_one_line_error(res, "would run code", "references test_cli_messages._Custom")
    assert "not a readable" not in res.output


# --------------------------------------------------------------------------------- unknown source prefix
@pytest.mark.parametrize("command", ["fgsm", "corrupt"])
def test_an_unknown_source_prefix_names_the_sources(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = invoke(command, "foo:bar", "--no-progress")
    assert_one_line_error(res, "foo:bar does not exist", "foo: is not a kind of model source", "checkpoint files",
                          "run folders", "torchvision:NAME", "timm:NAME", "python:MODULE:FUNCTION", "model.pt2",
                          "model.ts", "--trust-code")


def test_an_existing_path_with_a_colon_is_still_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs:1").mkdir()
    assert_one_line_error(invoke("fgsm", "runs:1", "--no-progress"), "no checkpoint.pt found below runs:1")
    (tmp_path / "m:1.pt").write_text("garbage")
    assert_one_line_error(invoke("fgsm", "m:1.pt", "--no-progress"), "m:1.pt is not a readable PyTorch file")
    # a missing path that is not PREFIX:NAME keeps the plain message
    assert_one_line_error(invoke("fgsm", "runs/a:b", "--no-progress"), "runs/a:b does not exist")


# ------------------------------------------------------------------------------------------ row order
def _cached_after_a_partial_rerun() -> dict:
    """What corruptions.json holds after `corrupt --corruptions fog,frost --severities 1..3` over a full 19 x 5
    sweep: the re-run cells first, then the rest alphabetically; plus a name robustkit does not know."""
    rerun = {(c, s): 0.5 for c in ("fog", "frost") for s in (1, 2, 3)}
    rest = {(c, s): 0.6 for c in sorted(CORRUPTIONS) for s in range(1, 6) if (c, s) not in rerun}
    return corr_result({**rerun, **rest, ("my_blur", 1): 0.7, ("another", 2): 0.7})


EXPECTED_ROWS = [*CORRUPTIONS, "another", "my_blur"]


def test_corruption_table_rows_in_benchmark_order():
    from rich.console import Console

    console = Console(width=250, record=True, color_system=None)
    console.print(report.corruption_table(_cached_after_a_partial_rerun()))
    firsts = [line.split("│")[1].strip() for line in console.export_text().splitlines() if line.count("│") > 2]
    rows = [name for name in firsts if name in EXPECTED_ROWS]
    assert rows == EXPECTED_ROWS   # every cached corruption, the 15, then the extra 4, then the others
    assert list(CORRUPTIONS[:15]) == list(report.protocols.COMMON)


def test_heatmap_rows_in_benchmark_order(monkeypatch):
    import robustkit.report.plots as plots

    figures = []
    monkeypatch.setattr(plots, "_png_bytes", lambda fig: figures.append(fig) or b"")
    plots._plot_heatmap(_cached_after_a_partial_rerun())
    labels = [t.get_text() for t in figures[0].axes[0].get_yticklabels()]
    assert labels[:-1] == EXPECTED_ROWS and labels[-1] == "benchmark 15"


def test_fgsm_table_rows_by_eps():
    from rich.console import Console

    console = Console(width=200, record=True, color_system=None)
    console.print(report.fgsm_table(fgsm_result({0.1: 0.5, 0.0: 0.9, 0.25: 0.1, 0.05: 0.7})))
    firsts = [line.split("│")[1].strip() for line in console.export_text().splitlines() if line.count("│") > 2]
    assert [f for f in firsts if f and f[0].isdigit()] == ["0", "0.05", "0.1", "0.25"]


def test_the_first_line_of_a_library_error():
    """errors.first_line: what one-line messages quote from torch, yaml or the process group; an error without
    a message gives its type (the places it replaced indexed splitlines()[0] and raised IndexError there)."""
    from robustkit.errors import first_line

    assert first_line(RuntimeError("size mismatch for fc.weight\ncopying a param")) == "size mismatch for fc.weight"
    assert first_line(RuntimeError()) == "RuntimeError" and first_line(OSError("  ")) == "OSError"
    assert first_line(ValueError("x" * 300)) == "x" * 160 and first_line(ValueError("x" * 300), None) == "x" * 300


# ------------------------------------------------------------------ outputs that cannot be written
@pytest.fixture
def one_run(evaluated_runs, tmp_path):
    import shutil

    shutil.copytree(evaluated_runs / "baseline", tmp_path / "baseline")
    return tmp_path / "baseline"


def test_an_out_that_cannot_be_written_fails_before_the_work(one_run, tmp_path, monkeypatch):
    """A file where --out's folder should be: one line naming it, exit 2, and no evaluation or training ran."""
    import robustkit.attacks

    blocker = tmp_path / "afile.txt"
    blocker.write_text("keep")
    ran = []
    monkeypatch.setattr(robustkit.attacks, "fgsm_sweep", lambda *a, **k: ran.append(1))
    assert_one_line_error(invoke("fgsm", one_run, "--eps", "0.05", "--limit", "20", "--device", "cpu", "--out",
                                 blocker, "--no-progress"), "cannot write into", "afile.txt", "--out")
    assert_one_line_error(invoke("corrupt", one_run, "--corruptions", "fog", "--severities", "1", "--limit", "20",
                                 "--device", "cpu", "--out", blocker / "sub", "--no-progress"), "afile.txt", "--out")
    assert_one_line_error(invoke("report", one_run, "--out", blocker), "cannot write into", "--out")
    assert_one_line_error(invoke("report", one_run, "--csv", blocker / "x.csv"), "--csv")
    assert_one_line_error(invoke("train", "--dataset", "digits", "--arch", "wrn-10-1", "--steps", "2", "--device",
                                 "cpu", "--out", blocker / "run", "--no-progress"), "afile.txt", "--out")
    assert_one_line_error(invoke("demo", "--out", blocker, "--no-progress"), "afile.txt", "--out")
    assert ran == [] and blocker.read_text() == "keep"


def test_another_models_results_are_not_replaced_without_force(evaluated_runs, tmp_path):
    """A shared --out that holds another model's results: refused (they would be lost); --force replaces them.
    A checkpoint's own eval/ folder is recomputed when its checkpoint changed (test_cli)."""
    out = tmp_path / "shared"
    args = ["--eps", "0.05", "--limit", "20", "--device", "cpu", "--out", out, "--no-progress"]
    assert invoke("fgsm", evaluated_runs / "baseline", *args).exit_code == 0
    before = (out / "fgsm.json").read_text()
    assert_one_line_error(invoke("fgsm", evaluated_runs / "gradaug", *args), "another model", "baseline",
                          "--force")
    assert (out / "fgsm.json").read_text() == before
    assert invoke("fgsm", evaluated_runs / "gradaug", *args, "--force").exit_code == 0
    assert "gradaug" in (out / "fgsm.json").read_text()


def test_a_file_error_the_checks_missed_is_one_line(monkeypatch):
    """Any OSError that reaches the command line (a disk that fills up, a permission) is one line with its path."""
    import robustkit.report

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied", "/some/where/report.md")
    monkeypatch.setattr(robustkit.report, "write_report", denied)
    assert_one_line_error(invoke("report", "anything"), "permission denied", "/some/where/report.md")


def test_a_command_that_fails_late_leaves_no_empty_out_folder(tmp_path):
    """fgsm/corrupt make --out before the work (so a read-only place fails at once); a model found wrong only then
    (here: 4 outputs for digits' 10 classes) used to leave that folder behind, empty. A folder that was there, or
    that holds anything, stays."""
    from torch import nn

    net = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4))
    torch.jit.save(torch.jit.script(net), str(tmp_path / "four.ts"))
    common = ["--trust-code", "--data", "digits", "--limit", "10", "--device", "cpu", "--no-progress"]
    for command, extra in (("fgsm", ["--eps", "0.01"]), ("corrupt", ["--corruptions", "fog", "--severities", "1"])):
        res = invoke(command, tmp_path / "four.ts", *common, *extra, "--out", tmp_path / "new" / "eval")
        assert_one_line_error(res, "(N, 10) logits")
        assert not (tmp_path / "new").exists()
        (tmp_path / "kept").mkdir(exist_ok=True)
        res = invoke(command, tmp_path / "four.ts", *common, *extra, "--out", tmp_path / "kept")
        assert_one_line_error(res, "(N, 10) logits")
        assert (tmp_path / "kept").is_dir()


def test_tidy_on_error_removes_only_the_empty_folders_it_saw_made(tmp_path):
    from robustkit.io import tidy_on_error, writable_dir

    (tmp_path / "there").mkdir()
    with pytest.raises(RuntimeError):
        with tidy_on_error():
            writable_dir(tmp_path / "empty" / "deep" / "er")      # made, nothing written: removed from its top
            writable_dir(tmp_path / "written")
            (tmp_path / "written" / "result.json").write_text("{}")   # holds a result: kept
            writable_dir(tmp_path / "there" / "sub")               # only sub was made: removed, "there" stays
            raise RuntimeError("late failure")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["there", "written"]
    assert list((tmp_path / "there").iterdir()) == []
    with tidy_on_error():
        writable_dir(tmp_path / "fine")                            # no error: everything stays
    assert (tmp_path / "fine").is_dir()
    # a block inside another (the demo inside its command): what the inner one made is the outer one's too
    with pytest.raises(RuntimeError):
        with tidy_on_error():
            with tidy_on_error():
                writable_dir(tmp_path / "inner" / "made")          # the inner block ends well ...
            raise RuntimeError("the outer block fails later")    # ... the outer one does not: removed
    assert not (tmp_path / "inner").exists()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_writable_dir_checks_that_a_file_can_be_written_there(tmp_path):
    """An existing folder that takes no new file (/proc/self: not even root can create one there) is refused at once,
    naming the flag; a folder that takes files is left as it was (the check's file is removed)."""
    from robustkit.errors import RobustkitError
    from robustkit.io import writable_dir

    with pytest.raises(RobustkitError, match="cannot write into /proc/self: .*give --csv a folder"):
        writable_dir("/proc/self", "--csv")
    assert writable_dir(tmp_path / "ok") == tmp_path / "ok" and list((tmp_path / "ok").iterdir()) == []


def test_atomic_writes_leave_the_old_file_or_the_whole_new_one(tmp_path, monkeypatch):
    """robustkit.io's rule: the new bytes go to a temp file in the same folder, which is fsynced, then renamed onto
    the target, then the folder is fsynced; a write that fails leaves the old file as it was and no temp file."""
    import os
    import stat

    from robustkit import checkpoint
    from robustkit.io import atomic_path, write_json

    target = tmp_path / "result.json"
    write_json(target, {"v": 1})
    old = target.read_bytes()
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp != target and tmp.parent == target.parent
            tmp.write_bytes(b'{"v": 2, "half')          # a write cut short ...
            assert target.read_bytes() == old            # ... never shows in the target
            raise RuntimeError("disk full")
    assert target.read_bytes() == old and [p.name for p in tmp_path.iterdir()] == ["result.json"]
    # the same for a checkpoint whose torch.save fails half-way
    checkpoint.save(tmp_path / "run" / "checkpoint.pt", {"step": 1})
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()

    def half_save(obj, f, *a, **k):
        with open(f, "wb") as out:
            out.write(before[:10])
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", half_save)
    with pytest.raises(OSError):
        checkpoint.save(tmp_path / "run" / "checkpoint.pt", {"step": 2})
    monkeypatch.undo()
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["checkpoint.pt"]

    # the order of a successful write: fsync(the new file), rename, fsync(the folder)
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("fsync-dir" if stat.S_ISDIR(st.st_mode) else "fsync-file", st.st_ino))
        return real_fsync(fd)

    def replace(src, dst, *a, **k):
        events.append(("replace", os.stat(src).st_ino, str(dst)))
        return real_replace(src, dst, *a, **k)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_json(target, {"v": 3})
    new_ino, dir_ino = target.stat().st_ino, tmp_path.stat().st_ino
    assert events == [("fsync-file", new_ino), ("replace", new_ino, str(target)), ("fsync-dir", dir_ino)], events
    assert json.loads(target.read_text()) == {"v": 3}


@pytest.mark.parametrize("command", ["fgsm", "corrupt"])
def test_running_out_of_device_memory_is_one_line_naming_the_fix(command, monkeypatch):
    """torch's out-of-memory error (several lines of allocator statistics) becomes one line that names
    --batch-size; other RuntimeErrors stay bugs, with their tracebacks."""
    import robustkit.jobs

    def oom(*args, **kw):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
                                     "79.10 GiB of which 1.2 GiB is free.\nOf the allocated memory ...")
    monkeypatch.setattr(robustkit.jobs, f"run_{'fgsm' if command == 'fgsm' else 'corruptions'}", oom)
    res = invoke(command, "runs/x", "--no-progress")
    assert_one_line_error(res, "out of memory (CUDA out of memory)", "smaller --batch-size")
    assert "Tried to allocate" not in res.output

    def bug(*args, **kw):
        raise RuntimeError("a bug")
    monkeypatch.setattr(robustkit.jobs, f"run_{'fgsm' if command == 'fgsm' else 'corruptions'}", bug)
    res = invoke(command, "runs/x", "--no-progress")
    assert res.exit_code != 0 and isinstance(res.exception, RuntimeError) and "a bug" in str(res.exception)


def test_a_long_note_and_the_files_written_stay_one_line_each(capsys):
    """A note (a long path in it, say) and the "wrote ..." line are printed whole, on one line each, not folded at
    the console's width (80 columns where stderr is a file or a pipe): a log keeps them greppable."""
    from robustkit.cli import _Bar

    bar = _Bar("corrupt", enabled=False)
    long_path = "/data/" + "a-very-long-folder-name/" * 6 + "corruptions.json"
    bar.note(f"{long_path} is on other test data; a report of this folder would mix the two")
    bar.show("", [Path(long_path), Path(long_path.replace(".json", ".png"))])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == [f"note: {long_path} is on other test data; a report of this folder would mix the two",
                     f"wrote {long_path}, {long_path.replace('.json', '.png')}"]
