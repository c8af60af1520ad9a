"""Batch-1 latency and peak inference memory of each timed model: what timm's ``benchmark.py`` reports beside
img/s, and what reviewers ask for.

Latency: ``rounds`` repeats (at most :data:`LATENCY_REPEATS`: a median of five calibrated repeats is stable, and
the timing step does this for every run) at batch 1, each ``iters`` forward passes calibrated to last
``min_time_s`` (a single pass of a small model is shorter than the scheduler's noise); milliseconds per image of
each repeat, median and IQR. A latency is one model's figure, not a ratio: it is not paired with the reference.

Peak memory of one forward at the headline batch size (the largest the sweep timed), input included:

* CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, less what was allocated before
  (the other models resident on the device), plus the model's own weights: weights + input + activations.
* CPU: the growth of the process's resident set (RSS) during that forward: free heap memory is first handed
  back to the OS (glibc ``malloc_trim``), the peak is the kernel's high-water mark (``VmHWM`` after a reset
  through ``/proc/self/clear_refs``), or, where that is unavailable, the largest RSS a sampling thread saw.
  Weights are already resident and not counted; what the allocator reuses without asking the OS is not
  counted either, so it is a lower bound on the forward's working memory, and labelled as RSS growth.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import threading
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from bench.measure.paired import TimingProtocol, prepare_models
from bench.measure.repeats import Clock, spread
from bench.measure.throughput import autocast

MEM_KIND = {"cuda": "cuda_max_memory_allocated", "cpu": "cpu_rss_growth"}
LATENCY_REPEATS = 5


def _input(batch: int, in_chans: int, image_size: int, protocol: TimingProtocol, device: torch.device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(protocol.seed)
    x = torch.randn(batch, in_chans, image_size, image_size, generator=gen).to(device)
    return x.contiguous(memory_format=torch.channels_last) if protocol.channels_last else x


def _forward(model: nn.Module, x: torch.Tensor, protocol: TimingProtocol, device: torch.device) -> Callable[[], Any]:
    @torch.inference_mode()
    def forward() -> Any:
        with autocast(protocol.precision, device):
            return model(x)

    return forward


def latency_ms(forward: Callable[[], Any], clock: Clock, protocol: TimingProtocol) -> dict[str, Any]:
    """Milliseconds per forward pass: median and IQR over calibrated repeats (``protocol.rounds``, at most
    :data:`LATENCY_REPEATS`)."""
    for _ in range(max(1, protocol.warmup)):
        forward()
    clock.sync()
    iters = clock.calibrate(forward, protocol.min_time_s)
    per_pass = [clock.interval(forward, iters) / iters * 1e3 for _ in range(min(protocol.rounds, LATENCY_REPEATS))]
    s = spread(per_pass)
    return {"median": s["median"], "iqr": s["iqr"], "repeats": len(per_pass), "iters_per_repeat": iters}


def _status_kib(field: str) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in open("/proc/self/status", encoding="ascii"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def _trim_heap() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _rss_growth_mib(forward: Callable[[], Any]) -> float:
    """RSS growth of the process during one ``forward()`` (see the module doc)."""
    _trim_heap()
    rss_kib = _status_kib("VmRSS")
    if rss_kib is None:  # not Linux: sample the RSS with psutil (snakemake's dependency) while the forward runs
        import psutil

        return _sampled_rss_growth_mib(forward, psutil.Process().memory_info)
    before = rss_kib * 1024
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        hwm_reset = True
    except OSError:
        hwm_reset = False
    if not (hwm_reset and (kib := _status_kib("VmHWM")) is not None and kib * 1024 <= before + 2**20):
        # no resettable high-water mark (an old kernel, a sandbox): sample the RSS while the forward runs
        return _sampled_rss_growth_mib(forward, lambda: (_status_kib("VmRSS") or 0) * 1024)
    out = forward()
    peak = (_status_kib("VmHWM") or 0) * 1024
    del out
    return max(0.0, (peak - before) / 2**20)


def _sampled_rss_growth_mib(forward: Callable[[], Any], rss: Callable[[], Any]) -> float:
    """RSS growth during ``forward()`` as the largest RSS a thread sampling every 0.5 ms saw (``rss()``: bytes,
    or an object with ``.rss``)."""

    def now() -> int:
        value = rss()
        return int(getattr(value, "rss", value))

    before = now()
    peak, done = before, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, now())
            done.wait(0.0005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out = forward()
    finally:
        done.set()
        sampler.join()
    peak = max(peak, now())
    del out
    return max(0.0, (peak - before) / 2**20)


def peak_memory_mib(model: nn.Module, x: torch.Tensor, protocol: TimingProtocol, device: torch.device) -> float:
    """Memory of one forward of ``model`` on ``x`` (see the module doc for what each device counts)."""
    forward = _forward(model, x, protocol, device)
    if device.type != "cuda":
        return _rss_growth_mib(forward)
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device) - x.numel() * x.element_size()  # the input counts, as on a CPU
    torch.cuda.reset_peak_memory_stats(device)
    out = forward()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del out
    return (peak - base + weights) / 2**20


def latency_and_memory(
    models: Mapping[str, nn.Module],
    *,
    image_size: int,
    in_chans: int,
    device: torch.device | str,
    protocol: TimingProtocol,
    memory_batch: Mapping[str, int],
    clock: Clock | None = None,
) -> dict[str, dict[str, Any]]:
    """Per model: batch-1 latency (ms, median and IQR over repeats) and the memory of one forward at its
    ``memory_batch`` (the headline batch its sweep timed), prepared as the protocol times them."""
    dev = torch.device(device)
    clock = clock or Clock(dev)
    ready = prepare_models(models, protocol, dev)
    one = _input(1, in_chans, image_size, protocol, dev)
    out: dict[str, dict[str, Any]] = {}
    for label, model in ready.items():
        lat = latency_ms(_forward(model, one, protocol, dev), clock, protocol)
        batch = int(memory_batch.get(label, 1))
        x = one if batch == 1 else _input(batch, in_chans, image_size, protocol, dev)
        mem = peak_memory_mib(model, x, protocol, dev)
        del x
        out[label] = {
            "latency_bs1_ms": lat["median"],
            "latency_bs1_ms_iqr": lat["iqr"],
            "latency_bs1_repeats": lat["repeats"],
            "latency_bs1_iters_per_repeat": lat["iters_per_repeat"],
            "peak_inference_mem_mib": mem,
            "peak_inference_mem_kind": MEM_KIND["cuda" if dev.type == "cuda" else "cpu"],
            "peak_inference_mem_batch": batch,
        }
    return out
