"""kill -9 of snakemake at three moments, then a restart: each run trained exactly once, 0 files corrupt, 0 lost.

    python tests/benchmarks/kill_restart.py            # 3 moments x (snakemake process only, its process group)
    python tests/benchmarks/kill_restart.py --moment finetune --mode process
    python tests/benchmarks/kill_restart.py --twin --moment finetune --mode group   # + two pipelines at once

A small suite runs under the local launcher-less pipeline. At the chosen moment (the pretrain training, a fine-tune
training, an evaluation) SIGKILL goes to the snakemake process alone (its jobs live on, orphaned) or to its whole
process group (everything dies). Then `snakemake --unlock` and `snakemake` again, as a user would. Counted from each
step's ``.kept/attempts.jsonl``: how many times each result was made (must be 1), restored or found done; every
artifact is checked whole (``bench.artifacts.problem``); every run must have its record.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

SUITE = """name: kill
data: {source: embedded, name: canvas-digits}
backbones: [tb_vit_pico_patch4_32]
methods: [dense, static, random]
keep_ratios: [0.5]
seeds: [0]
pretrain: {init: scratch, recipe: {epochs: 3, batch_size: 64, max_steps_per_epoch: 6}}
finetune: {epochs: 3, batch_size: 64, max_steps_per_epoch: 4}
evaluate: {max_val_images: 64, flops_images: 2, throughput: {batch_sizes: [2], repeats: 2, warmup: 1, min_time_s: 0.01}}
"""
MOMENTS = ("pretrain", "finetune", "evaluate")


def snakemake_cmd(work: Path, suite: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(work),
        "--cores",
        "2",
        "--workflow-profile",
        "none",
        "--keep-going",
        "--rerun-incomplete",
        "--set-threads",
        "pretrain=1",
        "finetune=1",
        "evaluate=1",
        "timing=1",
        "--config",
        f"suite={suite}",
        f"results={work / 'results'}",
        *extra,
    ]


def _reached(out: Path, moment: str) -> bool:
    logs = out / "logs" / moment
    if not logs.is_dir():
        return False
    if moment == "evaluate":
        return any(logs.iterdir())
    return any('"epoch": 1' in p.read_text(errors="replace") for p in logs.iterdir())  # mid-training


def scenario(work: Path, moment: str, mode: str, timeout: float = 900) -> dict:
    """Run, kill at ``moment`` (``mode``: process or group), restart; returns the counts."""
    from bench.artifacts import CORRUPT_SUFFIX, problem

    suite = work / "kill.yaml"
    suite.write_text(SUITE)
    out = work / "results" / "kill"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(
        snakemake_cmd(work, suite),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    t0 = time.time()
    while not _reached(out, moment):
        if first.poll() is not None or time.time() - t0 > timeout:
            raise RuntimeError(f"the pipeline ended (or timed out) before the {moment} moment")
        time.sleep(0.1)
    if mode == "group":
        os.killpg(first.pid, signal.SIGKILL)
    else:
        os.kill(first.pid, signal.SIGKILL)
    first.wait()
    subprocess.run(snakemake_cmd(work, suite, "--unlock"), capture_output=True, env=env, timeout=120)
    second = subprocess.run(snakemake_cmd(work, suite), capture_output=True, text=True, env=env, timeout=timeout)
    # orphans of a process-only kill have finished by now: the restarted steps waited for them
    made, outcomes = {}, {}
    for attempts in out.rglob(".kept/attempts.jsonl"):
        for line in attempts.read_text().splitlines():
            rec = json.loads(line)
            key = f"{attempts.parent.parent.name}/{rec['output']}"
            outcomes.setdefault(key, []).append(rec["outcome"])
            made[key] = made.get(key, 0) + (rec["outcome"] == "made")
    expected = [d.name for d in (out / "runs").iterdir()] if (out / "runs").is_dir() else []
    artifacts = [
        p
        for p in out.rglob("*")
        if p.is_file()
        and p.suffix in (".pth", ".json", ".parquet")
        and ".kept" not in p.parts
        and "logs" not in p.parts  # progress records beside the step logs: not results (bench.progress)
        and not p.name.endswith(CORRUPT_SUFFIX)
    ]
    corrupt = [str(p) for p in artifacts if problem(p) is not None]
    lost = [r for r in expected if not (out / "runs" / r / "run.json").is_file()]
    trained = {k: v for k, v in made.items() if k.endswith("model.pth")}
    return {
        "moment": moment,
        "mode": mode,
        "restart_rc": second.returncode,
        "runs": len(expected),
        "trained": trained,
        "outcomes": outcomes,
        "corrupt": corrupt,
        "lost": lost,
        "report": (out / "report" / "report.md").is_file(),
        "stderr_tail": second.stderr[-1500:],
    }


def twin_pipelines(work: Path, timeout: float = 900) -> dict:
    """Two pipelines (two working directories, e.g. two checkouts) on one results folder at once."""
    suite = work / "kill.yaml"
    suite.write_text(SUITE)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = []
    for side in ("a", "b"):
        (work / side).mkdir()
        cmd = snakemake_cmd(work / side, suite)
        cmd[cmd.index(f"results={work / side / 'results'}")] = f"results={work / 'results'}"
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
    codes = [p.wait(timeout=timeout) for p in procs]
    made = {}
    for attempts in (work / "results" / "kill").rglob(".kept/attempts.jsonl"):
        for line in attempts.read_text().splitlines():
            rec = json.loads(line)
            if rec["output"] == "model.pth":
                key = attempts.parent.parent.name
                made[key] = made.get(key, 0) + (rec["outcome"] == "made")
    return {"codes": codes, "trained": made}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moment", choices=MOMENTS, action="append")
    ap.add_argument("--mode", choices=("process", "group"), action="append")
    ap.add_argument("--twin", action="store_true", help="also run two pipelines on one results folder at once")
    args = ap.parse_args()
    bad = 0
    if args.twin:
        with tempfile.TemporaryDirectory() as d:
            t0 = time.time()
            r = twin_pipelines(Path(d))
        ok = r["codes"] == [0, 0] and sorted(r["trained"].values()) == [1, 1, 1, 1]
        bad += not ok
        print(
            f"{'ok  ' if ok else 'FAIL'} two pipelines on one results folder: exit codes {r['codes']}, trained per "
            f"model {sorted(r['trained'].values())} [{time.time() - t0:.0f} s]"
        )
    for moment in args.moment or MOMENTS:
        for mode in args.mode or ("process", "group"):
            with tempfile.TemporaryDirectory() as d:
                t0 = time.time()
                r = scenario(Path(d), moment, mode)
            ok = (
                r["restart_rc"] == 0
                and all(v == 1 for v in r["trained"].values())
                and len(r["trained"]) == 4
                and not r["corrupt"]
                and not r["lost"]
                and r["report"]
            )
            bad += not ok
            print(
                f"{'ok  ' if ok else 'FAIL'} kill -9 {mode:7s} during {moment:8s}: restart rc {r['restart_rc']}, "
                f"trained per model {sorted(r['trained'].values())} ({len(r['trained'])} models), "
                f"{len(r['corrupt'])} corrupt, {len(r['lost'])} lost, report {r['report']} "
                f"[{time.time() - t0:.0f} s]"
            )
            skipped = sorted({o for v in r["outcomes"].values() for o in v if o != "made"})
            if skipped:
                print(f"     other outcomes: {skipped}")
            if not ok:
                print(r["stderr_tail"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
