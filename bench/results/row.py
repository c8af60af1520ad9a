"""A run's record as one flat, checked row of the columns :mod:`bench.results.record` declares.

The runner and the timing step check a record before they write it; ``collect`` flattens each run's record
into the table's row (prefixed mappings spread into columns, derived columns added) and names the run and the
column of anything off the schema. Plain Python, like the declarations it reads.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from bench.results import record as schema
from bench.results.record import Column, Prefix


class RecordError(ValueError):
    """A record that does not fit the schema; the message names the run and the column."""


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _fits(dtype: str, value: Any) -> bool:
    if _missing(value):
        return True
    if dtype == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if dtype == "int":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer()
        )
    if dtype == "bool":
        return isinstance(value, bool)
    if dtype == "str":
        return isinstance(value, str)
    if dtype.startswith("list["):
        if not isinstance(value, (list, tuple)):
            return False
        inner = dtype[5:-1]
        return all(isinstance(v, Mapping) if inner == "struct" else _fits(inner, v) for v in value)
    raise AssertionError(dtype)


def _flat_value(value: Any) -> Any:
    """A value of a prefixed column: scalars as they are, lists of scalars as lists, anything else as text."""
    if isinstance(value, (list, tuple)) and all(not isinstance(v, (list, tuple, Mapping)) for v in value):
        return list(value)
    if isinstance(value, (Mapping, list, tuple)):
        return repr(value)
    return value


def _spread(prefix: str, mapping: Mapping[str, Any]) -> dict[str, Any]:
    """A mapping as prefixed columns; nested mappings spread further (``data_index_images_train``)."""
    out: dict[str, Any] = {}
    for k, v in mapping.items():
        if isinstance(v, Mapping):
            out.update(_spread(f"{prefix}{k}_", v))
        else:
            out[f"{prefix}{k}"] = _flat_value(v)
    return out


def flatten(record: Mapping[str, Any], run_id: str | None = None) -> dict[str, Any]:
    """A record as one flat row of declared columns: checked, prefixed mappings spread, derived columns added.

    Raises RecordError naming the run and the column for an unknown key or a value of the wrong type."""
    who = run_id or record.get("run_id") or "?"
    sources = {p.source: p for p in schema.PREFIXES}
    row: dict[str, Any] = {}
    for key, value in record.items():
        if key in schema.RETIRED:
            continue
        if key in sources:
            if _missing(value):
                continue
            if not isinstance(value, Mapping):
                raise RecordError(f"run {who}: column {key!r} must be a mapping, got {type(value).__name__}")
            row.update(_spread(sources[key].prefix, value))
            continue
        column = schema.BY_NAME.get(key) or _prefixed(key)
        if column is None:
            raise RecordError(f"run {who}: unknown column {key!r} (declare it in bench/results/record.py)")
        if isinstance(column, Column) and not _fits(column.dtype, value):
            raise RecordError(
                f"run {who}: column {key!r} must be {column.dtype}, got {type(value).__name__} {value!r:.80}"
            )
        row[key] = value
    for column in schema.COLUMNS:
        if column.derived is not None and _missing(row.get(column.name)):
            row[column.name] = column.derived(row)
    return row


def check(record: Mapping[str, Any]) -> dict[str, Any]:
    """Refuse a record off the schema before it is written (the runner and the timing step call this)."""
    flatten(record)
    return dict(record)


def _prefixed(key: str) -> Prefix | None:
    return next((p for p in schema.PREFIXES if key.startswith(p.prefix)), None)


def schema_rows() -> list[dict[str, str]]:
    """Every column as documentation rows (name, dtype, unit, aggregation, doc): ``bench ls columns`` prints them."""
    rows = [
        {"column": c.name, "dtype": c.dtype, "unit": c.unit, "aggregation": c.agg or "", "doc": c.doc} for c in schema.COLUMNS
    ]
    rows += [
        {
            "column": f"{p.prefix}<key>",
            "dtype": "inferred",
            "unit": "",
            "aggregation": "",
            "doc": f"{p.doc} (from the record's {p.source!r} mapping)",
        }
        for p in schema.PREFIXES
    ]
    return rows
