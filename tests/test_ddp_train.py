"""Training under torchrun (DistributedDataParallel, gloo, 2 CPU processes) against one process.

The reference is the same rule run once in one process with the whole batch: 2 ranks x 16 images must give
the gradient of 1 process x 32 (with synchronised BatchNorm, also at GradAug's sub-widths), a run started
under torchrun continues in one process, one process writes, and a rank that dies ends the job.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_one_line_error, invoke, torchrun, torchrun_launch

from robustkit.config import TrainConfig
from robustkit.train import fit

TESTS = Path(__file__).parent
COMMON = ["--dataset", "digits", "--labels", "100", "--arch", "wrn-10-1", "--batch-size", "32", "--steps", "4",
          "--eval-every", "2", "--log-every", "1", "--eval-limit", "64", "--device", "cpu", "--no-progress"]


def _config(method: str, semi: bool) -> TrainConfig:
    return TrainConfig(dataset="digits", labels=100, arch="wrn-10-1", batch_size=32, steps=4, eval_every=2,
                       log_every=1, eval_limit=64, device="cpu", method=method, semi=semi)


def _load(run: Path) -> dict:
    return torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / a.float().abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("method,semi", [("baseline", False), ("gradaug", True)], ids=["baseline", "gradaug-semi"])
def test_two_ranks_of_16_give_the_first_step_of_one_process_of_32(tmp_path, method, semi, one_torch_thread):
    """After one step, SGD's momentum buffer is the gradient (+ weight decay x the equal initial weights):
    compare it, and the BatchNorm running statistics, with a single process that sees the whole batch."""
    flags = ["--method", method, *(["--semi"] if semi else [])]
    res = torchrun(["train", *COMMON, *flags, "--out", tmp_path / "two", "--stop-at", "1"], tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    fit(_config(method, semi), tmp_path / "one", progress=False, stop_at=1)
    one, two = _load(tmp_path / "one"), _load(tmp_path / "two")
    assert two["distributed"] == {"processes": 2, "sync_bn": True} and two["step"] == 1
    assert two["config"] == one["config"]   # the config (and so the checkpoint) does not depend on the ranks
    for key, state in one["optimizer"]["state"].items():
        grad_one, grad_two = state["momentum_buffer"], two["optimizer"]["state"][key]["momentum_buffer"]
        assert _relative_gap(grad_one, grad_two) < 1e-3, key
    for name, value in one["model"].items():
        if "running" in name:
            assert _relative_gap(value, two["model"][name]) < 1e-3, name
    assert one["model"].keys() == two["model"].keys()   # no "module." prefix: loads without torch.distributed
    assert _metrics(tmp_path / "two")[0]["train_loss"] == pytest.approx(_metrics(tmp_path / "one")[0]["train_loss"],
                                                                        rel=1e-4)


def test_a_torchrun_run_resumes_in_one_process_with_one_writer(tmp_path, one_torch_thread):
    res = torchrun(["train", *COMMON, "--method", "baseline", "--out", tmp_path / "two", "--stop-at", "2"], tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout + res.stderr
    assert out.count("stopped at step 2/4: ") == 1 and out.count("continue with: ") == 1   # rank 0 alone reports
    assert [m["step"] for m in _metrics(tmp_path / "two")] == [1, 2]   # ... and writes: each line once
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [
        "checkpoint.pt", "config.yaml", "labeled_indices.json", "metrics.jsonl"]   # no temp files left

    res = invoke("train", "--resume", tmp_path / "two", "--no-progress")
    assert res.exit_code == 0, res.output
    resumed = _load(tmp_path / "two")
    assert resumed["finished"] and resumed["step"] == 4 and resumed["distributed"]["processes"] == 1
    fit(_config("baseline", False), tmp_path / "one", progress=False)
    got, want = _metrics(tmp_path / "two"), _metrics(tmp_path / "one")
    assert [m["step"] for m in got] == [1, 2, 3, 4] and [m["processes"] for m in got] == [2, 2, 1, 1]
    for g, w in zip(got, want):   # the same training as one uninterrupted process, up to float rounding
        assert g["train_loss"] == pytest.approx(w["train_loss"], rel=1e-3), g["step"]


def test_a_rank_that_dies_ends_the_job_with_the_resume_command(tmp_path):
    start = time.monotonic()
    res = torchrun(["train", *COMMON, "--method", "baseline", "--out", tmp_path / "run"], tmp_path,
                   script=TESTS / "ddp_crash.py",
                   env={"ROBUSTKIT_DIST_TIMEOUT": "30"}, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert time.monotonic() - start < 120, out   # ended by the failure, not by a timeout
    assert f"the checkpoint at step 2/4 in {tmp_path / 'run'} is whole" in out, out   # rank 0's last words
    assert f"--resume {tmp_path / 'run'}" in out
    assert _load(tmp_path / "run")["step"] == 2   # rank 1 died in step 3; the step-2 checkpoint stands


def test_sigterm_to_torchrun_stops_every_rank_with_the_resume_command(tmp_path):
    run = tmp_path / "run"
    cmd, env = torchrun_launch(["train", *COMMON, "--method", "baseline", "--steps", "100000", "--eval-every", "3",
                                "--out", run], env={"ROBUSTKIT_DIST_TIMEOUT": "60"})
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while not (run / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (run / "checkpoint.pt").exists(), "no checkpoint within 3 minutes"
        proc.send_signal(signal.SIGTERM)   # what a scheduler does to the job (torchrun passes it to the ranks)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    said = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(said) == 1 and said[0].startswith("error: interrupted; the checkpoint at step "), err   # rank 0 only
    assert f"--resume {run}" in said[0]
    saved = _load(run)
    assert not saved["finished"] and saved["step"] % 3 == 0 and f"step {saved['step']}/100000" in said[0]


def test_a_batch_that_the_ranks_cannot_split_is_refused_by_every_rank(tmp_path):
    res = torchrun(["train", *COMMON, "--batch-size", "15", "--out", tmp_path / "run"], tmp_path)
    assert res.returncode != 0
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and all("batch-size 15 cannot be split evenly over 2 processes" in e for e in errors)
    assert any(e.startswith("error: (rank 1) ") for e in errors), errors
    assert "RobustkitError" not in res.stderr   # one line per rank (torchrun adds its own failure report)
    assert not (tmp_path / "run").exists()


def test_sync_bn_needs_torchrun(tmp_path):
    assert_one_line_error(invoke("train", *COMMON, "--sync-bn", "--out", tmp_path / "run"),
                          "--sync-bn", "one process", "torchrun --nproc-per-node")
    assert not (tmp_path / "run").exists()


def test_nccl_on_the_cpu_is_refused(tmp_path, monkeypatch):
    for key, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "ROBUSTKIT_DIST_BACKEND": "nccl"}.items():
        monkeypatch.setenv(key, value)
    assert_one_line_error(invoke("train", *COMMON, "--out", tmp_path / "run"), "NCCL runs on CUDA GPUs only", "gloo")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("timeout", ["0", "-5", "soon"])
def test_a_collective_timeout_that_is_not_a_positive_number_is_refused(tmp_path, monkeypatch, timeout):
    """ROBUSTKIT_DIST_TIMEOUT is a number of seconds > 0 (0 would time every collective out at once): anything else
    is one line before the process group is joined."""
    for key, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "ROBUSTKIT_DIST_TIMEOUT": timeout}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("ROBUSTKIT_DIST_BACKEND", raising=False)
    assert_one_line_error(invoke("train", *COMMON, "--out", tmp_path / "run"),
                          f"ROBUSTKIT_DIST_TIMEOUT must be a number of seconds > 0, got '{timeout}'")
    assert not (tmp_path / "run").exists()


def test_a_rendezvous_nobody_answers_times_out_with_a_message(tmp_path):
    with socket.socket() as s:   # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "0",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "ROBUSTKIT_DIST_TIMEOUT": "3"}
    start = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "robustkit", "train", *COMMON, "--out", str(tmp_path / "run")],
                         capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert res.returncode == 2 and time.monotonic() - start < 60, res.stderr
    last = res.stderr.strip().splitlines()[-1]   # (before it: torch's own C++ log of the failed connection)
    assert last.startswith("error: (rank 1) could not join the torchrun process group"), res.stderr
    assert "within 3 s" in last and "MASTER_ADDR" in last and "Traceback" not in res.stderr


# ---- the pieces, in one process -------------------------------------------------------------------------------

def test_augmenting_each_part_equals_augmenting_the_whole_batch(digits):
    from robustkit.data import augment
    from robustkit.rng import generator

    images = digits[0].images[:12]
    whole = augment(images, generator("cpu", 0, "aug"))
    parts = [augment(images[i:i + 4], generator("cpu", 0, "aug"), part=(i, 12)) for i in (0, 4, 8)]
    assert torch.equal(torch.cat(parts), whole)
    with pytest.raises(ValueError, match="does not hold"):
        augment(images[:4], generator("cpu", 0, "aug"), part=(10, 12))


@pytest.mark.parametrize("width", [1.0, 0.5])
def test_synchronised_batch_norm_in_one_process_is_batch_norm(width, one_torch_thread):
    """The synchronised path (sums, sums of squares, counts) in a single process: values, gradients and
    running statistics as torch's own batch norm, at full width and at a sub-width (batch statistics only)."""
    from robustkit.models.width import SlimBatchNorm2d, set_sync_batchnorm

    torch.manual_seed(0)
    x = (torch.randn(6, 8, 5, 5) * 3 + 2).requires_grad_()
    c = int(8 * width)
    bn = SlimBatchNorm2d(8)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-1, 1)
    plain = SlimBatchNorm2d(8)
    plain.load_state_dict(bn.state_dict())
    set_sync_batchnorm(bn, True)
    up = torch.randn(6, c, 5, 5)
    got = bn(x[:, :c])
    (got * up).sum().backward()
    grad_sync, x.grad = x.grad.clone(), None
    want = plain(x[:, :c])   # torch's batch norm (full width), or F.batch_norm on batch statistics (sub-width)
    (want * up).sum().backward()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grad_sync, x.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_mean, plain.running_mean)
    torch.testing.assert_close(bn.running_var, plain.running_var)
    assert int(bn.num_batches_tracked) == int(plain.num_batches_tracked) == (1 if width == 1 else 0)


def test_local_grads_is_a_no_op_without_ddp():
    from robustkit.methods.common import local_grads

    model = torch.nn.Linear(2, 2)
    with local_grads(model):
        model(torch.ones(1, 2)).sum().backward()
    assert model.weight.grad is not None


def test_a_block_that_ends_by_an_error_can_leave_sigterm_ignored_with_no_gap():
    """errors.sigterm_interrupts: SIGTERM is Ctrl-C inside the block, and the old handler comes back after it; with
    ``ignore_after_an_error`` (what fit asks for under torchrun) a block that ends by an exception leaves SIGTERM
    ignored instead, so that torchrun's SIGTERM to the ranks still running cannot kill one before it has said where
    the run stands (seen: 1 launch in 6 of the test above on a loaded machine, rank 0 killed silently)."""
    import signal

    from robustkit.errors import sigterm_interrupts

    def mine(signum, frame):
        pass

    old = signal.signal(signal.SIGTERM, mine)
    try:
        with sigterm_interrupts(ignore_after_an_error=True):
            assert signal.getsignal(signal.SIGTERM) not in (mine, signal.SIG_IGN)
        assert signal.getsignal(signal.SIGTERM) is mine   # a block that ends well: the old handler back
        with pytest.raises(RuntimeError):
            with sigterm_interrupts():
                raise RuntimeError("gloo: connection closed by peer")
        assert signal.getsignal(signal.SIGTERM) is mine   # not asked to: the old handler back
        with pytest.raises(KeyboardInterrupt):
            with sigterm_interrupts(ignore_after_an_error=True):
                signal.raise_signal(signal.SIGTERM)          # SIGTERM inside: Ctrl-C
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, old)
