"""Gather per-run records of a suite into one flat, typed table (parquet + csv).

Layout (fixed by the runner): ``<suite_dir>/runs/<run_id>/run.json`` for a run that
finished, ``failure.json`` for one that did not. Collection never crashes on a bad
record: unreadable JSON becomes a failed row carrying the parse error, so a report
can list it as a hole instead of dying.
"""
from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Sequence, Any

import pandas as pd

from bench.errors import UsageError
from bench.io import atomic_write

RUN_FILE = "run.json"
FAILURE_FILE = "failure.json"
TABLE_PARQUET = "table.parquet"
TABLE_CSV = "table.csv"

# Order of the table's leading columns; extra keys from records follow, sorted.
RESULT_COLUMNS: list[str] = [
    "suite", "run_id", "method", "backbone", "keep_ratio", "seed", "dataset", "method_params",
    "top1", "top5", "top1_ema", "top5_ema", "gmacs_fvcore_1mac_eq_1flop", "method_gmacs_fvcore_1mac_eq_1flop",
    "theoretical_gmacs_nonzero_weights_fvcore_1mac_eq_1flop", "params_m", "nonzero_params_m",
    "mean_tokens", "tokens_per_block",
    "throughput_img_s", "throughput_img_s_iqr", "throughput_img_s_cv", "throughput_unreliable",
    "throughput_batch_size", "throughput_device", "throughput_device_key",
    "speedup_vs_dense", "speedup_ci_low", "speedup_ci_high", "speedup_ci_level", "speedup_rel_iqr",
    "speedup_unreliable", "timing_attempts", "timing_repeats", "timing_iters_per_repeat", "timing_min_time_s",
    "timing_warmup", "timing_threads", "timing_channels_last", "timing_compile", "fused_attention",
    "timing_reference_run", "timing_created_at",
    "precision", "cpu_threads", "peak_mem_mb",
    "train_epochs", "train_wall_s", "eval_wall_s", "batch_size", "device",
    "git_sha", "git_dirty", "torch_version", "timm_version", "python_version", "hostname",
    "status", "error", "created_at",
]

SORT_KEYS: list[str] = ["method", "backbone", "keep_ratio", "seed", "run_id"]

_FLOAT_COLUMNS = {
    "keep_ratio", "top1", "top5", "top1_ema", "top5_ema", "gmacs_fvcore_1mac_eq_1flop", "method_gmacs_fvcore_1mac_eq_1flop", "params_m",
    "theoretical_gmacs_nonzero_weights_fvcore_1mac_eq_1flop", "nonzero_params_m", "train_peak_mem_mb",
    "mean_tokens",
    "throughput_img_s", "throughput_img_s_iqr", "throughput_img_s_cv", "peak_mem_mb", "train_epochs",
    "speedup_vs_dense", "speedup_ci_low", "speedup_ci_high", "speedup_ci_level", "speedup_rel_iqr",
    "timing_min_time_s", "throughput_latency_ms", "timing_noise_threshold",
    "train_wall_s", "eval_wall_s",
}
_INT_COLUMNS = {"seed", "throughput_batch_size", "cpu_threads", "batch_size", "timing_attempts", "timing_repeats",
                "timing_iters_per_repeat", "timing_warmup", "timing_threads", "throughput_batch_size_requested",
                "timing_max_attempts"}
_BOOL_COLUMNS = {"git_dirty", "finetuned", "throughput_unreliable", "speedup_unreliable", "timing_channels_last"}
# pandas >= 3 has a dedicated string dtype; on pandas 2 "str" would stringify None.
_STR_DTYPE: Any = "str" if int(pd.__version__.split(".")[0]) >= 3 else object


def _encode(value: Any) -> Any:
    """Flatten containers to canonical JSON strings so every cell is a scalar."""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    return value


def parse_created_at(value: Any) -> datetime:
    """Parse an ISO 8601 stamp; unparseable or naive stamps sort as oldest / UTC."""
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except (TypeError, ValueError):
        return datetime.min.replace(tzinfo=timezone.utc)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _read_record(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """Return (record, None) or (None, error message) for one JSON file."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"unreadable {path.name}: {type(exc).__name__}: {exc}"
    if not isinstance(record, dict):
        return None, f"unreadable {path.name}: expected a JSON object, got {type(record).__name__}"
    return record, None


def _run_row(run_dir: Path, suite: str) -> dict[str, Any] | None:
    """One row for a run directory, or None when it holds no record yet (run in progress)."""
    candidates: list[tuple[str, dict[str, Any] | None, str | None]] = []
    for name in (RUN_FILE, FAILURE_FILE):
        path = run_dir / name
        if path.is_file():
            record, err = _read_record(path)
            candidates.append((name, record, err))
    if not candidates:
        return None

    readable = [c for c in candidates if c[1] is not None]
    if not readable:
        # Every file is corrupt: keep the first error (run.json's if present).
        return {"suite": suite, "run_id": run_dir.name, "status": "failed", "error": candidates[0][2]}

    # Newest record wins; on a tie run.json (listed first) wins because max() keeps the first. A failed
    # re-evaluation never hides a good evaluation: the model it scored is unchanged (a fine-tune that failed
    # since, from a changed spec, does win: that result is stale).
    good = [c for c in readable if c[0] == RUN_FILE and c[1].get("status", "ok") == "ok"]  # type: ignore[union-attr]
    failed_eval = [c for c in readable if c[0] == FAILURE_FILE and c[1].get("failed_step") == "evaluate"]  # type: ignore[union-attr]
    if good and failed_eval and len(readable) == 2:
        readable = good
    name, record, _ = max(readable, key=lambda c: parse_created_at(c[1].get("created_at")))  # type: ignore[union-attr]
    assert record is not None
    row = {key: _encode(value) for key, value in record.items()}
    row.setdefault("suite", suite)
    row.setdefault("run_id", run_dir.name)
    if name == FAILURE_FILE:
        row["status"] = "failed"
    else:
        row.setdefault("status", "ok")
    if row["status"] != "ok" and not row.get("error"):
        row["error"] = "failed without an error message"
    return row


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _typed_column(name: str, values: list[Any]) -> pd.Series:
    """Give each known column a fixed dtype so parquet schemas match across suites."""
    if name in _FLOAT_COLUMNS:
        return pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").astype("float64")
    if name in _INT_COLUMNS:
        nums = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce")
        # Non-integral values (e.g. 1.5) cannot be Int64; keep them as float instead of crashing.
        if (nums.dropna() % 1 == 0).all():
            return nums.astype("Int64")
        return nums.astype("float64")
    if name in _BOOL_COLUMNS:
        if all(_is_missing(v) or isinstance(v, bool) for v in values):
            return pd.Series(values, dtype="boolean")
        return pd.Series([None if _is_missing(v) else str(v) for v in values], dtype=_STR_DTYPE)
    if name in RESULT_COLUMNS:
        return pd.Series([None if _is_missing(v) else str(v) for v in values], dtype=_STR_DTYPE)
    return _infer_extra(values)


def _infer_extra(values: list[Any]) -> pd.Series:
    """Extra keys from future methods: pick a single dtype, else JSON-encode (parquet needs one)."""
    present = [v for v in values if not _is_missing(v)]
    if present and all(isinstance(v, bool) for v in present):
        return pd.Series(values, dtype="boolean")
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pd.Series(values, dtype="Int64")
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pd.Series([math.nan if v is None else float(v) for v in values], dtype="float64")
    if all(isinstance(v, str) for v in present):
        return pd.Series([None if _is_missing(v) else v for v in values], dtype=_STR_DTYPE)
    return pd.Series(
        [None if _is_missing(v) else json.dumps(v, sort_keys=True, default=str) for v in values],
        dtype=_STR_DTYPE,
    )


def build_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Typed, deterministically ordered table from flat row dicts."""
    extras = sorted({key for row in rows for key in row} - set(RESULT_COLUMNS))
    columns = RESULT_COLUMNS + extras
    data = {name: _typed_column(name, [row.get(name) for row in rows]) for name in columns}
    table = pd.DataFrame(data, columns=columns)
    if len(table):
        table = table.sort_values(SORT_KEYS, na_position="last", kind="mergesort")
    return table.reset_index(drop=True)


MISSING_ERROR = "no record: not run yet, still running, or killed before it could record a failure"


def collect(suite_dir: Path, expected: Sequence[Mapping[str, Any]] | None = None) -> pd.DataFrame:
    """Read every run record under ``suite_dir/runs/*/`` and write table.parquet + table.csv.

    ``expected`` (identity rows of the suite's grid, each with a ``run_id``) restricts the table to the
    suite's current runs and adds a ``status="missing"`` row for each expected run without a record,
    so holes show in the table itself.
    """
    suite_dir = Path(suite_dir)
    if not suite_dir.is_dir():
        raise UsageError(f"suite directory {suite_dir} does not exist")
    runs_dir = suite_dir / "runs"
    run_dirs = sorted(p for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []
    if expected is not None:
        wanted = {e["run_id"] for e in expected}
        run_dirs = [d for d in run_dirs if d.name in wanted]
    rows = [row for row in (_run_row(d, suite_dir.name) for d in run_dirs) if row is not None]
    from bench.results.timing_columns import merge_timing

    merge_timing(rows, suite_dir)
    if expected is not None:
        by_id = {e["run_id"]: e for e in expected}
        for row in rows:  # a record written by the launcher (job cancelled, OOM) names only the run
            for key, value in by_id.get(row["run_id"], {}).items():
                if row.get(key) is None:
                    row[key] = _encode(value)
        have = {row["run_id"] for row in rows}
        rows += [{**{k: _encode(v) for k, v in e.items()}, "status": "missing", "error": MISSING_ERROR}
                 for e in expected if e["run_id"] not in have]
    table = build_table(rows)
    atomic_write(suite_dir / TABLE_PARQUET, lambda tmp: table.to_parquet(tmp, index=False))
    atomic_write(suite_dir / TABLE_CSV, lambda tmp: table.to_csv(tmp, index=False))
    return table


def resolve_table_path(path_or_suite: str | Path, results_root: str | Path = "results") -> Path:
    """Map a suite name, a suite directory or a parquet path to the table.parquet path."""
    path = Path(path_or_suite)
    if path.suffix == ".parquet":
        return path
    if path.is_dir():
        return path / TABLE_PARQUET
    return Path(results_root) / str(path_or_suite) / TABLE_PARQUET


def load_results(path_or_suite: str | Path, results_root: str | Path = "results") -> pd.DataFrame:
    """Load a collected table from a suite name ("smoke"), a suite dir or a table.parquet path."""
    table_path = resolve_table_path(path_or_suite, results_root)
    if not table_path.is_file():
        raise UsageError(
            f"no results table at {table_path} (from {str(path_or_suite)!r}); "
            "run `bench collect` for that suite first"
        )
    return pd.read_parquet(table_path)
