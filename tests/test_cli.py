"""The command line: error paths (one line, exit 2, no traceback), evaluation outputs, resume, report."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_one_line_error, invoke

from robustkit import checkpoint
from robustkit.data import limit_indices
from robustkit.jobs import Progress, run_corruptions


@pytest.fixture
def runs(evaluated_runs, tmp_path) -> Path:
    dst = tmp_path / "runs"
    shutil.copytree(evaluated_runs, dst)
    return dst


# ----------------------------------------------------------------------------------------------- train

@pytest.mark.parametrize("args,fragments", [
    (["--dataset", "imagenet"], ["unknown dataset", "digits"]),
    (["--dataset", "digits", "--method", "mixup"], ["unknown method", "baseline"]),
    (["--dataset", "digits", "--arch", "wrn-27-2"], ["architecture", "wrn-28-2"]),
    (["--dataset", "digits", "--arch", "resnet18"], ["architecture"]),
    (["--dataset", "digits", "--labels", "255"], ["multiple of the 10 classes", "250"]),
    (["--dataset", "digits", "--labels", "5"], ["labels"]),
    (["--dataset", "digits", "--labels", "5000"], ["labels"]),
    (["--dataset", "digits", "--labels", "many"], ["--labels"]),
    (["--dataset", "digits", "--device", "cuda"], ["cuda", "--device cpu"]),
    (["--dataset", "digits", "--method", "baseline", "--semi"], ["--semi", "gradaug"]),
    (["--dataset", "digits", "--steps", "10", "--epochs", "2"], ["--steps or --epochs"]),
    (["--dataset", "digits", "--resolutions", "32,x"], ["--resolutions"]),
    (["--dataset", "digits", "--resolutions", "32,,28"], ["--resolutions", "32,,28"]),
    (["--dataset", "digits", "--device", "cuda:9"], ["--device cuda:9"]),
    (["--dataset", "folder:"], ["needs a path"]),
    (["--dataset", "digits", "--min-width", "1.5"], ["--min-width"]),
    (["--dataset", "folder:/no/such/folder"], ["does not exist"]),
])
def test_train_bad_input_is_one_clear_line(args, fragments, tmp_path):
    assert_one_line_error(invoke("train", *args, "--out", tmp_path / "r"), *fragments)
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def _folder(root: Path, train: dict, test: dict, cifar_folder: Path) -> Path:
    for split, classes in (("train", train), ("test", test)):
        for cls, n in classes.items():
            d = root / split / cls
            d.mkdir(parents=True)
            for src in sorted((cifar_folder / "train" / "cat").iterdir())[:n]:
                shutil.copy(src, d / src.name)
    return root


def test_train_folder_errors(tmp_path, cifar_folder):
    empty = tmp_path / "empty"
    (empty / "train" / "a").mkdir(parents=True)
    (empty / "test" / "a").mkdir(parents=True)
    assert_one_line_error(invoke("train", "--dataset", f"folder:{empty}", "--out", tmp_path / "r1"), "no images")
    mismatch = _folder(tmp_path / "mm", {"a": 3, "b": 3}, {"a": 2, "c": 2}, cifar_folder)
    assert_one_line_error(invoke("train", "--dataset", f"folder:{mismatch}", "--out", tmp_path / "r2"), "class")
    broken = _folder(tmp_path / "broken", {"a": 3, "b": 3}, {"a": 2, "b": 2}, cifar_folder)
    (broken / "train" / "a" / "bad.jpg").write_bytes(b"not a jpeg at all")
    assert_one_line_error(invoke("train", "--dataset", f"folder:{broken}", "--out", tmp_path / "r3"), "bad.jpg")


def test_train_on_a_real_folder_and_resume_rules(tmp_path, cifar_folder):
    out = tmp_path / "r"
    args = ["train", "--dataset", f"folder:{cifar_folder}", "--labels", "100", "--arch", "wrn-10-1", "--steps", "2",
            "--batch-size", "8", "--eval-every", "1", "--semi", "--out", out, "--no-progress"]
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    assert "done:" in res.output and "test accuracy" in res.output
    info = checkpoint.read(out)
    assert info["dataset"]["spec"] == f"folder:{cifar_folder}" and len(info["classes"]) == 10
    assert_one_line_error(invoke(*args), "already holds a run", "--resume")
    assert_one_line_error(invoke("train", "--resume", out, "--steps", "5"), "--resume", "--steps")
    # --resume RUN/checkpoint.pt names its run (before: "RUN/checkpoint.pt/checkpoint.pt does not exist")
    assert_one_line_error(invoke("train", "--resume", out / "checkpoint.pt"), "already finished")
    assert_one_line_error(invoke("train", "--resume", out / "config.yaml"), "takes the run's folder")


def test_train_config_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: digits\nlearning_rate: 0.1\n")
    assert_one_line_error(invoke("train", "--config", bad), "unknown key", "learning_rate")
    assert_one_line_error(invoke("train", "--config", tmp_path / "missing.yaml"), "does not exist")
    good = tmp_path / "good.yaml"
    good.write_text("dataset: digits\nlabels: 100\narch: wrn-10-1\nsteps: 2\nbatch_size: 8\nmethod: baseline\nlr: 0.5\n")
    res = invoke("train", "--config", good, "--lr", "0.01", "--out", tmp_path / "r", "--no-progress")
    assert res.exit_code == 0, res.output
    saved = checkpoint.read(tmp_path / "r")["config"]
    assert saved["lr"] == 0.01 and saved["labels"] == 100 and saved["method"] == "baseline"  # flags > file > defaults


# ------------------------------------------------------------------------------------------ evaluation

def test_fgsm_writes_results_next_to_the_checkpoint(runs):
    res = invoke("fgsm", runs / "gradaug" / "checkpoint.pt", "--eps", "0.02,0.08", "--limit", "50", "--no-progress")
    assert res.exit_code == 0, res.output
    assert "FGSM" in res.output and "clean accuracy" in res.output
    data = json.loads((runs / "gradaug" / "eval" / "fgsm.json").read_text())
    assert [r["eps"] for r in data["results"]] == [0.0, 0.02, 0.08]
    assert all(0 <= r["accuracy"] <= 1 and r["n"] == 50 for r in data["results"])
    assert data["sha256"] == checkpoint.sha256(runs / "gradaug" / "checkpoint.pt")
    assert data["dataset"] == "digits" and data["limit"] == 50 and data["device"] == "cpu"
    assert data["clean_accuracy"] == data["results"][0]["accuracy"]
    assert {"torch", "torchattacks", "robustkit"} <= set(data["versions"])
    for ext in ("csv", "png"):
        assert (runs / "gradaug" / "eval" / f"fgsm.{ext}").stat().st_size > 0


def test_folder_of_checkpoints_with_out(runs, tmp_path):
    res = invoke("corrupt", runs, "--corruptions", "brightness", "--severities", "2", "--limit", "20",
                 "--out", tmp_path / "res", "--no-progress")
    assert res.exit_code == 0, res.output
    for name in ("baseline", "gradaug"):
        data = json.loads((tmp_path / "res" / name / "corruptions.json").read_text())
        assert data["preset"] == "cifar-10-c" and data["results"][0]["corruption"] == "brightness"
        assert data["complete"] is True and 0 <= data["mean_corruption_accuracy"] <= 1


class _StopAfter(Progress):
    def __init__(self, cells):
        self.cells = cells

    def advance(self, n=1, label=None):
        self.cells -= n
        if self.cells <= 0:
            raise KeyboardInterrupt


def test_interrupted_corruption_sweep_resumes_without_redoing_cells(runs, monkeypatch):
    ckpt = runs / "baseline" / "checkpoint.pt"
    cells = dict(corruptions=["gaussian_noise", "brightness"], severities=[1, 2, 5], limit=40, device="cpu",
                 out=runs / "res")
    with pytest.raises(KeyboardInterrupt):
        run_corruptions([ckpt], progress=_StopAfter(2), **cells)
    partial = json.loads((runs / "res" / "corruptions.json").read_text())
    assert len(partial["results"]) == 2 and partial["complete"] is False

    import robustkit.jobs as jobs
    calls = []
    real = jobs.corruption_counts

    def counting(models, images, labels, name, sev, **kw):
        calls.extend([(name, sev)] * len(models))
        return real(models, images, labels, name, sev, **kw)
    monkeypatch.setattr(jobs, "corruption_counts", counting)
    result = run_corruptions([ckpt], **cells)[0]
    assert len(calls) == 4 and all((c, s) not in calls for c, s in
                                   ((r["corruption"], r["severity"]) for r in partial["results"]))
    assert result["complete"] is True and len(result["results"]) == 6
    # The resumed grid equals an uninterrupted one (seeded corruptions).
    fresh = run_corruptions([ckpt], **{**cells, "out": runs / "fresh"})[0]
    assert [r["accuracy"] for r in fresh["results"]] == [r["accuracy"] for r in result["results"]]
    # A finished grid is not recomputed; --force does.
    calls.clear()
    run_corruptions([ckpt], **cells)
    assert calls == []
    run_corruptions([ckpt], force=True, **cells)
    assert len(calls) == 6


def _resume_writes(monkeypatch) -> list[int]:
    """The number of finished cells in each resume point a corruption grid writes (its results JSON)."""
    import robustkit.jobs as jobs

    writes = []
    real = jobs._write_json

    def counting(path, obj):
        writes.append(len(obj["results"]))
        real(path, obj)
    monkeypatch.setattr(jobs, "_write_json", counting)
    return writes


@pytest.mark.parametrize("every,expected", [(0.0, [1, 2, 3, 4]), (1e9, [])])
def test_a_grid_writes_its_resume_point_at_most_every_resume_interval(runs, monkeypatch, every, expected):
    """A write per cell at interval 0; with an interval longer than the grid, none: the finished file, written when
    the grid ends, is the only write (the same file is not written twice, as a resume point and then in full): the
    interval, not the cell, decides how often the disk is touched."""
    import robustkit.jobs as jobs

    monkeypatch.setattr(jobs, "RESUME_EVERY_S", every)
    writes = _resume_writes(monkeypatch)
    result = run_corruptions([runs / "baseline" / "checkpoint.pt"], ["gaussian_noise", "brightness"], [1, 5],
                             limit=20, device="cpu", out=runs / "res")[0]
    assert writes == expected and result["complete"] is True
    written = json.loads((runs / "res" / "corruptions.json").read_text())
    assert written["complete"] is True and len(written["results"]) == 4


def test_result_files_that_fail_at_the_end_still_leave_every_cell_in_the_results_json(runs, monkeypatch):
    """The grid's last resume point is not written when the result files replace it; where writing them fails
    before the JSON is in place, the resume point is written after all: every finished cell stays."""
    import robustkit.jobs as jobs
    import robustkit.report as report

    monkeypatch.setattr(jobs, "RESUME_EVERY_S", 1e9)
    writes = _resume_writes(monkeypatch)

    def broken(result, out_dir):
        raise OSError("disk full, say")
    monkeypatch.setattr(report, "write_corruption_outputs", broken)
    with pytest.raises(OSError, match="disk full"):
        run_corruptions([runs / "baseline" / "checkpoint.pt"], ["gaussian_noise", "brightness"], [1, 5], limit=20,
                        device="cpu", out=runs / "res")
    assert writes == [4]
    assert len(json.loads((runs / "res" / "corruptions.json").read_text())["results"]) == 4


@pytest.mark.parametrize("stop", ["sigterm", "error"])
def test_a_grid_stopped_by_sigterm_or_an_error_keeps_its_finished_cells(runs, monkeypatch, stop):
    """With no resume point written yet (interval longer than the run), a SIGTERM (a scheduler stopping the job)
    or an error after two cells still leaves those two in the file, and the error itself is what is raised."""
    import os
    import signal

    import robustkit.jobs as jobs

    monkeypatch.setattr(jobs, "RESUME_EVERY_S", 1e9)
    writes = _resume_writes(monkeypatch)

    class Stop(Progress):
        cells = 0

        def advance(self, n=1, label=None):
            self.cells += n
            if self.cells == 2:
                if stop == "sigterm":
                    os.kill(os.getpid(), signal.SIGTERM)
                else:
                    raise RuntimeError("out of memory, say")

    def ignore(signum, frame):   # the caller's handler: had the grid not set its own, the grid would go on
        pass
    old = signal.signal(signal.SIGTERM, ignore)
    try:
        stopped = pytest.raises(KeyboardInterrupt if stop == "sigterm" else RuntimeError,
                                match="" if stop == "sigterm" else "out of memory")
        with stopped:
            run_corruptions([runs / "baseline" / "checkpoint.pt"], ["gaussian_noise", "brightness"], [1, 5],
                            limit=20, device="cpu", out=runs / "res", progress=Stop())
        assert signal.getsignal(signal.SIGTERM) is ignore   # the handler is the caller's again
    finally:
        signal.signal(signal.SIGTERM, old)
    assert writes == [2]
    partial = json.loads((runs / "res" / "corruptions.json").read_text())
    assert [(r["corruption"], r["severity"]) for r in partial["results"]] == [("gaussian_noise", 1), ("gaussian_noise", 5)]


@pytest.mark.parametrize("kind", ["corruptions-seed", "pgd-steps"])
def test_a_cached_result_is_not_reused_for_other_settings(runs, kind):
    """The cell cache is keyed by every setting that changes the numbers: a second run into the same folder with
    another corruption seed or PGD step count recomputes, and equals a fresh run of its own settings (a cache that
    ignored the key would hand back the first run's numbers, labelled as the second's)."""
    from robustkit.jobs import run_fgsm

    ckpt = runs / "baseline" / "checkpoint.pt"
    if kind == "corruptions-seed":
        def run(out, value):
            return run_corruptions([ckpt], ["gaussian_noise", "impulse_noise"], [5], seed=value, limit=100,
                                   device="cpu", out=out)[0]
        first, second, field = 0, 1, ("seed",)
    else:
        def run(out, value):
            return run_fgsm([ckpt], [0.05, 0.1], attack="pgd", steps=value, limit=60, device="cpu", out=out)[0]
        first, second, field = 1, 4, ("attack_params", "steps")
    run(runs / "res", first)
    again = run(runs / "res", second)
    fresh = run(runs / "fresh", second)
    value = again
    for f in field:
        value = value[f]
    assert value == second
    assert [r["accuracy"] for r in again["results"]] == [r["accuracy"] for r in fresh["results"]]


def test_the_same_checkpoint_by_another_path_reuses_its_cells(runs, monkeypatch):
    """Cells are kept for the same checkpoint file (same sha256) however its path is written; another file at the
    same path is evaluated afresh."""
    import robustkit.jobs as jobs

    cells = dict(corruptions=["gaussian_noise"], severities=[1, 2], limit=30, device="cpu")
    run_corruptions([runs / "baseline" / "checkpoint.pt"], **cells)
    calls = []
    real = jobs.corruption_counts
    monkeypatch.setattr(jobs, "corruption_counts",
                        lambda models, *a, **kw: calls.append(1) or real(models, *a, **kw))
    monkeypatch.chdir(runs.parent)
    notes = []
    progress = Progress()
    progress.note = notes.append
    result = run_corruptions([Path(runs.name) / "baseline"], progress=progress, **cells)[0]   # relative, the folder
    assert calls == [] and not notes and len(result["results"]) == 2
    shutil.copy(runs / "gradaug" / "checkpoint.pt", runs / "baseline" / "checkpoint.pt")      # another file there
    run_corruptions([runs / "baseline"], progress=progress, **cells)
    assert calls and any("settings changed" in n for n in notes)


def test_folder_evaluation_equals_one_checkpoint_at_a_time(runs, tmp_path):
    cells = dict(corruptions=["shot_noise", "fog"], severities=[2, 4], limit=30, device="cpu")
    together = run_corruptions([runs], out=tmp_path / "together", **cells)
    alone = [run_corruptions([runs / name / "checkpoint.pt"], out=tmp_path / name, **cells)[0] for name in ("baseline", "gradaug")]
    for a, b in zip(together, alone):
        assert a["run"] == b["run"] and a["results"] == b["results"] and a["clean_accuracy"] == b["clean_accuracy"]


def test_run_fgsm_always_adds_clean_and_lists_eps_ascending_when_resumed(runs, tmp_path):
    """The Python API, not only the CLI (whose --eps parser adds 0 itself): the clean point is always evaluated,
    a resumed sweep lists every record by eps (file and return value alike), and the batch size defaults to the
    README's "1000 on CUDA, 250 on CPU"."""
    from robustkit.jobs import default_batch_size, run_fgsm

    ckpt = runs / "baseline" / "checkpoint.pt"
    out = tmp_path / "out"
    first = run_fgsm([ckpt], [0.1], limit=30, device="cpu", out=out)[0]
    assert [r["eps"] for r in first["results"]] == [0.0, 0.1]
    assert first["clean_accuracy"] is not None and first["clean_accuracy"] == first["results"][0]["accuracy"]
    assert first["batch_size"] == 250
    assert default_batch_size(torch.device("cuda")) == 1000
    second = run_fgsm([ckpt], [0.05, 0.1], limit=30, device="cpu", out=out)[0]
    assert [r["eps"] for r in second["results"]] == [0.0, 0.05, 0.1]
    on_disk = json.loads((out / "fgsm.json").read_text())
    assert [r["eps"] for r in on_disk["results"]] == [0.0, 0.05, 0.1]


def test_corrupts_default_batch_on_cuda_holds_1000_224px_images_worth_of_pixels():
    """corrupt's default on CUDA: 1000 at 224 px and above (fgsm's), more for smaller images (the pixels of 1000
    224-px images), at most 5000; on the CPU 250 whatever the size."""
    from robustkit.jobs import default_corrupt_batch_size

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert default_corrupt_batch_size(cuda, 224, 224) == 1000
    assert default_corrupt_batch_size(cuda, 299, 299) == 1000 and default_corrupt_batch_size(cuda, 512, 384) == 1000
    assert default_corrupt_batch_size(cuda, 128, 128) == 1000 * 224 * 224 // (128 * 128) == 3062
    assert default_corrupt_batch_size(cuda, 160, 100) == 3136
    for small in (32, 64, 96, 8):
        assert default_corrupt_batch_size(cuda, small, small) == 5000
    for size in (8, 32, 224, 512):
        assert default_corrupt_batch_size(cpu, size, size) == 250


def test_corrupts_default_batch_follows_each_models_image_size(runs, tmp_path, monkeypatch):
    """Without --batch-size, the model's test images set its batch (here by a stand-in rule of the image size): the
    result file records it, and the clean pass and every cell run at it. An explicit --batch-size wins."""
    import robustkit.jobs as jobs

    asked = []
    monkeypatch.setattr(jobs, "default_corrupt_batch_size", lambda dev, h, w: asked.append((h, w)) or h + 2 * w + 1)
    clean, cells = [], []
    real = jobs.corruption_counts
    monkeypatch.setattr(jobs, "accuracy", lambda model, images, labels, bs, *a: clean.append(bs) or 0.5)
    monkeypatch.setattr(jobs, "corruption_counts", lambda *a, **kw: cells.append(kw["batch_size"]) or real(*a, **kw))
    ckpt = runs / "baseline" / "checkpoint.pt"
    result = jobs.run_corruptions([ckpt], ["contrast", "fog"], [1], limit=40, device="cpu", out=tmp_path / "a")[0]
    (h, w), = asked
    assert result["batch_size"] == h + 2 * w + 1 and clean == [h + 2 * w + 1] and cells == [h + 2 * w + 1] * 2
    clean.clear()
    cells.clear()
    result = jobs.run_corruptions([ckpt], ["contrast"], [1], limit=40, batch_size=7, device="cpu", out=tmp_path / "b")[0]
    assert result["batch_size"] == 7 and clean == [7] and cells == [7]


def test_mean_corruption_accuracy_is_over_every_recorded_cell(runs, tmp_path, monkeypatch):
    """A second sweep into the same folder keeps the first one's cells: the file's mean is over every record it
    holds, not over the cells of the last request only. The cells' accuracies are set here (0.1, 0.2, 0.6), so
    the mean is known by hand: 0.3 (the last request alone would give 0.6)."""
    import robustkit.jobs as jobs

    made = {("contrast", 1): 0.1, ("contrast", 2): 0.2, ("fog", 1): 0.6}
    monkeypatch.setattr(jobs, "corruption_counts",   # correct counts out of the 30 images: 3, 6 and 18
                        lambda models, images, labels, name, sev, **kw:
                        torch.tensor([round(made[(name, sev)] * len(labels))] * len(models)))
    ckpt = runs / "baseline" / "checkpoint.pt"
    out = tmp_path / "out"
    run_corruptions([ckpt], ["contrast"], [1, 2], limit=30, device="cpu", out=out)
    result = run_corruptions([ckpt], ["fog"], [1], limit=30, device="cpu", out=out)[0]
    assert result["batch_size"] == 250   # the CPU default, as for fgsm
    assert {(r["corruption"], r["severity"]): r["accuracy"] for r in result["results"]} == made
    assert result["mean_corruption_accuracy"] == pytest.approx(0.3, abs=1e-12)
    on_disk = json.loads((out / "corruptions.json").read_text())
    assert on_disk["mean_corruption_accuracy"] == pytest.approx(0.3, abs=1e-12)


def test_limit_is_a_fixed_shuffled_subset():
    a, b = limit_indices(300, 50), limit_indices(300, 50)
    assert torch.equal(a, b) and len(a.unique()) == 50 and torch.equal(a, a.sort().values)
    assert a.max() > 100  # not simply the first 50
    assert limit_indices(300, None) is None and limit_indices(300, 300) is None


def test_a_limit_above_the_test_split_says_so(runs, tmp_path):
    res = invoke("fgsm", runs / "gradaug", "--eps", "0.05", "--limit", "5000", "--no-progress", "--device", "cpu",
                 "--out", tmp_path / "all")
    assert res.exit_code == 0, res.output
    assert "note: --limit 5000 is more than the 300 test images of digits: all 300 are used" in res.output
    assert json.loads((tmp_path / "all" / "fgsm.json").read_text())["n"] == 300
    res = invoke("fgsm", runs / "gradaug", "--eps", "0.05", "--limit", "300", "--no-progress", "--device", "cpu",
                 "--out", tmp_path / "exact")
    assert res.exit_code == 0 and "--limit" not in res.output, res.output


@pytest.mark.parametrize("args,fragments", [
    (["fgsm", "{ckpt}", "--eps", "0.3..0.1"], ["eps"]),
    (["fgsm", "{ckpt}", "--eps", "abc"], ["eps"]),
    (["fgsm", "{ckpt}", "--eps", "1.5"], ["[0, 1]"]),
    (["fgsm", "{ckpt}", "--attack", "cw"], ["unknown attack", "torchattacks:NAME"]),
    (["fgsm", "{ckpt}", "--attack", "torchattacks:PDG"], ["no attack", "did you mean PGD"]),
    (["fgsm", "{ckpt}", "--attack", "torchattacks:CW"], ["no eps budget"]),
    (["fgsm", "{ckpt}", "--attack", "pgd", "--attack-param", "steps=3"], ["--attack-param", "torchattacks"]),
    (["fgsm", "{ckpt}", "--attack", "torchattacks:PGD", "--attack-param", "steps"], ["KEY=VALUE"]),
    (["fgsm", "{ckpt}", "--attack", "torchattacks:PGD", "--attack-param", "steps=abc", "--limit", "20"],
     ["torchattacks.PGD", "'steps': 'abc'", "--attack-param"]),
    (["fgsm", "{ckpt}", "--attack", "torchattacks:FGSM", "--attack-param", "foo=1"], ["takes none besides --eps"]),
    (["corrupt", "{ckpt}", "--corruptions", "rain"], ["unknown corruption", "fog"]),
    (["corrupt", "{ckpt}", "--corruptions", ""], ["--corruptions is empty"]),
    (["fgsm", "{ckpt}", "--data", "folder:"], ["needs a path"]),
    (["fgsm", "torchvision:resnet18", "--data", "digits", "--weights", "{runs}"], ["is a folder"]),
    (["fgsm", "{runs}/notes.pt"], ["not a readable PyTorch file", "neither a zip archive nor a pickle"]),
    (["corrupt", "{ckpt}", "--severities", "0..6"], ["severit"]),
    (["corrupt", "{ckpt}", "--preset", "imagenet"], ["preset"]),
    (["corrupt", "{ckpt}", "--limit", "0"], ["--limit"]),
    (["fgsm", "{ckpt}", "--mean", "nan,0.5,0.5", "--limit", "20"], ["--mean takes finite numbers", "nan,0.5,0.5"]),
    (["fgsm", "{runs}/nothing-here.pt"], ["does not exist"]),
    (["corrupt", "{empty}"], ["no checkpoint.pt"]),
])
def test_evaluation_bad_input_is_one_clear_line_and_keeps_results(args, fragments, runs, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    before = {p: p.read_bytes() for p in (runs / "baseline" / "eval").iterdir()}
    ckpt = runs / "baseline" / "checkpoint.pt"
    (runs / "notes.pt").write_text("not a checkpoint\n")   # text: torch.load raised KeyError: 110
    res = invoke(*[a.format(ckpt=ckpt, runs=runs, empty=empty) for a in args], "--no-progress")
    assert_one_line_error(res, *fragments)
    assert {p: p.read_bytes() for p in (runs / "baseline" / "eval").iterdir()} == before


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("touch PWNED_BY_CHECKPOINT",))


def test_bad_checkpoint_files(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    good = (runs / "baseline" / "checkpoint.pt").read_bytes()
    cases = {}
    (tmp_path / "truncated.pt").write_bytes(good[: len(good) // 2])
    cases["truncated.pt"] = "not a readable PyTorch file"
    (tmp_path / "text.pt").write_text("hello")
    cases["text.pt"] = "not a readable PyTorch file"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "foreign.pt")
    cases["foreign.pt"] = "not a robustkit checkpoint"
    torch.save({"format": "robustkit-checkpoint", "payload": _Evil()}, tmp_path / "evil.pt")
    cases["evil.pt"] = "would run code"
    raw = checkpoint.read(runs / "baseline")
    for key in ("model", "arch", "arch_kwargs"):    # a checkpoint with a key missing, e.g. edited by hand
        checkpoint.save(tmp_path / f"no-{key}" / "checkpoint.pt",
                        {k: v for k, v in raw.items() if k not in ("format", "format_version", key)})
        cases[f"no-{key}/checkpoint.pt"] = f"damaged robustkit checkpoint: it has no {key}"
    # a checkpoint of a later format (a newer robustkit wrote it) is refused, not misread
    checkpoint.save(tmp_path / "newer.pt", {**{k: v for k, v in raw.items() if k != "format"},
                                            "format_version": checkpoint.FORMAT_VERSION + 1})
    cases["newer.pt"] = f"written by a newer robustkit (format {checkpoint.FORMAT_VERSION + 1}): upgrade robustkit"
    # fields of the wrong kind (edited by hand, or written by something else): one line, not a TypeError
    base = {k: v for k, v in raw.items() if k not in ("format", "format_version")}
    for name, change, fragment in (
            ("fv-str", {"format_version": "2"}, "its 'format_version' should be int, not str"),
            ("model-tensor", {"model": torch.zeros(3)}, "its 'model' should be dict, not Tensor"),
            ("model-values", {"model": {"w": [1.0]}}, "its 'model' weights are not a dict of tensors"),
            ("kwargs-list", {"arch_kwargs": [1, 2]}, "its 'arch_kwargs' should be dict, not list"),
            ("kwargs-foreign", {"arch_kwargs": {"depth_of_field": 3}}, "arch_kwargs do not fit"),
            ("dataset-none", {"dataset": None}, "its 'dataset' should be dict, not NoneType"),
            ("dataset-nospec", {"dataset": {"data_dir": None}}, "its 'dataset' names no data"),
            ("step-float", {"step": 2.5}, "its 'step' should be int, not float")):
        checkpoint.save(tmp_path / name / "checkpoint.pt", {**base, **change})
        cases[f"{name}/checkpoint.pt"] = fragment
    for name, fragment in cases.items():
        assert_one_line_error(invoke("fgsm", tmp_path / name, "--no-progress"), fragment)
        assert_one_line_error(invoke("corrupt", tmp_path / name, "--no-progress"), fragment)
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()
    for key in ("optimizer", "labeled_indices", "model"):   # and continuing its run
        run = tmp_path / f"resume-no-{key}"
        checkpoint.save(run / "checkpoint.pt", {k: v for k, v in raw.items() if k not in ("format", "format_version", key)})
        assert_one_line_error(invoke("train", "--resume", run, "--no-progress"), f"it has no {key}")
    # no dataset entry at all: the model still builds, and the evaluation asks for the data
    checkpoint.save(tmp_path / "no-dataset" / "checkpoint.pt", {k: v for k, v in base.items() if k != "dataset"})
    assert_one_line_error(invoke("fgsm", tmp_path / "no-dataset", "--no-progress"), "does not name its data: give --data")
    # saved state of another shape: the weights, or the optimizer's momentum of another model
    other = {k: v[:1] if v.dim() else v for k, v in raw["model"].items()}
    optim = {"state": {0: {"momentum_buffer": torch.zeros(1)}}, "param_groups": [{"params": [0]}]}
    for name, change in (("resume-weights", {"model": other}), ("resume-optimizer", {"optimizer": optim})):
        checkpoint.save(tmp_path / name / "checkpoint.pt", {**base, **change})
        assert_one_line_error(invoke("train", "--resume", tmp_path / name, "--no-progress"),
                              "is a damaged robustkit checkpoint: its saved state does not fit the run it describes")


def test_dataset_missing_offline_is_a_clear_error(runs, tmp_path):
    raw = checkpoint.read(runs / "baseline")
    raw["dataset"]["spec"] = "cifar10"
    raw["dataset"]["data_dir"] = str(tmp_path / "no-data")
    checkpoint.save(tmp_path / "c10" / "checkpoint.pt", {k: v for k, v in raw.items() if k not in ("format", "format_version")})
    import torchvision.datasets.utils as tvu

    def offline(*a, **k):
        raise OSError("network unreachable")

    mp = pytest.MonkeyPatch()
    mp.setattr(tvu, "download_url", offline)
    try:
        res = invoke("fgsm", tmp_path / "c10", "--no-progress")
    finally:
        mp.undo()
    assert_one_line_error(res, "cifar", "fgsm/corrupt: --data folder:PATH")   # the option fgsm takes, not train's


def test_a_checkpoints_data_folder_that_moved_is_named_as_the_checkpoints(runs, tmp_path):
    raw = checkpoint.read(runs / "baseline")
    raw["dataset"]["spec"] = f"folder:{tmp_path / 'moved-away'}"
    checkpoint.save(tmp_path / "f" / "checkpoint.pt", {k: v for k, v in raw.items() if k not in ("format", "format_version")})
    for command in ("fgsm", "corrupt"):
        res = invoke(command, tmp_path / "f", "--no-progress")
        assert_one_line_error(res, f"was trained on folder:{tmp_path / 'moved-away'}, which does not exist any more",
                              "give --data folder:PATH")
    res = invoke("fgsm", tmp_path / "f", "--data", f"folder:{tmp_path / 'typo'}", "--no-progress")
    assert_one_line_error(res, "data folder", "typo", "does not exist")   # a path typed here is not the checkpoint's


def test_report_twice_over_a_glob_that_now_holds_the_report(runs):
    """`robustkit report runs/*` writes runs/report/; the same command again finds that folder in the glob and
    passes over it (a report folder holds no runs), instead of refusing."""
    first = invoke("report", *sorted(runs.iterdir()))
    assert first.exit_code == 0, first.output
    assert (runs / "report" / "report.md").is_file()
    again = invoke("report", *sorted(runs.iterdir()))
    assert again.exit_code == 0, again.output
    assert "baseline" in (runs / "report" / "report.md").read_text()


def test_report_over_runs_with_baseline(runs, tmp_path):
    res = invoke("report", runs, "--baseline", runs / "baseline", "--out", tmp_path / "rep")
    assert res.exit_code == 0, res.output
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "gradaug" in md and "baseline" in md and "mCE" in md
    assert (tmp_path / "rep" / "fgsm_overlay.png").stat().st_size > 0
    assert_one_line_error(invoke("report", tmp_path / "empty-nothing"), "")


def test_torchattacks_attack_from_the_command_line(runs):
    ckpt = runs / "gradaug" / "checkpoint.pt"
    res = invoke("fgsm", ckpt, "--attack", "torchattacks:PGD", "--attack-param", "steps=2", "--eps", "0.05",
                 "--limit", "30", "--no-progress", "--out", runs / "ta")
    assert res.exit_code == 0, res.output
    data = json.loads((runs / "ta" / "torchattacks-PGD.json").read_text())   # each attack keeps its own file
    assert data["attack"] == "torchattacks:PGD" and data["attack_params"] == {"name": "PGD", "steps": 2, "seed": 0}
    assert [r["eps"] for r in data["results"]] == [0.0, 0.05] and data["amp"] is False


def test_missing_torchattacks_is_one_clear_line(runs, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torchattacks", None)  # import fails as if it were not installed
    res = invoke("fgsm", runs / "gradaug", "--attack", "torchattacks:AutoAttack", "--no-progress")
    assert_one_line_error(res, "pip install 'robustkit[torchattacks]'")


def test_demo_small_end_to_end(tmp_path):
    res = invoke("demo", "--out", tmp_path / "d", "--steps", "2", "--seeds", "2", "--corruptions", "fog",
                 "--severities", "1", "--device", "cpu", "--no-progress")
    assert res.exit_code == 0, res.output
    runs = sorted(p.name for p in (tmp_path / "d" / "runs").iterdir())
    assert runs == sorted(f"{m}-s{s}" for m in ("baseline", "gradaug", "gradaug-semi") for s in (0, 1))
    md = (tmp_path / "d" / "report" / "report.md").read_text()
    assert "## Across seeds (mean ± std)" in md and "baseline `baseline-s0`" in md
    assert (tmp_path / "d" / "report" / "seeds.png").is_file()
    assert_one_line_error(invoke("demo", "--out", tmp_path / "d", "--no-progress"), "not empty")


@pytest.mark.parametrize("flags,fragments", [
    (["--labels", "55"], ["not a multiple", "use 50 or 60"]),
    (["--labels", "2000"], ["at most 1440"]),
    (["--arch", "wrn-10-0"], ["widen factor"]),
    (["--severities", "9"], ["severit"]),
    (["--corruptions", "foo"], ["foo"]),
])
def test_demo_bad_settings_are_one_line_and_leave_no_folder(flags, fragments, tmp_path, monkeypatch):
    """Before: each failed demo left an empty robustkit-demo-<time>/ behind; and its --labels, a number, was told
    to try 'or --labels all'."""
    monkeypatch.chdir(tmp_path)
    res = invoke("demo", *flags, "--steps", "2", "--seeds", "1", "--device", "cpu", "--no-progress")
    assert_one_line_error(res, *fragments)
    assert "--labels all" not in res.output
    assert list(tmp_path.iterdir()) == []
    res = invoke("demo", "--out", tmp_path / "given", *flags, "--steps", "2", "--seeds", "1", "--device", "cpu",
                 "--no-progress")
    assert_one_line_error(res, *fragments)
    assert list(tmp_path.iterdir()) == []


def test_find_checkpoints_lists_each_file_once_however_it_is_named(tmp_path, monkeypatch):
    """A checkpoint named twice (a folder holding it and the file itself, relative and absolute paths) is one
    model: found once, under the first name given."""
    monkeypatch.chdir(tmp_path)
    for name in ("a", "b"):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "checkpoint.pt").write_bytes(b"")
    found = checkpoint.find_checkpoints(["runs", "runs/a/checkpoint.pt", tmp_path / "runs" / "b",
                                         "runs/b/../a/checkpoint.pt"])
    assert found == [Path("runs/a/checkpoint.pt"), Path("runs/b/checkpoint.pt")]
