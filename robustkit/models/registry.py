"""Architecture registry: ``create_model("wrn-28-2", num_classes=10, mean=..., std=...)``.

Adding an architecture is one file in ``robustkit/models/`` with a ``@register`` factory, plus its import
in ``robustkit/models/__init__.py``. Names may be parametric (``wrn-D-K``) through a regex.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from robustkit.errors import RobustkitError


@dataclass(frozen=True)
class _Entry:
    family: str
    pattern: re.Pattern
    example: str
    factory: Callable[..., nn.Module]


_REGISTRY: dict[str, _Entry] = {}


def register(family: str, pattern: re.Pattern | str, example: str):
    pattern = re.compile(pattern) if isinstance(pattern, str) else pattern

    def deco(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[family] = _Entry(family, pattern, example, factory)
        return factory

    return deco


def available() -> list[str]:
    """Example names of the registered architectures (for help and error messages)."""
    return [e.example for e in _REGISTRY.values()]


def _entry(name: str):
    """(the name normalised (lower case), its registry entry); an unknown name is a RobustkitError."""
    norm = name.strip().lower()
    entry = next((e for e in _REGISTRY.values() if e.pattern.match(norm)), None)
    if entry is None:
        raise RobustkitError(f"unknown architecture {name!r}: use one of {', '.join(available())} (wrn-D-K with D = 6N+4)")
    return norm, entry


def _built(name: str, norm: str, entry, **kwargs) -> nn.Module:
    try:
        return entry.factory(norm, **kwargs)
    except ValueError as e:
        raise RobustkitError(f"architecture {name!r}: {e}; e.g. {entry.example}") from None


def check_arch(name: str) -> str:
    """Validate an architecture name; return it normalised (lower case)."""
    norm, entry = _entry(name)
    with torch.device("meta"):  # build without allocating, so bad arguments fail before any data loads
        _built(name, norm, entry, num_classes=2)
    return norm


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the architecture ``name`` (e.g. ``wrn-28-2``); kwargs go to its constructor; on the current default
    device (``torch.device("meta")`` around the call: a model without memory, what a checkpoint's weights are
    assigned to). The same errors as :func:`check_arch`, from this one build."""
    norm, entry = _entry(name)
    return _built(name, norm, entry, **kwargs)
