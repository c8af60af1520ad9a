"""The run record's schema: one declaration per column drives the checks, the summary and the table."""

from __future__ import annotations

import statistics

import pytest

from bench.report.summary import summarize
from bench.report.table import table_rows
from bench.results import record, row
from bench.results.collect import build_table


def _rows(skipped: str = "") -> list[dict]:
    rows = []
    for method, roles, gmacs in (("dense", "reference", 4.0), ("static", "control", 2.0)):
        for seed in (0, 1):
            rows.append(
                row.flatten(
                    {
                        "suite": "s",
                        "run_id": f"{method}-{seed}",
                        "method": method,
                        "method_name": method,
                        "backbone": "vit",
                        "keep_ratio": 1.0 if method == "dense" else 0.5,
                        "seed": seed,
                        "status": "ok",
                        "top1": 70.0 + seed,
                        "gmacs_fvcore_1mac_eq_1flop": gmacs,
                        "flops_skipped_ops": skipped,
                        "method_params": {"num_stages": 3, "stage_blocks": [3, 6, 9]} if method == "static" else {},
                        **{record.role_column(r): r == roles for r in record.ROLES},
                    }
                )
            )
    return rows


def test_skipped_operators_reach_the_table_only_when_there_are_some():
    header, _, _ = table_rows(summarize(build_table(_rows())))
    assert "Ops fvcore skipped" not in header
    header, rows, _ = table_rows(summarize(build_table(_rows("aten::gelu:12"))))
    col = header.index("Ops fvcore skipped")
    assert {r[col] for r in rows} == {"aten::gelu:12"}


def test_summary_aggregates_as_declared():
    s = summarize(build_table(_rows())).set_index("method")
    assert s.loc["static", "top1_mean"] == 70.5 and s.loc["static", "top1_std"] == pytest.approx(0.7071, abs=1e-4)
    assert s.loc["static", "flops_implied_speedup"] == 2.0  # relative to the row with role_reference
    assert s.loc["dense", "role_reference"] and not s.loc["static", "role_reference"]


def test_open_mappings_become_typed_columns():
    table = build_table(_rows())
    assert table["param_num_stages"].dtype == "Int64"
    assert list(table.loc[table["method"] == "static", "param_stage_blocks"].iloc[0]) == [3, 6, 9]


def test_a_derived_column_is_one_declaration(monkeypatch):
    """A column computed from the record: declared once, it is in the record, the summary and the table."""
    extra = record.Column(
        "gmacs_per_top1",
        "float",
        "GMACs per top-1 point",
        unit="GMACs/%",
        agg="mean",
        label="GMACs per point",
        cell="num3",
        derived=lambda r: r["gmacs_fvcore_1mac_eq_1flop"] / r["top1"],
    )
    import bench.report.summary as summary_mod

    monkeypatch.setattr(record, "COLUMNS", record.COLUMNS + (extra,))
    monkeypatch.setattr(record, "BY_NAME", {**record.BY_NAME, extra.name: extra})
    monkeypatch.setattr(summary_mod, "_AGGREGATED", [c for c in record.COLUMNS if c.agg])
    monkeypatch.setattr(summary_mod, "SUMMARY_COLUMNS", summary_mod._summary_names())
    table = build_table(_rows())
    assert table.loc[0, "gmacs_per_top1"] == pytest.approx(4.0 / 70.0)
    header, rows, _ = table_rows(summarize(table))
    assert "GMACs per point" in header


def test_every_column_is_documented_with_a_unit_where_it_has_one():
    docs = {r["column"]: r for r in row.schema_rows()}
    assert docs["gmacs_fvcore_1mac_eq_1flop"]["unit"] == record.GMACS_UNIT
    assert "1 multiply-add = 1 flop" in record.GMACS_UNIT
    assert all(r["doc"] for r in docs.values())
    assert {"top1", "speedup_vs_dense", "throughput_img_s"} <= {c for c, r in docs.items() if r["unit"]}


def test_speedups_over_three_seeds_aggregate_as_the_mean_with_a_t_interval():
    """Seeds' paired speed-ups: the mean and a Student-t 95 % interval over the seeds (n stated); a noisy seed's
    dagger carries to the row."""
    rows = []
    for seed, (speedup, low, high) in enumerate(((1.0, 0.9, 1.1), (1.1, 1.0, 1.2), (2.0, 1.8, 2.2))):
        rows.append(
            row.flatten(
                {
                    "suite": "s",
                    "run_id": f"static-{seed}",
                    "method": "static",
                    "backbone": "vit",
                    "keep_ratio": 0.5,
                    "seed": seed,
                    "status": "ok",
                    "top1": 70.0,
                    "speedup_vs_dense": speedup,
                    "speedup_ci_low": low,
                    "speedup_ci_high": high,
                    "throughput_device_key": "cpu",
                    "speedup_unreliable": seed == 2,
                }
            )
        )
    s = summarize(build_table(rows)).iloc[0]
    from scipy.stats import t

    half = t.ppf(0.975, 2) * statistics.stdev([1.0, 1.1, 2.0]) / 3**0.5
    assert s["speedup"] == pytest.approx(4.1 / 3) and s["speedup_interval"] == "t95" and s["speedup_ci_n"] == 3
    assert (s["speedup_ci_low"], s["speedup_ci_high"]) == pytest.approx((4.1 / 3 - half, 4.1 / 3 + half))
    assert s["speedup_unreliable"] is True
