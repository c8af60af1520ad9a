"""collect -> table -> report on a small fake suite (no torch, no training)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from bench.errors import UsageError
from bench.report import build_report, summarize
from bench.results import RESULT_COLUMNS, collect, load_results

SUITE = "smoke"
FAIL_MSG = "RunFailed: non-finite loss at epoch 3"
# (method, keep_ratio) -> (top1, top5, gmacs, throughput, mean_tokens)
GRID = {
    ("dense", 1.0): (79.85, 94.97, 4.608, 1510.0, 197.0),
    ("static", 0.7): (78.91, 94.52, 3.215, 2105.0, 137.9),
    ("static", 0.5): (77.12, 93.60, 2.304, 2880.0, 98.5),
    ("random", 0.7): (77.48, 93.81, 3.215, 2098.0, 137.9),
    ("random", 0.5): (74.03, 91.95, 2.304, 2871.0, 98.5),
}


def _record(method: str, ratio: float, seed: int, **over: Any) -> dict[str, Any]:
    top1, top5, gmacs, thr, tokens = GRID.get((method, ratio), (None,) * 5)
    rec = {
        "suite": SUITE,
        "run_id": f"{method}-deit_small-k{ratio}-s{seed}",
        "method": method,
        "backbone": "deit_small_patch16_224",
        "keep_ratio": ratio,
        "seed": seed,
        "dataset": "imagenette",
        "method_params": {"schedule": "uniform", "layers": [3, 6, 9]} if method != "dense" else {},
        "top1": None if top1 is None else top1 + 0.1 * seed,
        "top5": top5,
        "gmacs_fvcore_1mac_eq_1flop": gmacs,
        "params_m": 22.05,
        "mean_tokens": tokens,
        "tokens_per_block": None if tokens is None else [197.0] * 3 + [tokens] * 9,
        "throughput_img_s": None if thr is None else thr + seed,
        "throughput_img_s_iqr": None if thr is None else 12.5,
        "throughput_batch_size": 256,
        "throughput_device": "NVIDIA H100",
        "precision": "fp32",
        "cpu_threads": 8,
        "peak_mem_mb": 2048.0,
        "train_epochs": 10,
        "train_wall_s": 600.0,
        "eval_wall_s": 30.0,
        "batch_size": 128,
        "device": "cuda",
        "git_sha": "0123456789abcdef",
        "git_dirty": False,
        "torch_version": "2.4.0",
        "timm_version": "1.0.9",
        "python_version": "3.11.9",
        "hostname": "node1",
        "status": "ok",
        "error": None,
        "created_at": f"2024-05-0{seed + 1}T10:00:00+00:00",
    }
    rec.update(over)
    return rec


def _write(suite_dir: Path, rec: dict[str, Any], name: str = "run.json") -> None:
    run_dir = suite_dir / "runs" / rec["run_id"]
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / name).write_text(json.dumps(rec))


def _failed(method: str, ratio: float, seed: int, error: str, **over: Any) -> dict[str, Any]:
    metrics = {
        k: None
        for k in (
            "top1",
            "top5",
            "gmacs_fvcore_1mac_eq_1flop",
            "params_m",
            "mean_tokens",
            "tokens_per_block",
            "throughput_img_s",
            "throughput_img_s_iqr",
        )
    }
    return _record(method, ratio, seed, status="failed", error=error, **{**metrics, **over})


DEVICE_KEY = "NVIDIA H100 80GB HBM3 | torch 2.4.0 | CUDA 12.4 | driver 12040"


def _sweep_row(img_s: float, speedup: float, unreliable: bool = False) -> dict[str, Any]:
    return {
        "batch_size": 256,
        "batch_size_requested": 256,
        "iters_per_repeat": 20,
        "repeats": 7,
        "img_per_s_median": img_s,
        "img_per_s_iqr": 12.5,
        "img_per_s_rel_iqr": 12.5 / img_s,
        "img_per_s_cv": 0.004,
        "img_per_s_ci_low": img_s - 5,
        "img_per_s_ci_high": img_s + 5,
        "img_per_s_unreliable": False,
        "latency_ms_median": 256 / img_s * 1e3,
        "peak_mem_mb": 2048.0,
        "speedup": speedup,
        "speedup_ci_low": speedup * 0.99,
        "speedup_ci_high": speedup * 1.01,
        "speedup_ci_level": 0.984,
        "speedup_rel_iqr": 0.2 if unreliable else 0.004,
        "speedup_cv": 0.004,
        "speedup_unreliable": unreliable,
        "attempts": 3 if unreliable else 1,
        "ratios": [speedup] * 7,
    }


def write_timing(
    suite: Path,
    records: list[dict[str, Any]],
    name: str = "deit_small_patch16_224",
    device_key: str = DEVICE_KEY,
    unreliable: tuple[str, ...] = (),
) -> None:
    """timing/<name>.json as the timing step writes it: each run paired with the dense run of its seed."""
    ok = [r for r in records if r.get("status") == "ok" and r.get("throughput_img_s")]
    dense = {r["seed"]: r["throughput_img_s"] for r in ok if r["method"] == "dense"}
    runs = {
        r["run_id"]: {
            "run_id": r["run_id"],
            "run_record_created_at": r["created_at"],
            "fused_attention": "on",
            "sweep": [
                _sweep_row(r["throughput_img_s"], r["throughput_img_s"] / dense[r["seed"]], r["run_id"] in unreliable)
            ],
        }
        for r in ok
    }
    timing = {
        "status": "ok",
        "device_key": device_key,
        "device_fingerprint": {"device_name": device_key.split(" |")[0]},
        "reference_run_id": "dense-deit_small-k1.0-s0",
        "runs": runs,
        "created_at": "2024-05-03T10:00:00+00:00",
        "protocol": {"min_time_s": 0.25, "warmup": 3, "noise_threshold": 0.1, "max_attempts": 3},
        "runtime": {"threads": 8, "channels_last": False, "compile": False, "precision": "fp32"},
    }
    (suite / "timing").mkdir(parents=True, exist_ok=True)
    (suite / "timing" / f"{name}.json").write_text(json.dumps(timing))


@pytest.fixture()
def suite_dir(tmp_path: Path) -> Path:
    suite = tmp_path / "results" / SUITE
    records = []
    for method, ratio in GRID:
        for seed in (0, 1):
            extra = {"method_train_metrics": {"router_temperature": 0.5}} if method == "static" and ratio == 0.5 else {}
            records.append(_record(method, ratio, seed, **extra))
            _write(suite, records[-1])
    write_timing(suite, records, unreliable=("random-deit_small-k0.7-s1",))
    # A rerun that succeeded after an earlier failure: the newer run.json must win.
    _write(suite, _failed("random", 0.5, 1, "CUDA OOM", created_at="2024-04-01T00:00:00Z"), "failure.json")
    _write(suite, _failed("static", 0.3, 0, f"Traceback (most recent call last):\n  ...\n{FAIL_MSG}"), "failure.json")
    corrupt = suite / "runs" / "corrupt-run"
    corrupt.mkdir(parents=True)
    (corrupt / "run.json").write_text('{"suite": "smoke", "top1": ')
    (suite / "runs" / "in-progress").mkdir()  # no record yet: skipped, not a row
    return suite


def test_collect_table(suite_dir: Path) -> None:
    table = collect(suite_dir)
    assert len(table) == 12  # 10 ok + 1 failed + 1 corrupt
    assert list(table.columns[: len(RESULT_COLUMNS)]) == RESULT_COLUMNS
    assert table["train_metric_router_temperature"].dtype == "float64"  # open mappings become typed columns
    assert (table["status"] == "ok").sum() == 10
    for col in ("top1", "keep_ratio", "gmacs_fvcore_1mac_eq_1flop", "throughput_img_s"):
        assert table[col].dtype == "float64"
    assert table["seed"].dtype == "Int64"
    assert table["git_dirty"].dtype == "boolean"
    assert pd.api.types.is_string_dtype(table["method"])
    assert list(table.loc[table["method"] == "static", "param_layers"].iloc[0]) == [3, 6, 9]
    assert list(table["tokens_per_block"].dropna().iloc[0])[:1] == [197.0]  # a list column, not JSON text
    assert table.loc[table["method"] == "dense", "role_reference"].all()
    assert not table.loc[table["method"] == "static", "role_reference"].any()
    assert table.loc[table["method"] == "static", "role_control"].all()

    keyed = table.dropna(subset=["method"])
    assert keyed.equals(keyed.sort_values(["method", "backbone", "keep_ratio", "seed"], kind="mergesort"))
    assert pd.isna(table["method"].iloc[-1])  # the corrupt row sorts last

    corrupt = table[table["run_id"] == "corrupt-run"].iloc[0]
    assert corrupt["status"] == "failed" and "JSONDecodeError" in corrupt["error"]
    rerun = table[(table["method"] == "random") & (table["keep_ratio"] == 0.5) & (table["seed"] == 1)].iloc[0]
    assert rerun["status"] == "ok"

    assert (suite_dir / "table.csv").is_file()
    pd.testing.assert_frame_equal(pd.read_parquet(suite_dir / "table.parquet"), table)
    assert not list(suite_dir.glob(".*.tmp"))  # atomic writes left no temp files


def test_parquet_carries_schema_version_and_provenance(suite_dir: Path) -> None:
    from bench.results.collect import table_metadata
    from bench.results.record import SCHEMA_VERSION

    collect(suite_dir)
    meta = table_metadata(suite_dir / "table.parquet")
    assert meta["schema_version"] == SCHEMA_VERSION and meta["suite"] == SUITE and meta["runs"] == 12
    assert meta["torch_version"] and meta["git_sha"]


def test_table_of_another_schema_version_is_refused(suite_dir: Path) -> None:
    from bench.results.collect import write_parquet

    table = collect(suite_dir)
    write_parquet(table, suite_dir / "table.parquet", {"schema_version": 1})
    with pytest.raises(UsageError, match="schema 1.*run `bench collect`"):
        load_results(suite_dir)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"router_temperature": 0.5}, "unknown column 'router_temperature'"),
        ({"top1": "high"}, "column 'top1' must be float"),
        ({"seed": 1.5}, "column 'seed' must be int"),
        ({"tokens_per_block": "197,197"}, "column 'tokens_per_block' must be list"),
    ],
)
def test_a_record_off_the_schema_fails_naming_the_run(tmp_path: Path, bad, message) -> None:
    suite = tmp_path / SUITE
    _write(suite, {**_record("dense", 1.0, 0), **bad})
    with pytest.raises(UsageError, match=rf"run dense-deit_small-k1.0-s0: {message}"):
        collect(suite)


def test_newer_failure_wins(tmp_path: Path) -> None:
    suite = tmp_path / SUITE
    _write(suite, _record("dense", 1.0, 0))
    _write(suite, _failed("dense", 1.0, 0, "eval crashed", created_at="2024-06-01T00:00:00Z"), "failure.json")
    row = collect(suite).iloc[0]
    assert row["status"] == "failed" and row["error"] == "eval crashed"


def test_empty_suite(tmp_path: Path) -> None:
    suite = tmp_path / "empty"
    suite.mkdir()
    table = collect(suite)
    assert table.empty and list(table.columns) == RESULT_COLUMNS
    assert len(load_results(suite)) == 0


def test_load_results(suite_dir: Path) -> None:
    table = collect(suite_dir)
    results_root = suite_dir.parent
    for arg in (SUITE, suite_dir, suite_dir / "table.parquet", str(suite_dir)):
        pd.testing.assert_frame_equal(load_results(arg, results_root=results_root), table)
    with pytest.raises(UsageError, match="bench collect"):
        load_results("nope", results_root=results_root)
    with pytest.raises(UsageError, match="missing.parquet"):
        load_results(results_root / "missing.parquet")


def test_summary_numbers(suite_dir: Path) -> None:
    summary = summarize(collect(suite_dir))
    assert summary["method"].iloc[0] == "dense"  # dense first: the reference row
    static = summary[(summary["method"] == "static") & (summary["keep_ratio"] == 0.5)].iloc[0]
    assert static["n_ok"] == 2
    assert static["top1_mean"] == pytest.approx(77.17)
    assert static["top1_std"] == pytest.approx(0.0707107, rel=1e-4)
    assert static["speedup"] == pytest.approx((2880 / 1510 + 2881 / 1511) / 2)  # mean over seeds of paired ratios
    # two seeds: their range, no interval claimed
    assert static["speedup_interval"] == "range" and static["speedup_ci_n"] == 2 and pd.isna(static["speedup_ci_level"])
    assert static["speedup_ci_low"] == pytest.approx(min(2880 / 1510, 2881 / 1511))
    assert static["speedup_ci_high"] == pytest.approx(max(2880 / 1510, 2881 / 1511))
    assert static["speedup_unreliable"] is False and static["n_timed"] == 2 and static["top1_n"] == 2
    noisy = summary[(summary["method"] == "random") & (summary["keep_ratio"] == 0.7)].iloc[0]
    assert noisy["speedup_unreliable"] is True  # one seed's timing stayed noisy
    assert static["flops_reduction_pct"] == pytest.approx(50.0)
    failed_cfg = summary[(summary["method"] == "static") & (summary["keep_ratio"] == 0.3)].iloc[0]
    assert failed_cfg["n_ok"] == 0 and failed_cfg["n_runs"] == 1


def test_report(suite_dir: Path, tmp_path: Path) -> None:
    paths = build_report(suite_dir)  # no table yet: collects first
    assert (suite_dir / "table.parquet").is_file()
    assert {
        "report.md",
        "index.md",
        "results.tex",
        "results.csv",
        "tradeoff_top1_vs_gmacs.png",
        "tradeoff_top1_vs_gmacs.pdf",
        "tradeoff_top1_vs_throughput.png",
        "tradeoff_top1_vs_throughput.pdf",
        "matched_budget.png",
        "ablation.png",
    } <= set(paths)
    assert all(p.parent == suite_dir / "report" and p.stat().st_size > 0 for p in paths.values())
    index = paths["index.md"].read_text()
    assert all(f"]({name})" in index for name in paths if name != "index.md")
    assert "Provenance" in index and FAIL_MSG in index
    tex = paths["results.tex"].read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex and "77.17 $\\pm$ 0.07" in tex
    assert tex.count(" \\\\\n") == 2 + 1 + 5 + 1  # header and units, the backbone, five configurations, the failed one
    csv = pd.read_csv(paths["results.csv"])
    assert "gmacs_fvcore_1mac_eq_1flop" in csv and len(csv) == 6

    md = paths["report.md"].read_text()
    assert "GMACs (fvcore, 1 MAC = 1 flop)" in md
    assert FAIL_MSG in md and "JSONDecodeError" in md
    assert "Failed or missing runs" in md
    static_row = next(ln for ln in md.splitlines() if "| static | 0.5 |" in ln)
    assert "1.91 (n = 2, range [1.91, 1.91])" in static_row and "50.0 %" in static_row
    assert "77.17 ± 0.07 (n = 2)" in static_row and "| 2/2 | 2/2 |" in static_row  # seeds ok, seeds timed
    assert "†" in next(ln for ln in md.splitlines() if "| random | 0.7 |" in ln)
    assert "†" not in static_row
    assert "What was timed" in md and DEVICE_KEY in md and "Speed-up by batch size" in md
    assert "| deit_small_patch16_224 | static | 0.5 | 256 | 1.91× (n = 2 seeds, range [1.91, 1.91]) |" in md
    assert "| deit_small_patch16_224 | dense | 1 | 256 | 1.00× (reference) |" in md
    assert "`0123456789abcdef` (clean)" in md and "`2.4.0`" in md
    assert "1 run(s) with no record" in md  # seed 1 of static 0.3, inferred from the grid of seeds present

    again = build_report(suite_dir, out_dir=tmp_path / "again")
    for name, path in paths.items():
        assert path.read_bytes() == again[name].read_bytes(), f"{name} is not byte-stable"


def test_timing_of_an_older_evaluation_is_not_used(tmp_path: Path) -> None:
    suite = tmp_path / SUITE
    dense, static = _record("dense", 1.0, 0), _record("static", 0.5, 0)
    write_timing(suite, [dense, static])
    _write(suite, dense)
    _write(suite, {**static, "created_at": "2024-07-01T00:00:00+00:00"})  # evaluated again after the timing
    table = collect(suite).set_index("method")
    assert table.loc["dense", "speedup_vs_dense"] == 1.0 and table.loc["dense", "throughput_img_s"] == 1510.0
    assert pd.isna(table.loc["static", "throughput_img_s"]) and pd.isna(table.loc["static", "speedup_vs_dense"])


def test_run_records_never_bring_their_own_throughput(tmp_path: Path) -> None:
    suite = tmp_path / SUITE
    _write(suite, _record("dense", 1.0, 0))  # an older harness's record, timed in its own evaluate job
    row = collect(suite).iloc[0]
    assert pd.isna(row["throughput_img_s"]) and pd.isna(row["throughput_device"])


def test_speedups_timed_on_different_devices_are_refused(tmp_path: Path) -> None:
    suite = tmp_path / SUITE
    dense, static = _record("dense", 1.0, 0), _record("static", 0.5, 0)
    for rec in (dense, static):
        _write(suite, rec)
    write_timing(suite, [dense, static])
    other = {**static, "throughput_img_s": 3000.0}
    write_timing(suite, [dense, other], name="zz_other_job", device_key="Tesla V100-SXM2-32GB | torch 2.4.0")
    for name, drop in (("deit_small_patch16_224", static), ("zz_other_job", dense)):  # dense from one job, static
        path = suite / "timing" / f"{name}.json"  # from another
        path.write_text(path.read_text().replace(drop["run_id"], "gone"))
    with pytest.raises(UsageError, match="different devices") as err:
        summarize(collect(suite))
    assert "NVIDIA H100" in str(err.value) and "Tesla V100" in str(err.value) and "\n" not in str(err.value)


def test_report_only_failed_runs(tmp_path: Path) -> None:
    suite = tmp_path / "broken"
    _write(suite, _failed("dense", 1.0, 0, "dataset download failed"), "failure.json")
    _write(suite, _failed("static", 0.5, 0, "RuntimeError: shape | mismatch"), "failure.json")
    paths = build_report(suite)
    md = paths["report.md"].read_text()
    assert "dataset download failed" in md and "shape \\| mismatch" in md
    assert "2 failed or missing run(s)" in md
    assert paths["tradeoff_top1_vs_gmacs.png"].stat().st_size > 0


def test_missing_suite(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        build_report(tmp_path / "nope")
    with pytest.raises(UsageError):
        collect(tmp_path / "nope")


def test_expected_grid_adds_missing_rows_and_drops_stale_runs(tmp_path):
    suite = tmp_path / "smoke"
    dense, static = _record("dense", 1.0, 0), _record("static", 0.5, 0)
    _write(suite, dense)
    _write(suite, static)
    expected = [
        {"run_id": dense["run_id"], "method": "dense", "backbone": dense["backbone"], "keep_ratio": 1.0, "seed": 0},
        {"run_id": "random-x", "method": "random", "backbone": dense["backbone"], "keep_ratio": 0.5, "seed": 0},
    ]
    table = collect(suite, expected)
    assert sorted(table["status"]) == ["missing", "ok"]
    assert "static" not in set(table["method"])  # a run no longer in the suite is not reported
