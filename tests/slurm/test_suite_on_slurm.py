"""The pipeline against a real one-node SLURM cluster (started by the `slurm_cluster` fixture).

Every compute step goes through `snakemake --profile slurm` -> bench.launch -> submitit -> sbatch.
"""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable

SUITE = """
name: {name}
data: {{source: embedded, name: canvas-digits}}
backbones: [tb_vit_pico_patch4_32]
methods: {methods}
keep_ratios: [0.5]
seeds: [0]
pretrain: {{init: scratch, recipe: {{epochs: 1, batch_size: 64, max_steps_per_epoch: 3}}}}
finetune: {{epochs: {epochs}, batch_size: 32, max_steps_per_epoch: {steps}}}
evaluate: {{max_val_images: 64, flops_images: 4, throughput: {{batch_sizes: [2], repeats: 2, warmup: 1, min_time_s: 0.01}}}}
"""
CPU_RESOURCES = [
    f"{rule}:{key}={value}"
    for rule in ("pretrain", "finetune", "evaluate", "timing")
    for key, value in (("gpus", 0), ("cpus_per_task", 1), ("mem_mb", 0), ("runtime", 10), ("slurm_partition", "debug"))
]
METRICS = ["run_id", "top1", "top5", "gmacs_fvcore_1mac_eq_1flop", "params_m", "mean_tokens", "tokens_per_block"]


def write_suite(tmp_path, name="s", methods="[dense, static]", epochs=1, steps=2) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(SUITE.format(name=name, methods=methods, epochs=epochs, steps=steps))
    return path


def snakemake_cmd(tmp_path, suite, *, slurm=True):
    cmd = [
        PY,
        "-m",
        "snakemake",
        "--directory",
        str(tmp_path),
        "--config",
        f"suite={suite}",
        f"results={tmp_path / 'results'}",
    ]
    if slurm:
        return cmd + ["--profile", "slurm", "--set-resources", *CPU_RESOURCES]
    return cmd + ["--cores", "2", "--set-threads", "pretrain=1", "finetune=1", "evaluate=1", "timing=1"]


def run(cmd, env, timeout=600):
    return subprocess.run(
        cmd, cwd=REPO, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=timeout
    )


def sacct(env, *job_ids) -> dict[str, str]:
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-o", "JobID,JobName,State", "-j", ",".join(job_ids)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {line.split("|")[0]: line.split("|")[2] for line in out.splitlines() if line}


def launched(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(results.rglob("launch.json"))]


@pytest.mark.slurm
def test_suite_on_slurm_gives_the_local_table(slurm_cluster, tmp_path):
    local_dir, slurm_dir = tmp_path / "local", tmp_path / "slurm"
    local_dir.mkdir(), slurm_dir.mkdir()
    suite = write_suite(tmp_path)
    p = run(snakemake_cmd(local_dir, suite, slurm=False), slurm_cluster.env)
    assert p.returncode == 0, p.stderr[-3000:]
    p = run(snakemake_cmd(slurm_dir, suite), slurm_cluster.env)
    assert p.returncode == 0, p.stderr[-3000:]
    local = pd.read_parquet(local_dir / "results" / "s" / "table.parquet")[METRICS]
    on_slurm = pd.read_parquet(slurm_dir / "results" / "s" / "table.parquet")[METRICS]
    pd.testing.assert_frame_equal(local, on_slurm)
    # every compute step was a SLURM job that completed; collect and report stayed local
    jobs = launched(slurm_dir / "results")
    assert len(jobs) == 6 and {j["launcher"] for j in jobs} == {"slurm"}  # + the timing job
    assert set(sacct(slurm_cluster.env, *[j["job_id"] for j in jobs]).values()) == {"COMPLETED"}


def _finetune_with_launcher(tmp_path, env, suite, extra=()):
    """Pretrain locally, then start the fine-tune of the static run as a SLURM job in the background."""
    results = tmp_path / "results"
    p = run(
        [
            PY,
            "-m",
            "bench",
            "train",
            str(suite),
            "--pretrain",
            "tb_vit_pico_patch4_32",
            "--results",
            str(results),
            "--threads",
            "1",
        ],
        env,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    run_id = "static__tb_vit_pico_patch4_32__k0.50__s0"
    folder = results / "s" / "runs" / run_id / "slurm" / "finetune"
    cmd = [
        PY,
        "-m",
        "bench.launch",
        "--launcher",
        "slurm",
        "--folder",
        str(folder),
        "--name",
        "tb.requeue",
        "--cpus",
        "1",
        "--partition",
        "debug",
        *extra,
        "--",
        "train",
        str(suite),
        "--run",
        run_id,
        "--results",
        str(results),
    ]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env={**env, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    # the uninterrupted reference trains beside the job (one thread each on the 2-core node), not after it
    _start_reference(tmp_path, env, suite, run_id)
    return proc, results / "s" / "runs" / run_id, folder, run_id


_REFERENCES: dict[Path, subprocess.Popen] = {}


@pytest.fixture(autouse=True)
def _no_reference_left_running(tmp_path):
    yield
    ref = _REFERENCES.pop(tmp_path, None)  # a test that failed before comparing its weights
    if ref is not None:
        ref.kill()
        ref.wait()


def _start_reference(tmp_path, env, suite, run_id):
    """The same fine-tune, uninterrupted, from the same pretrained weights, started in the background."""
    ref = tmp_path / "ref"
    (ref / "s" / "pretrain" / "tb_vit_pico_patch4_32").mkdir(parents=True)
    src = tmp_path / "results" / "s" / "pretrain" / "tb_vit_pico_patch4_32" / "model.pth"
    (ref / "s" / "pretrain" / "tb_vit_pico_patch4_32" / "model.pth").write_bytes(src.read_bytes())
    with open(tmp_path / "ref.log", "w") as log:
        _REFERENCES[tmp_path] = subprocess.Popen(
            [PY, "-m", "bench", "train", str(suite), "--run", run_id, "--results", str(ref), "--threads", "1"],
            cwd=REPO,
            env={**env, "OMP_NUM_THREADS": "1"},
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


def _reference_weights(tmp_path, run_id):
    ref = _REFERENCES.pop(tmp_path)
    try:
        assert ref.wait(timeout=600) == 0, (tmp_path / "ref.log").read_text()[-2000:]
    finally:
        ref.kill()
    return torch.load(tmp_path / "ref" / "s" / "runs" / run_id / "model.pth", weights_only=True)["model"]


def _assert_same_weights(run_dir, reference):
    got = torch.load(run_dir / "model.pth", weights_only=True)["model"]
    assert got.keys() == reference.keys()
    for k in got:
        assert torch.equal(got[k], reference[k]), k


def _assert_resumed_to_reference(tmp_path, env, suite, proc, run_dir, folder, run_id):
    """The launcher succeeded, the job resumed from a checkpoint, and the weights equal an uninterrupted run."""
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    log = Path(json.loads((folder / "launch.json").read_text())["stderr"]).read_text()
    assert "resuming from the checkpoint of epoch" in log
    # the record states how many times SLURM requeued the job (SLURM_RESTART_COUNT of the last attempt)
    assert torch.load(run_dir / "model.pth", weights_only=True)["meta"]["train_requeues"] >= 1
    _assert_same_weights(run_dir, _reference_weights(tmp_path, run_id))


def _snakemake_in_background(tmp_path, suite, env, **popen_kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        snakemake_cmd(tmp_path, suite), cwd=REPO, env={**env, "OMP_NUM_THREADS": "1"}, **popen_kwargs
    )


def _wait_for(predicate, timeout, what):
    t0 = time.time()
    while not predicate():
        assert time.time() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.5)


@pytest.mark.slurm
def test_requeued_training_resumes_to_the_same_weights(slurm_cluster, tmp_path):
    suite = write_suite(tmp_path, epochs=10, steps=40)
    proc, run_dir, folder, run_id = _finetune_with_launcher(tmp_path, slurm_cluster.env, suite)
    _wait_for(lambda: (run_dir / "train_state.pth").exists() or proc.poll() is not None, 240, "the first epoch")
    assert proc.poll() is None, "the fine-tune ended before it could be requeued"
    job_id = json.loads((folder / "launch.json").read_text())["job_id"]
    subprocess.run(["scontrol", "requeue", job_id], env=slurm_cluster.env, check=True)
    _assert_resumed_to_reference(tmp_path, slurm_cluster.env, suite, proc, run_dir, folder, run_id)


@pytest.mark.slurm
def test_time_limit_checkpoints_requeues_and_resumes(slurm_cluster, tmp_path):
    # 3-minute limit, warned 120 s ahead: the job is signalled 60-90 s after it starts (slurmctld checks
    # limits every 30 s), checkpoints, requeues itself and resumes. ~95 s of training in short epochs
    # (~2 s) is always interrupted once, and the rest (< 60 s) finishes in the second attempt.
    suite = write_suite(tmp_path, epochs=45, steps=40)
    proc, run_dir, folder, run_id = _finetune_with_launcher(
        tmp_path, slurm_cluster.env, suite, extra=["--time-min", "3", "--signal-delay-s", "120"]
    )
    _assert_resumed_to_reference(tmp_path, slurm_cluster.env, suite, proc, run_dir, folder, run_id)


@pytest.mark.slurm
def test_snakemake_killed_and_restarted_submits_nothing_twice(slurm_cluster, tmp_path):
    name = f"k{uuid.uuid4().hex[:8]}"  # job names unique to this test, whatever ran on the cluster before
    suite = write_suite(tmp_path, name=name, methods="[dense, static, random]", epochs=3, steps=8)
    results = tmp_path / "results" / name
    first = _snakemake_in_background(
        tmp_path, suite, slurm_cluster.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    _wait_for(lambda: any(results.glob("runs/*/slurm/finetune/launch.json")), 300, "a fine-tune to be submitted")
    os.killpg(first.pid, signal.SIGKILL)  # snakemake and its launchers die; the SLURM jobs go on
    first.wait()
    subprocess.run(
        [
            PY,
            "-m",
            "snakemake",
            "--directory",
            str(tmp_path),
            "--unlock",
            "--config",
            f"suite={suite}",
            f"results={tmp_path / 'results'}",
            "--profile",
            "slurm",
        ],
        cwd=REPO,
        env=slurm_cluster.env,
        capture_output=True,
        check=True,
    )
    p = run(snakemake_cmd(tmp_path, suite), slurm_cluster.env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert pd.read_parquet(results / "table.parquet")["status"].tolist() == ["ok"] * 3
    names = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-o", "JobName", "-S", "now-1hour"],
        env=slurm_cluster.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    mine = [n for n in names if n.startswith(f"tb.{name}.")]
    assert len(mine) == 8 and len(set(mine)) == 8, mine  # 1 pretrain, 3 fine-tunes, 3 evaluations, 1 timing, once each


@pytest.mark.slurm
def test_cancelled_job_is_a_recorded_hole(slurm_cluster, tmp_path):
    suite = write_suite(tmp_path, name="c", methods="[dense, static]", epochs=20, steps=12)
    results = tmp_path / "results" / "c"
    proc = _snakemake_in_background(
        tmp_path, suite, slurm_cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    launch = results / "runs" / "static__tb_vit_pico_patch4_32__k0.50__s0" / "slurm" / "finetune" / "launch.json"
    _wait_for(launch.exists, 300, "the static fine-tune to be submitted")
    job_id = json.loads(launch.read_text())["job_id"]
    subprocess.run(["scancel", job_id], env=slurm_cluster.env, check=True)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode != 0  # a job failed; --keep-going finished the rest
    failure = json.loads((launch.parent.parent.parent / "failure.json").read_text())
    assert failure["job_id"] == job_id and "CANCELLED" in failure["job_state"]
    table = pd.read_parquet(results / "table.parquet").set_index("method")
    assert table.loc["dense", "status"] == "ok" and table.loc["static", "status"] == "failed"
    assert "CANCELLED" in (results / "report" / "report.md").read_text()
