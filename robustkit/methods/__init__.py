"""Training methods. Each is one file with ``train_step(model, batch, cfg, gen, autocast) -> logs`` and a
``METHOD`` (see common.Method) registered below, once.

A step computes gradients (``backward`` is called inside, possibly once per loss term so that only one
sub-network graph is alive at a time); the training loop zeroes them before and steps the optimizer after.
``logs`` holds detached tensors (no host sync): ``loss``, ``correct``, ``n`` and method-specific terms.
"""

from __future__ import annotations

from collections.abc import Callable

from robustkit.methods import baseline, cutmix, gradaug, mean_teacher
from robustkit.methods.common import Batch, Method

METHODS: dict[str, Method] = {m.name: m for m in (baseline.METHOD, gradaug.METHOD, cutmix.METHOD,
                                                  baseline.SHAKEDROP, mean_teacher.METHOD)}
# The step functions by name: what the training loop calls (tests replace entries to spy on steps).
TRAIN_STEPS: dict[str, Callable] = {name: m.train_step for name, m in METHODS.items()}

__all__ = ["Batch", "Method", "METHODS", "TRAIN_STEPS"]
