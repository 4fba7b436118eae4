"""Plain supervised training: cross-entropy of the full network on the labeled batch.

``--cutmix-prob p`` adds CutMix (methods/cutmix.py); ``--method shakedrop`` is this step on a WRN with
ShakeDrop blocks (models/wrn.py), so it is registered here too.
"""

from __future__ import annotations

import contextlib

import torch

from robustkit.methods import cutmix
from robustkit.methods.common import Batch, Method


def train_step(model, batch: Batch, cfg, gen: torch.Generator, autocast=contextlib.nullcontext) -> dict:
    return cutmix.train_step(model, batch, cfg, gen, autocast)


METHOD = Method("baseline", train_step, description="cross-entropy on the labeled images")
SHAKEDROP = Method("shakedrop", train_step, description="baseline on wrn-D-K-shakedrop (ShakeDrop blocks)")
