"""torchrun support: which rank am I, which batches are mine, sums across ranks.

Under ``torchrun`` (``WORLD_SIZE`` > 1) every command joins the process group it started: NCCL with one GPU
per local rank when CUDA is used, gloo on the CPU (``ROBUSTKIT_DIST_BACKEND=gloo|nccl`` picks one). Training
is DistributedDataParallel (see train.py; BatchNorm synchronisation in models/width.py). Evaluation splits
the *batches* of every pass round-robin across ranks (batch i goes to rank i mod world size) with the same batch boundaries and the
same per-batch seeds a single process uses, and sums the correct counts with an all-reduce: the numbers
are exactly those of a single-process run, whatever the number of ranks. Rank 0 alone writes files and
shows progress. Collectives time out (``ROBUSTKIT_DIST_TIMEOUT`` seconds, default 600), so a rank that
dies ends the job with an error instead of a hang.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta

import torch

from robustkit.errors import RobustkitError, first_line


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world() -> World:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return World()


def launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str | None) -> str | None:
    """Join torchrun's process group if this process was launched by it; returns the device to use
    (``cuda:LOCAL_RANK`` for NCCL). Without torchrun: nothing happens, ``device`` comes back unchanged."""
    import torch.distributed as dist

    if not launched() or (dist.is_available() and dist.is_initialized()):
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = (device in (None, "auto") and torch.cuda.is_available()) or str(device).startswith("cuda")
    if want_cuda and not torch.cuda.is_available():
        raise RobustkitError("--device cuda under torchrun but no CUDA GPU is visible: use --device cpu (gloo)")
    asked = os.environ.get("ROBUSTKIT_DIST_BACKEND", "").strip().lower()
    if asked not in ("", "nccl", "gloo"):
        raise RobustkitError(f"ROBUSTKIT_DIST_BACKEND must be nccl or gloo, got {asked!r}")
    if asked == "nccl" and not want_cuda:
        raise RobustkitError("NCCL runs on CUDA GPUs only and this rank runs on the CPU (--device cpu, or no GPU "
                             "visible): unset ROBUSTKIT_DIST_BACKEND (gloo is used on the CPU) or use --device cuda")
    backend = asked or ("nccl" if want_cuda else "gloo")
    if want_cuda and local >= torch.cuda.device_count():
        raise RobustkitError(f"local rank {local} needs GPU {local} but this node has {torch.cuda.device_count()}: "
                             "start at most one process per GPU (torchrun --nproc-per-node)")
    timeout = timedelta(seconds=_timeout_s())
    try:
        extra = {}
        if want_cuda:
            torch.cuda.set_device(local)
            if backend == "nccl":
                extra["device_id"] = torch.device("cuda", local)   # bind the rank to its GPU (barriers, collectives)
        with _held_stderr():   # torch's C++ logs every failed connection attempt with a stack: one line instead
            dist.init_process_group(backend, timeout=timeout, **extra)
        atexit.register(_leave)
    except Exception as exc:  # noqa: BLE001 - rendezvous failures come in many types
        raise RobustkitError(
            f"could not join the torchrun process group ({backend}) within {_timeout_s():g} s "
            f"(ROBUSTKIT_DIST_TIMEOUT): {first_line(exc)}; check --rdzv-endpoint / MASTER_ADDR:MASTER_PORT "
            "and that every rank started") from None
    return f"cuda:{local}" if want_cuda else "cpu"


@contextlib.contextmanager
def _held_stderr():
    """Hold what is written to file descriptor 2 inside the block; pass it on only if the block succeeds."""
    import sys
    import tempfile

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):   # no real stderr (embedded, captured): nothing to hold
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        ok = False
        try:
            yield
            ok = True
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if ok:
                held.seek(0)
                os.write(2, held.read())


def _timeout_s() -> float:
    text = os.environ.get("ROBUSTKIT_DIST_TIMEOUT", "600")
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise RobustkitError(f"ROBUSTKIT_DIST_TIMEOUT must be a number of seconds > 0, got {text!r}")
    return value


def _leave() -> None:
    """Leave the process group at exit (NCCL warns about groups that are never destroyed)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - a peer may be gone already; exiting anyway
            pass


def end_process(code: object) -> None:
    """End a torchrun rank's process after its command, with exit status ``code`` (SystemExit's), without
    the interpreter's teardown; returns at once when this process is in no process group.

    Why: a rank's gloo threads can outlive ``destroy_process_group`` (something inside torch keeps the group
    alive: here, after ``nn.init`` ran under ``torch.device("meta")`` while checking an architecture, the
    group's threads were still running after destroy), and a gloo worker thread that still holds a finished
    collective's tensor while the interpreter finalises aborts the process ("terminate called without an
    active exception", SIGABRT), the rank that exits right after its last all-reduce while rank 0 still
    writes its files; torchrun then fails the job (3 of 13 evaluation launches on a loaded 2-core machine,
    1 of 47 on a quieter one). So, after a successful command: a barrier (every rank is done,
    nobody tears down while another still works), ``destroy_process_group``, then stdout/stderr/logging
    flushed and ``os._exit(0)``: no interpreter finalisation, nothing left to race. After a failure: no
    barrier (the other ranks may be anywhere; torchrun stops them), flush and ``os._exit(code)``."""
    import logging
    import sys

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:   # SystemExit("message"): Python would print it and exit 1
        print(code, file=sys.stderr)
        status = 1
    if status == 0:
        try:
            dist.barrier()
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - a peer failed meanwhile; torchrun reports the job as failed
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    logging.shutdown()
    os._exit(status)


def mine(index: int) -> bool:
    """Whether batch number ``index`` (0, 1, 2, ... in order) belongs to this rank."""
    w = world()
    return index % w.size == w.rank


def barrier() -> None:
    """Wait until every rank gets here (a no-op in a single process)."""
    import torch.distributed as dist

    if world().size > 1:
        dist.barrier()


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over all ranks (in place; a no-op in a single process)."""
    import torch.distributed as dist

    if world().size > 1:
        if dist.get_backend() == "gloo" and t.device.type != "cpu":
            host = t.cpu()
            dist.all_reduce(host)
            t.copy_(host)
        else:
            dist.all_reduce(t)
    return t


class _AllSum(torch.autograd.Function):
    """Sum over ranks that gradients flow through: every rank's output is the sum of all inputs, so the
    gradient of an input is the sum of the gradients of all outputs (again an all-reduce)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        return all_sum(t.clone(memory_format=torch.contiguous_format))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return all_sum(grad.clone(memory_format=torch.contiguous_format))


def all_sum_differentiable(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over all ranks, as a new tensor autograd can differentiate (synchronised BatchNorm)."""
    return _AllSum.apply(t) if world().size > 1 else t
