"""The run record: every column a run's row can have, in one place.

Each column declares its name, dtype, unit, how it aggregates over seeds (the report's summary) and how it is
displayed (the report's table). The runner and the timing step write records; ``collect`` checks every record
against this schema (an unknown or mistyped column fails, naming the run); the summary and the table read the
aggregation and display from here. Adding a column is one entry below (plus the code that measures it, unless
it is ``derived`` from the record's other values).

Nested values are typed: mappings with open keys (a method's parameters, runtime settings) become one column per
key under a declared prefix (``param_density``), lists become list columns, lists of mappings list-of-struct
columns; nothing is stored as a JSON string. fvcore counts one multiply-add as one flop; the cost columns say so.

Plain Python (no pandas, no torch): the runner, the report and the suite loader all import it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from bench.roles import ROLES, role_column

#: bumped whenever a column changes name, dtype or meaning; stored in the parquet's metadata
SCHEMA_VERSION = 2
DTYPES = ("float", "int", "bool", "str", "list[int]", "list[float]", "list[struct]")
AGGREGATIONS = ("mean_std", "mean", "median", "min", "max", "any", "join", "first")
GMACS_UNIT = "GMACs per image (fvcore: 1 multiply-add = 1 flop)"


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str
    doc: str
    unit: str = ""
    #: how seeds aggregate into the summary (None: not summarised) and the summary's column name
    agg: str | None = None
    summary: str | None = None
    #: the results table's header and cell renderer (see bench.report.table); None: not in the table
    label: str | None = None
    cell: str | None = None
    #: shown only when some run has a value (e.g. EMA accuracy, theoretical GMACs)
    optional: bool = False
    #: computed from the record's other values when the record is written (None: measured by its producer)
    derived: Callable[[Mapping[str, Any]], Any] | None = None

    @property
    def summary_name(self) -> str:
        return self.summary or self.name


@dataclass(frozen=True)
class Prefix:
    """A family of columns from a mapping with open keys: ``<prefix><key>``, dtype inferred per key."""

    prefix: str
    source: str  # the record key whose mapping it flattens
    doc: str


def _c(name: str, dtype: str, doc: str, **kw: Any) -> Column:
    return Column(name, dtype, doc, **kw)


_GM = GMACS_UNIT
COLUMNS: tuple[Column, ...] = (
    # -- identity ------------------------------------------------------------------------------------------
    _c("suite", "str", "suite name"),
    _c("run_id", "str", "run id: method label, backbone, keep ratio (2 decimals), seed"),
    _c("method", "str", "the suite's label of the method (its registry name unless relabelled)"),
    _c("method_name", "str", "the method's registry name"),
    _c("method_family", "str", "the paper figures the method is drawn in (Method.family)", agg="first"),
    *(_c(role_column(r), "bool", f"method role {r!r}: {doc}", agg="first") for r, doc in ROLES.items()),
    _c("backbone", "str", "the backbone's label: its timm name, name@image_size when resized, or the suite's label"),
    _c("backbone_model", "str", "timm model name", agg="first"),
    _c("image_size", "int", "input resolution (square)", unit="px", agg="first"),
    _c("keep_ratio", "float", "the method's keep ratio (1.0: no token budget)", unit="fraction"),
    _c("seed", "int", "seed of the fine-tune and the method", agg="join", summary="seeds_ok"),
    _c("dataset", "str", "dataset description"),
    _c("weights", "str", "trained weights given in the suite (finetune: none)"),
    _c("finetuned", "bool", "fine-tuned by the harness"),
    # -- accuracy -------------------------------------------------------------------------------------------
    _c(
        "top1",
        "float",
        "top-1 accuracy on the validation split",
        unit="%",
        agg="mean_std",
        label="Top-1 (%)",
        cell="mean_std",
    ),
    _c("top5", "float", "top-5 accuracy", unit="%", agg="mean_std", label="Top-5 (%)", cell="mean_std"),
    _c(
        "top1_ema",
        "float",
        "top-1 of the recipe's EMA weights",
        unit="%",
        agg="mean_std",
        label="Top-1 EMA (%)",
        cell="mean_std",
        optional=True,
    ),
    _c("top5_ema", "float", "top-5 of the EMA weights", unit="%"),
    _c("val_images", "int", "validation images scored", unit="images"),
    # -- cost -----------------------------------------------------------------------------------------------
    _c(
        "gmacs_fvcore_1mac_eq_1flop",
        "float",
        "per-image compute counted by fvcore",
        unit=_GM,
        agg="mean",
        summary="gmacs",
        label="GMACs (fvcore, 1 MAC = 1 flop)",
        cell="sig3",
    ),
    _c(
        "method_gmacs_fvcore_1mac_eq_1flop",
        "float",
        "the method's own compute (scorers, clustering), inside the total",
        unit=_GM,
        agg="mean",
        summary="method_gmacs",
    ),
    _c(
        "theoretical_gmacs_nonzero_weights_fvcore_1mac_eq_1flop",
        "float",
        "only nonzero weights counted: what sparse kernels could at best run",
        unit=_GM,
        agg="mean",
        summary="theoretical_gmacs",
        label="Theoretical GMACs (nonzero weights only)",
        cell="sig3",
        optional=True,
    ),
    _c(
        "flops_skipped_ops",
        "str",
        "operators fvcore could not count and that multiply no tensors (op:count; ...)",
        agg="join",
        label="Ops fvcore skipped",
        cell="text",
        optional=True,
    ),
    _c("flops_skipped_op_count", "int", "calls of operators fvcore skipped", unit="calls"),
    _c("params_m", "float", "parameters", unit="M", agg="mean", label="Params (M)", cell="num2"),
    _c("nonzero_params_m", "float", "nonzero parameters", unit="M", agg="mean"),
    _c(
        "mean_tokens",
        "float",
        "tokens entering a block, averaged over blocks and images",
        unit="tokens",
        agg="mean",
        label="Mean tokens",
        cell="num1",
    ),
    _c("tokens_per_block", "list[float]", "mean tokens entering each block", unit="tokens"),
    _c("token_schedule", "list[int]", "the method's token schedule (tokens entering each block)", unit="tokens"),
    # -- timing (from the backbone's timing job) --------------------------------------------------------------
    _c(
        "throughput_img_s",
        "float",
        "model-only img/s at the largest batch timed, median over repeats",
        unit="img/s",
        agg="median",
        summary="throughput",
        label="Throughput img/s, median (IQR; CV)",
        cell="throughput",
    ),
    _c(
        "throughput_img_s_iqr",
        "float",
        "interquartile range of img/s over repeats",
        unit="img/s",
        agg="median",
        summary="throughput_iqr",
    ),
    _c(
        "throughput_img_s_cv",
        "float",
        "coefficient of variation of img/s over repeats",
        unit="fraction",
        agg="median",
        summary="throughput_cv",
    ),
    _c("throughput_unreliable", "bool", "img/s spread above the noise threshold after retries", agg="any"),
    _c("throughput_latency_ms", "float", "milliseconds per batch, median", unit="ms"),
    _c(
        "throughput_batch_size",
        "int",
        "batch size timed (fitted)",
        unit="images",
        agg="join",
        summary="throughput_batch",
        label="Throughput batch @ device",
        cell="batch_device",
    ),
    _c("throughput_batch_size_requested", "int", "batch size requested", unit="images"),
    _c("throughput_device", "str", "device name the timing ran on", agg="join"),
    _c(
        "throughput_device_key",
        "str",
        "device, torch, CUDA, driver and CPU threads: speed-ups are compared only within one key",
    ),
    _c("throughput_sweep", "list[struct]", "every batch size timed: img/s median/IQR/CV, speed-up and its CI"),
    _c(
        "speedup_vs_dense",
        "float",
        "median of paired ratios to the reference run timed interleaved with it (over seeds: their mean)",
        unit="x",
        agg="mean",
        summary="speedup",
        label="Speed-up vs reference (paired; interval, n)",
        cell="speedup",
    ),
    _c("speedup_ci_low", "float", "CI of the median paired ratio over repeats, low end", unit="x", agg="min"),
    _c("speedup_ci_high", "float", "CI of the median paired ratio over repeats, high end", unit="x", agg="max"),
    _c("speedup_ci_level", "float", "confidence level the order-statistic CI reaches", unit="fraction"),
    _c("speedup_rel_iqr", "float", "IQR / median of the paired ratios", unit="fraction"),
    _c("speedup_unreliable", "bool", "speed-up spread above the noise threshold after retries", agg="any"),
    _c("precision", "str", "timing precision (fp32 or autocast dtype)"),
    _c("peak_mem_mb", "float", "peak device memory while timing (GPU)", unit="MB"),
    _c(
        "latency_bs1_ms",
        "float",
        "model-only milliseconds per image at batch 1, median over repeats (timing step)",
        unit="ms",
        agg="median",
        summary="latency_bs1",
        label="Latency bs 1 (ms), median (IQR)",
        cell="latency",
    ),
    _c("latency_bs1_ms_iqr", "float", "IQR of the batch-1 latency", unit="ms", agg="median", summary="latency_bs1_iqr"),
    _c("latency_bs1_repeats", "int", "repeats behind the batch-1 latency", unit="repeats"),
    _c(
        "peak_inference_mem_mib",
        "float",
        "memory of one forward at the headline batch: on CUDA the allocator's peak (torch.cuda.max_memory_allocated "
        "after a reset, the model's weights included); on a CPU the growth of the process's RSS during that forward",
        unit="MiB (CUDA: allocator peak; CPU: RSS growth)",
        agg="median",
        summary="peak_mem",
        label="Peak inference memory (MiB)",
        cell="mem",
    ),
    _c("peak_inference_mem_kind", "str", "how the memory was measured", agg="join", summary="peak_mem_kind"),
    _c("peak_inference_mem_batch", "int", "batch of that forward", unit="images", agg="join", summary="peak_mem_batch"),
    _c("timing_status", "str", "'timed', or why not (failed, left out of its timing, evaluated again since)"),
    _c(
        "fused_attention",
        "str",
        "whether every block runs fused SDPA attention ('on', 'off' or 'k/n blocks')",
        agg="join",
    ),
    _c("timing_attempts", "int", "timing attempts made (re-timed when noisy)"),
    _c("timing_repeats", "int", "paired repeats per attempt"),
    _c("timing_iters_per_repeat", "int", "forward passes per repeat (calibrated to min_time_s)"),
    _c("timing_min_time_s", "float", "minimum duration of one repeat", unit="s"),
    _c("timing_noise_threshold", "float", "IQR / median above which a run is re-timed", unit="fraction"),
    _c("timing_max_attempts", "int", "attempts before a noisy run is marked unreliable"),
    _c("timing_warmup", "int", "warm-up passes"),
    _c("timing_threads", "int", "CPU threads while timing"),
    _c("timing_channels_last", "bool", "channels_last memory format while timing"),
    _c("timing_compile", "str", "torch.compile mode while timing"),
    _c("timing_reference_run", "str", "run id of the reference run the speed-ups are paired with"),
    _c("timing_created_at", "str", "when the timing job ran (ISO 8601, UTC)"),
    # -- training -------------------------------------------------------------------------------------------
    _c("train_epochs", "int", "fine-tuning epochs", unit="epochs"),
    _c("train_wall_s", "float", "fine-tuning wall time", unit="s"),
    _c("train_peak_mem_mb", "float", "peak memory while fine-tuning", unit="MB", agg="mean"),
    _c("train_requeues", "int", "times the fine-tune was requeued and resumed"),
    _c("eval_wall_s", "float", "evaluation wall time", unit="s"),
    _c("batch_size", "int", "the recipe's global batch size", unit="images"),
    _c("global_batch_size", "int", "images per optimiser step", unit="images"),
    _c("per_device_batch_size", "int", "images per device per step", unit="images"),
    _c("micro_batch_size", "int", "images per forward (gradient accumulation)", unit="images"),
    _c("accumulation_steps", "int", "micro-batches per optimiser step"),
    _c("world_size", "int", "processes of the fine-tune"),
    _c("lr", "float", "the recipe's learning rate"),
    _c("lr_effective", "float", "learning rate after the batch-size scaling rule"),
    _c("lr_rule", "str", "how group learning rates follow the schedule"),
    _c("optimizer_groups", "list[struct]", "parameter groups: name, params, lr scale, weight decay"),
    # -- provenance -----------------------------------------------------------------------------------------
    _c("device", "str", "device of the evaluation (and fine-tune)"),
    _c("device_name", "str", "device model name"),
    _c("cuda", "str", "CUDA version"),
    _c("cpu_threads", "int", "torch CPU threads of the evaluation"),
    _c("git_sha", "str", "commit of the harness"),
    _c("git_dirty", "bool", "uncommitted changes in the harness"),
    _c("torch_version", "str", "torch version"),
    _c("timm_version", "str", "timm version"),
    _c("python_version", "str", "Python version"),
    _c("hostname", "str", "host name"),
    _c("created_at", "str", "when the record was written (ISO 8601, UTC)"),
    # -- status ---------------------------------------------------------------------------------------------
    _c("status", "str", "ok, failed or missing"),
    _c("error", "str", "one-line error of a failed or missing run"),
    _c("failed_step", "str", "the step that failed (finetune, evaluate, timing)"),
    _c("traceback", "str", "the failing step's traceback (last 4000 characters)"),
    _c("job_id", "str", "scheduler job id of a job that died"),
    _c("job_state", "str", "scheduler state of that job"),
    _c("job_stdout", "str", "its stdout log"),
    _c("job_stderr", "str", "its stderr log"),
)

#: summary-only columns, computed from the aggregated ones relative to the backbone's reference run
DERIVED: tuple[Column, ...] = (
    _c(
        "flops_implied_speedup",
        "float",
        "reference GMACs / GMACs",
        unit="x",
        label="FLOPs-implied speed-up",
        cell="times",
    ),
    _c(
        "flops_reduction_pct",
        "float",
        "1 - GMACs / reference GMACs",
        unit="%",
        label="FLOPs reduction vs reference",
        cell="pct",
    ),
    _c(
        "theoretical_flops_reduction_pct",
        "float",
        "1 - theoretical GMACs / reference GMACs",
        unit="%",
        label="Theoretical FLOPs reduction",
        cell="pct",
        optional=True,
    ),
)

PREFIXES: tuple[Prefix, ...] = (
    Prefix("param_", "method_params", "the method parameters the suite set"),
    Prefix("derived_", "method_derived", "what the method derived for the model beyond its parameters (ToMe's r)"),
    Prefix("train_metric_", "method_train_metrics", "the method's own training figures (SViTE's nonzero weights)"),
    Prefix("recipe_source_", "recipe_sources", "where each recipe value came from (default, preset, suite)"),
    Prefix("train_runtime_", "train_runtime", "runtime settings of the fine-tune (workers, channels_last, ...)"),
    Prefix("eval_runtime_", "eval_runtime", "runtime settings of the evaluation"),
    Prefix("data_index_", "data_index", "a local folder's index: root, fingerprint, images per split"),
)

BY_NAME: dict[str, Column] = {c.name: c for c in COLUMNS}
ORDER: list[str] = [c.name for c in COLUMNS]
GROUP_KEYS = ["backbone", "method", "keep_ratio"]
SORT_KEYS = ["method", "backbone", "keep_ratio", "seed", "run_id"]
#: record keys of older harness versions, dropped when read (never mixed into the table)
RETIRED = ("throughput_latency_ms_legacy",)

for _col in COLUMNS + DERIVED:  # a typo here would silently lose a column
    assert _col.dtype in DTYPES and (_col.agg is None or _col.agg in AGGREGATIONS), _col
    assert (_col.label is None) == (_col.cell is None), _col


def displayed() -> list[Column]:
    """The results table's columns after backbone, method, keep ratio and seeds, in order."""
    return [c for c in COLUMNS + DERIVED if c.label is not None]


def img_per_s_text(value: float) -> str:
    """img/s with five significant digits (at least one decimal): resolves 0.5 % at any magnitude."""
    if not math.isfinite(value):
        return "—"
    decimals = max(1, 4 - int(math.floor(math.log10(abs(value)))) if value else 1)
    return f"{value:.{decimals}f}"
