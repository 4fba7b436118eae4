"""What robustkit's Triton kernels (jpeg_triton.py, glass_triton.py, spatter_triton.py) share: Triton itself, if
installed, and a switch per set of kernels that remembers a failure to build them.

Triton comes with torch's CUDA builds. Each set of kernels computes exactly what its torch-ops path computes,
so where Triton is missing, or a kernel fails to compile on this Triton or GPU, the torch path runs instead:
after one warning, and from then on in this process.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = tl = None


_ALL: list[Kernels] = []


def bytes_moved() -> int:
    """The memory traffic of every Triton kernel robustkit has launched in this process (see ``Kernels.bytes``)."""
    return sum(k.bytes for k in _ALL)


def on_gpu(t: torch.Tensor) -> bool:
    """Where the kernels run in the product: CUDA tensors. (Tests open this gate to CPU tensors, to run the
    corruptions end to end with the kernels in Triton's interpreter.)"""
    return t.is_cuda


class Kernels:
    """The on/off switch of one corruption's kernels. ``enabled``: bench/ switches it off to time the torch path
    in the same run; ``failed``: why the kernels could not run (then the torch path runs); ``bytes``: the memory
    traffic of the kernels launched so far, as each launch function counts it (bench/ reads it: the torch-op
    counters do not see these kernels)."""

    def __init__(self, corruption: str):
        self.corruption = corruption
        self.enabled = True
        self.failed: str | None = None
        self.bytes = 0
        _ALL.append(self)

    def ready(self) -> bool:
        return triton is not None and self.enabled and self.failed is None

    def run(self, launch, *args, **kwargs):
        """``launch(*args, **kwargs)`` on the GPU of its first tensor argument (Triton launches on the current
        device, which need not be the tensors': e.g. ``--device cuda:1``), or None when it fails other than by
        running out of memory: one warning naming the error, and :meth:`ready` is False from then on.
        Out-of-memory errors are raised (a smaller ``--batch-size`` is the fix for those, kernels or not)."""
        device = next((a.device for a in args if isinstance(a, torch.Tensor)), None)
        try:
            with torch.cuda.device(device) if device is not None and device.type == "cuda" else nullcontext():
                return launch(*args, **kwargs)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:  # a Triton that cannot build these kernels: the torch path computes the same
            text = str(exc).strip()
            self.failed = f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")
            warnings.warn(f"{self.corruption}: the Triton kernels failed ({self.failed}); using the torch ops "
                          "(same pixels, slower)", RuntimeWarning, stacklevel=3)
            return None
