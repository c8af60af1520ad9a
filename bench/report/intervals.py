"""How an interval over seeds is stated, in tables and figures: with its n, and only what holds at that n.

``summary.t_half_width`` gives a two-sided ``LEVEL`` t-interval of a mean from ``MIN_N_INTERVAL`` seeds on and the
seeds' min and max; here a cell reads ``[a, b] (n = 5)``, ``n = 2, range [a, b]`` or ``n = 1``, a caption
line names the interval of the n values a table has, and a legend line the bars of a figure.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from bench.report.cells import DASH, num
from bench.report.summary import LEVEL, MIN_N_INTERVAL

LEVEL_TEXT = f"{100 * LEVEL:g} %"  # "95 %"


def interval_cell(n: Any, low: Any, high: Any, lo: Any, hi: Any, signed: bool = False) -> str:
    """A mean's interval over ``n`` seeds (or seed pairs), n stated: ``[low, high] (n = 5)`` (the t-interval)
    from MIN_N_INTERVAL on, ``n = 2, range [lo, hi]`` (min and max) at 2, ``n = 1`` alone, a dash at 0."""
    n = int(n) if np.isfinite(n) else 0
    if n >= MIN_N_INTERVAL and np.isfinite(low) and np.isfinite(high):
        return f"[{num(low, 2, signed)}, {num(high, 2, signed)}] (n = {n})"
    if n == 2:
        return f"n = 2, range [{num(lo, 2, signed)}, {num(hi, 2, signed)}]"
    return f"n = {n}" if n else DASH


def intervals_caption(ns: Any) -> str:
    """The caption line naming the intervals a table or figure shows, for the n values it has."""
    ns = {int(n) for n in ns if np.isfinite(n) and n > 0}
    parts = []
    if any(n >= MIN_N_INTERVAL for n in ns):
        parts.append(f"two-sided {LEVEL_TEXT} t-interval of the mean over seeds (n ≥ {MIN_N_INTERVAL})")
    if 2 in ns:
        parts.append("n = 2: the range of the two seeds, no confidence interval")
    if 1 in ns:
        parts.append("n = 1: none")
    return f"Intervals: {'; '.join(parts)}." if parts else "Intervals: none (no seeds)."


def interval_bounds(rows: pd.DataFrame, n: str, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Bar ends per row: the t-interval (``{prefix}_ci_low/high``) where ``n`` reaches MIN_N_INTERVAL, the range
    (``{prefix}_min/max``) at n = 2, none (NaN) below."""
    count = rows[n].to_numpy(dtype=float)
    ci = count >= MIN_N_INTERVAL
    two = count == 2
    low = np.where(ci, rows[f"{prefix}_ci_low"], np.where(two, rows[f"{prefix}_min"], np.nan)).astype(float)
    high = np.where(ci, rows[f"{prefix}_ci_high"], np.where(two, rows[f"{prefix}_max"], np.nan)).astype(float)
    return low, high


def bars_label(ns: Any) -> str:
    """Legend text for the bars of a figure whose points have these n."""
    ns = {int(n) for n in ns if np.isfinite(n) and n > 0}
    qualify = len({n >= MIN_N_INTERVAL for n in ns}) > 1 or 1 in ns  # say which n gets what only when mixed
    parts = (
        [f"{LEVEL_TEXT} t-interval" + (f" (n ≥ {MIN_N_INTERVAL})" if qualify else "")]
        if max(ns, default=0) >= MIN_N_INTERVAL
        else []
    )
    parts += ["range" + (" (n = 2)" if qualify else "")] if 2 in ns else []
    parts += ["none (n = 1)"] if 1 in ns else []
    n_text = f"n = {min(ns)}" if len(ns) == 1 else f"n = {min(ns)}–{max(ns)}" if ns else "n = 0"
    return f"bars over seeds ({n_text}): " + ", ".join(parts) if ns else "no bars"
