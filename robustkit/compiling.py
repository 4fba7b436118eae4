"""TorchInductor compilation for fixed shapes: the training step's passes (step.py) and evaluation models
(``robustkit fgsm --compile`` / ``robustkit corrupt --compile``).

Compiled code is specialised to its input shapes. Training keeps them fixed by construction (masked
sub-networks); evaluation keeps them fixed by padding a short last batch up to the batch size, so a whole
evaluation compiles the network once per grad mode (plain forward; forward + input gradient for attacks)
instead of once more for its tail. Padding rows of zeros changes nothing for the real rows: in eval mode
every image goes through the network on its own (BatchNorm uses its running statistics).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from robustkit.errors import first_line


def compile_fixed_shapes(model: nn.Module, graphs: int) -> nn.Module:
    """``model`` compiled by TorchInductor for fixed shapes, with room for ``graphs`` compiled variants (+ 2 spare)
    before torch.compile would give up on it and fall back to running it uncompiled."""
    import logging

    import torch._dynamo

    # on a machine without CUDA, torch's C++ builder warns "No CUDA runtime is found" on every compilation:
    # nothing for a user to act on when compiling CPU code
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"   # (older torch)
    setattr(config, name, max(getattr(config, name), graphs + 2))
    return torch.compile(model, dynamic=False)


class CompiledEval(nn.Module):
    """``model`` with its forward compiled by TorchInductor for evaluation, at one batch size.

    The first call fixes the batch size; a shorter batch (the last one) is padded with zeros up to it and its
    outputs sliced back, so the tail does not cost a compilation of its own; a longer one becomes the new
    size (one more compilation). Gradients with respect to the input flow through the padding (attacks).
    Compilation happens at the first call; if it fails (no C++ compiler for CPU code, a model TorchInductor
    cannot trace, ...) ``note`` is told why once and the model runs uncompiled from then on. Out-of-memory
    errors are not caught: a smaller ``--batch-size`` is the fix for those, compiled or not.
    """

    def __init__(self, model: nn.Module, note: Callable[[str], None] | None = None) -> None:
        super().__init__()
        self.model = model
        self.batch: int | None = None
        self.failed: str | None = None   # why compilation failed, once it has
        self._note = note
        self._fast = compile_fixed_shapes(model, graphs=4)   # per grad mode and input layout: a few at most

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.failed is not None:
            return self.model(x)
        n = x.shape[0]
        self.batch = max(self.batch or n, n)
        padded = x
        if n < self.batch:
            layout = (torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
                      and not x.is_contiguous() else torch.contiguous_format)
            padded = x.new_zeros((self.batch, *x.shape[1:])).contiguous(memory_format=layout)
            padded[:n] = x   # autograd: the input's gradient is the slice of the padded one
        try:
            out = self._fast(padded)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:  # noqa: BLE001  (whatever Dynamo/Inductor raise)
            self.failed = f"{type(exc).__name__}: {first_line(exc)}"
            if self._note is not None:
                self._note(f"--compile: TorchInductor could not compile the model ({self.failed}); "
                           "evaluating it uncompiled")
            return self.model(x)
        return out[:n] if n < self.batch else out
