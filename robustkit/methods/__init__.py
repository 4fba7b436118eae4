"""Training methods. Each exposes ``train_step(model, batch, cfg, gen, autocast) -> logs``.

A step computes gradients (``backward`` is called inside, possibly once per loss term so that only one
sub-network graph is alive at a time); the training loop zeroes them before and steps the optimizer after.
``logs`` holds detached tensors (no host sync): ``loss``, ``correct``, ``n`` and method-specific terms.
"""

from __future__ import annotations

from collections.abc import Callable

from robustkit.methods import baseline, gradaug
from robustkit.methods.common import Batch

TRAIN_STEPS: dict[str, Callable] = {
    "baseline": baseline.train_step,
    "gradaug": gradaug.train_step,
}

__all__ = ["Batch", "TRAIN_STEPS"]
