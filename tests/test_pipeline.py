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
methods: [dense, static, {name: random, label: broken, finetune: {lr: 1.0e+30, clip_grad: null, weight_decay: 0.0}}]
keep_ratios: [0.5]
seeds: [0]
pretrain: {init: scratch, recipe: {epochs: 1, batch_size: 64, max_steps_per_epoch: 3}}
finetune: {epochs: 1, batch_size: 64, max_steps_per_epoch: 2}
evaluate: {max_val_images: 64, flops_images: 4, throughput: {batch_sizes: [2], repeats: 2, warmup: 1, min_time_s: 0.01}}
"""
# the broken run: diverges at runtime
BROKEN = "{name: random, label: broken, finetune: {lr: 1.0e+30, clip_grad: null, weight_decay: 0.0}}"


def snakemake(workdir: Path, suite: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        *SNAKEMAKE,
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--cores",
        "2",
        "--workflow-profile",
        "none",
        "--keep-going",
        "--set-threads",
        "pretrain=1",
        "finetune=1",
        "evaluate=1",
        "timing=1",
        "--config",
        f"suite={suite}",
        f"results={workdir / 'results'}",
        *extra,
    ]
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
    # a run that diverges (no bad value validation could see: without weight decay, which bench validate
    # refuses at lr x weight_decay >= 1) is a hole with its reason
    assert "non-finite loss" in json.loads((broken / "failure.json").read_text())["error"]
    table = pd.read_parquet(out / "table.parquet")
    assert sorted(table["status"]) == ["failed", "ok", "ok"]
    assert "non-finite loss" in (out / "report" / "report.md").read_text()

    # 2. without the broken method the grid completes
    suite.write_text(SUITE.replace(f", {BROKEN}", ""))
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
    # throughput and speed-ups come from the one timing job of the backbone, paired with dense
    timing = json.loads((out / "timing" / "tb_vit_pico_patch4_32.json").read_text())
    assert set(timing["runs"]) == {
        "dense__tb_vit_pico_patch4_32__k1.00__s0",
        "static__tb_vit_pico_patch4_32__k0.50__s0",
    }
    assert timing["reference_run_id"] == "dense__tb_vit_pico_patch4_32__k1.00__s0"
    assert dense["speedup_vs_dense"] == 1.0 and static["speedup_vs_dense"] > 0
    assert static["speedup_ci_low"] <= static["speedup_vs_dense"] <= static["speedup_ci_high"]
    assert dense["throughput_device_key"] == static["throughput_device_key"] == timing["device_key"]
    assert static["timing_repeats"] == 2 and static["throughput_batch_size"] == 2
    assert "What was timed" in (out / "report" / "report.md").read_text()
    for name in ("report.md", "tradeoff_top1_vs_gmacs.png", "tradeoff_top1_vs_gmacs.pdf"):
        assert (out / "report" / name).stat().st_size > 0
    # the kept-token masks sit next to a pruning run's results (not the dense one's); the report draws them
    assert (out / "runs" / "static__tb_vit_pico_patch4_32__k0.50__s0" / "kept_tokens.npz").stat().st_size > 0
    assert not (out / "runs" / "dense__tb_vit_pico_patch4_32__k1.00__s0" / "kept_tokens.npz").exists()

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
    assert log.count("rule timing:") == 1  # the backbone group is re-timed with the new run
    assert dense_json.stat().st_mtime_ns == before
    assert (out / "runs" / "static__tb_vit_pico_patch4_32__k0.50__s0" / "run.json").exists()

    # 5. damaged files (a truncated model, a torn record) are named, moved aside and rebuilt with what depends
    #    on them, nothing else
    static_model = out / "runs" / "static__tb_vit_pico_patch4_32__k0.50__s0" / "model.pth"
    static_model.write_bytes(static_model.read_bytes()[:1000])  # in place: its kept copy is damaged too
    dense_json.write_text(dense_json.read_text()[:200])
    pretrained = out / "pretrain" / "tb_vit_pico_patch4_32" / "model.pth"
    pretrained_at = pretrained.stat().st_mtime_ns
    p = snakemake(tmp_path, suite)
    assert p.returncode == 0, p.stderr[-3000:]
    log = p.stdout + p.stderr
    assert f"{static_model} is truncated or corrupt" in log and f"{dense_json} is truncated or corrupt" in log
    assert log.count("rule finetune:") == 1 and log.count("rule evaluate:") == 2 and "rule pretrain" not in log
    assert pretrained.stat().st_mtime_ns == pretrained_at
    assert json.loads(dense_json.read_text())["status"] == "ok" and static_model.with_suffix(".pth.corrupt").exists()
    assert sorted(pd.read_parquet(out / "table.parquet")["status"]) == ["ok", "ok"]

    # 6. a new timing protocol re-times the backbone and re-evaluates nothing
    suite.write_text(suite.read_text().replace("repeats: 2", "repeats: 3"))
    p = snakemake(tmp_path, suite)
    assert p.returncode == 0, p.stderr[-3000:]
    log = p.stdout + p.stderr
    assert log.count("rule timing:") == 1 and "rule evaluate" not in log and "rule finetune" not in log
    table = pd.read_parquet(out / "table.parquet").set_index("method")
    assert table.loc["static", "timing_repeats"] == 3  # paired repeats; dense, the reference, is timed around each
    assert table.loc["dense", "timing_repeats"] == 6

    # 7. a truncated table (collect's marker still there) and a deleted figure are rebuilt by the next run, with
    #    no compute step: the table and the report's files are targets of rule all, not only the marker
    parquet, figure = out / "table.parquet", out / "report" / "tradeoff_top1_vs_gmacs.png"
    parquet.write_bytes(parquet.read_bytes()[:100])
    figure.unlink()
    p = snakemake(tmp_path, suite)
    assert p.returncode == 0, p.stderr[-3000:]
    log = p.stdout + p.stderr
    assert f"{parquet} is truncated or corrupt" in log and "Nothing to be done" not in log
    assert log.count("rule collect:") == 1 and log.count("rule report:") == 1
    assert not any(f"rule {r}:" in log for r in ("pretrain", "finetune", "evaluate", "timing"))
    assert list(pd.read_parquet(parquet)["status"]) == ["ok", "ok"] and figure.stat().st_size > 0
    assert (out / "table.parquet.corrupt").exists()


def test_bad_suite_fails_before_anything_runs(tmp_path):
    suite = tmp_path / "bad.yaml"
    suite.write_text(SUITE.replace("seeds: [0]", "seeds: [zero]"))
    p = snakemake(tmp_path, suite)
    assert p.returncode == 2
    assert [line for line in p.stderr.splitlines() if line.startswith("bench: error:")] == [
        f"bench: error: {suite}: field seeds[0]: 'zero' is not of type 'integer'"
    ]
    assert not (tmp_path / "results").exists()


def test_finetune_none_schedules_no_finetune_job(tmp_path):
    """Off-the-shelf protocol: the pretrained backbone is evaluated with each method applied, no training."""
    import torch

    from bench.methods import create_method
    from bench.models import build_backbone

    # a learned method is evaluated only from its given trained weights (here: a patched model's state)
    model = build_backbone("tb_vit_pico_patch4_32", num_classes=10)
    create_method("dynamicvit", 0.5).apply(model)
    weights = tmp_path / "dynamicvit.pth"
    torch.save({"model": model.state_dict()}, weights)
    suite = tmp_path / "shelf.yaml"
    suite.write_text(
        SUITE.replace("name: tiny", "name: shelf")
        .replace(
            BROKEN,
            f"{{name: dynamicvit, weights: {weights}}}",
        )
        .replace("finetune: {epochs: 1, batch_size: 64, max_steps_per_epoch: 2}", "finetune: none")
    )
    dry = snakemake(tmp_path, suite, "-n")
    assert dry.returncode == 0, dry.stderr[-3000:]
    stats = dry.stdout.split("Job stats:")[1].split("total")[0]
    jobs = {
        ln.split()[0]: int(ln.split()[1])
        for ln in stats.splitlines()
        if len(ln.split()) == 2 and ln.split()[1].isdigit()
    }
    assert jobs.get("evaluate") == 3 and jobs.get("pretrain") == 1 and "finetune" not in jobs, jobs
    p = snakemake(tmp_path, suite)
    assert p.returncode == 0, p.stderr[-3000:]
    runs = tmp_path / "results" / "shelf" / "runs"
    assert not list(runs.glob("*/model.pth"))
    records = [json.loads(f.read_text()) for f in runs.glob("*/run.json")]
    assert len(records) == 3 and all(r["finetuned"] is False and r["train_epochs"] is None for r in records)
    assert next(r for r in records if r["method"] == "dynamicvit")["weights"] == str(weights)
    pretrained = json.loads(
        json.dumps(
            __import__("torch").load(
                tmp_path / "results" / "shelf" / "pretrain" / "tb_vit_pico_patch4_32" / "model.pth", weights_only=True
            )["meta"]["val_top1"]
        )
    )
    dense = next(r for r in records if r["method"] == "dense")
    assert dense["top1"] == pytest.approx(pretrained)  # the dense run is the pretrained backbone itself


FOLDER_SUITE = """
name: folder
data: {{source: imagefolder, path: {path}, name: pets}}
backbones: [{{name: tb_vit_pico_patch4_32, kwargs: {{}}}}]
methods: [dense]
keep_ratios: [1.0]
seeds: [0]
pretrain: {{init: scratch, recipe: {{epochs: 1, batch_size: 8}}}}
finetune: {{epochs: 1, batch_size: 8}}
evaluate: {{max_val_images: 8, flops_images: 2, throughput: {{batch_sizes: [2], repeats: 1, warmup: 0, min_time_s: 0.01}}}}
"""


@pytest.mark.slow
def test_folder_is_indexed_once_and_runtime_settings_rerun_nothing(tmp_path):
    """The index step runs once; runtime settings (workers, device batch cap, channels_last) re-run nothing;
    a file added to the folder rebuilds the index and every result that read it."""
    from tests.test_data_pipeline import write_folder

    root = write_folder(tmp_path / "pets", splits=(("train", 6), ("val", 3)), size=(32, 32))
    suite = tmp_path / "folder.yaml"
    suite.write_text(FOLDER_SUITE.format(path=root))
    out = tmp_path / "results" / "folder"
    p = snakemake(tmp_path, suite)
    assert p.returncode == 0, p.stderr[-3000:]
    log = p.stdout + p.stderr
    assert log.count("rule index:") == 1 and "18 images (train 18, val 9)" not in log  # listed once, by its step
    assert "27 images (train 18, val 9), 3 classes" in (out / "logs" / "index.log").read_text()
    record = json.loads((out / "runs" / "dense__tb_vit_pico_patch4_32__k1.00__s0" / "run.json").read_text())
    assert record["dataset"] == "pets" and record["data_index"]["images"] == {"train": 18, "val": 9}
    assert record["train_runtime"]["device_batch"] is None and record["accumulation_steps"] == 1

    p = snakemake(tmp_path, suite, "loader_workers=2", "device_batch=4", "prefetch_factor=2", "channels_last=true")
    assert p.returncode == 0 and "Nothing to be done" in p.stdout + p.stderr, p.stdout[-2000:]

    (root / "train" / "dog" / "extra.png").write_bytes((root / "train" / "dog" / "0.png").read_bytes())
    p = snakemake(tmp_path, suite, "device_batch=4")
    assert p.returncode == 0, p.stderr[-3000:]
    log = p.stdout + p.stderr
    assert all(f"rule {r}:" in log for r in ("index", "pretrain", "finetune", "evaluate")), log[-2000:]
    record = json.loads((out / "runs" / "dense__tb_vit_pico_patch4_32__k1.00__s0" / "run.json").read_text())
    assert record["data_index"]["images"]["train"] == 19
    assert (record["accumulation_steps"], record["micro_batch_size"]) == (2, 4)
    assert record["train_runtime"]["device_batch"] == 4


HOSTILE = """
name: hostile
data: {source: embedded, name: canvas-digits}
backbones: [tb_vit_pico_patch4_32]
methods: [dense]
keep_ratios: [1.0]
seeds: [0]
pretrain: {init: scratch, recipe: {epochs: 1, batch_size: 64, max_steps_per_epoch: 1}}
finetune: {epochs: 1, batch_size: 64, max_steps_per_epoch: 1}
evaluate: {max_val_images: 32, flops_images: 2, throughput: {batch_sizes: [2], repeats: 1, warmup: 0, min_time_s: 0.01}}
"""


def test_paths_with_spaces_quotes_and_shell_syntax_reach_commands_as_arguments(tmp_path):
    """The suite and the results folder live under a name a shell would run: nothing runs, the pipeline works."""
    weird = tmp_path / 'we ird (1) $(touch PWNED) `touch PWNED2` "q ;x & y|z'

    weird.mkdir()
    suite = weird / "s $(touch PWNED3).yaml"
    suite.write_text(HOSTILE)
    results = weird / "res (a) $(touch PWNED4)"
    cmd = [
        *SNAKEMAKE,
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(tmp_path),
        "--cores",
        "2",
        "--workflow-profile",
        "none",
        "--set-threads",
        "pretrain=1",
        "finetune=1",
        "evaluate=1",
        "timing=1",
        "--config",
        f"suite={suite}",
        f"results={results}",
    ]
    p = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600, cwd=tmp_path
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert (results / "hostile" / "report" / "report.md").is_file()
    assert (results / "hostile" / "runs" / "dense__tb_vit_pico_patch4_32__k1.00__s0" / "run.json").is_file()
    assert not [f for f in tmp_path.rglob("PWNED*")] and not list(Path.cwd().glob("PWNED*"))
