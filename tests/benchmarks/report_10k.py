"""Time ``bench report`` on a synthetic results table of 10,000 runs (target: at most 3 s).

    python tests/benchmarks/report_10k.py [--runs 10000] [--repeat 5] [--keep]

The headline figure is the cold command, ``bench report synthetic`` in a fresh process as a user or the
pipeline runs it (interpreter start and imports included), as the median of ``--repeat`` runs; the
in-process ``build_report`` times (imports already done) are printed beside it.

The table has the collected schema: 4 backbones x 25 method labels (dense, dynamicvit, static, random,
token_pooling variants, svite densities, ...) x 10 keep ratios x 10 seeds, plus some failed runs. Prints
the wall time of each phase and the total; asserts nothing.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.methods.catalog import catalog
from bench.report.build import build_report
from bench.results.collect import TABLE_PARQUET

METHODS = [
    ("dense", "dense", {}),
    ("dynamicvit", "dynamicvit", {}),
    ("static", "static", {}),
    ("random", "random", {}),
    ("importance", "importance", {}),
    ("grid_pool", "grid_pool", {}),
]
METHODS += [
    (f"tp_{c}{'_w' if w else ''}_{s}", "token_pooling", {"clustering": c, "weighted": w, "schedule": s})
    for c in ("kmeans", "kmedoids")
    for w in (True, False)
    for s in ("stages", "every_block")
]
METHODS += [(f"svite_d{d}", "svite", {"density": d / 100}) for d in (40, 50, 60, 70)]
METHODS += [(f"s2vite_d{d}", "s2vite", {"density": d / 100}) for d in (40, 50, 60)]
METHODS += [("svite_plus_d50", "svite_plus", {"density": 0.5}), ("evit_like", "importance", {"num_stages": 2})]


def synthetic_table(n_runs: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    backbones = ["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224", "vit_small_patch16_224"]
    base_gmacs = dict(zip(backbones, [1.26, 4.61, 17.58, 4.61]))
    ratios = np.round(np.linspace(0.5, 0.95, 10), 2)
    rows = []
    i = 0
    while len(rows) < n_runs:
        b = backbones[i % len(backbones)]
        label, name, params = METHODS[(i // len(backbones)) % len(METHODS)]
        k = 1.0 if name in ("dense", "svite", "s2vite") else float(ratios[(i // (len(backbones) * len(METHODS))) % 10])
        s = (i // (len(backbones) * len(METHODS) * 10)) % 10 + 10 * (i // (len(backbones) * len(METHODS) * 100))
        i += 1
        g = base_gmacs[b] * (k**1.5 if name not in ("dense", "svite", "s2vite") else 1.0)
        ok = rng.random() > 0.01
        rows.append(
            {
                "suite": "synthetic",
                "run_id": f"{label}__{b}__k{k:.2f}__s{s}",
                "method": label,
                "method_name": name,
                **catalog()[name].record_columns(),
                **{f"param_{k}": v for k, v in params.items()},
                "backbone": b,
                "keep_ratio": k,
                "seed": s,
                "dataset": "imagenet-1k",
                "top1": 80 - 10 * (1 - k) ** 2 + rng.normal(0, 0.2) if ok else np.nan,
                "top5": 95 - 5 * (1 - k) ** 2 if ok else np.nan,
                "gmacs_fvcore_1mac_eq_1flop": g if ok else np.nan,
                "params_m": 22.0,
                "theoretical_gmacs_nonzero_weights_fvcore_1mac_eq_1flop": g * params.get("density", np.nan),
                "throughput_img_s": 1000 / g * (1 + rng.normal(0, 0.02)) if ok else np.nan,
                "throughput_img_s_iqr": 5.0,
                "throughput_batch_size": 256,
                "throughput_device": "NVIDIA H100",
                "precision": "bf16",
                "mean_tokens": 197 * k,
                "status": "ok" if ok else "failed",
                "error": None if ok else "RunFailed: loss is nan at step 10",
                "git_sha": "0" * 40,
                "git_dirty": False,
                "torch_version": "2.14.1",
                "timm_version": "1.0.31",
                "python_version": "3.11",
                "device": "cuda",
                "cpu_threads": 16,
                "hostname": "node1",
                "created_at": "2026-11-23T00:00:00+00:00",
            }
        )
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=5, help="cold `bench report` runs to take the median of")
    ap.add_argument("--keep", action="store_true", help="keep the output folder and print its path")
    args = ap.parse_args()
    table = synthetic_table(args.runs)
    root = Path(tempfile.mkdtemp(prefix="report10k-"))
    tmp = root / "synthetic"
    tmp.mkdir()
    table.to_parquet(tmp / TABLE_PARQUET)
    cold = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "bench", "report", "synthetic", "--results", str(root)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        cold.append(time.perf_counter() - t0)
    build_report(tmp)  # warm imports (matplotlib, seaborn fonts) once, as a long-lived process would have
    t0 = time.perf_counter()
    paths = build_report(tmp)
    wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    with_figures = build_report(tmp, paper_figures=True)
    wall_figures = time.perf_counter() - t0
    print(f"with the paper figures too (bench figures + bench report): {wall_figures:.2f} s, {len(with_figures)} files")
    print(f"build_report in a warm process: {wall:.2f} s, {len(paths)} files{f' in {tmp}' if args.keep else ''}")
    print(
        f"bench report (cold command) on {len(table)} runs ({table['method'].nunique()} methods, "
        f"{table['backbone'].nunique()} backbones): median {statistics.median(cold):.2f} s over {len(cold)} runs "
        f"(min {min(cold):.2f}, max {max(cold):.2f})"
    )
    if not args.keep:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
