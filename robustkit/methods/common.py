"""What a training step receives, and what a training method declares."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class Batch:
    x: torch.Tensor                  # labeled images, float [0,1], augmented, on the device
    y: torch.Tensor                  # labels (int64)
    xu: torch.Tensor | None = None   # unlabeled images (GradAug-semi, Mean Teacher), float [0,1], augmented
    x2: torch.Tensor | None = None   # a second, independent augmentation of x (methods with views=2)
    xu2: torch.Tensor | None = None  # ... and of xu
    step: int = 0                    # the optimizer step this batch is for (0-based)
    total_steps: int = 1
    state: Any = None                # the method's own state (e.g. Mean Teacher's teacher), see Method


@dataclass(frozen=True)
class Method:
    """A training method: one ``train_step`` and the few things the loop must know about it.

    The loop never branches on a method's name; it reads these fields:

    * ``uses_unlabeled(cfg)``: load the unlabeled pool and put an unlabeled batch in ``Batch.xu``;
    * ``views``: augmented views per image (2: ``Batch.x2``/``xu2`` hold independent second draws);
    * ``make_state(model, cfg)``: an ``nn.Module`` of extra weights the method keeps (saved in the
      checkpoint as ``method_state``, restored on resume), passed to every step as ``Batch.state``;
    * ``after_step(model, state, cfg, step)``: called after each optimizer step (an EMA update, ...);
    * ``eval_module(model, state, cfg)``: the network that is evaluated and used by ``fgsm``/``corrupt``.
    """

    name: str
    train_step: Callable[..., dict]
    uses_unlabeled: Callable[[Any], bool] = lambda cfg: False
    views: int = 1
    make_state: Callable[[nn.Module, Any], nn.Module] | None = None
    after_step: Callable[[nn.Module, nn.Module, Any, int], None] | None = None
    eval_module: Callable[[nn.Module, nn.Module, Any], nn.Module] | None = None
    description: str = ""


def local_grads(model: nn.Module, local: bool = True) -> contextlib.AbstractContextManager:
    """Forward and backward passes inside keep their gradients on this rank (DistributedDataParallel's
    ``no_sync``); the next synchronised backward all-reduces everything accumulated so far at once.

    A method that calls ``backward`` several times per step (GradAug: the full network, then each
    sub-network) runs all but the last pass inside it: one gradient all-reduce per step instead of one per
    pass. ``local=False``, or a plain module (one process), gives a block that does nothing.
    """
    no_sync = getattr(model, "no_sync", None)
    return no_sync() if local and no_sync is not None else contextlib.nullcontext()
