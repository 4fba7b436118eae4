"""Accuracy loops: pure functions of (model, data); no printing, no files."""

from __future__ import annotations

import collections
import contextlib
import time

import torch

from robustkit.distributed import all_sum, mine
from robustkit.prefetch import device_batches


def set_deterministic() -> None:
    """Deterministic kernels for bit-for-bit comparisons on CUDA (``--deterministic``): cuDNN picks
    deterministic convolution algorithms and does not benchmark (autotuning may pick a different algorithm
    per run, and algorithms sum in different orders), TF32 off (fp32 matmuls and convolutions round as
    fp32), and ``torch.use_deterministic_algorithms`` (warn_only: ops without a deterministic kernel warn
    instead of failing). cuBLAS needs ``CUBLAS_WORKSPACE_CONFIG`` set before its first use: set here if
    unset. Costs speed; on the CPU these are already the defaults that matter."""
    import os

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.use_deterministic_algorithms(True, warn_only=True)


class CudnnTuned(torch.nn.Module):
    """``model`` whose forward runs with ``torch.backends.cudnn.benchmark`` on (``corrupt --cudnn-benchmark``):
    cuDNN times its convolution algorithms once per input shape and keeps the fastest. Evaluation's shapes are
    fixed (the batch size, and a short last batch), so the timing is paid once or twice; the corruptions between
    the forwards run with the flag as it was (their blurs' shapes change with the severity). Off under
    ``--deterministic`` (the fastest algorithm may differ from run to run)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        old = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = not torch.backends.cudnn.deterministic
        try:
            return self.model(x)
        finally:
            torch.backends.cudnn.benchmark = old


def as_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0,255] -> float [0,1]; float passes through."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


def _layout(x: torch.Tensor, channels_last: bool | None) -> torch.Tensor:
    """NHWC memory layout when ``channels_last`` (default: on for CUDA); values unchanged."""
    if (x.device.type == "cuda") if channels_last is None else channels_last:
        return x.contiguous(memory_format=torch.channels_last)
    return x


@torch.no_grad()
def accuracy(model, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512,
             autocast=contextlib.nullcontext, channels_last: bool | None = None) -> float:
    """Top-1 accuracy (fraction) of ``model`` on ``images``/``labels`` (one host sync, at the end).
    Under torchrun each rank counts its own batches and the counts are summed."""
    if len(labels) == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    correct = torch.zeros((), dtype=torch.long, device=dev)
    try:
        for _, xb, y in device_batches(images, labels, batch_size, dev, mine):  # streams host data (prefetch.py)
            x = _layout(as_float(xb), channels_last)
            with autocast():
                correct += (model(x).argmax(1) == y).sum()
    finally:
        model.train(was_training)
    return int(all_sum(correct)) / len(labels)


@torch.no_grad()
def corruption_counts(models: list, images: torch.Tensor, labels: torch.Tensor, name: str, severity: int, *,
                      preset: str, seed: int = 0, batch_size: int = 512,
                      autocast=contextlib.nullcontext, channels_last: bool | None = None,
                      storage: str = "float") -> torch.Tensor:
    """How many of ``images`` every model gets right when corrupted by ``name`` at ``severity``: a tensor of one
    count per model, on the device, summed over ranks, with no host sync (the kernels may still be running when it
    returns; :class:`InFlight` reads it back without stopping the device).

    Each batch is corrupted once, on the device, and fed to all models (they must share a device), so a
    folder of checkpoints costs one corruption pass. Each batch gets its own seed derived from
    (seed, corruption, severity, index of its first image): results are reproducible and the same
    whichever models are evaluated together; they depend on ``batch_size`` only through which images
    share a batch. ``storage="released"``: each corrupted batch is stored as the released datasets were
    (8-bit, and JPEG quality 85 for imagenet-c; robustkit.corruptions.storage) before the models see it.
    """
    from robustkit.corruptions import corrupt
    from robustkit.rng import derive_seed

    dev = next(models[0].parameters()).device if models else images.device
    if not models:
        return torch.zeros(0, dtype=torch.long, device=dev)
    flags = [m.training for m in models]
    for m in models:
        m.eval()
    correct = [torch.zeros((), dtype=torch.long, device=dev) for _ in models]
    try:
        for start, xb, y in device_batches(images, labels, batch_size, dev, mine):  # next batch loads meanwhile
            x = as_float(xb)
            xc = _layout(corrupt(x, name, severity, preset=preset, seed=derive_seed(seed, name, severity, start),
                                 storage=storage), channels_last)
            for i, m in enumerate(models):
                with autocast():
                    correct[i] += (m(xc).argmax(1) == y).sum()
    finally:
        for m, f in zip(models, flags):
            m.train(f)
    return all_sum(torch.stack(correct))


def corruption_accuracies(models: list, images: torch.Tensor, labels: torch.Tensor, name: str, severity: int, *,
                          preset: str, seed: int = 0, batch_size: int = 512,
                          autocast=contextlib.nullcontext, channels_last: bool | None = None,
                          storage: str = "float") -> list[float]:
    """Accuracy of every model on ``images`` corrupted by ``name`` at ``severity`` (:func:`corruption_counts`, read
    back at once: one host sync)."""
    counts = corruption_counts(models, images, labels, name, severity, preset=preset, seed=seed,
                               batch_size=batch_size, autocast=autocast, channels_last=channels_last,
                               storage=storage).tolist()
    return [c / max(1, len(labels)) for c in counts]


class InFlight:
    """Small device results (a cell's counts) read back to the host without stopping the device.

    An evaluation grid that read each cell's counts at once would leave the device idle from then until its
    next cell's first kernel, and idle for as long as anything on the host takes in between (a corruption's first
    call in the process: loading its CUDA modules, setting Triton up; a background thread holding the GIL). Here
    :meth:`put` starts copying the counts to the host and returns at once, so the host goes on to launch the next
    cells while the device computes; :meth:`ready` hands back, in the order they were put, the results whose copy
    has finished, and waits for the oldest ones while more than ``ahead`` are unread (so the host runs at most
    ``ahead`` cells in front of the device; 0: every result is read as soon as it is put). :meth:`drain` waits
    for all of them. On the CPU the results are there at once.
    """

    def __init__(self, ahead: int) -> None:
        if ahead < 0:
            raise ValueError(f"ahead must be >= 0, got {ahead}")
        self.ahead = ahead
        self._unread: collections.deque = collections.deque()   # (key, host tensor, CUDA event or None)
        # for benchmarks: results read, how many of those reads had to wait for the device, and for how long
        self.reads, self.waits, self.wait_s = 0, 0, 0.0

    def __len__(self) -> int:
        return len(self._unread)

    def put(self, key, values: torch.Tensor) -> None:
        event = None
        if values.device.type == "cuda":
            stream = torch.cuda.current_stream(values.device)   # the one the grid's kernels and this copy run on
            # into page-locked memory: only there is a copy to the host asynchronous (torch caches those blocks)
            values = torch.empty(values.shape, dtype=values.dtype, pin_memory=True).copy_(values, non_blocking=True)
            event = torch.cuda.Event()
            event.record(stream)   # after the copy
        self._unread.append((key, values, event))

    @staticmethod
    def _finished(event) -> bool:
        return event is None or event.query()

    def _pop(self) -> tuple:
        key, values, event = self._unread.popleft()
        self.reads += 1
        if event is not None and not self._finished(event):
            start = time.perf_counter()
            event.synchronize()
            self.waits += 1
            self.wait_s += time.perf_counter() - start
        return key, values.tolist()

    def stats(self) -> dict:
        """Results read, reads that waited for the device, seconds waited: a grid whose reads mostly wait keeps
        the device busy (the host is ahead); one whose reads never wait may leave it idle (the host is behind)."""
        return {"ahead": self.ahead, "reads": self.reads, "waits": self.waits, "wait_s": self.wait_s}

    def ready(self) -> list[tuple]:
        """``(key, values as a list)`` for each result read now, oldest first."""
        out = []
        while self._unread and (len(self._unread) > self.ahead or self._finished(self._unread[0][2])):
            out.append(self._pop())
        return out

    def drain(self) -> list[tuple]:
        """Every unread result, oldest first (waits for the device)."""
        return [self._pop() for _ in range(len(self._unread))]


def corruption_accuracy(model, images: torch.Tensor, labels: torch.Tensor, name: str, severity: int, *,
                        preset: str, seed: int = 0, batch_size: int = 512, autocast=contextlib.nullcontext,
                        channels_last: bool | None = None, storage: str = "float") -> float:
    """Accuracy of one model under one corruption and severity (see :func:`corruption_accuracies`)."""
    return corruption_accuracies([model], images, labels, name, severity, preset=preset, seed=seed,
                                 batch_size=batch_size, autocast=autocast, channels_last=channels_last,
                                 storage=storage)[0]
