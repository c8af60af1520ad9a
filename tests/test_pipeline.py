"""The Snakefile end to end on a tiny suite: results, idempotence, partial re-runs, failures as holes."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

SUITE = """
name: tiny
data: {source: embedded, name: canvas-digits}
backbones: [tb_vit_pico_patch4_32]
methods: [dense, static, {name: random, label: broken, params: {stage_blocks: [2, 4, 99]}}]
keep_ratios: [0.5]
seeds: [0]
pretrain: {init: scratch, recipe: {epochs: 1, batch_size: 64, max_steps_per_epoch: 3}}
finetune: {epochs: 1, batch_size: 64, max_steps_per_epoch: 2}
evaluate: {max_val_images: 64, flops_images: 4, throughput: {batch_sizes: [2], repeats: 2, warmup: 1}}
"""


def snakemake(workdir: Path, suite: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "2",
           "--workflow-profile", "none", "--keep-going", "--set-threads", "pretrain=1", "finetune=1", "evaluate=1",
           "--config", f"suite={suite}", f"results={workdir / 'results'}", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_pipeline_end_to_end(tmp_path):
    suite = tmp_path / "tiny.yaml"
    suite.write_text(SUITE)
    out = tmp_path / "results" / "tiny"

    # 1. a failing run does not stop the grid; the report still appears and lists the hole
    p = snakemake(tmp_path, suite)
    assert p.returncode != 0
    runs = {d.name: d for d in (out / "runs").iterdir()}
    broken = runs["broken__tb_vit_pico_patch4_32__k0.50__s0"]
    assert (broken / "failure.json").exists() and not (broken / "run.json").exists()
    assert "stage_blocks" in json.loads((broken / "failure.json").read_text())["error"]
    table = pd.read_parquet(out / "table.parquet")
    assert sorted(table["status"]) == ["failed", "ok", "ok"]
    assert "stage_blocks" in (out / "report" / "report.md").read_text()

    # 2. without the broken method the grid completes
    suite.write_text(SUITE.replace(", {name: random, label: broken, params: {stage_blocks: [2, 4, 99]}}", ""))
    shutil.rmtree(broken)
    p = snakemake(tmp_path, suite)
    assert p.returncode == 0, p.stderr[-3000:]
    table = pd.read_parquet(out / "table.parquet")
    assert list(table["status"]) == ["ok", "ok"]
    assert set(table["method"]) == {"dense", "static"}
    dense = table.set_index("method").loc["dense"]
    static = table.set_index("method").loc["static"]
    assert static["gmacs_fvcore_1mac_eq_1flop"] < dense["gmacs_fvcore_1mac_eq_1flop"]
    assert dense["git_sha"] and dense["torch_version"] and dense["throughput_img_s"] > 0
    for name in ("report.md", "tradeoff_top1_vs_gmacs.png", "tradeoff_top1_vs_gmacs.pdf"):
        assert (out / "report" / name).stat().st_size > 0
    # the kept-token figure sits next to a pruning run's results (not the dense one's)
    assert (out / "runs" / "static__tb_vit_pico_patch4_32__k0.50__s0" / "kept_tokens.png").stat().st_size > 0
    assert not (out / "runs" / "dense__tb_vit_pico_patch4_32__k1.00__s0" / "kept_tokens.png").exists()

    # 3. up to date: nothing runs
    p = snakemake(tmp_path, suite)
    assert p.returncode == 0 and "Nothing to be done" in p.stdout + p.stderr

    # 4. deleting one run's output re-runs only that run
    dense_json = out / "runs" / "dense__tb_vit_pico_patch4_32__k1.00__s0" / "run.json"
    before = dense_json.stat().st_mtime_ns
    shutil.rmtree(out / "runs" / "static__tb_vit_pico_patch4_32__k0.50__s0")
    p = snakemake(tmp_path, suite)
    assert p.returncode == 0, p.stderr[-3000:]
    log = p.stdout + p.stderr
    assert "rule finetune" in log and log.count("rule finetune:") == 1 and "rule pretrain" not in log
    assert dense_json.stat().st_mtime_ns == before
    assert (out / "runs" / "static__tb_vit_pico_patch4_32__k0.50__s0" / "run.json").exists()


def test_bad_suite_fails_before_anything_runs(tmp_path):
    suite = tmp_path / "bad.yaml"
    suite.write_text(SUITE.replace("seeds: [0]", "seeds: [zero]"))
    p = snakemake(tmp_path, suite)
    assert p.returncode == 2
    assert [line for line in p.stderr.splitlines() if line.startswith("bench: error:")] == [
        f"bench: error: {suite}: field seeds[0]: 'zero' is not of type 'integer'"]
    assert not (tmp_path / "results").exists()
