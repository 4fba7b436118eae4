"""fit(): a real short run, checkpoint round trip, resume equivalence, faults (NaN loss, kills)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import robustkit
from robustkit import checkpoint
from robustkit.config import TrainConfig
from robustkit.checkpoint import load_checkpoint
from robustkit.data import limit_indices, load_dataset
from robustkit.errors import RobustkitError
from robustkit.methods import TRAIN_STEPS
from robustkit.train import cosine_lr, fit

TINY = dict(dataset="digits", arch="wrn-10-1", labels=100, batch_size=16, eval_limit=60, eval_batch_size=128)


def test_short_digits_run_learns_and_writes_a_complete_run(tmp_path):
    cfg = TrainConfig(**{**TINY, "labels": 250, "batch_size": 32, "eval_limit": None}, method="baseline",
                      steps=80, eval_every=40, lr=0.05)
    res = fit(cfg, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    assert res.step == 80 and res.test_acc is not None
    # The recorded test accuracy is what an independent loop over the saved weights measures (one image of
    # slack: a different batch split may round a near-tie the other way). No threshold on the trained
    # number itself: how well 80 steps learn depends on the machine's floating point.
    model, _ = load_checkpoint(run, device="cpu")
    test = load_dataset("digits", "test")
    with torch.no_grad():
        pred = torch.cat([model(xb.float() / 255).argmax(1) for xb in test.images.split(100)])
    assert abs(res.test_acc - (pred == test.labels).double().mean().item()) <= 1 / len(test.labels) + 1e-9
    assert {"checkpoint.pt", "config.yaml", "metrics.jsonl", "labeled_indices.json"} <= {p.name for p in run.iterdir()}
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "test_acc" in r] == [40, 80]
    assert all(r["images_per_s"] > 0 and r["lr"] >= 0 for r in lines)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["steps"] == 80 and saved["resolutions"] == [32, 28, 24] and saved["flip"] is False
    assert len(json.loads((run / "labeled_indices.json").read_text())) == 250
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp"))


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    cfg = TrainConfig(**TINY, method="gradaug", semi=True, steps=4, eval_every=2)
    fit(cfg, tmp_path / "r", progress=False)
    raw = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)  # never runs code
    assert raw["format"] == "robustkit-checkpoint" and raw["step"] == 4 and raw["finished"] is True
    model, info = robustkit.load_checkpoint(tmp_path / "r", device="cpu")
    assert not model.training
    assert info["config"]["semi"] is True and info["method"] == "gradaug-semi"
    assert info["dataset"]["spec"] == "digits" and info["classes"] == [str(i) for i in range(10)]
    assert info["labeled_indices"].shape == (100,) and info["arch"] == "wrn-10-1"
    assert [m["step"] for m in info["metrics"]] == [2, 4]
    assert set(info["versions"]) >= {"robustkit", "torch"}
    # The loaded model reproduces the saved test accuracy on [0,1] input.
    data = robustkit.load_dataset("digits", "test")
    idx = limit_indices(len(data.labels), 60)
    with torch.no_grad():
        acc = (model(data.images[idx].float() / 255).argmax(1) == data.labels[idx]).float().mean().item()
    assert acc == pytest.approx(info["metrics"][-1]["test_acc"], abs=1e-6)


def _weights(run_dir):
    return torch.load(Path(run_dir) / "checkpoint.pt", weights_only=True)


@pytest.mark.parametrize("method,semi,extra", [
    ("gradaug", True, {}), ("baseline", False, {}), ("cutmix", False, {"cutmix_prob": 0.7}),
    ("gradaug", False, {"cutmix_prob": 0.5}), ("shakedrop", False, {}), ("mean-teacher", False, {"rampup": 0.5}),
])
def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, method, semi, extra):
    cfg = TrainConfig(**TINY, method=method, semi=semi, steps=6, eval_every=2, **extra)
    fit(cfg, tmp_path / "whole", progress=False)
    part = fit(cfg, tmp_path / "split", progress=False, stop_at=3)
    assert part.step == 3 and _weights(tmp_path / "split")["step"] == 3
    fit(None, tmp_path / "split", resume=True, progress=False)
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "split")
    assert b["step"] == 6
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(pa["momentum_buffer"], pb["momentum_buffer"])
    assert set(a.get("method_state") or {}) == set(b.get("method_state") or {})
    for name, weights in (a.get("method_state") or {}).items():   # Mean Teacher's EMA teacher too
        for k in weights:
            assert torch.equal(weights[k], b["method_state"][name][k]), (name, k)
    steps = [json.loads(x)["step"] for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)), "resume must not duplicate metrics lines"
    # the checkpoint's evaluation history is the whole run's: the part's evaluations (2, and 3 where it stopped)
    # are kept by the resumed part, each with the uninterrupted run's test accuracy at that step
    assert [m["step"] for m in b["metrics"]] == [2, 3, 4, 6]
    whole = {m["step"]: m["test_acc"] for m in a["metrics"]}
    assert {m["step"]: m["test_acc"] for m in b["metrics"] if m["step"] != 3} == whole


def test_the_summary_rate_is_the_run_average_and_a_stopped_run_says_how_to_go_on(tmp_path):
    from cli_helpers import invoke

    cfg = TrainConfig(**TINY, method="baseline", steps=6, eval_every=3, log_every=1)
    result = fit(cfg, tmp_path / "avg", progress=False)
    # Every image of the 6 steps over the training time (evaluation not counted), not the last window's rate.
    assert result.images_per_s == pytest.approx(6 * cfg.batch_size / result.elapsed_s, rel=1e-9)
    res = invoke("train", "--dataset", "digits", "--arch", "wrn-10-1", "--labels", "100", "--method", "baseline",
                 "--steps", "4", "--stop-at", "2", "--batch-size", "16", "--eval-limit", "20", "--device", "cpu",
                 "--no-progress", "--out", tmp_path / "stop")
    assert res.exit_code == 0, res.output
    assert f"stopped at step 2/4: {tmp_path / 'stop'}" in res.output and "done:" not in res.output
    assert f"continue with: robustkit train --resume {tmp_path / 'stop'}" in res.output
    res = invoke("train", "--resume", tmp_path / "stop", "--no-progress")
    assert res.exit_code == 0 and res.output.startswith("done: ") and "continue with" not in res.output, res.output


def test_resume_of_a_finished_run_and_of_nothing_are_errors(tmp_path):
    cfg = TrainConfig(**TINY, method="baseline", steps=2, eval_every=2)
    for stop_at in (0, -1):   # no step to stop after: refused, rather than training the whole run
        with pytest.raises(RobustkitError, match=f"--stop-at must be >= 1, got {stop_at}"):
            fit(cfg, tmp_path / "r", progress=False, stop_at=stop_at)
        assert not (tmp_path / "r").exists()
    fit(cfg, tmp_path / "r", progress=False)
    with pytest.raises(RobustkitError, match="already finished"):
        fit(None, tmp_path / "r", resume=True, progress=False)
    with pytest.raises(RobustkitError, match="already holds a run"):
        fit(cfg, tmp_path / "r", progress=False)
    with pytest.raises(RobustkitError, match="cannot resume"):
        fit(None, tmp_path / "nothing", resume=True, progress=False)


@pytest.mark.parametrize("method,semi", [("mean-teacher", False), ("gradaug", True)])
def test_the_batches_fit_feeds_a_method(tmp_path, monkeypatch, method, semi):
    """What the loop hands a method (config.py's definitions, not a method's own code): an unlabeled batch of
    unlabeled_ratio x batch size images, and for Mean Teacher a second, independently augmented view of the same
    images for the teacher (x2: the same crop and flip as x by chance for ~1 image in 160)."""
    seen = []
    real = TRAIN_STEPS[method]

    def spy(net, batch, cfg, gen, autocast):
        seen.append(batch)
        return real(net, batch, cfg, gen, autocast)

    monkeypatch.setitem(TRAIN_STEPS, method, spy)
    cfg = TrainConfig(**TINY, method=method, semi=semi, unlabeled_ratio=3, steps=2, eval_every=2)
    fit(cfg, tmp_path / "r", progress=False, compile=False)
    assert len(seen) == 2
    for batch in seen:
        assert batch.x.shape[0] == 16 and batch.xu.shape[0] == 48
        if method == "mean-teacher":
            assert batch.x2.shape == batch.x.shape and batch.xu2.shape == batch.xu.shape
            same = sum(torch.equal(a, b) for a, b in zip(batch.x, batch.x2))
            same_u = sum(torch.equal(a, b) for a, b in zip(batch.xu, batch.xu2))
            assert same <= 2 and same_u <= 3, (same, same_u)


def test_resume_drops_a_metrics_line_cut_short_and_refuses_a_stop_at_already_passed(tmp_path):
    cfg = TrainConfig(**TINY, method="baseline", steps=6, eval_every=2, log_every=1)
    fit(cfg, tmp_path / "r", progress=False, stop_at=4)
    metrics = tmp_path / "r" / "metrics.jsonl"
    with open(metrics, "a") as f:   # the process killed in the middle of appending the line of step 5
        f.write('{"step": 5, "lr": 0.0')
    for stop_at in (4, 2):          # at or before the saved step: it would otherwise run to the end
        with pytest.raises(RobustkitError, match=f"--stop-at {stop_at}: .* already at step 4/6"):
            fit(None, tmp_path / "r", resume=True, progress=False, stop_at=stop_at)
    assert fit(None, tmp_path / "r", resume=True, progress=False, stop_at=5).step == 5
    steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]


def test_a_new_run_keeps_files_that_are_not_a_runs_and_restarts_one_that_never_saved(tmp_path):
    cfg = TrainConfig(**TINY, method="baseline", steps=2, eval_every=2)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("lr_schedule: mine\n")
    (mine / "metrics.jsonl").write_text("my numbers\n")
    with pytest.raises(RobustkitError, match="config.yaml, metrics.jsonl that are not a robustkit run's"):
        fit(cfg, mine, progress=False)
    assert (mine / "config.yaml").read_text() == "lr_schedule: mine\n"
    assert (mine / "metrics.jsonl").read_text() == "my numbers\n"
    fit(cfg, tmp_path / "r", progress=False)      # a run that stopped before its first checkpoint: the same
    (tmp_path / "r" / "checkpoint.pt").unlink()   # command starts it again in place
    assert fit(cfg, tmp_path / "r", progress=False).step == 2
    # ... with a metrics.jsonl of its own: the first attempt's lines are not kept in front of the new ones
    steps = [json.loads(x)["step"] for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2]


def test_a_resumed_run_counts_the_training_time_before_it(tmp_path):
    """elapsed_s is the training time of the whole run, resumed parts included: a checkpoint saying 1000 s
    were spent before it resumes to a run that has spent at least that (the checkpoint, the result and
    every later metrics line)."""
    cfg = TrainConfig(**TINY, method="baseline", steps=3, eval_every=1, log_every=1)
    fit(cfg, tmp_path / "r", progress=False, stop_at=1)
    raw = checkpoint.read(tmp_path / "r", keys=checkpoint.RESUME_KEYS)
    checkpoint.save(tmp_path / "r" / "checkpoint.pt",
                    {k: v for k, v in raw.items() if k not in ("format", "format_version")} | {"elapsed_s": 1000.0})
    result = fit(None, tmp_path / "r", resume=True, progress=False)
    assert result.elapsed_s >= 1000.0 and _weights(tmp_path / "r")["elapsed_s"] >= 1000.0
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3]
    assert all(r["elapsed_s"] >= 1000.0 for r in lines[1:])


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = TRAIN_STEPS["baseline"]

    def poisoned(model, batch, cfg, gen, autocast):
        calls["n"] += 1
        logs = real(model, batch, cfg, gen, autocast)
        if calls["n"] >= 5:
            logs["loss"] = logs["loss"] * float("nan")
        return logs

    monkeypatch.setitem(TRAIN_STEPS, "baseline", poisoned)
    cfg = TrainConfig(**TINY, method="baseline", steps=8, eval_every=2, log_every=1)
    with pytest.raises(RobustkitError, match="non-finite.*last good checkpoint \\(step 4\\)"):
        fit(cfg, tmp_path / "r", progress=False)
    saved = _weights(tmp_path / "r")
    assert saved["step"] == 4 and all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())
    # before the first checkpoint: no step-0 checkpoint is named (there is none), and no file is left
    calls["n"] = 0
    cfg = TrainConfig(**TINY, method="baseline", steps=8, eval_every=6, log_every=1)
    with pytest.raises(RobustkitError, match="non-finite.*no checkpoint was written before it") as info:
        fit(cfg, tmp_path / "early", progress=False)
    assert "last good" not in str(info.value) and not (tmp_path / "early" / "checkpoint.pt").exists()


def test_lr_schedule_is_cosine():
    assert cosine_lr(0.1, 0, 100) == pytest.approx(0.1)
    assert cosine_lr(0.1, 50, 100) == pytest.approx(0.05)
    assert cosine_lr(0.1, 100, 100) == pytest.approx(0.0)


def _spawn_training(run_dir: Path, steps: int) -> subprocess.Popen:
    code = (
        "import sys; from robustkit.config import TrainConfig; from robustkit.train import fit\n"
        f"fit(TrainConfig(dataset='digits', arch='wrn-10-1', labels=100, batch_size=16, eval_limit=30,"
        f" method='baseline', steps={steps}, eval_every=1, log_every=1), sys.argv[1], progress=False)\n"
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-c", code, str(run_dir)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    metrics = run_dir / "metrics.jsonl"
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= step:
            return
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    raise AssertionError("training did not reach the step in time")


def test_sigkill_mid_run_leaves_a_whole_resumable_checkpoint(tmp_path):
    run = tmp_path / "r"
    proc = _spawn_training(run, steps=400)
    _wait_for_step(run, 3, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    saved = checkpoint.read(run)                      # whole: loads with weights_only
    assert 1 <= saved["step"] < 400
    model, info = robustkit.load_checkpoint(run, device="cpu")
    assert info["step"] == saved["step"]
    resumed = fit(None, run, resume=True, progress=False, stop_at=saved["step"] + 1)   # and it resumes
    assert resumed.step == saved["step"] + 1


def test_sigterm_is_a_clean_stop_with_exit_130(tmp_path):
    run = tmp_path / "r"
    code = ("import sys; from robustkit.cli import main; sys.argv = ['robustkit', 'train', '--dataset', 'digits',"
            " '--arch', 'wrn-10-1', '--labels', '100', '--batch-size', '16', '--steps', '400', '--eval-every', '1',"
            " '--log-every', '1', '--eval-limit', '30', '--method', 'baseline', '--no-progress', '--out', sys.argv[1]]; main()")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_step(run, 2, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "--resume" in err and len(err.strip().splitlines()) == 1
    assert checkpoint.read(run)["step"] >= 1


def test_a_stopped_run_is_not_finished_and_resumes_only_on_the_same_labeled_subset(tmp_path):
    """--stop-at leaves a checkpoint that says the run is not finished (a finished one says so); resuming refuses
    a run whose labeled subset is not the one the data now gives (the data changed since it started)."""
    cfg = TrainConfig(**TINY, method="baseline", steps=4, eval_every=2)
    fit(cfg, tmp_path / "r", progress=False, stop_at=2)
    raw = checkpoint.read(tmp_path / "r", keys=checkpoint.RESUME_KEYS)
    assert raw["step"] == 2 and raw["finished"] is False
    indices = raw["labeled_indices"].clone()
    indices[0] = next(i for i in range(len(indices) + 1) if i not in set(indices.tolist()))   # another image
    checkpoint.save(tmp_path / "r" / "checkpoint.pt",
                    {k: v for k, v in raw.items() if k not in ("format", "format_version")} | {"labeled_indices": indices})
    with pytest.raises(RobustkitError, match="data of digits changed since this run started .*cannot resume"):
        fit(None, tmp_path / "r", resume=True, progress=False)
    assert _weights(tmp_path / "r")["step"] == 2   # refused before anything was trained or written
    checkpoint.save(tmp_path / "r" / "checkpoint.pt", {k: v for k, v in raw.items() if k not in ("format", "format_version")})
    assert fit(None, tmp_path / "r", resume=True, progress=False).step == 4 and _weights(tmp_path / "r")["finished"] is True


def test_batches_ahead_make_each_batch_on_the_side_stream_and_hand_it_over_with_an_event(tmp_path, monkeypatch):
    """fit(prefetch=True)'s _BatchesAhead on the CPU, torch.cuda's streams and events stood in for by recorders:
    every batch (the first too) is made inside the side stream's context, the step's stream waits for that
    batch's event before it is returned, each of its tensors is recorded as used on the step's stream, the next
    step's batch is queued before the step runs (none past the last step), and the batches equal the plain ones.
    (tests/test_gpu.py checks the same on a GPU with the real streams.)"""
    import contextlib

    from robustkit.train import _BatchesAhead, _Run

    log = []

    class Stream:
        def __init__(self, name="side"):
            self.name = name

        def wait_stream(self, other):
            log.append(("wait_stream", self.name, other.name))

        def wait_event(self, event):
            log.append(("wait_event", self.name, event.step))

    main, current = Stream("main"), []

    class Event:
        def record(self, stream):
            self.step = current[-1]
            log.append(("record", stream.name, self.step))

    @contextlib.contextmanager
    def on(stream):
        log.append(("enter", stream.name))
        yield

    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: Stream())
    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "stream", on)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: main)
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda t, s: log.append(("record_stream", s.name)), raising=False)
    cfg = TrainConfig(dataset="digits", arch="wrn-10-1", labels=100, batch_size=16, method="gradaug", semi=True,
                      steps=3, device="cpu")
    run = _Run.open(cfg, tmp_path / "r", resume=False, device=None, sync_bn=None, compile=None, step_mode=None)
    plain = run.batches
    made = []
    real_at = plain.at
    monkeypatch.setattr(plain, "at", lambda s: (made.append(s), current.append(s), real_at(s))[2])
    ahead = _BatchesAhead(plain)
    assert log == [("wait_stream", "side", "main")]
    for step in range(3):
        log.clear()
        got = ahead.at(step)
        want = real_at(step)
        assert torch.equal(got.x, want.x) and torch.equal(got.y, want.y) and torch.equal(got.xu, want.xu)
        queued = [("enter", "side"), ("record", "side", step + 1)] if step + 1 < 3 else []
        first = [("enter", "side"), ("record", "side", 0)] if step == 0 else []
        assert log == first + [("wait_event", "main", step)] + [("record_stream", "main")] * 3 + queued, step
    assert made == [0, 1, 2] and ahead.ahead is None
