"""Deterministic randomness without global state.

Every random draw in robustkit comes from a generator seeded by a stable hash of named keys, e.g.
``generator("cpu", seed, "train", step)``. A training step's randomness is therefore a pure function of
(seed, step): a resumed run redraws exactly what an uninterrupted run would have drawn, and evaluation
batches get independent but reproducible noise.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*keys: object) -> int:
    """A 63-bit seed from any sequence of ints/strings/floats (stable across runs and machines)."""
    text = "\x1f".join(repr(k) for k in keys).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def generator(device: str | torch.device, *keys: object) -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded from ``keys``."""
    g = torch.Generator(device=torch.device(device))
    g.manual_seed(derive_seed(*keys))
    return g
