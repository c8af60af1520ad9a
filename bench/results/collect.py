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
from bench.io import atomic_write, open_artifact, read_text
from bench.results import record as record_mod
from bench.results.row import RecordError, flatten

RUN_FILE = "run.json"
FAILURE_FILE = "failure.json"
#: kept-token masks of a token-reducing run (bench.measure.kept_tokens), drawn by the report's gallery
KEPT_NPZ = "kept_tokens.npz"
TABLE_PARQUET = "table.parquet"
TABLE_CSV = "table.csv"

#: the table's columns, in the record's order (columns under a prefix, param_* etc., follow, sorted)
RESULT_COLUMNS: list[str] = list(record_mod.ORDER)
SORT_KEYS: list[str] = record_mod.SORT_KEYS
#: parquet metadata key holding the schema version and the suite's provenance
METADATA_KEY = b"tokenbench"
# pandas >= 3 has a dedicated string dtype; on pandas 2 "str" would stringify None.
_STR_DTYPE: Any = "str" if int(pd.__version__.split(".")[0]) >= 3 else object


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
        record = json.loads(read_text(path))  # a planted link: UnsafeArtifact (bench.io), never read through
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
    name, found, _ = max(readable, key=lambda c: parse_created_at(c[1].get("created_at")))  # type: ignore[union-attr]
    assert found is not None
    try:
        row = flatten(found, run_dir.name)
    except RecordError as e:
        raise UsageError(f"{run_dir / name}: {e}") from None
    row.setdefault("suite", suite)
    row.setdefault("run_id", run_dir.name)
    if name == FAILURE_FILE:
        row["status"] = "failed"
    else:
        row.setdefault("status", "ok")
    if row["status"] != "ok" and not row.get("error"):
        row["error"] = "failed without an error message"
    return row


def _fill_method_columns(row: dict[str, Any]) -> None:
    """Roles and family of a record written before records carried them, from the method's declarations."""
    from bench.methods.catalog import catalog

    info = catalog().get(str(row.get("method_name") or row.get("method")))
    if info is not None:
        for key, value in info.record_columns().items():
            if row.get(key) is None:
                row[key] = value


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _typed_column(name: str, values: list[Any]) -> pd.Series:
    """Each declared column in its declared dtype, so parquet schemas match across suites and versions."""
    column = record_mod.BY_NAME.get(name)
    dtype = column.dtype if column else _infer(values)
    if dtype == "float":
        return pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").astype("float64")
    if dtype == "int":
        return pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").astype("Int64")
    if dtype == "bool":
        return pd.Series([None if _is_missing(v) else bool(v) for v in values], dtype="boolean")
    if dtype == "str":
        return pd.Series([None if _is_missing(v) else str(v) for v in values], dtype=_STR_DTYPE)
    # list columns stay lists (parquet list and list<struct> types), never JSON text
    return pd.Series([None if _is_missing(v) else list(v) for v in values], dtype=object)


def _infer(values: list[Any]) -> str:
    """The dtype of a prefixed column (a method parameter, a runtime setting): one for all its values."""
    present = [v for v in values if not _is_missing(v)]
    if present and all(isinstance(v, bool) for v in present):
        return "bool"
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return "int"
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return "float"
    if present and all(isinstance(v, list) for v in present):
        return "list[float]" if all(isinstance(x, (int, float)) for v in present for x in v) else "str"
    return "str"


def build_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Typed, deterministically ordered table from flat rows (``row.flatten``'s output)."""
    extras = sorted({key for row in rows for key in row} - set(RESULT_COLUMNS))
    columns = RESULT_COLUMNS + extras
    data = {name: _typed_column(name, [row.get(name) for row in rows]) for name in columns}
    table = pd.DataFrame(data, columns=columns)
    if len(table):
        table = table.sort_values(SORT_KEYS, na_position="last", kind="mergesort")
    return table.reset_index(drop=True)


def _metadata(table: pd.DataFrame, suite_dir: Path) -> dict[str, Any]:
    """What the parquet file says about itself: schema version and the suite's provenance."""
    def distinct(column: str) -> list[str]:
        return sorted({str(v) for v in table[column].dropna().unique()}) if column in table else []

    return {"schema_version": record_mod.SCHEMA_VERSION, "suite": suite_dir.name,
            "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "runs": len(table), "ok": int((table["status"] == "ok").sum()) if len(table) else 0,
            **{k: distinct(k) for k in ("git_sha", "torch_version", "timm_version", "python_version", "dataset",
                                        "throughput_device_key")}}


def write_parquet(table: pd.DataFrame, path: Path, metadata: Mapping[str, Any]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = pa.Table.from_pandas(table, preserve_index=False)
    merged = {**(arrow.schema.metadata or {}), METADATA_KEY: json.dumps(metadata, sort_keys=True).encode()}
    atomic_write(path, lambda tmp: pq.write_table(arrow.replace_schema_metadata(merged), tmp))


def table_metadata(path: Path) -> dict[str, Any]:
    """The tokenbench metadata of a table.parquet ({} for a file written before it had any)."""
    import pyarrow.parquet as pq

    with open_artifact(path) as f:
        raw = (pq.read_schema(f).metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def _csv_cell(value: Any) -> Any:
    """CSV is text: list columns are written as JSON there (the parquet keeps them typed)."""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, sort_keys=True, default=str)
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return json.dumps(value.tolist(), sort_keys=True, default=str)
    return value


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
            for key, value in flatten(by_id.get(row["run_id"], {}), row["run_id"]).items():
                if row.get(key) is None:
                    row[key] = value
        have = {row["run_id"] for row in rows}
        rows += [{**flatten(e), "status": "missing", "error": MISSING_ERROR}
                 for e in expected if e["run_id"] not in have]
    for row in rows:
        _fill_method_columns(row)
    table = build_table(rows)
    write_parquet(table, suite_dir / TABLE_PARQUET, _metadata(table, suite_dir))
    nested = [c for c in table.columns if table[c].dtype == object and table[c].map(
        lambda v: isinstance(v, (list, tuple, dict))).any()]
    text = table.assign(**{c: table[c].map(_csv_cell) for c in nested})
    atomic_write(suite_dir / TABLE_CSV, lambda tmp: text.to_csv(tmp, index=False))
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
    version = table_metadata(table_path).get("schema_version", 1)
    if version != record_mod.SCHEMA_VERSION:
        raise UsageError(f"{table_path} was collected with run-record schema {version}, this harness reads schema "
                         f"{record_mod.SCHEMA_VERSION}: run `bench collect` for that suite again")
    with open_artifact(table_path) as f:
        return pd.read_parquet(f)
