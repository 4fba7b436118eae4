"""A small fixed classifier for the attack tests: DigitsNet with weights committed in tests/assets.

Tests must not assert on numbers of a model trained during the test (the trained weights, and with them
which images an attack flips, depend on the machine's floating point). The attack tests therefore load
fixed weights, trained once with ``python tests/digits_net.py`` and committed as
``tests/assets/digits_net.pt`` (a plain state dict, read with ``weights_only=True``). With fixed weights
the only machine dependence left is the rounding of logits, which moves a prediction only at an exact
near-tie; every threshold in the tests has many images of margin (stated where it is asserted).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS = Path(__file__).resolve().parent / "assets" / "digits_net.pt"
N_TRAIN = 1400  # of sklearn's 1,797 digits, in a fixed seeded order; the rest (397) are the test images


class DigitsNet(nn.Module):
    """conv-BN-ReLU x2 + linear; normalisation inside, input [0, 1] NCHW."""

    def __init__(self, mean: float = 0.3, std: float = 0.4) -> None:
        super().__init__()
        self.register_buffer("mean", torch.full((1, 3, 1, 1), mean))
        self.register_buffer("std", torch.full((1, 3, 1, 1), std))
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        )
        self.head = nn.Linear(32 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features((x - self.mean) / self.std).flatten(1))


def digits(size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn's digits as uint8 (N, 3, size, size) and int64 labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    images = (x.repeat(1, 3, 1, 1) * 255).round().to(torch.uint8)  # uint8, like robustkit datasets
    return images, torch.tensor(d.target, dtype=torch.int64)


def split() -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(1797, generator=torch.Generator().manual_seed(0))
    return perm[:N_TRAIN], perm[N_TRAIN:]


def load_fixed() -> tuple[DigitsNet, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(model with the committed weights in eval mode, test images float [0,1], uint8, labels)."""
    images, labels = digits()
    _, test = split()
    model = DigitsNet()
    model.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    u8 = images[test]
    return model.eval(), u8.float() / 255, u8, labels[test]


def train_and_save() -> None:  # pragma: no cover - run by hand to regenerate the asset
    torch.manual_seed(0)
    images, labels = digits()
    train, _ = split()
    x_train, y_train = images[train].float() / 255, labels[train]
    model = DigitsNet().train()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(4):
        for idx in torch.randperm(len(x_train)).split(64):
            opt.zero_grad()
            F.cross_entropy(model(x_train[idx]), y_train[idx]).backward()
            opt.step()
    WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, WEIGHTS)
    print(f"wrote {WEIGHTS}")


if __name__ == "__main__":  # pragma: no cover
    train_and_save()
