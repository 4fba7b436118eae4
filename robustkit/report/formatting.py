"""Small text helpers shared by the tables: percentages, epsilons, label counts, markdown tables."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


# --------------------------------------------------------------------------------------------------
# Formatting helpers
# --------------------------------------------------------------------------------------------------
def _pct(x: float | None, digits: int = 1) -> str:
    """Fraction -> percent string; blank for missing/NaN so tables show a gap, not a fake number."""
    if x is None or not math.isfinite(x):
        return ""
    return f"{100 * x:.{digits}f}"


def _fmt_eps(eps: float) -> str:
    return f"{eps:.4g}"


def _label_text(labels: int | None, known: bool = True) -> str:
    if not known:
        return "?"
    return "all" if labels is None else str(labels)


def _record_columns(records: Sequence[Mapping[str, Any]], first: Sequence[str]) -> list[str]:
    """The standard columns first, then any extra keys the records carry, in first-seen order."""
    cols = list(first)
    for rec in records:
        cols.extend(k for k in rec if k not in cols)
    return cols


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """A GitHub markdown table; the first ``left`` columns are left-aligned, the rest right-aligned."""

    def cell(text: object) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" if i < left else "---:" for i in range(len(header))) + "|")
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _short_list(items: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", … (+{len(items) - limit} more)" if len(items) > limit else "")
