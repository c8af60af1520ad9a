"""Timed repeats and the statistics reported over them, shared by every throughput measurement.

A repeat is ``iters`` forward passes timed as one interval, with ``iters`` calibrated so that a repeat lasts at
least ``min_time_s``: a single forward of a small model is shorter than the scheduler's noise, so per-forward
timings mostly measure the machine, not the model. On CUDA the interval is taken with CUDA events (GPU time
between the first launch and the last kernel), on CPU with ``perf_counter``.

Spread is stated three ways: the inter-quartile range, the coefficient of variation (sample std / mean) and a
distribution-free confidence interval of the median from order statistics (no normality assumed; timings have
long right tails when the machine is shared).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from bench.results.record import img_per_s_text  # noqa: F401  (re-exported: the display rule lives with the column)

#: confidence of the interval reported with every median
CI_LEVEL = 0.95


class Clock:
    """Times ``iters`` calls of a function as one interval, in seconds, on the given device."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def interval(self, fn: Callable[[], Any], iters: int) -> float:
        self.sync()  # work queued before this repeat is never billed to it
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            end.synchronize()
            return max(start.elapsed_time(end) / 1e3, 1e-12)
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return max(time.perf_counter() - t0, 1e-12)

    def calibrate(self, fn: Callable[[], Any], min_time_s: float, min_iters: int = 1) -> int:
        """Forward passes per repeat so that one repeat lasts at least ``min_time_s`` (at least ``min_iters``)."""
        if min_time_s <= 0:
            return max(1, min_iters)
        one = self.interval(fn, 1)
        iters = max(min_iters, math.ceil(min_time_s / one))
        if iters > 1:  # a second look with several passes: the first single pass is the noisiest
            per = self.interval(fn, min(iters, 8)) / min(iters, 8)
            iters = max(min_iters, math.ceil(min_time_s / per))
        return iters


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 1]."""
    s = sorted(values)
    pos = (len(s) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def median_ci(values: Sequence[float], level: float = CI_LEVEL) -> tuple[float, float, float]:
    """(low, high, achieved level) of a distribution-free confidence interval for the median.

    The interval [x_(k), x_(n+1-k)] covers the median with probability 1 - 2 P(Binomial(n, 1/2) < k); k is the
    largest index whose coverage still reaches ``level``. With fewer than 6 values no pair reaches 95 %: the
    interval is then [min, max] and the achieved level (e.g. 0.9375 for 5 values) says so.
    """
    s = sorted(values)
    n = len(s)
    if n == 0:
        return math.nan, math.nan, 0.0
    if n == 1:
        return s[0], s[0], 0.0
    k, achieved = 1, 1 - 2 * 0.5**n
    tail = 0.0
    for j in range(1, n // 2 + 1):
        tail += math.comb(n, j - 1) * 0.5**n  # P(X <= j-1) = P(X < j)
        coverage = 1 - 2 * tail
        if coverage >= level:
            k, achieved = j, coverage
        else:
            break
    return s[k - 1], s[n - k], achieved


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, IQR, IQR / median and coefficient of variation (sample std / mean) of repeated measurements."""
    vals = [float(v) for v in values]
    med = statistics.median(vals)
    iqr = percentile(vals, 0.75) - percentile(vals, 0.25)
    mean = statistics.fmean(vals)
    cv = statistics.stdev(vals) / mean if len(vals) > 1 and mean else 0.0
    return {"median": med, "iqr": iqr, "rel_iqr": iqr / med if med else math.inf, "cv": cv}
