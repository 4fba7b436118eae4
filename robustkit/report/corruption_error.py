"""Corruption error, mCE and relative mCE (Hendrycks & Dietterich, ICLR 2019), against a chosen baseline.

CE_c = sum_s E_{s,c}(f) / sum_s E_{s,c}(baseline) with E = 1 - accuracy; mCE = mean_c CE_c over the 15
benchmark corruptions (the 4 extra get a CE but stay out of the mean, as in the paper).
Relative CE_c subtracts each model's clean error first. Ratios (1.0 = the baseline), shown in % elsewhere.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable

from robustkit.errors import RobustkitError
from robustkit.report.protocols import COMMON
from robustkit.report.results import _NAN, Result, _clean, _corruption_cells
from robustkit.report.runs import RunResult


# --------------------------------------------------------------------------------------------------
# Corruption errors (Hendrycks & Dietterich 2019)
# --------------------------------------------------------------------------------------------------
def _ratio(num: float, den: float, floor: float = 1e-12) -> float:
    """num / den, NaN when den is below ``floor``: a baseline with no error (or, for relative CE, no
    degradation) gives nothing to normalise by, and a sign flip would read as a spurious win."""
    return num / den if den >= floor else _NAN


def _one_image(result: Result) -> float:
    """The smallest measurable change in accuracy: one test image (1/n), or 1e-12 when n is unknown."""
    n = result.get("n") or max((int(r.get("n") or 0) for r in result.get("results") or []), default=0)
    return 1.0 / n if n else 1e-12


def _common_cells(result: Result, baseline_result: Result) -> dict[str, list[int]]:
    """corruption -> severities both results have (CE is only defined over shared cells)."""
    p, q = result.get("preset"), baseline_result.get("preset")
    if p and q and p != q:
        raise RobustkitError(
            f"corruption presets differ ({p!r} vs baseline {q!r}): CE only compares like with like; "
            "evaluate both checkpoints with the same --preset"
        )
    a, b = _corruption_cells(result), _corruption_cells(baseline_result)
    common = {c: [s for s in a[c] if s in b[c]] for c in a if c in b}
    return {c: sev for c, sev in common.items() if sev}


def corruption_errors(result: Result, baseline_result: Result) -> dict[str, float]:
    """CE_c = sum_s E_{s,c}(f) / sum_s E_{s,c}(baseline), E = 1 - accuracy, over shared severities.

    Corruptions that either result lacks are left out; a corruption on which the baseline made no
    error at all gets NaN. A ratio: 1.0 means as many errors as the baseline.
    """
    a, b = _corruption_cells(result), _corruption_cells(baseline_result)
    return {
        c: _ratio(sum(1 - a[c][s] for s in sev), sum(1 - b[c][s] for s in sev))
        for c, sev in _common_cells(result, baseline_result).items()
    }


def _mean_finite(values: Iterable[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.fmean(finite) if finite else _NAN


def _benchmark(per_corruption: dict[str, float]) -> dict[str, float]:
    """The benchmark corruptions among ``per_corruption`` (Hendrycks & Dietterich average the 15, never the 4
    extra ones); all of them when none is a benchmark corruption (a sweep of the extra 4 alone)."""
    common = {c: v for c, v in per_corruption.items() if c in COMMON}
    return common or dict(per_corruption)


def mce(result: Result, baseline_result: Result) -> float:
    """Mean CE over the benchmark corruptions both results have (NaN if none); 1.0 = the baseline's mCE.
    The extra 4 (speckle_noise, gaussian_blur, spatter, saturate) have a CE but are not in the mean."""
    return _mean_finite(_benchmark(corruption_errors(result, baseline_result)).values())


def relative_corruption_errors(result: Result, baseline_result: Result) -> dict[str, float]:
    """Relative CE_c = sum_s (E_{s,c}(f) - E_clean(f)) / sum_s (E_{s,c}(base) - E_clean(base)).

    Measures how much accuracy is *lost* to the corruption, relative to the baseline's loss. Needs
    both results' ``clean_accuracy``; NaN where the baseline loses less than one test image (or gains)
    on a corruption, since there is nothing to normalise by.
    """
    clean_f, clean_b = _clean(result), _clean(baseline_result)
    if clean_f is None or clean_b is None:
        raise RobustkitError(
            "relative CE needs clean_accuracy in both corruption results; re-run `robustkit corrupt` "
            "on the checkpoint whose eval/corruptions.json lacks it"
        )
    a, b = _corruption_cells(result), _corruption_cells(baseline_result)
    e_f, e_b = 1 - clean_f, 1 - clean_b
    # The baseline must lose at least one test image's worth of accuracy to a corruption (summed over
    # severities, less half an image of float slack), else its degradation is zero up to rounding and the
    # ratio would be noise divided by noise (values like 1e5 seen on digits, where jpeg costs nothing).
    floor = 0.5 * _one_image(baseline_result)
    return {
        c: _ratio(sum((1 - a[c][s]) - e_f for s in sev), sum((1 - b[c][s]) - e_b for s in sev), floor)
        for c, sev in _common_cells(result, baseline_result).items()
    }


def relative_mce(result: Result, baseline_result: Result) -> float:
    """Mean relative CE over the shared benchmark corruptions, as :func:`mce` (NaN if none is defined)."""
    return _mean_finite(_benchmark(relative_corruption_errors(result, baseline_result)).values())



def _versus_baseline(run: RunResult, base: RunResult | None) -> tuple[dict, float, float, str | None]:
    """(CE per corruption, mCE, relative mCE, problem) for ``run`` against ``base``; NaNs if undefined."""
    if base is None or not run.corruptions:
        return {}, _NAN, _NAN, None
    try:
        ces = corruption_errors(run.corruptions, base.corruptions)
    except RobustkitError as exc:  # presets differ
        return {}, _NAN, _NAN, str(exc).split(":")[0]
    both_clean = _clean(run.corruptions) is not None and _clean(base.corruptions) is not None
    rel = relative_mce(run.corruptions, base.corruptions) if both_clean else _NAN
    return ces, _mean_finite(_benchmark(ces).values()), rel, None
