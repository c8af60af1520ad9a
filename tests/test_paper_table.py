"""No silent holes and a paper-ready table: a failed run never blocks the timing of its backbone, a row says how
many of its seeds were timed, a run evaluated again since its timing is untimed (never shown with another seed's
figure), the reference's speed-up is exactly 1, and results.tex has the paper's columns and fits one column."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from test_collect_report import DEVICE_KEY, SUITE, _record, _write, write_timing

from bench.report import summarize
from bench.report.table import PAPER_COLUMNS, holes_section, render_latex, table_rows
from bench.results import collect

SUITE_YAML = """
name: holes
data: {source: embedded, name: canvas-digits, options: {train_placements: 1, val_placements: 1}}
backbones: [tb_vit_pico_patch4_32]
methods: [dense, static, random]
keep_ratios: [0.5]
seeds: [0]
pretrain: {init: scratch, recipe: {epochs: 1, batch_size: 64}}
finetune: none
evaluate:
  batch_size: 64
  flops_images: 2
  throughput: {batch_sizes: [1, 4], repeats: 3, min_time_s: 0.0, warmup: 1, precision: fp32}
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A suite whose backbone is pretrained, dense and static evaluated, and random failed (a diverging fine-tune,
    recorded by the runner's own failure writer)."""
    from bench import runner
    from bench.config import load_suite

    root = tmp_path_factory.mktemp("holes")
    path = root / "holes.yaml"
    path.write_text(SUITE_YAML)
    suite = load_suite(path)
    results = root / "results"
    runner.pretrain(suite, "tb_vit_pico_patch4_32", root=results, device="cpu")
    runs = {r.method: r for r in suite.runs}
    for name in ("dense", "static"):
        runner.evaluate_run(suite, runs[name], root=results, device="cpu")
    diverged = FloatingPointError("non-finite loss (nan) at epoch 0 step 1: lr 1e6 diverged")
    runner.record_failure(suite, runs["random"], "finetune", diverged, root=results)
    return suite, results, runs


def test_a_failed_run_never_blocks_the_timing_of_the_others(finished):
    from bench.timing import time_backbone

    suite, results, runs = finished
    timing = time_backbone(suite, "tb_vit_pico_patch4_32", root=results, device="cpu")
    assert set(timing["runs"]) == {runs["dense"].run_id, runs["static"].run_id}
    why = timing["not_timed"][runs["random"].run_id]
    assert why.startswith("failed (finetune): FloatingPointError: non-finite loss")
    for entry in timing["runs"].values():  # batch-1 latency and the memory of one forward at the headline batch
        assert entry["latency_bs1_ms"] > 0 and entry["latency_bs1_ms_iqr"] >= 0 and entry["latency_bs1_repeats"] == 3
        assert entry["peak_inference_mem_kind"] == "cpu_rss_growth" and entry["peak_inference_mem_batch"] == 4
        assert entry["peak_inference_mem_mib"] >= 0

    table = collect(results / "holes").set_index("method")
    assert table.loc["static", "timing_status"] == "timed" and table.loc["static", "speedup_vs_dense"] > 0
    assert table.loc["dense", "latency_bs1_ms"] > 0 and table.loc["static", "peak_inference_mem_batch"] == 4
    assert table.loc["random", "status"] == "failed" and pd.isna(table.loc["random", "speedup_vs_dense"])
    holes = holes_section(table.reset_index())
    assert runs["random"].run_id in holes and "non-finite loss" in holes and "Every evaluated run was timed." in holes
    summary = summarize(table.reset_index())
    header, rows, _ = table_rows(summary)
    assert "RSS growth in one forward (MiB, CPU)" in header  # CPU memory is named for what it is
    static = next(r for r in rows if r[1] == "static")
    assert static[header.index("Seeds timed")] == "1/1"
    assert static[header.index("Latency bs 1 (ms), median (IQR)")] != "—"


def _two_seeds(tmp_path: Path, reevaluated: bool) -> Path:
    suite = tmp_path / SUITE
    records = [_record(m, k, s) for m, k in (("dense", 1.0), ("static", 0.5)) for s in (0, 1)]
    write_timing(suite, records)
    for rec in records:
        if reevaluated and rec["method"] == "static" and rec["seed"] == 1:
            rec = {**rec, "top1": 70.0, "created_at": "2024-07-01T00:00:00+00:00"}  # evaluated again since
        _write(suite, rec)
    return suite


def test_a_run_evaluated_again_is_untimed_and_its_row_says_1_of_2(tmp_path):
    table = collect(_two_seeds(tmp_path, reevaluated=True))
    again = table[(table["method"] == "static") & (table["seed"] == 1)].iloc[0]
    assert pd.isna(again["speedup_vs_dense"]) and pd.isna(again["throughput_img_s"])  # never seed 0's figure
    assert again["timing_status"].startswith("untimed: evaluated again (2024-07-01")
    summary = summarize(table)
    header, rows, _ = table_rows(summary)
    static = next(r for r in rows if r[1] == "static")
    assert static[header.index("Seeds ok")] == "2/2" and static[header.index("Seeds timed")] == "1/2"
    speed = static[header.index("Speed-up vs reference (paired; interval, n)")]
    assert speed == "1.91 [1.89, 1.93] (7 rep.) (1/2 seeds)"  # one seed's CI over its repeats, and says so
    assert "(1/2 seeds)" in render_latex(summary, "c")
    holes = holes_section(table)
    assert "1 evaluated run(s) without a timing" in holes and again["run_id"] in holes and "evaluated again" in holes

    fresh = summarize(collect(_two_seeds(tmp_path / "b", reevaluated=False)))
    header, rows, _ = table_rows(fresh)
    static = next(r for r in rows if r[1] == "static")
    speed = static[header.index("Speed-up vs reference (paired; interval, n)")]
    assert static[header.index("Seeds timed")] == "2/2" and speed == "1.91 (n = 2, range [1.91, 1.91])"


def test_the_reference_speedup_is_exactly_one_without_interval_or_dagger(tmp_path):
    suite = tmp_path / SUITE
    records = [_record("dense", 1.0, s, throughput_img_s=1500.0 + 40 * s) for s in (0, 1, 2)]
    records += [_record("static", 0.5, s) for s in (0, 1, 2)]
    write_timing(suite, records, unreliable=tuple(r["run_id"] for r in records))
    timing = json.loads((suite / "timing" / "deit_small_patch16_224.json").read_text())
    for entry in timing["runs"].values():  # dense seeds 1 and 2 timed against seed 0: ratios off 1
        if entry["run_id"].startswith("dense") and not entry["run_id"].endswith("s0"):
            entry["sweep"][0]["speedup"] = 1.05
    (suite / "timing" / "deit_small_patch16_224.json").write_text(json.dumps(timing))
    for rec in records:
        rec["role_reference"] = rec["method"] == "dense"
        _write(suite, rec)
    summary = summarize(collect(suite)).set_index("method")
    assert summary.loc["dense", "speedup"] == 1.0
    assert pd.isna(summary.loc["dense", "speedup_ci_low"]) and pd.isna(summary.loc["dense", "speedup_ci_high"])
    assert summary.loc["dense", "speedup_unreliable"] is None
    assert summary.loc["static", "speedup_interval"] == "t95" and summary.loc["static", "speedup_ci_n"] == 3
    header, rows, _ = table_rows(summary.reset_index())
    col = header.index("Speed-up vs reference (paired; interval, n)")
    assert next(r for r in rows if r[1] == "dense")[col] == "1.00"
    assert next(r for r in rows if r[1] == "static")[col].endswith("(n = 3) †")
    dense_tex = next(ln for ln in render_latex(summary.reset_index(), "c").splitlines() if ln.startswith("dense"))
    assert dense_tex.split(" & ")[5] == "1.00"
    assert DEVICE_KEY  # the fixture's device key is the one every run shares (speed-ups compared on one device)


def _report_summary(tmp_path: Path) -> pd.DataFrame:
    suite = tmp_path / SUITE
    records = []
    for method, keep in (("dense", 1.0), ("static", 0.7), ("static", 0.5), ("token_pooling", 0.5)):
        for seed in (0, 1):
            records.append(_record(method, keep, seed, role_reference=method == "dense"))
            if method == "token_pooling":
                records[-1].update(top1=75.0 + seed, gmacs_fvcore_1mac_eq_1flop=2.5, throughput_img_s=2500.0 + seed)
            _write(suite, records[-1])
    write_timing(suite, records, unreliable=(records[3]["run_id"],))
    timing = json.loads((suite / "timing" / "deit_small_patch16_224.json").read_text())
    for entry in timing["runs"].values():
        entry.update(
            latency_bs1_ms=123.456,
            latency_bs1_ms_iqr=1.5,
            latency_bs1_repeats=7,
            peak_inference_mem_mib=20480.25,
            peak_inference_mem_kind="cuda_max_memory_allocated",
            peak_inference_mem_batch=256,
        )
    (suite / "timing" / "deit_small_patch16_224.json").write_text(json.dumps(timing))
    return summarize(collect(suite))


def test_results_tex_has_the_paper_columns_and_nothing_else(tmp_path):
    summary = _report_summary(tmp_path).assign(flops_skipped_ops="aten::add:17;aten::div:16")
    tex = render_latex(summary, "Results.")
    head, units = [ln for ln in tex.splitlines() if ln.endswith(r"\\")][:2]
    assert [h.strip() for h in head.removesuffix(r"\\").split("&")] == [
        "Method",
        "Keep",
        "Top-1",
        "GMACs",
        "Params",
        "Speed-up",
        "Latency",
        "Memory",
    ]
    assert units.split("&")[-1].strip() == r"(MiB) \\" and "bs 1 (ms)" in units and r"(\%, n = 2)" in units
    assert "aten::" not in tex and "fvcore skipped" not in tex and "Throughput" not in tex
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    row = next(ln for ln in tex.splitlines() if ln.startswith("static & 0.5"))
    cells = [c.strip() for c in row.removesuffix(r"\\").split("&")]
    # one precision rule per column: top-1 2 decimals, GMACs 3 significant digits, params 2 decimals,
    # speed-up 2 decimals (two seeds: their range), latency 2 decimals, memory in whole MiB
    assert cells == ["static", "0.5", r"77.17 $\pm$ 0.07", "2.30", "22.05", "1.91 (1.91--1.91)", "123.46", "20480"]
    assert "Student t 95" in tex and "range" in tex and "CUDA allocator's peak during one forward at batch 256" in tex
    assert len(PAPER_COLUMNS) == 8
    uneven = render_latex(summary.assign(n_ok=[2, 1, 2, 2]), "Results.")
    assert r"static & 0.7 & 78.96 $\pm$ 0.07 (1) &" in uneven and r"(\%, n)" in uneven  # n beside each figure


def test_markdown_cells_keep_one_precision_per_column(tmp_path):
    header, rows, _ = table_rows(_report_summary(tmp_path))
    thr = [r[header.index("Throughput img/s, median (IQR; CV)")] for r in rows]
    assert thr[0] == "1510.5 (12.5; 0.4 %)" and all(t.split(" (")[0].split(".")[1].isdigit() for t in thr)
    assert {len(t.split(" (")[0].split(".")[1]) for t in thr} == {1}
    assert rows[0][header.index("Latency bs 1 (ms), median (IQR)")] == "123.46 (1.50)"
    assert rows[0][header.index("Top-1 (%)")] == "79.90 ± 0.07 (n = 2)"


def test_results_tex_compiles_in_one_column_and_fits_the_text_width(tmp_path):
    pdflatex = shutil.which("pdflatex")
    if pdflatex is None:
        pytest.skip("pdflatex is not installed (Debian: apt-get install texlive-latex-base texlive-latex-recommended)")
    if subprocess.run(["kpsewhich", "booktabs.sty"], capture_output=True, text=True).stdout.strip() == "":
        pytest.skip("booktabs.sty is not installed (Debian: apt-get install texlive-latex-recommended)")
    (tmp_path / "results.tex").write_text(render_latex(_report_summary(tmp_path / "s"), "Results of suite smoke."))
    (tmp_path / "paper.tex").write_text(
        "\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n\\input{results.tex}\n\\end{document}\n"
    )
    done = subprocess.run(
        [pdflatex, "-interaction=nonstopmode", "-halt-on-error", "paper.tex"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    log = (tmp_path / "paper.log").read_text(errors="replace")
    assert done.returncode == 0, log[-2000:]
    assert "Overfull \\hbox" not in log, log[log.find("Overfull") :][:400]
    assert (tmp_path / "paper.pdf").stat().st_size > 0


def test_inference_memory_is_measured_for_the_forward_and_grows_with_the_batch(tiny_vit):
    """The memory of one forward (CPU: RSS growth, by the kernel's high-water mark or, failing that, sampled):
    a batch of 256 takes more than a batch of 1; batch-1 latency over at most 5 calibrated repeats."""
    import torch

    from bench.measure import latency
    from bench.measure.paired import TimingProtocol

    model, cpu = tiny_vit(), torch.device("cpu")
    protocol = TimingProtocol(batch_sizes=(1,), rounds=9, min_time_s=0.0, warmup=1)
    one, many = torch.randn(1, 1, 32, 32), torch.randn(256, 1, 32, 32)
    small, large = (
        latency.peak_memory_mib(model, one, protocol, cpu),
        latency.peak_memory_mib(model, many, protocol, cpu),
    )
    assert large > small + 4, (small, large)
    forward = latency._forward(model, many, protocol, cpu)
    assert latency._sampled_rss_growth_mib(forward, lambda: (latency._status_kib("VmRSS") or 0) * 1024) >= 0
    lat = latency.latency_ms(latency._forward(model, one, protocol, cpu), latency.Clock(cpu), protocol)
    assert lat["repeats"] == latency.LATENCY_REPEATS and lat["median"] > 0 and lat["iqr"] >= 0
