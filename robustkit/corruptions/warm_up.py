"""The corruptions' first calls, paid in a background thread while an evaluation grid runs on CUDA.

A corruption's first call in a process costs more than its later ones: CUDA loads each kernel's module at its
first launch, and robustkit's Triton kernels are built, or loaded from Triton's cache, at theirs (the first
Triton launch of a process also sets Triton up). On an H100 (2026-11-27) glass_blur's first cell, the grid's
first Triton kernel, took 0.58 s more in a fresh process than in a warm one, and the corruptions' first calls
about 0.9 s in all, paid on the grid's own thread, cell after cell.

:class:`WarmUp` makes each cell's call once, on a batch of two images of the grid's shape (the FFT corruptions:
on each of the grid's batch sizes, for their cuFFT plans), in a daemon thread that runs ahead of the grid (which
mostly waits on the device meanwhile). It works on the stream the grid runs on, so that the small tables the
corruptions cache on the device are made before the grid's kernels read them. The grid asks :meth:`WarmUp.ready`
before each cell: it waits only while that cell's warm-up call is running, and takes over a cell the warm-up has
not reached. Results do not change: every call draws from a generator of its own (seed, corruption), and the
warm-up's outputs are thrown away. An error in a warm-up call stays in its thread (the grid's own call then meets
it, and reports it).
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterable

import torch

_PENDING, _RUNNING, _DONE = "pending", "running", "done"   # a cell's warm-up: not started, under way, over or taken


def wanted(device: torch.device) -> bool:
    """Where the warm-up runs in the product: CUDA (on the CPU first calls cost little and the thread would take
    a core from the grid)."""
    return device.type == "cuda"


class WarmUp:
    """``call(name, severity)`` for every cell of ``cells`` (in that order) in a daemon thread, started at once.
    :func:`for_grid` builds one for an evaluation grid; this class takes any ``call`` (tests)."""

    def __init__(self, cells: Iterable[tuple[str, int]], call: Callable[[str, int], object], *,
                 context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                 finished: Callable[[], None] = lambda: None):
        self._state = {cell: _PENDING for cell in cells}
        self._call, self._context, self._finished = call, context, finished   # finished(): the thread's last act
        self._changed = threading.Condition()
        self.warmed: list[tuple[str, int]] = []      # cells whose call the thread made, in order
        self.errors: dict[tuple[str, int], str] = {}   # cell -> the error its warm-up call met
        # where the time went (benchmarks): each warm-up call's seconds, the cells the grid took over before the
        # thread reached them, and the seconds the grid waited in ready() for a call under way
        self.call_s: dict[tuple[str, int], float] = {}
        self.taken: list[tuple[str, int]] = []
        self.waited_s = 0.0
        self._thread = None   # no cells: no thread, and every call below does nothing
        if self._state:
            self._thread = threading.Thread(target=self._run, name="robustkit-corruption-warm-up", daemon=True)
            self._thread.start()

    def _take(self) -> tuple[str, int] | None:
        with self._changed:
            cell = next((c for c, s in self._state.items() if s == _PENDING), None)
            if cell is not None:
                self._state[cell] = _RUNNING
            return cell

    def _run(self) -> None:
        try:
            while (cell := self._take()) is not None:
                start = time.perf_counter()
                try:
                    with self._context():
                        self._call(*cell)
                    self.warmed.append(cell)
                except Exception as exc:  # noqa: BLE001 - the grid's own call meets it and reports it
                    self.errors[cell] = f"{type(exc).__name__}: {exc}"
                finally:
                    self.call_s[cell] = time.perf_counter() - start
                    with self._changed:
                        self._state[cell] = _DONE
                        self._changed.notify_all()
        finally:
            self._finished()

    def ready(self, cell: tuple[str, int]) -> None:
        """Before the grid's call of ``cell``: wait while its warm-up call runs; one not started is the grid's now."""
        with self._changed:
            if self._state.get(cell) == _PENDING:
                self._state[cell] = _DONE
                self.taken.append(cell)
            start = time.perf_counter()
            while self._state.get(cell) == _RUNNING:
                self._changed.wait()
            self.waited_s += time.perf_counter() - start

    def join(self) -> None:
        """Wait until every cell's warm-up call has been made (or taken by the grid): tests and benchmarks."""
        if self._thread is not None:
            self._thread.join()

    def close(self) -> None:
        """No more warm-up calls; returns once the thread has ended (after the call under way, if any), so that no
        device work of it outlives the grid (a thread still launching kernels at interpreter exit can abort it)."""
        with self._changed:
            for cell, state in self._state.items():
                if state == _PENDING:
                    self._state[cell] = _DONE
        self.join()

    def stats(self, slowest: int = 3) -> dict:
        """Where the time went, for benchmarks: cells warmed / taken over by the grid / failed, the thread's busy
        seconds, the seconds the grid waited for it, and the ``slowest`` warm-up calls (cell label, seconds)."""
        top = sorted(self.call_s.items(), key=lambda kv: -kv[1])[:slowest]
        return {"cells": len(self._state), "warmed": len(self.warmed), "taken_by_grid": len(self.taken),
                "errors": len(self.errors), "thread_busy_s": sum(self.call_s.values()), "grid_waited_s": self.waited_s,
                "slowest": [[f"{name} s{sev}", s] for (name, sev), s in top]}

    def __enter__(self) -> WarmUp:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


ORDERS = ("grid", "corruption-first")


def warm_up_order(cells: Iterable[tuple[str, int]], order: str = "grid") -> list[tuple[str, int]]:
    """The cells in the order the thread warms them up: ``grid``, the grid's own; ``corruption-first``, each
    corruption's first cell (in the grid's order), then the others in the grid's order (a corruption's first call
    in a process costs the most: glass_blur's, the grid's first Triton kernel, ~0.6 s on an H100; the cells
    after it mostly reuse its kernels)."""
    cells = list(cells)
    if order == "grid":
        return cells
    if order == "corruption-first":
        first_of = {}
        for cell in cells:
            first_of.setdefault(cell[0], cell)
        firsts = set(first_of.values())
        return list(first_of.values()) + [c for c in cells if c not in firsts]
    raise ValueError(f"unknown warm-up order {order!r} (use {', '.join(ORDERS)})")


def grid_batches(n: int, grid_batch: int, keep: Callable[[int], bool] | None = None) -> list[int]:
    """The batch sizes an evaluation grid of ``n`` images calls the corruptions with, in ``grid_batch``es (largest
    first): the full batch and, where ``n`` does not divide, the last one; ``keep(i)``: only the batches number i
    this process evaluates (torchrun: robustkit.distributed.mine, as robustkit.prefetch.device_batches)."""
    from robustkit.prefetch import batch_starts

    return sorted({min(grid_batch, n - s) for s in batch_starts(n, grid_batch, keep)}, reverse=True)


# Corruptions whose first call at a new batch size costs more than a later one: their FFT convolutions (defocus
# blur's disk; motion blur's per-image kernels, also in snow's falling layer) transform a batch of planes, and cuFFT
# makes a plan, with its work area, for each batch size (kept in torch's plan cache). Making one copies from pageable
# memory, which waits for the stream's queued work: in a cold CIFAR-10-C grid on an H100 (2026-11-27) those plans
# took the grid's thread up to ~90 ms at a time (2-4 ms on an idle device) although the warm-up had run the cells on
# 2 images.
BATCH_SIZED = frozenset({"defocus_blur", "motion_blur", "snow"})

# A warm-up call on the grid's batch holds up to about this many times the batch's float32 bytes (3 channels) at
# once, beside the grid's own work: the padded copy, the spectra, their product, the output (the peak of live
# bytes, measured on the CPU, 2026-11-27: motion_blur 28.4x at 32 px, severity 5, where the padding is widest;
# 11.8x at 224 px; snow 18.4x, defocus_blur 14.9x). Such calls are made only where that fits in a quarter of the
# device's free memory when the grid starts (the grid's own call of the same cell needs as much, and the model and
# cuFFT's work areas come on top); elsewhere the FFT corruptions stay on ``batch`` images, and the grid's first
# calls make their plans, as before.
SIZED_MEMORY_FACTOR = 32


def for_grid(cells: Iterable[tuple[str, int]], images: torch.Tensor, device: torch.device, *, preset: str,
             storage: str, force: bool = False, order: str = "grid", batch: int = 2,
             grid_batch: int | None = None) -> WarmUp:
    """A started warm-up of ``cells`` for an evaluation grid over ``images`` (N, C, H, W; only the shape counts)
    on ``device``, with the grid's ``preset`` and ``storage``: where :func:`wanted` says so (``force``: anywhere,
    for tests on the CPU and benchmarks), in ``order`` (:func:`warm_up_order`), each call on ``batch`` images (2:
    the first calls' fixed costs; the grid's batch also makes what depends on the batch's size, e.g. cuBLAS's
    choice of kernels for a blur's matrix products, at the cost of a cell's corruption work on the device).
    ``grid_batch``: the grid's batch size; the cells of :data:`BATCH_SIZED` corruptions are then called on each
    batch size the grid will use (:func:`grid_batches`), so that their cuFFT plans exist before the grid needs
    them, where the memory allows (:data:`SIZED_MEMORY_FACTOR`). Use it as a context manager around the grid, and
    call ``ready(cell)`` before each."""
    cells = warm_up_order(cells, order)
    if not (force or wanted(device)):
        return WarmUp([], lambda name, severity: None)   # nothing to do: no thread
    from . import corrupt

    if batch < 1 or (grid_batch is not None and grid_batch < 1):
        raise ValueError(f"batch and grid_batch must be >= 1, got {batch} and {grid_batch}")
    from robustkit.distributed import mine
    from robustkit.prefetch import free_memory

    n, c = int(images.shape[0]), int(images.shape[1])
    wants_sizes = grid_batch is not None and n > 0 and any(name in BATCH_SIZED for name, _ in cells)
    sized = grid_batches(n, grid_batch, mine) if wants_sizes else []
    free = free_memory(device) if sized else None   # (None on the CPU: no limit to respect)
    if free is not None and SIZED_MEMORY_FACTOR * 4 * sized[0] * max(c, 3) * math.prod(images.shape[2:]) > free // 4:
        sized = []
    shape = (max([batch, *sized]), *images.shape[1:])
    stream = torch.cuda.current_stream(device) if device.type == "cuda" else None   # the grid's stream
    sample: list[torch.Tensor] = []   # the images, made on the device by the thread at its first call

    def context():
        stack = contextlib.ExitStack()
        if stream is not None:
            stack.enter_context(torch.cuda.device(device))
            stack.enter_context(torch.cuda.stream(stream))
        return stack

    def call(name: str, severity: int):
        if not sample:
            sample.append(torch.rand(shape, device=device, generator=torch.Generator(device).manual_seed(0)))
        for size in (sized if name in BATCH_SIZED and sized else [batch]):   # (slices of one random batch)
            corrupt(sample[0][:size], name, severity, preset=preset, seed=0, storage=storage)

    return WarmUp(cells, call, context=context, finished=sample.clear)   # (the images go with the thread)
