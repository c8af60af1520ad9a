"""`bench`'s dense img/s next to timm's `benchmark.py` and a minimal hand-written loop, in one interleaved run.

    python tests/benchmarks/throughput_vs_timm.py --timm-benchmark /path/to/timm/benchmark.py
    python tests/benchmarks/throughput_vs_timm.py --timm-benchmark benchmark.py --device cuda --batch-sizes 1,32,64,256

timm's ``benchmark.py`` lives in its repository, not in the pip package: give its path. Each round visits the
three tools in a random order at every batch size, so a machine that slows down during the run slows all three;
the figures are the median over rounds of each tool's img/s and the median of the paired ratios within rounds.
Every tool runs the same model (DeiT-S, random weights: no hub here), the same batch, ``torch.inference_mode``,
the same number of timed forward passes and threads. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.measure import measure_throughput
from bench.models import build_backbone


def bench_tool(model, batch: int, args) -> float:
    rep = measure_throughput(
        model,
        image_size=224,
        device=args.device,
        batch_sizes=[batch],
        warmup=args.warmup,
        repeats=args.iters,
        min_time_s=0.0,
    )
    return rep.headline()["img_per_s_median"]


@torch.inference_mode()
def hand_loop(model, batch: int, args) -> float:
    """What a user writes: warm up, then time N forward passes."""
    dev = torch.device(args.device)
    model = model.eval().to(dev)
    x = torch.randn(batch, 3, 224, 224, device=dev)
    for _ in range(args.warmup):
        model(x)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.iters):
        model(x)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return batch * args.iters / (time.perf_counter() - t0)


def timm_tool(batch: int, args) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        cmd = [
            sys.executable,
            args.timm_benchmark,
            "--bench",
            "inference",
            "-m",
            args.model,
            "-b",
            str(batch),
            "--device",
            args.device,
            "--num-warm-iter",
            str(args.warmup),
            "--num-bench-iter",
            str(args.iters),
            "--no-retry",
            "--results-file",
            str(out),
            "--results-format",
            "json",
        ]
        env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode != 0 or not out.exists():
            raise SystemExit(f"timm benchmark.py failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
        result = json.loads(out.read_text())
        result = result[0] if isinstance(result, list) else result
        return float(result.get("infer_samples_per_sec", result.get("samples_per_sec")))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--timm-benchmark", required=True, help="path to timm's benchmark.py (from its repository)")
    p.add_argument("--model", default="deit_small_patch16_224")
    p.add_argument("--batch-sizes", default="1,32,64")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--iters", type=int, default=8, help="timed forward passes per tool and round (timm needs >= 5)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_backbone(args.model, num_classes=1000).eval()
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    rng = random.Random(args.seed)
    rates = {(b, t): [] for b in sizes for t in ("bench", "timm", "hand")}
    tools = {
        "bench": lambda b: bench_tool(model, b, args),
        "hand": lambda b: hand_loop(model, b, args),
        "timm": lambda b: timm_tool(b, args),
    }
    for r in range(args.rounds):
        for b in sizes:
            order = list(tools)
            rng.shuffle(order)
            for name in order:
                rates[(b, name)].append(tools[name](b))
            print(f"round {r + 1} batch {b}: " + ", ".join(f"{n} {rates[(b, n)][-1]:.2f}" for n in tools), flush=True)
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(
        f"\n{args.model} on {dev}, {torch.get_num_threads()} threads, torch {torch.__version__}, fp32, "
        f"{args.iters} timed passes per tool, {args.rounds} interleaved rounds"
    )
    print("| batch | bench img/s | timm benchmark.py img/s | hand loop img/s | bench / timm | bench / hand |")
    print("|---:|---:|---:|---:|---:|---:|")
    for b in sizes:
        med = {t: statistics.median(rates[(b, t)]) for t in tools}
        vs_timm = statistics.median(x / y for x, y in zip(rates[(b, "bench")], rates[(b, "timm")]))
        vs_hand = statistics.median(x / y for x, y in zip(rates[(b, "bench")], rates[(b, "hand")]))
        print(f"| {b} | {med['bench']:.2f} | {med['timm']:.2f} | {med['hand']:.2f} | {vs_timm:.3f} | {vs_hand:.3f} |")


if __name__ == "__main__":
    main()
