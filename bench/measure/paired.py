"""Speed-ups from paired, interleaved timing: several models against one reference, one device, one process.

Dividing a method's img/s by a dense img/s measured in another job compares two machines' moods, not two
models: on a shared node the ratio swung by 15x. Here every speed-up is a ratio of measurements taken seconds
apart, in the same process, on the same device:

1. Each model is moved to the device, warmed up (``warmup`` passes) and calibrated: the passes per repeat that
   make one repeat last at least ``min_time_s``.
2. ``rounds`` rounds. In each, the models are visited in a seeded random order and the reference is timed
   between every two of them and at both ends (R, A, R, B, R, ..., R). A model's paired ratio for the round is
   its img/s over the geometric mean of the two reference repeats beside it, so a drift of the machine's speed
   (a job starting next door, clock throttling) moves both sides of the ratio and cancels.
3. A model whose ratios spread by more than ``noise_threshold`` (IQR / median) is timed again (it and the
   reference only, same protocol), up to ``max_attempts`` in all. The attempt with the smallest spread is kept;
   if even that exceeds the threshold, the row is marked unreliable.

Batch sizes that do not fit are halved the way timm's ``benchmark.py`` does (``timm.utils.decay_batch_step``),
for all models together, so every pair is timed at one batch size.
"""

from __future__ import annotations

import contextlib
import gc
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from bench.errors import UsageError
from bench.measure.repeats import CI_LEVEL, Clock, median_ci, spread
from bench.measure.throughput import autocast, validate

#: batch sizes swept by default (``batch_sizes: auto``): the field's GPU protocol, and its part a CPU can run
AUTO_BATCH_SIZES = {"cuda": (1, 32, 64, 256), "cpu": (1, 32, 64)}


@dataclass(frozen=True)
class TimingProtocol:
    """How the models are timed; every row of a timing records it."""

    batch_sizes: tuple[int, ...]
    precision: str = "fp32"
    warmup: int = 3  # untimed passes per model and batch size
    rounds: int = 7  # paired repeats per model (per attempt)
    min_time_s: float = 0.25  # each repeat lasts at least this long
    noise_threshold: float = 0.10  # IQR / median of the paired ratios above which a model is re-timed, then marked
    max_attempts: int = 3
    channels_last: bool = False
    compile: bool | str = False
    seed: int = 0  # the visiting order of each round

    def check(self, device: torch.device) -> None:
        validate(self.precision, self.batch_sizes, self.warmup, self.rounds, self.min_time_s, 1, 1, device)
        if self.max_attempts < 1:
            raise UsageError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if not self.noise_threshold > 0:
            raise UsageError(f"noise_threshold must be > 0, got {self.noise_threshold}")

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "batch_sizes": list(self.batch_sizes)}


def resolve_batch_sizes(batch_sizes: Sequence[int] | str, device: torch.device) -> tuple[int, ...]:
    if isinstance(batch_sizes, str):
        if batch_sizes != "auto":
            raise UsageError(f"batch_sizes must be a list of integers or 'auto', got {batch_sizes!r}")
        return AUTO_BATCH_SIZES["cuda" if device.type == "cuda" else "cpu"]
    return tuple(sorted({int(b) for b in batch_sizes}))


def device_fingerprint(device: torch.device) -> dict[str, Any]:
    """What makes two timings comparable: device model, its software stack and the threads it had."""
    from bench.provenance import device_name

    info: dict[str, Any] = {
        "device_type": device.type,
        "device_name": device_name(device),
        "torch_version": str(torch.__version__),
        "cuda_version": None,
        "driver_version": None,
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info["cuda_version"] = torch.version.cuda
        with contextlib.suppress(Exception):  # private, but the only driver query torch has
            info["driver_version"] = int(torch._C._cuda_getDriverVersion())
        info["threads"] = None  # the host's threads do not set a GPU's speed
    return info


def device_key(fingerprint: Mapping[str, Any]) -> str:
    """One string per comparable device: speed-ups are only ever divided within one key."""
    parts = [str(fingerprint["device_name"]), f"torch {fingerprint['torch_version']}"]
    if fingerprint.get("cuda_version"):
        parts.append(f"CUDA {fingerprint['cuda_version']}")
    if fingerprint.get("driver_version"):
        parts.append(f"driver {fingerprint['driver_version']}")
    if fingerprint.get("threads"):
        parts.append(f"{fingerprint['threads']} threads")
    return " | ".join(parts)


def fused_attention(model: nn.Module) -> str:
    """'on', 'off' or 'k/n blocks': whether timm's attention modules use fused SDPA (a method may turn it off)."""
    flags = [bool(m.fused_attn) for m in model.modules() if hasattr(m, "fused_attn")]
    if not flags:
        return "n/a"
    on = sum(flags)
    return "on" if on == len(flags) else "off" if on == 0 else f"{on}/{len(flags)} blocks"


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


class _Subject:
    """One model ready to time at one batch size: its forward, passes per repeat and its repeats so far."""

    def __init__(self, label: str, model: nn.Module, x: torch.Tensor, precision: str, device: torch.device):
        self.label = label
        self.model = model
        self.x = x
        self.precision = precision
        self.device = device
        self.iters = 1
        self.peak_mem_mb: float | None = None
        self.weight_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])

    @torch.inference_mode()
    def forward(self) -> Any:
        with autocast(self.precision, self.device):
            return self.model(self.x)


def _time(clock: Clock, s: _Subject) -> float:
    """img/s of one repeat of ``s``; on CUDA its peak memory is tracked too: its own weights and the peak its
    forward adds (the other models resident on the device are not counted)."""
    if clock.cuda:
        base = torch.cuda.memory_allocated(clock.device)
        torch.cuda.reset_peak_memory_stats(clock.device)
    seconds = clock.interval(s.forward, s.iters)
    if clock.cuda:
        peak = (torch.cuda.max_memory_allocated(clock.device) - base + s.weight_bytes) / 2**20
        s.peak_mem_mb = max(s.peak_mem_mb or 0.0, peak)
    return s.x.shape[0] * s.iters / seconds


def _rounds(
    clock: Clock, ref: _Subject | None, subjects: list[_Subject], rounds: int, rng: random.Random
) -> tuple[dict[str, list[float]], dict[str, list[float]], list[float]]:
    """(img/s per repeat, paired ratios per repeat) of each subject, and the reference's img/s."""
    rates: dict[str, list[float]] = {s.label: [] for s in subjects}
    ratios: dict[str, list[float]] = {s.label: [] for s in subjects}
    ref_rates: list[float] = []
    for _ in range(rounds):
        gc.collect()  # between rounds, never inside a repeat (the collector is off while timing)
        order = list(subjects)
        rng.shuffle(order)
        before = _time(clock, ref) if ref is not None else None
        if before is not None:
            ref_rates.append(before)
        for s in order:
            rate = _time(clock, s)
            rates[s.label].append(rate)
            if ref is not None:
                after = _time(clock, ref)
                ref_rates.append(after)
                ratios[s.label].append(rate / math.sqrt(before * after))  # type: ignore[operator]
                before = after
    return rates, ratios, ref_rates


def _row(
    label: str,
    s: _Subject,
    batch_requested: int,
    rates: list[float],
    ratios: list[float] | None,
    attempts: int,
    threshold: float,
) -> dict[str, Any]:
    rs = spread(rates)
    low, high, level = median_ci(rates)
    row: dict[str, Any] = {
        "label": label,
        "batch_size": int(s.x.shape[0]),
        "batch_size_requested": batch_requested,
        "iters_per_repeat": s.iters,
        "repeats": len(rates),
        "img_per_s_median": rs["median"],
        "img_per_s_iqr": rs["iqr"],
        "img_per_s_rel_iqr": rs["rel_iqr"],
        "img_per_s_cv": rs["cv"],
        "img_per_s_ci_low": low,
        "img_per_s_ci_high": high,
        "img_per_s_unreliable": rs["rel_iqr"] > threshold,
        "latency_ms_median": s.x.shape[0] / rs["median"] * 1e3,
        "peak_mem_mb": s.peak_mem_mb,
        "speedup": None,
        "speedup_ci_low": None,
        "speedup_ci_high": None,
        "speedup_ci_level": None,
        "speedup_rel_iqr": None,
        "speedup_cv": None,
        "speedup_unreliable": None,
        "attempts": attempts,
        "ratios": None,
    }
    if ratios is not None:
        q = spread(ratios)
        low, high, level = median_ci(ratios)
        row.update(
            speedup=q["median"],
            speedup_ci_low=low,
            speedup_ci_high=high,
            speedup_ci_level=level,
            speedup_rel_iqr=q["rel_iqr"],
            speedup_cv=q["cv"],
            speedup_unreliable=q["rel_iqr"] > threshold,
            ratios=list(ratios),
        )
    return row


def prepare_models(
    models: Mapping[str, nn.Module], protocol: TimingProtocol, device: torch.device
) -> dict[str, nn.Module]:
    """Each model as the protocol times it: eval mode, on ``device``, channels_last and compiled if asked."""
    ready = {}
    for label, model in models.items():
        model = model.eval().to(device)
        if protocol.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if protocol.compile:
            backend = protocol.compile if isinstance(protocol.compile, str) else "inductor"
            model = torch.compile(model, backend=backend)  # type: ignore[assignment]
        ready[label] = model
    return ready


def _subjects_at(
    ready: Mapping[str, nn.Module],
    batch: int,
    image_size: int,
    in_chans: int,
    protocol: TimingProtocol,
    device: torch.device,
    clock: Clock,
) -> dict[str, _Subject]:
    """Every model warmed up at ``batch`` (raises the out-of-memory error of the first that does not fit)."""
    gen = torch.Generator().manual_seed(protocol.seed)
    x = torch.randn(batch, in_chans, image_size, image_size, generator=gen).to(device)
    if protocol.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    subjects = {label: _Subject(label, model, x, protocol.precision, device) for label, model in ready.items()}
    for s in subjects.values():
        for _ in range(max(1, protocol.warmup)):
            s.forward()
        clock.sync()
        s.iters = clock.calibrate(s.forward, protocol.min_time_s)
    return subjects


def time_paired(
    models: Mapping[str, nn.Module],
    reference: str | None,
    *,
    image_size: int,
    in_chans: int = 3,
    device: torch.device | str = "cpu",
    protocol: TimingProtocol,
    log: Callable[[str], None] | None = None,
    clock: Clock | None = None,
) -> list[dict[str, Any]]:
    """One row per model and batch size measured, each model's speed-up paired with ``reference``'s.

    ``reference`` None: no pairing (each model's img/s only). Models are left on ``device`` in eval mode.
    ``clock``: what times a repeat (tests give a simulated machine; default: the device's :class:`Clock`).
    """
    dev = torch.device(device)
    protocol.check(dev)
    if reference is not None and reference not in models:
        raise UsageError(f"reference {reference!r} is not among the models timed")
    say = log or (lambda msg: None)
    clock = clock or Clock(dev)
    rng = random.Random(protocol.seed)
    ready = prepare_models(models, protocol, dev)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _sweep(ready, reference, image_size, in_chans, dev, protocol, clock, rng, say)
    finally:
        if gc_was_enabled:
            gc.enable()


def _sweep(
    ready: Mapping[str, nn.Module],
    reference: str | None,
    image_size: int,
    in_chans: int,
    dev: torch.device,
    protocol: TimingProtocol,
    clock: Clock,
    rng: random.Random,
    say: Callable[[str], None],
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for requested in protocol.batch_sizes:
        batch = int(requested)
        while True:
            try:
                subjects = _subjects_at(ready, batch, image_size, in_chans, protocol, dev, clock)
                break
            except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
                if not _is_oom(exc):
                    raise
                from timm.utils import decay_batch_step

                subjects = {}
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
                smaller = decay_batch_step(batch)
                say(f"batch {batch} does not fit on {dev}; trying {smaller}")
                if smaller < 1:
                    break
                batch = smaller
        if not subjects:
            continue
        ref = subjects.get(reference) if reference is not None else None
        others = [s for label, s in subjects.items() if label != reference]
        rates, ratios, ref_rates = _rounds(clock, ref, others, protocol.rounds, rng)
        best = {s.label: (rates[s.label], ratios[s.label] if ref else None) for s in others}
        # the spread of each attempt's ratios: how many attempts were made, and which one is kept (the least noisy)
        tried = {s.label: [spread(ratios[s.label])["rel_iqr"]] if ref else [] for s in others}
        for attempt in range(2, protocol.max_attempts + 1):
            noisy = [s for s in others if tried[s.label] and min(tried[s.label]) > protocol.noise_threshold]
            if not noisy:
                break
            say(
                f"batch {batch}: re-timing {', '.join(s.label for s in noisy)} (paired ratios spread more than "
                f"{protocol.noise_threshold:.0%}; attempt {attempt} of {protocol.max_attempts})"
            )
            again, again_ratios, _ = _rounds(clock, ref, noisy, protocol.rounds, rng)
            for s in noisy:
                new = spread(again_ratios[s.label])["rel_iqr"]
                if new < min(tried[s.label]):
                    best[s.label] = (again[s.label], again_ratios[s.label])
                tried[s.label].append(new)
        if ref is not None:
            row = _row(ref.label, ref, requested, ref_rates, None, 1, protocol.noise_threshold)
            row.update(
                speedup=1.0,
                speedup_ci_low=1.0,
                speedup_ci_high=1.0,
                speedup_rel_iqr=0.0,
                speedup_cv=0.0,
                speedup_unreliable=False,
                attempt_rel_iqrs=[],
            )
            rows.append(row)
        for s in others:
            r, q = best[s.label]
            rows.append(
                {
                    **_row(s.label, s, requested, r, q, max(1, len(tried[s.label])), protocol.noise_threshold),
                    "attempt_rel_iqrs": tried[s.label],
                }
            )
        say(
            f"batch {batch}: "
            + ", ".join(
                f"{row['label']} {row['img_per_s_median']:.5g} img/s"
                + (f" x{row['speedup']:.3f}" if row["speedup"] is not None else "")
                for row in rows
                if row["batch_size"] == batch
            )
        )
    return rows


__all__ = [
    "AUTO_BATCH_SIZES",
    "CI_LEVEL",
    "TimingProtocol",
    "device_fingerprint",
    "device_key",
    "fused_attention",
    "prepare_models",
    "resolve_batch_sizes",
    "time_paired",
]
