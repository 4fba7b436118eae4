"""The benchmark protocols' numbers, the ones papers report, from a corruption result.

Hendrycks & Dietterich (ICLR 2019) benchmark on 15 corruptions x 5 severities; their 4 extra corruptions
(speckle_noise, gaussian_blur, spatter, saturate) are a held-out validation set and not part of any
benchmark number. So:

* CIFAR-10-C / CIFAR-100-C (32 px, the ``cifar-10-c`` preset): corruption accuracy = the mean accuracy over
  the 15 x 5 cells (RobustBench's corruptions leaderboard), also per severity (mean over the 15);
* ImageNet-C (the ``imagenet-c`` preset on ImageNet's 1000 classes): mCE = mean over the 15 of
  CE_c = sum_s E_{c,s} / sum_s E^AlexNet_{c,s}, relative mCE likewise with every error minus its model's clean
  error, next to the mean accuracy over the 15 x 5;
* the 4 extra and the mean over all 19 x 5 are reported apart, labelled as such.

A result that lacks some of the 15 x 5 cells gets no protocol number; :attr:`ProtocolNumbers.missing` says
what is missing instead. The CE/mCE against a run the user chooses stays in ``corruption_error.py``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from robustkit.report.results import Result, _clean, _corruption_cells

# The 15 benchmark corruptions and the 4 extra (validation) ones, in imagecorruptions' order. Spelled out here
# rather than imported from robustkit.corruptions, which pulls in torch: a report is built from small files
# anywhere. A test checks they equal robustkit.corruptions.COMMON / EXTRA.
COMMON: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
EXTRA: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

# AlexNet's top-1 error on ImageNet-C, per corruption, severities 1..5 (fractions). Source: the table
# "AlexNet ImageNet-C Error" ("Use these values to normalize raw corruption error to calculate mCE") in
# README.md of hendrycks/robustness (present from 2019 until commit 5aa129e, 2020-05-05, which replaced it
# by a link to a spreadsheet); its "Average" column is the mean of these five. Numbers only, no code.
ALEXNET_IMAGENET_C_ERRORS: dict[str, tuple[float, float, float, float, float]] = {
    "gaussian_noise": (0.69528, 0.82542, 0.93554, 0.98138, 0.99452),
    "shot_noise": (0.71224, 0.85108, 0.93574, 0.98182, 0.99146),
    "impulse_noise": (0.78374, 0.89808, 0.94870, 0.98720, 0.99548),
    "defocus_blur": (0.65624, 0.73202, 0.85036, 0.91364, 0.94714),
    "glass_blur": (0.64308, 0.75054, 0.88806, 0.91622, 0.93344),
    "motion_blur": (0.58430, 0.70048, 0.82108, 0.89750, 0.92638),
    "zoom_blur": (0.70008, 0.76992, 0.80784, 0.84198, 0.87198),
    "snow": (0.71726, 0.88392, 0.86468, 0.91870, 0.94952),
    "frost": (0.61390, 0.79734, 0.88790, 0.89942, 0.93430),
    "fog": (0.67474, 0.76050, 0.84378, 0.87260, 0.94500),
    "brightness": (0.45140, 0.48502, 0.54048, 0.62166, 0.72440),
    "contrast": (0.64548, 0.76150, 0.88874, 0.97760, 0.99270),
    "elastic_transform": (0.52596, 0.70116, 0.55686, 0.64076, 0.80554),
    "pixelate": (0.52218, 0.54620, 0.73728, 0.87092, 0.91262),
    "jpeg_compression": (0.51002, 0.54718, 0.57294, 0.65458, 0.74778),
    # the 4 extra (validation) corruptions: listed in the same table, not used by mCE
    "speckle_noise": (0.66192, 0.74440, 0.90246, 0.94548, 0.97268),
    "gaussian_blur": (0.54732, 0.70444, 0.82574, 0.89864, 0.95940),
    "spatter": (0.47196, 0.62194, 0.75052, 0.84132, 0.90182),
    "saturate": (0.59342, 0.65514, 0.51174, 0.70834, 0.82260),
}
# AlexNet's clean top-1 error on the ImageNet validation set, the reference of relative mCE (43.45 %; Table 1
# of Hendrycks & Dietterich 2019 prints it rounded, 43.5).
ALEXNET_CLEAN_ERROR = 0.4345

# Published ImageNet-C mCE (AlexNet-normalised, 15 corruptions, released images) of torchvision weights:
# torchvision model name -> (mCE as a fraction, which weights, where published).
PUBLISHED_IMAGENET_C_MCE: dict[str, tuple[float, str, str]] = {
    "resnet50": (0.767, "torchvision ResNet-50, original weights (IMAGENET1K_V1)",
                 "Hendrycks & Dietterich, ICLR 2019; hendrycks/robustness README, ImageNet-C leaderboard"),
}

CIFAR_PROTOCOL = "CIFAR-10-C / CIFAR-100-C"
IMAGENET_PROTOCOL = "ImageNet-C"
_SMALL_DATASETS = ("cifar", "stl", "digits")


def protocol_name(result: Result) -> str:
    """Which benchmark's convention applies: ImageNet-C for the imagenet-c preset (generated or released),
    the CIFAR-C one otherwise (the cifar-10-c preset, released CIFAR-10-C / CIFAR-100-C)."""
    preset = str(result.get("preset") or "")
    return IMAGENET_PROTOCOL if preset.endswith("imagenet-c") else CIFAR_PROTOCOL


def _imagenet_classes(result: Result) -> bool:
    """Whether the model classifies ImageNet's 1000 classes (AlexNet's errors are on those)."""
    n = result.get("num_classes")
    if n is not None:
        return int(n) == 1000
    dataset = str(result.get("dataset") or "").lower()
    return not any(name in dataset for name in _SMALL_DATASETS)


def _missing(cells: dict[str, dict[int, float]], names: Sequence[str]) -> list[str]:
    """What of ``names`` x 5 severities is not in ``cells``: whole corruptions by name, single cells as
    ``name s2``; when every present corruption lacks the same severities, one ``severities 2, 4`` item."""
    absent = [c for c in names if c not in cells]
    gaps = {c: [s for s in SEVERITIES if s not in cells[c]] for c in names if c in cells}
    gaps = {c: g for c, g in gaps.items() if g}
    items = list(absent)
    present = [c for c in names if c in cells]
    if gaps and len(gaps) == len(present) and len({tuple(g) for g in gaps.values()}) == 1:
        items.append("severities " + ", ".join(map(str, next(iter(gaps.values())))))
    else:
        items += [f"{c} s{s}" for c, g in gaps.items() for s in g]
    return items


def severity_means(cells: dict[str, dict[int, float]], names: Sequence[str]) -> dict[int, float]:
    """severity -> mean accuracy over ``names``, for the severities at which every one of them was evaluated."""
    return {s: statistics.fmean(cells[c][s] for c in names) for s in SEVERITIES
            if all(s in cells.get(c, {}) for c in names)}


def _grid_mean(cells: dict[str, dict[int, float]], names: Sequence[str]) -> float | None:
    """Mean over ``names`` x 5 severities, None unless every cell is there."""
    if _missing(cells, names):
        return None
    return statistics.fmean(cells[c][s] for c in names for s in SEVERITIES)


@dataclass(frozen=True)
class ProtocolNumbers:
    """The benchmark numbers of one corruption result (accuracies and CE ratios as fractions)."""

    protocol: str
    accuracy: float | None                  # mean accuracy over the 15 x 5 (None unless all 75 cells)
    by_severity: dict[int, float]           # severity -> mean accuracy over the 15 (where all 15 are there)
    missing: list[str]                      # what of the 15 x 5 is missing (empty: the protocol applies)
    mce: float | None = None                # AlexNet-normalised mCE over the 15 (ImageNet-C only)
    relative_mce: float | None = None
    mce_note: str | None = None             # why there is no AlexNet mCE for an ImageNet-C result
    alexnet_applies: bool = False           # ImageNet-C on ImageNet's 1000 classes: mCE is defined (given the cells)
    extra_accuracy: float | None = None     # mean over the 4 extra x 5 (validation corruptions)
    extra_missing: list[str] = field(default_factory=list)
    all_accuracy: float | None = None       # mean over all 19 x 5
    evaluated_mean: float | None = None     # mean over whatever cells were evaluated (not a benchmark number)
    evaluated_cells: int = 0

    @property
    def complete(self) -> bool:
        return not self.missing

    def missing_text(self, limit: int = 6) -> str:
        """'missing glass_blur, fog s2' for a result without the protocol number ('' when complete)."""
        items = self.missing
        shown = ", ".join(items[:limit]) + (f", … (+{len(items) - limit} more)" if len(items) > limit else "")
        return (f"no {self.protocol} number (it needs the 15 benchmark corruptions x 5 severities): missing {shown}"
                if items else "")

    def to_json(self) -> dict:
        out = {
            "protocol": self.protocol,
            "benchmark_corruptions": list(COMMON),
            "corruption_accuracy": self.accuracy,
            "corruption_accuracy_by_severity": {str(s): a for s, a in self.by_severity.items()},
            "missing": self.missing,
        }
        if self.protocol == IMAGENET_PROTOCOL:
            out.update(mce_alexnet=self.mce, relative_mce_alexnet=self.relative_mce, mce_note=self.mce_note)
        out.update(extra_corruptions=list(EXTRA), extra_accuracy=self.extra_accuracy,
                   extra_missing=self.extra_missing, all19_accuracy=self.all_accuracy)
        return out


def alexnet_ces(cells: dict[str, dict[int, float]]) -> dict[str, float]:
    """CE_c = sum_s E_{c,s} / sum_s E^AlexNet_{c,s} over the 15 (all five severities of each required)."""
    return {c: sum(1 - cells[c][s] for s in SEVERITIES) / sum(ALEXNET_IMAGENET_C_ERRORS[c]) for c in COMMON}


def alexnet_relative_ces(cells: dict[str, dict[int, float]], clean: float) -> dict[str, float]:
    """Relative CE_c = sum_s (E_{c,s} - E_clean) / sum_s (E^AlexNet_{c,s} - E^AlexNet_clean) over the 15."""
    e_clean = 1 - clean
    return {c: sum((1 - cells[c][s]) - e_clean for s in SEVERITIES)
            / sum(e - ALEXNET_CLEAN_ERROR for e in ALEXNET_IMAGENET_C_ERRORS[c]) for c in COMMON}


def protocol_numbers(result: Result) -> ProtocolNumbers:
    """The benchmark numbers of a corruption result; see the module docstring for the rules."""
    cells = _corruption_cells(result)
    protocol = protocol_name(result)
    missing = _missing(cells, COMMON)
    accuracy = None if missing else statistics.fmean(cells[c][s] for c in COMMON for s in SEVERITIES)
    by_severity = severity_means(cells, COMMON)
    mce = rel = note = None
    applies = protocol == IMAGENET_PROTOCOL and _imagenet_classes(result)
    if protocol == IMAGENET_PROTOCOL:
        if not applies:
            note = "no AlexNet mCE: AlexNet's errors are on ImageNet's 1000 classes, this model has other classes"
        elif missing:
            note = "no AlexNet mCE: it needs all 15 benchmark corruptions x 5 severities"
        else:
            mce = statistics.fmean(alexnet_ces(cells).values())
            clean = _clean(result)
            if clean is None:
                note = "no relative mCE: the result has no clean accuracy"
            else:
                rel = statistics.fmean(alexnet_relative_ces(cells, clean).values())
    values = [a for sev in cells.values() for a in sev.values()]
    return ProtocolNumbers(
        protocol=protocol, accuracy=accuracy, by_severity=by_severity, missing=missing, mce=mce, relative_mce=rel,
        mce_note=note, alexnet_applies=applies, extra_accuracy=_grid_mean(cells, EXTRA), extra_missing=_missing(cells, EXTRA),
        all_accuracy=_grid_mean(cells, (*COMMON, *EXTRA)),
        evaluated_mean=statistics.fmean(values) if values else None, evaluated_cells=len(values),
    )


def published_mce(model_source: str | None) -> tuple[float, str, str] | None:
    """The published ImageNet-C mCE of a torchvision model source (``torchvision:resnet50``), if any."""
    kind, _, name = str(model_source or "").partition(":")
    if kind != "torchvision":
        return None
    return PUBLISHED_IMAGENET_C_MCE.get(name.strip().lower())


def finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)
