"""How each number of the results table is written: one precision rule per column, the same in Markdown, LaTeX
and every row (``Column.cell`` in :mod:`bench.results.record` names the rule).

=============  =========================================================================
cell           rule
=============  =========================================================================
``mean_std``   2 decimals: ``77.17 ± 0.07 (n = 2)`` (n: ok seeds; no ± with one)
``sig3``       3 significant digits (GMACs: ``4.61``, ``0.123``, ``1260``)
``num1/2/3``   1, 2 or 3 decimals
``pct``        1 decimal, ``%``
``times``      2 decimals, ``×``
``speedup``    2 decimals; interval and its n by the number of timed seeds (see below)
``throughput`` img/s, IQR: 1 decimal; CV: 1 decimal %
``latency``    ms: 2 decimals, median (IQR)
``mem``        MiB: no decimals
=============  =========================================================================

Speed-up: ``1.91 [1.89, 1.93] (7 rep.)`` one timed seed, its order-statistic CI over paired repeats;
``1.91 (n = 2, range [1.89, 1.93])`` two seeds, their range (no interval at n = 2); ``1.91 [1.89, 1.93] (n = 3)`` three or
more, a Student-t 95 % interval; the reference ``1.00``, no interval. A row whose ok seeds were not all timed
says ``k/n seeds``; † marks a spread above the noise threshold.
"""

from __future__ import annotations

import math
from typing import Any

DASH = "—"
UNRELIABLE_MARK = "†"


def finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def num(value: Any, decimals: int, signed: bool = False) -> str:
    return f"{float(value):{'+' if signed else ''}.{decimals}f}" if finite(value) else DASH


def sig3(value: Any) -> str:
    """Three significant digits in fixed notation (no exponent: a table reader compares digits)."""
    if not finite(value):
        return DASH
    v = float(value)
    decimals = max(0, 2 - math.floor(math.log10(abs(v)))) if v else 2
    return f"{v:.{decimals}f}"


def mean_std(mean: Any, std: Any, n: Any = None, decimals: int = 2) -> str:
    """``77.17 ± 0.07 (n = 2)``; no ``(n)`` when ``n`` is None (the paper table has an n column)."""
    if not finite(mean):
        return DASH
    count = f" (n = {int(n)})" if finite(n) else ""
    spread = f" ± {float(std):.{decimals}f}" if finite(std) else ""
    return f"{float(mean):.{decimals}f}{spread}{count}"


def _get(r: Any, name: str, default: Any = None) -> Any:
    return getattr(r, name, default)


def speedup(r: Any, reference: bool, compact: bool = False) -> str:
    """The speed-up cell (see the module doc). ``compact`` (the paper table, whose n column states the seeds):
    ``1.91 [1.89, 1.93]`` for an interval, ``1.91 (1.89–1.93)`` for the range of two seeds."""
    if not finite(_get(r, "speedup")):
        return DASH
    if reference:
        return "1.00"
    low, high, n = _get(r, "speedup_ci_low"), _get(r, "speedup_ci_high"), _get(r, "speedup_ci_n")
    kind = _get(r, "speedup_interval")
    n_text = str(int(n)) if finite(n) else "?"
    if kind == "range" and finite(low):
        text = f"{r.speedup:.2f} " + (
            f"({low:.2f}–{high:.2f})" if compact else f"(n = {n_text}, range [{low:.2f}, {high:.2f}])"
        )
    elif kind in ("t95", "repeats") and finite(low):
        n_part = "" if compact else f" (n = {n_text})" if kind == "t95" else f" ({n_text} rep.)"
        text = f"{r.speedup:.2f} [{low:.2f}, {high:.2f}]{n_part}"
    else:
        text = f"{r.speedup:.2f}"
    text += partial_timing(r)
    mark = ("" if compact else " ") + UNRELIABLE_MARK
    return text + (mark if _get(r, "speedup_unreliable") is True else "")


def partial_timing(r: Any) -> str:
    """`` (1/2 seeds)`` when some ok seeds have no timing of their own; empty otherwise."""
    timed, ok = _get(r, "n_timed"), _get(r, "n_ok")
    if finite(timed) and finite(ok) and 0 < int(timed) < int(ok):
        return f" ({int(timed)}/{int(ok)} seeds)"
    return ""


def throughput(r: Any) -> str:
    if not finite(_get(r, "throughput")):
        return DASH
    iqr, cv = _get(r, "throughput_iqr"), _get(r, "throughput_cv")
    spread = f" ({float(iqr):.1f}; {100 * float(cv):.1f} %)" if finite(cv) and finite(iqr) else ""
    mark = f" {UNRELIABLE_MARK}" if _get(r, "throughput_unreliable") is True else ""
    return f"{float(r.throughput):.1f}{spread}{mark}"


def latency(r: Any, with_spread: bool = True) -> str:
    if not finite(_get(r, "latency_bs1")):
        return DASH
    iqr = _get(r, "latency_bs1_iqr")
    spread = f" ({float(iqr):.2f})" if with_spread and finite(iqr) else ""
    return f"{float(r.latency_bs1):.2f}{spread}"


def cell_text(kind: str, r: Any, name: str) -> str:
    """One cell by its renderer (``Column.cell``); ``r`` is a row of the seed summary."""
    if kind == "mean_std":
        return mean_std(_get(r, f"{name}_mean"), _get(r, f"{name}_std"), _get(r, f"{name}_n"))
    if kind in ("num1", "num2", "num3"):
        return num(_get(r, name), int(kind[-1]))
    if kind == "sig3":
        return sig3(_get(r, name))
    if kind == "pct":
        return f"{float(_get(r, name)):.1f} %" if finite(_get(r, name)) else DASH
    if kind == "times":
        return f"{float(_get(r, name)):.2f}×" if finite(_get(r, name)) else DASH
    if kind == "mem":
        return num(_get(r, name), 0)
    if kind == "latency":
        return latency(r)
    if kind == "throughput":
        return throughput(r)
    if kind == "speedup":
        return speedup(r, reference=_get(r, "role_reference") is True and _get(r, "keep_ratio") == 1.0)
    if kind == "batch_device":
        return f"{_get(r, 'throughput_batch') or '?'} @ {_get(r, 'throughput_device') or '?'}" if r.n_ok else DASH
    if kind == "text":
        value = _get(r, name)
        return DASH if value is None or value == "" or (isinstance(value, float) and math.isnan(value)) else str(value)
    raise ValueError(f"unknown cell renderer {kind!r} of column {name!r}")
