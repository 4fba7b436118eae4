"""The GradAug paper's published numbers, kept as data so reports can put each cell next to its target."""

from __future__ import annotations

import re

# --------------------------------------------------------------------------------------------------
# The paper's low-data table (GradAug, Yang et al. NeurIPS 2020, WRN-28-2, accuracy %, mean, std).
# Keyed by (dataset key, number of labels) -> method label -> (mean, std). Kept as data so the report
# can put each of our cells next to the number it tries to reproduce.
# --------------------------------------------------------------------------------------------------
PAPER_LOW_DATA: dict[tuple[str, int], dict[str, tuple[float, float]]] = {
    ("cifar10", 250): {
        "cutmix-p0.5": (43.45, 1.98),
        "cutmix-p0.1": (43.98, 1.15),
        "shakedrop": (42.01, 1.94),
        "baseline": (45.23, 1.01),
        "gradaug": (50.11, 1.21),
        "gradaug-semi": (52.95, 2.15),
        "mean-teacher": (48.41, 1.01),
    },
    ("cifar10", 1000): {
        "cutmix-p0.5": (63.21, 0.73),
        "cutmix-p0.1": (64.60, 0.86),
        "shakedrop": (63.11, 1.22),
        "baseline": (64.72, 1.18),
        "gradaug": (70.39, 0.82),
        "gradaug-semi": (71.74, 0.77),
        "mean-teacher": (65.57, 0.83),
    },
    ("cifar10", 4000): {
        "cutmix-p0.5": (80.28, 0.26),
        "cutmix-p0.1": (82.14, 0.65),
        "shakedrop": (79.62, 0.77),
        "baseline": (80.17, 0.68),
        "gradaug": (83.69, 0.51),
        "gradaug-semi": (84.11, 0.25),
        "mean-teacher": (84.13, 0.28),
    },
    ("stl10", 1000): {
        "cutmix-p0.5": (67.91, 1.15),
        "cutmix-p0.1": (69.34, 0.70),
        "shakedrop": (66.51, 0.99),
        "baseline": (67.62, 1.06),
        "gradaug": (70.42, 0.81),
        "gradaug-semi": (70.86, 0.71),
    },
}
PAPER_ARCH = "wrn-28-2"
_PAPER_ROW_NAMES = {
    "baseline": "WRN-28-2",
    "cutmix-p0.5": "+ CutMix (p = 0.5)",
    "cutmix-p0.1": "+ CutMix (p = 0.1)",
    "shakedrop": "+ ShakeDrop",
    "gradaug": "+ GradAug",
    "gradaug-semi": "+ GradAug-semi",
    "mean-teacher": "Mean Teacher",
}
_PAPER_COLUMNS = [("cifar10", 250), ("cifar10", 1000), ("cifar10", 4000), ("stl10", 1000)]
_PAPER_DATASET_NAMES = {"cifar10": "CIFAR-10", "stl10": "STL-10"}
# "cifar10" must not match "cifar100": the digit look-ahead keeps CIFAR-100 out.
_CIFAR10 = re.compile(r"cifar-?10(?!\d)", re.IGNORECASE)
_STL10 = re.compile(r"stl-?10(?!\d)", re.IGNORECASE)


def paper_dataset_key(dataset: str) -> str | None:
    """``"cifar10"`` / ``"stl10"`` when ``dataset`` names one of the paper's datasets, else None."""
    if _CIFAR10.search(dataset):
        return "cifar10"
    if _STL10.search(dataset):
        return "stl10"
    return None


def paper_number(dataset: str, labels: int | None, method: str) -> tuple[float, float] | None:
    """The paper's (mean %, std %) for this cell of the low-data table, or None if it has none."""
    key = paper_dataset_key(dataset)
    if key is None or labels is None:
        return None
    return PAPER_LOW_DATA.get((key, int(labels)), {}).get(method)


# The paper's adversarial table: ImageNet, ResNet-50, accuracy (%) under FGSM at these epsilons.
PAPER_FGSM_EPS = (0.05, 0.10, 0.15, 0.20, 0.25)
PAPER_FGSM_IMAGENET: dict[str, tuple[float, ...]] = {
    "ResNet-50": (27.90, 22.65, 19.50, 17.04, 15.09),
    "+ Cutout": (27.22, 21.55, 17.51, 14.68, 12.37),
    "+ Mixup": (30.76, 25.59, 21.63, 18.44, 16.19),
    "+ CutMix": (37.73, 33.42, 29.69, 26.29, 23.26),
    "+ GradAug": (36.51, 31.44, 27.70, 24.93, 22.33),
    "+ GradAug + CutMix": (40.26, 35.18, 31.36, 28.04, 25.12),
}
