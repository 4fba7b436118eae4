"""Where evaluation data lives, and batches with the next one on its way while the current one is computed.

An evaluation reads the same images once per epsilon and once per corruption cell (95 cells for the full
grid). :func:`placement` decides, once per data set, where they live:

* ``"resident"``: the set takes less than half of the device's free memory (``torch.cuda.mem_get_info``;
  50,000 ImageNet images at 224 px are 7.5 GB of uint8): it is copied to the device once and every cell
  slices it there; the host is out of the loop.
* ``"stream"``: it stays on the host (memory-mapped for a folder) and :func:`device_batches` streams it:
  a background thread copies each batch ONCE, straight from the host tensor (the memory map) into one of
  two reused pinned buffers, while the device works on the batch before; the pinned buffer goes to the
  device with ``non_blocking=True`` and is refilled only after that copy has finished (a CUDA event).

On the CPU, or with the data already on the device, batches are plain slices. The streaming path works
on any device (on the CPU the buffers are ordinary memory and each batch is cloned out of its buffer), so
the CPU tests exercise the code the GPU runs.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

import torch

RESIDENT_FRACTION = 0.5   # resident when the set needs less than this share of the free device memory


def placement(nbytes: int, free_bytes: int | None) -> str:
    """``"resident"`` when ``nbytes`` fits in :data:`RESIDENT_FRACTION` of ``free_bytes``, else ``"stream"``.
    ``free_bytes`` None: the device is the host itself (nothing to copy): ``"resident"``."""
    if free_bytes is None:
        return "resident"
    return "resident" if nbytes < RESIDENT_FRACTION * free_bytes else "stream"


def free_memory(device: torch.device) -> int | None:
    """Free bytes on ``device`` (CUDA), None for the host."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return None


def place(images: torch.Tensor, device: torch.device, free_bytes: int | None = None) -> tuple[torch.Tensor, str]:
    """``(images on device or left on the host, "resident" | "stream")`` by :func:`placement`.
    ``free_bytes`` defaults to what the device has free now."""
    if images.device == device:
        return images, "resident"
    free = free_memory(device) if free_bytes is None else free_bytes
    where = placement(images.numel() * images.element_size(), free)
    return (images.to(device) if where == "resident" else images), where


def streams(images: torch.Tensor, device: torch.device) -> bool:
    """Whether :func:`device_batches` streams by default: host images, CUDA device."""
    return device.type == "cuda" and images.device.type == "cpu"


def batch_starts(n: int, batch_size: int, keep: Callable[[int], bool] | None = None) -> list[int]:
    """The first index of each batch of ``batch_size`` of ``n`` items, in order; ``keep(i)``: only the batches
    number i it accepts (torchrun: this rank's share)."""
    return [s for i, s in enumerate(range(0, n, batch_size)) if keep is None or keep(i)]


def device_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int, device: torch.device,
                   keep: Callable[[int], bool] | None = None, stream: bool | None = None,
                   ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield ``(start, images[start:start+b] on device, labels[...] on device)`` in order; images keep
    their dtype. ``keep(i)``: only batches whose number i it accepts (torchrun: this rank's share).
    ``stream``: use the prefetching host->device path (default: when the images are on the host and the
    device is CUDA)."""
    starts = batch_starts(len(labels), batch_size, keep)
    if stream is None:
        stream = streams(images, device)
    if not stream:
        for s in starts:
            yield s, images[s:s + batch_size].to(device, non_blocking=True), labels[s:s + batch_size].to(device)
        return
    yield from _stream(images, labels, starts, batch_size, device)


def _stream(images: torch.Tensor, labels: torch.Tensor, starts: list[int], batch_size: int,
            device: torch.device, slots: int = 2) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """The streaming path of :func:`device_batches` (see the module docstring)."""
    if not starts:
        return
    n = len(labels)
    cuda = device.type == "cuda"
    size = min(batch_size, n)
    buffers = [torch.empty((size, *images.shape[1:]), dtype=images.dtype, pin_memory=cuda) for _ in range(slots)]
    free: queue.Queue = queue.Queue()       # (slot, event to wait for before overwriting it, or None)
    ready: queue.Queue = queue.Queue()      # (start, slot, count) | None at the end | an exception
    for k in range(slots):
        free.put((k, None))
    stop = threading.Event()

    def fill() -> None:
        try:
            for s in starts:
                k, done = free.get()
                if stop.is_set():
                    return
                if done is not None:
                    done.synchronize()      # the device has finished reading this buffer
                m = min(batch_size, n - s)
                buffers[k][:m].copy_(images[s:s + m])   # the one host copy: memory map -> pinned buffer
                ready.put((s, k, m))
            ready.put(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            ready.put(exc)

    worker = threading.Thread(target=fill, name="robustkit-prefetch", daemon=True)
    worker.start()
    try:
        while (item := ready.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            s, k, m = item
            if cuda:
                x = buffers[k][:m].to(device, non_blocking=True)
                event = torch.cuda.Event()
                event.record(torch.cuda.current_stream(device))   # after the copy; the filler waits for it
                free.put((k, event))
            else:
                x = buffers[k][:m].to(device, copy=True)   # the buffer is reused: hand out a copy
                free.put((k, None))
            y = labels[s:s + m].to(device, non_blocking=True)
            yield s, x, y
    finally:
        stop.set()
        free.put((0, None))                 # wake the filler if it waits for a buffer
        worker.join()
