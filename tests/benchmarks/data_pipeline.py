"""A local image folder at ImageNet-like scale: listing, index, job start, training loader (a benchmark, not a test).

    python tests/benchmarks/data_pipeline.py                  # 50,000 generated JPEGs, workers 0 1 2, batch 64
    python tests/benchmarks/data_pipeline.py --folder /data/imagenet --workers 0 4 8 --batches 30 --rounds 5

The folder is ROOT/train/<class>/*.jpg + ROOT/val/<class>/*.jpg: ``--files`` smooth random JPEGs (100 classes,
2% of them in val) of ImageNet-like size and weight (400-500 x 330-400 px, quality 90, about 100 KiB), made by
train_loader_vs_timm.py's generator (an image per seed, in parallel) under ``--workdir`` and reused by later
runs; ``--folder`` uses an existing folder instead. What is measured, and the claims:

(a) listing: one plain ``os.scandir`` walk of the tree (recursive, collecting every file path, nothing else)
    against the pipeline's index step, ``bench.data.index.build_index`` + ``write_index``; ``--reps`` of each,
    alternated (W I, I W, ...), medians (the first may meet a colder dentry cache). Claim: index <= 1.5x walk.
(b) job start: ``read_index`` of that index, and a job's whole ``bench.data.load_data(cfg, index_path)``
    (freshness check: a stat per directory; the read; the split tables), medians of ``--reps`` in this
    process, then once in a fresh interpreter, its imports timed apart. Claim: load_data <= 1 s.
(c) training loader: images/s at each ``--workers`` count with the DeiT transform (finetune: deit recipe), the
    harness's loader as a fine-tune job builds it against timm's create_dataset + create_loader on the same
    folder, same transform settings, workers and batch size (train_loader_vs_timm.py's two sides, its timing:
    warm-up batches untimed, images per wall second and per CPU second from /proc). Rounds interleave the
    sides (alternating which goes first) and the worker counts; ratio of medians, harness / timm, per worker
    count. Claim: >= 0.95 at 2 workers.
(d) CPU cost: images per CPU-second of one worker (its own CPU time, at the smallest worker count > 0), and
    from it the loader cores one GPU needs to be fed at 1,500 img/s (DeiT-S training): ceil(1500 / rate).

Timings share the machine with whatever else runs: wall-clock figures are noisy, ratios of interleaved
medians and the per-CPU-second figures much less so. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

# the sibling benchmark holds the generator and the two loader sides; importing it sets OMP_NUM_THREADS=1 before
# torch loads (the main process only waits on workers). Run as a script, sys.path[0] is this folder already.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_loader_vs_timm as tl  # noqa: E402

CLASSES = 100
GPU_RATE = 1500.0  # img/s one GPU trains DeiT-S at: what the loader must deliver per GPU
CLAIM_INDEX = 1.5  # index build / plain walk
CLAIM_LOAD_S = 1.0  # a job's load_data through the index
CLAIM_LOADER = tl.CLAIM  # harness / timm img/s at 2 workers
# a job in a fresh interpreter: the imports load_data makes lazily, timed apart from the load itself
FRESH_JOB = """import sys, time
t0 = time.perf_counter()
import datasets, pyarrow.parquet, bench.data, bench.data.index
t1 = time.perf_counter()
bundle = bench.data.load_data({"source": "imagefolder", "path": sys.argv[1]}, sys.argv[2])
print(t1 - t0, time.perf_counter() - t1, len(bundle.train))
"""


def walk(top: str) -> list[str]:
    """The plain listing: every file path under ``top``, one os.scandir per directory (no sort, no stat)."""
    out, stack = [], [top]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                else:
                    out.append(e.path)
    return out


def size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def verdict(ok: bool) -> str:
    return "holds" if ok else "does NOT hold"


def listing(folder: Path, index_path: Path, reps: int) -> Any:
    """(a): plain walk vs build_index + write_index, alternated; returns the last index."""
    # imports are not listing (a job pays them anyway, see (b)); pa.table's first call imports pandas
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    from bench.data.index import build_index, write_index

    t: dict[str, list[float]] = {"walk": [], "build": [], "write": []}
    index = n_walk = None
    for r in range(reps):
        for what in ("walk", "index") if r % 2 == 0 else ("index", "walk"):
            if what == "walk":
                dt, paths = timed(lambda: walk(str(folder)))
                t["walk"].append(dt)
                n_walk = len(paths)
            else:
                dt, index = timed(lambda: build_index(folder))
                t["build"].append(dt)
                t["write"].append(timed(lambda: write_index(index, index_path))[0])
    total = [b + w for b, w in zip(t["build"], t["write"])]
    print(f"(a) listing, {reps} alternated reps, median [all]: {n_walk} files in the tree, {index.files} indexed")
    print(f"    plain os.scandir walk           {med(t['walk']):7.3f} s  [{', '.join(f'{x:.3f}' for x in t['walk'])}]")
    print(
        f"    build_index + write_index       {med(total):7.3f} s  [{', '.join(f'{x:.3f}' for x in total)}]"
        f"  (build {med(t['build']):.3f} s, write {med(t['write']):.3f} s, "
        f"{index_path.stat().st_size / 2**20:.2f} MiB)"
    )
    ratio = med(total) / med(t["walk"])
    print(f"    index / walk = {ratio:.2f} (claim: <= {CLAIM_INDEX}) -> {verdict(ratio <= CLAIM_INDEX)}", flush=True)
    return index


def job_start(folder: Path, index_path: Path, reps: int) -> None:
    """(b): what each job pays to get its data through the index."""
    import datasets  # noqa: F401  (imported before timing; the fresh interpreter times imports apart)

    from bench.data import load_data
    from bench.data.index import read_index

    cfg = {"source": "imagefolder", "path": str(folder)}
    t_read = [timed(lambda: read_index(index_path))[0] for _ in range(reps)]
    t_load = [timed(lambda: load_data(cfg, index_path))[0] for _ in range(reps)]
    out = subprocess.run(
        [sys.executable, "-c", FRESH_JOB, str(folder), str(index_path)], capture_output=True, text=True, check=True
    ).stdout.split()
    imports, fresh = float(out[0]), float(out[1])
    print(f"(b) job start, median of {reps} in this process [all]:")
    print(f"    read_index                      {med(t_read):7.3f} s  [{', '.join(f'{x:.3f}' for x in t_read)}]")
    print(f"    load_data(cfg, index_path)      {med(t_load):7.3f} s  [{', '.join(f'{x:.3f}' for x in t_load)}]")
    print(
        f"    fresh interpreter: imports (datasets, pyarrow, bench.data) {imports:.3f} s, then load_data "
        f"{fresh:.3f} s ({out[2]} train images)"
    )
    worst = max(med(t_load), fresh)
    print(f"    load_data <= {CLAIM_LOAD_S:g} s (in process and fresh) -> {verdict(worst <= CLAIM_LOAD_S)}", flush=True)


def loaders(folder: Path, index_path: Path, args: argparse.Namespace) -> None:
    """(c) and (d): both sides at every worker count, interleaved rounds."""
    import torch

    torch.set_num_threads(1)
    guard = tl.guard_posterize()  # before either side builds its transform, so both run the same ops
    h_ds, recipe, h_make = tl.harness_side(folder, 224, index_path)
    t_ds, t_make, note = tl.timm_side(folder, 224, recipe)
    t_make(args.batch_size, 0)  # create_loader installs the transform on the dataset
    same = [repr(t) for t in h_ds.transform.transforms[1:]] == [repr(t) for t in t_ds.transform.transforms]
    print(
        f"(c) training loader: DeiT transform ({recipe['auto_augment']}, re_prob {recipe['re_prob']}), "
        f"transforms identical: {'yes' if same else 'NO'}; batch {args.batch_size}, warm-up {args.warmup} + "
        f"timed {args.batches} batches, {args.rounds} rounds, {len(h_ds)} train images"
    )
    print(f"    {note}" + (f"\n    {guard}" if guard else ""), flush=True)
    sides = (("harness", h_make), ("timm", t_make))
    res: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
    for r in range(args.rounds):
        line = []
        for j, w in enumerate(args.workers if r % 2 == 0 else args.workers[::-1]):  # worker counts alternate too
            for side, make in sides if (r + j) % 2 == 0 else sides[::-1]:  # so does which side goes first
                loader = make(args.batch_size, w, r)
                res.setdefault((side, w), []).append(tl.time_loader(loader, args.warmup, args.batches))
                del loader
                gc.collect()
                line.append(f"{side[0].upper()}{w} {res[side, w][-1][0]:.0f}")
        print(f"    round {r + 1}: " + ", ".join(line) + " img/s", flush=True)
    print("    workers   harness img/s   timm img/s   ratio   | img per CPU-s: harness  timm  ratio")
    for w in args.workers:
        h, t = (med([x[0] for x in res[s, w]]) for s in ("harness", "timm"))
        hc, tc = (med([x[1] for x in res[s, w]]) for s in ("harness", "timm"))
        print(f"    {w:7d}   {h:13.1f}   {t:10.1f}   {h / t:5.3f}   | {hc:21.1f} {tc:5.1f}  {hc / tc:5.3f}")
    if 2 in args.workers:
        ratio = med([x[0] for x in res["harness", 2]]) / med([x[0] for x in res["timm", 2]])
        print(
            f"    harness / timm at 2 workers = {ratio:.3f} (claim: >= {CLAIM_LOADER}) -> "
            f"{verdict(ratio >= CLAIM_LOADER)}"
        )
    one = min((w for w in args.workers if w > 0), default=None)
    if one is not None:  # (d): n images / the workers' own CPU seconds = images per core-second of a worker
        per_core = {s: med([x[2] for x in res[s, one]]) for s in ("harness", "timm")}
        cores = math.ceil(GPU_RATE / per_core["harness"])
        print(
            f"(d) one worker's CPU (at {one} worker{'s' * (one > 1)}): harness {per_core['harness']:.1f} img per "
            f"CPU-s per core (timm {per_core['timm']:.1f}); to feed one GPU at {GPU_RATE:,.0f} img/s: "
            f"ceil({GPU_RATE:.0f} / {per_core['harness']:.1f}) = {cores} loader cores per GPU, "
            f"plus the training process's own"
        )
    print(f"load average now: {', '.join(f'{x:.1f}' for x in os.getloadavg())} ({os.cpu_count()} cpus)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=50_000, help="images to generate (train + val)")
    ap.add_argument("--folder", type=Path, default=None, help="an existing ROOT/<split>/<class>/<image> folder")
    ap.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "tokenbench-data-pipeline",
        help="where the folder is generated and the index written (kept: reruns reuse them)",
    )
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=3, help="untimed batches per loader")
    ap.add_argument("--batches", type=int, default=20, help="timed batches per loader")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of the loader comparison (0: skip (c), (d))")
    ap.add_argument("--reps", type=int, default=5, help="repetitions of the listing and job-start timings")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)

    if args.folder is None:
        n_val = max(1, args.files // 50)
        t, folder = timed(
            lambda: tl.generate_folder(args.workdir, CLASSES, args.files - n_val, n_val, seed=0, val_split="val")
        )
        print(f"folder: {folder} (ready in {t:.1f} s)", flush=True)
    else:
        folder = args.folder.expanduser().resolve()
        print(f"folder: {folder}", flush=True)
    index_path = args.workdir / f"{folder.name}.index.parquet"  # where the pipeline's index step would put it
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{os.cpu_count()} cpus, load average {load}; index: {index_path}", flush=True)

    index = listing(folder, index_path, args.reps)
    if args.folder is None and index.files != args.files:
        raise SystemExit(f"{folder} holds {index.files} images, not {args.files}: delete it to regenerate")
    sample = np.random.default_rng(0).choice(index.table["path"].to_pylist(), min(300, index.files), replace=False)
    kib = np.mean([os.path.getsize(folder / p) for p in sample]) / 1024
    px = np.mean([size(folder / p) for p in sample], axis=0)
    print(
        f"    images: {dict(sorted(index.counts.items()))}, {len(index.classes)} classes, mean file {kib:.0f} KiB, "
        f"mean size {px[0]:.0f}x{px[1]:.0f} px (a sample of {len(sample)})",
        flush=True,
    )
    job_start(folder, index_path, args.reps)
    if args.rounds:
        loaders(folder, index_path, args)


if __name__ == "__main__":
    main()
