"""What a training step receives."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Batch:
    x: torch.Tensor                  # labeled images, float [0,1], augmented, on the device
    y: torch.Tensor                  # labels (int64)
    xu: torch.Tensor | None = None   # unlabeled images (GradAug-semi), float [0,1], augmented
