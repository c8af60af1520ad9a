"""The report's account of the timing: what was timed, how, where, and the speed-ups at every batch size.

Read from the runs table only (the timing step's columns, :mod:`bench.results.timing_columns`).
"""

from __future__ import annotations

import statistics
from typing import Any

import pandas as pd

from bench.report.cells import DASH, UNRELIABLE_MARK
from bench.report.summary import GMACS, GROUP_KEYS, REFERENCE
from bench.report.table import md_table, uniq


def _sweeps(table: pd.DataFrame) -> pd.DataFrame:
    """One row per ok run and batch size timed: backbone, method, keep ratio, seed, batch and the sweep row."""
    if "throughput_sweep" not in table:
        return pd.DataFrame()
    rows = []
    ok = table[(table["status"] == "ok") & table["throughput_sweep"].notna()]
    for r in ok.itertuples(index=False):
        for point in r.throughput_sweep:
            rows.append(
                {
                    "backbone": r.backbone,
                    "method": r.method,
                    "keep_ratio": round(float(r.keep_ratio), 6),
                    "seed": r.seed,
                    "gmacs": getattr(r, GMACS),
                    **point,
                }
            )
    return pd.DataFrame(rows)


def _latency_memory(timed: pd.DataFrame) -> str:
    """How the batch-1 latency and the inference memory were measured (older timings had neither)."""
    if "latency_bs1_ms" not in timed or timed["latency_bs1_ms"].isna().all():
        return "no batch-1 latency or inference memory (timed before they were measured)"
    kinds = {
        "cuda_max_memory_allocated": "the CUDA allocator's peak (weights, input and activations)",
        "cpu_rss_growth": "the process's RSS growth (CPU: input and activations the allocator took from the OS)",
    }
    memory = ", ".join(kinds.get(k, k) for k in uniq(timed["peak_inference_mem_kind"]))
    return (
        f"batch-1 latency: median of {', '.join(uniq(timed['latency_bs1_repeats']))} calibrated repeats; "
        f"inference memory: {memory} during one forward at batch {', '.join(uniq(timed['peak_inference_mem_batch']))}"
    )


def what_was_timed_markdown(table: pd.DataFrame) -> str:
    ok = table[table["status"] == "ok"]
    if "throughput_device_key" not in ok or ok["throughput_device_key"].isna().all():
        return (
            "_Nothing timed yet: the timing step writes `timing/<backbone>.json` once a backbone's runs are evaluated._"
        )
    sweeps = _sweeps(table)
    lines = []
    for backbone, group in ok.groupby("backbone", sort=True):
        timed = group[group["throughput_device_key"].notna()]
        untimed = group[group["throughput_device_key"].isna()]
        if timed.empty:
            lines.append(f"- **{backbone}**: not timed yet ({len(untimed)} evaluated runs).")
            continue
        batches = sweeps[sweeps["backbone"] == backbone] if not sweeps.empty else sweeps
        sizes = (
            ", ".join(
                f"{int(req)}" + (f"→{int(got)}" if int(got) != int(req) else "")
                for req, got in sorted(set(zip(batches["batch_size_requested"], batches["batch_size"])))
            )
            or DASH
        )
        iters = timed["timing_iters_per_repeat"].dropna()
        fused = [
            f"{m} ({v})"
            for m, v in sorted(set(zip(timed["method"], timed["fused_attention"].astype(str))))
            if v not in ("on", "n/a")
        ]
        retried = timed[timed["timing_attempts"].fillna(1) > 1]
        is_paired = timed["run_id"] != timed["timing_reference_run"]
        paired = timed[is_paired]
        items = [
            f"device `{uniq(timed['throughput_device_key'])[0]}`",
            f"precision {', '.join(uniq(timed['precision']))}",
            f"threads {', '.join(uniq(timed['timing_threads'])) or DASH}",
            f"channels_last {', '.join(uniq(timed['timing_channels_last']))}",
            f"torch.compile {', '.join(uniq(timed['timing_compile']))}",
            f"batch sizes {sizes} (requested→fitted)",
            f"{', '.join(uniq(timed['timing_warmup']))} warm-up passes per model and batch size",
            f"{', '.join(uniq(paired['timing_repeats'])) or '?'} paired repeats per run (the reference: "
            f"{', '.join(uniq(timed.loc[~is_paired, 'timing_repeats'])) or '?'}, one beside each), each at least "
            f"{', '.join(uniq(timed['timing_min_time_s']))} s "
            f"({int(iters.min()) if len(iters) else '?'}–{int(iters.max()) if len(iters) else '?'} forward passes)",
            f"reference {', '.join(f'`{v}`' for v in uniq(timed['timing_reference_run'])) or 'none (no speed-ups)'}",
            f"noise threshold {', '.join(uniq(timed['timing_noise_threshold']))} (IQR / median of the paired "
            f"ratios), at most {', '.join(uniq(timed['timing_max_attempts']))} attempts; "
            f"{len(retried)} run(s) re-timed",
            "fused attention (SDPA) on in every block" + (f" except: {', '.join(fused)}" if fused else ""),
            _latency_memory(timed),
        ]
        if len(untimed):
            items.append(
                f"{len(untimed)} evaluated run(s) not timed (why: under *Failed or missing runs*): "
                f"{', '.join(f'`{r}`' for r in sorted(untimed['run_id']))}"
            )
        lines.append(f"- **{backbone}**: " + "; ".join(items) + ".")
    return (
        "Model forward only: random inputs already on the device, eval mode, `torch.inference_mode`, CUDA "
        "events on a GPU; no data loading. Every run of a backbone was timed in one job, interleaved with its "
        "dense run (R, A, R, B, R, ... in a random order per round): each speed-up is the median of ratios to "
        "the two dense repeats beside it.\n\n" + "\n".join(lines)
    )


def speedup_by_batch_markdown(table: pd.DataFrame, summary: pd.DataFrame) -> str:
    """Per backbone, method, keep ratio and batch size: the paired speed-up (mean over seeds; CI or range, n),
    the FLOPs-implied one and their ratio (1.0: every FLOP saved became time saved)."""
    sweeps = _sweeps(table)
    if sweeps.empty or sweeps["speedup"].isna().all():
        return "_No paired speed-ups yet._"
    indexed = summary.set_index(GROUP_KEYS)
    implied = indexed["flops_implied_speedup"]
    is_reference = (
        indexed[REFERENCE].fillna(False).astype(bool) if REFERENCE in indexed else pd.Series(False, index=indexed.index)
    )
    rows = []
    for key, group in sweeps.groupby(GROUP_KEYS + ["batch_size"], sort=True):
        backbone, method, keep, batch = key
        s = group["speedup"].dropna()
        if s.empty:
            continue
        flops = implied.get((backbone, method, keep), float("nan"))
        if keep == 1.0 and bool(is_reference.get((backbone, method, keep), False)):
            cell, med = "1.00× (reference)", 1.0  # 1 by definition: no interval, no mark
        else:
            # the mean over seeds, as the results table; one seed: the order-statistic CI over its paired repeats;
            # more: the seeds' range (n stated)
            med = statistics.fmean(s)
            low, high = group["speedup_ci_low"].min(), group["speedup_ci_high"].max()
            mark = f" {UNRELIABLE_MARK}" if group["speedup_unreliable"].fillna(False).astype(bool).any() else ""
            if len(s) == 1:
                cell = f"{med:.2f}× [{low:.2f}, {high:.2f}] ({int(group['repeats'].iloc[0])} rep.){mark}"
            else:
                cell = f"{med:.2f}× (n = {len(s)} seeds, range [{s.min():.2f}, {s.max():.2f}]){mark}"
        ratio = f"{med / flops:.2f}" if pd.notna(flops) and flops else DASH
        rows.append(
            [backbone, method, f"{keep:g}", str(int(batch)), cell, f"{flops:.2f}×" if pd.notna(flops) else DASH, ratio]
        )
    return (
        md_table(
            [
                "Backbone",
                "Method",
                "Keep ratio",
                "Batch",
                "Speed-up (paired; CI or range, n)",
                "FLOPs-implied",
                "Measured / FLOPs-implied",
            ],
            rows,
            "llrrrrr",
        )
        + "\n\nMeasured / FLOPs-implied below 1: part of the FLOPs saving did not become wall-clock saving "
        "(memory-bound or launch-bound kernels, the method's own overhead)."
    )


__all__: list[Any] = ["speedup_by_batch_markdown", "what_was_timed_markdown"]
