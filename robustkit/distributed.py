"""torchrun support for evaluation: which rank am I, which batches are mine, sums across ranks.

Under ``torchrun`` (``WORLD_SIZE`` > 1) every command joins the process group it started: NCCL with one GPU
per local rank when CUDA is used, gloo on the CPU. Evaluation splits the *batches* of every pass
round-robin across ranks (batch i goes to rank i mod world size) with the same batch boundaries and the
same per-batch seeds a single process uses, and sums the correct counts with an all-reduce: the numbers
are exactly those of a single-process run, whatever the number of ranks. Rank 0 alone writes files and
shows progress. Collectives time out (``ROBUSTKIT_DIST_TIMEOUT`` seconds, default 600), so a rank that
dies ends the job with an error instead of a hang.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch

from robustkit.errors import RobustkitError


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
    backend = "nccl" if want_cuda else "gloo"
    timeout = timedelta(seconds=float(os.environ.get("ROBUSTKIT_DIST_TIMEOUT", "600")))
    try:
        if want_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - rendezvous failures come in many types
        raise RobustkitError(f"could not join the torchrun process group ({backend}): {str(exc).splitlines()[0][:200]}; "
                             "check --rdzv-endpoint / MASTER_ADDR and that every rank started") from None
    return f"cuda:{local}" if want_cuda else "cpu"


def mine(index: int) -> bool:
    """Whether batch number ``index`` (0, 1, 2, ... in order) belongs to this rank."""
    w = world()
    return index % w.size == w.rank


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
