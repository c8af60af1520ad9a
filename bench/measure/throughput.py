"""Model-only throughput on random inputs (no data loading), as reported in token-pruning papers.

Per batch size: warm-up, then ``repeats`` timed repeats of ``iters_per_repeat`` forward passes
(enough to last ``min_time_s``; at least one). Each repeat gives one img/s figure; the report
keeps the median, the inter-quartile range and the coefficient of variation so noise is visible next to the
number. One model alone; speed-ups between models come from :mod:`bench.measure.paired`, which times them
interleaved in one process.
"""

from __future__ import annotations

import contextlib
import resource
import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bench.errors import UsageError
from bench.measure.flops import eval_mode
from bench.measure.repeats import Clock, spread
from bench.provenance import cpu_name

PRECISIONS = ("fp32", "fp16", "bf16")
#: each timed repeat lasts at least this long: one forward of a small model is shorter than scheduler noise
DEFAULT_MIN_TIME_S = 0.25
_AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class ThroughputReport:
    """Throughput rows (one per batch size) plus the conditions they were measured under."""

    rows: list[dict[str, Any]]
    device: str
    device_name: str
    precision: str
    num_threads: int
    torch_version: str
    image_size: int
    in_chans: int
    channels_last: bool
    warmup: int
    peak_mem_kind: str  # "cuda_max_allocated" or "cpu_peak_rss_increase"
    extra: dict[str, Any] = field(default_factory=dict)

    def headline(self, batch_size: int | None = None) -> dict[str, Any]:
        """Row for ``batch_size``, or for the largest batch size measured."""
        if not self.rows:
            raise UsageError("throughput report has no rows")
        if batch_size is None:
            return dict(max(self.rows, key=lambda r: r["batch_size"]))
        for row in self.rows:
            if row["batch_size"] == batch_size:
                return dict(row)
        measured = sorted(r["batch_size"] for r in self.rows)
        raise UsageError(f"batch size {batch_size} was not measured (measured: {measured})")

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": [dict(r) for r in self.rows],
            "device": self.device,
            "device_name": self.device_name,
            "precision": self.precision,
            "num_threads": self.num_threads,
            "torch_version": self.torch_version,
            "image_size": self.image_size,
            "in_chans": self.in_chans,
            "channels_last": self.channels_last,
            "warmup": self.warmup,
            "peak_mem_kind": self.peak_mem_kind,
            "extra": dict(self.extra),
        }


def _resolve_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UsageError(f"invalid device {device!r}: {exc}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {device!r} requested but CUDA is not available")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    elif dev.type != "cpu":
        raise UsageError(f"unsupported device type {dev.type!r} (use cpu or cuda)")
    return dev


def validate(
    precision: str,
    batch_sizes: Sequence[int],
    warmup: int,
    repeats: int,
    min_time_s: float,
    image_size: int,
    in_chans: int,
    dev: torch.device,
) -> None:
    """One line naming what is wrong with a throughput protocol (shared with :mod:`bench.measure.paired`)."""
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and dev.type == "cpu":
        raise UsageError("fp16 throughput on CPU is not meaningful; use fp32 or bf16")
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise UsageError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    if warmup < 0 or repeats < 1 or min_time_s < 0:
        raise UsageError(f"need warmup >= 0, repeats >= 1, min_time_s >= 0 (got {warmup}, {repeats}, {min_time_s})")
    if image_size < 1 or in_chans < 1:
        raise UsageError(f"image_size and in_chans must be positive (got {image_size}, {in_chans})")


def autocast(precision: str, dev: torch.device) -> AbstractContextManager[Any]:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=dev.type, dtype=_AUTOCAST_DTYPES[precision])


def _max_rss_mb() -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def _first_tensor_device(model: nn.Module) -> torch.device | None:
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return None


def _measure_batch(
    forward: Callable[[], Any], clock: Clock, batch_size: int, warmup: int, repeats: int, min_time_s: float
) -> dict[str, Any]:
    for _ in range(warmup):
        forward()
    clock.sync()
    # Calibrated once, so every repeat does the same amount of work and lasts at least min_time_s.
    iters = clock.calibrate(forward, min_time_s)
    rates: list[float] = []
    for _ in range(repeats):
        rates.append(batch_size * iters / clock.interval(forward, iters))
    s = spread(rates)
    return {
        "batch_size": batch_size,
        "img_per_s_median": s["median"],
        "img_per_s_iqr": s["iqr"],
        "img_per_s_cv": s["cv"],
        "latency_ms_median": batch_size / s["median"] * 1e3,
        "repeats": repeats,
        "iters_per_repeat": iters,
        "min_time_s": min_time_s,
    }


def measure_throughput(
    model: nn.Module,
    *,
    image_size: int,
    in_chans: int = 3,
    device: str | torch.device = "cpu",
    batch_sizes: Sequence[int] = (1, 32),
    precision: str = "fp32",
    warmup: int = 5,
    repeats: int = 20,
    min_time_s: float = DEFAULT_MIN_TIME_S,
    channels_last: bool = False,
) -> ThroughputReport:
    """Time forward passes of ``model`` on random ``[B, in_chans, S, S]`` inputs.

    Runs in eval mode under ``torch.inference_mode``; fp16/bf16 use autocast. The model is
    moved to ``device`` (and to channels_last if asked) for timing and moved back afterwards;
    training flags are restored. CPU peak memory is the increase of the process' peak RSS,
    which stays 0 when an earlier phase already peaked higher (``peak_mem_kind`` says which).
    """
    dev = _resolve_device(device)
    validate(precision, batch_sizes, warmup, repeats, min_time_s, image_size, in_chans, dev)
    is_cuda = dev.type == "cuda"
    clock = Clock(dev)

    original_device = _first_tensor_device(model)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    rows: list[dict[str, Any]] = []
    try:
        model.to(dev)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        with eval_mode(model), torch.inference_mode():
            for bs in sorted({int(b) for b in batch_sizes}):
                x = torch.randn(bs, in_chans, image_size, image_size, device=dev)
                x = x.contiguous(memory_format=memory_format)

                def forward(x: torch.Tensor = x) -> Any:
                    with autocast(precision, dev):
                        return model(x)

                if is_cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(dev)
                    base = 0.0
                else:
                    base = _max_rss_mb()
                row = _measure_batch(forward, clock, bs, warmup, repeats, min_time_s)
                if is_cuda:
                    row["peak_mem_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
                else:
                    row["peak_mem_mb"] = max(0.0, _max_rss_mb() - base)
                rows.append(row)
                del x
    finally:
        if channels_last:
            model.to(memory_format=torch.contiguous_format)
        if original_device is not None and original_device != dev:
            model.to(original_device)

    extra: dict[str, Any] = {"float32_matmul_precision": torch.get_float32_matmul_precision()}
    if is_cuda:
        extra["cudnn_benchmark"] = bool(torch.backends.cudnn.benchmark)
    return ThroughputReport(
        rows=rows,
        device=str(dev),
        device_name=torch.cuda.get_device_name(dev) if is_cuda else cpu_name(),
        precision=precision,
        num_threads=torch.get_num_threads(),
        torch_version=torch.__version__,
        image_size=image_size,
        in_chans=in_chans,
        channels_last=channels_last,
        warmup=warmup,
        peak_mem_kind="cuda_max_allocated" if is_cuda else "cpu_peak_rss_increase",
        extra=extra,
    )
