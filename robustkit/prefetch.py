"""Batches for evaluation loops, with the next batch on its way while the current one is computed.

On CUDA with images held on the host (a memory-mapped ImageNet folder does not fit on the GPU), each batch
is sliced and copied into pinned memory by a background thread and sent with ``non_blocking=True``, so
the disk, the host copy and the transfer overlap with the GPU's work on the batch before. Anywhere else
(data already on the device, or the CPU) it is a plain loop over slices.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import torch


def device_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int, device: torch.device,
                   keep=None) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield ``(start, images[start:start+b] on device, labels[...] on device)``; images keep their dtype.
    ``keep(i)``: only batches whose number i it accepts (torchrun: this rank's share)."""
    n = len(labels)
    starts = [s for i, s in enumerate(range(0, n, batch_size)) if keep is None or keep(i)]
    if device.type != "cuda" or images.device.type == "cuda":
        for s in starts:
            yield s, images[s:s + batch_size].to(device, non_blocking=True), labels[s:s + batch_size].to(device)
        return

    def host(s: int) -> tuple[torch.Tensor, torch.Tensor]:
        return images[s:s + batch_size].contiguous().pin_memory(), labels[s:s + batch_size].contiguous().pin_memory()

    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(host, starts[0]) if starts else None
        for i, s in enumerate(starts):
            x_host, y_host = pending.result()
            if i + 1 < len(starts):
                pending = pool.submit(host, starts[i + 1])   # read and pin the next batch meanwhile
            yield s, x_host.to(device, non_blocking=True), y_host.to(device, non_blocking=True)
