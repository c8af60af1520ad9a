"""Measured speed-up against dense, next to the FLOPs-implied one, for a group of methods on this machine.

    python tests/benchmarks/speedup_vs_flops.py                         # every token-reducing method, keep 0.7
    python tests/benchmarks/speedup_vs_flops.py --group token_pooling   # at DynamicViT rho=0.7's schedule
    python tests/benchmarks/speedup_vs_flops.py --group svite           # S2ViTE physically pruned, SViTE+
    python tests/benchmarks/speedup_vs_flops.py --group evit_tome --batch-sizes 1,32,64   # EViT, ToMe r 8/13/16
    python tests/benchmarks/speedup_vs_flops.py --device cuda --batch-sizes 256

Speed-ups come from the harness's paired timing (bench.measure.paired): every variant timed interleaved with
dense in this one process, median of the paired ratios with its 95 % interval.

``ratio`` = measured speed-up / FLOPs-implied speed-up (1.0: the FLOPs savings all become wall-clock
savings). For Token Pooling the clustering's share of the forward pass is printed too; for weight-sparse
methods the theoretical GMACs (nonzero weights only) sit next to the measured ones. Weights are random
(no hub here): token choices and masks are those of an untrained model, costs are not. Prints figures;
asserts nothing (timings depend on the machine).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.measure import count_flops
from bench.measure.paired import TimingProtocol, device_fingerprint, device_key, time_paired
from bench.methods import create_method
from bench.methods.sparse import sparse_layers, zero_weight_gmacs
from bench.methods.token_pooling import POOLER
from bench.models import build_backbone

GROUPS = {
    "reducing": [
        ("static", "static", 0.7, {}),
        ("random", "random", 0.7, {}),
        ("dynamicvit", "dynamicvit", 0.7, {}),
        ("token_pooling", "token_pooling", 0.7, {}),
        ("importance", "importance", 0.7, {}),
        ("grid_pool", "grid_pool", 0.7, {}),
        ("evit", "evit", 0.7, {}),
        ("tome", "tome", 0.7, {}),
        ("svite_plus k70", "svite_plus", 0.7, {"density": 0.5}),
    ],
    "token_pooling": [
        ("dynamicvit", "dynamicvit", 0.7, {}),
        ("kmedoids w", "token_pooling", 0.7, {}),
        ("kmeans w", "token_pooling", 0.7, {"clustering": "kmeans"}),
        ("importance", "importance", 0.7, {}),
        ("grid_pool", "grid_pool", 0.7, {}),
    ],
    "evit_tome": [
        ("evit k70", "evit", 0.7, {}),
        ("evit k50", "evit", 0.5, {}),
        ("tome r8", "tome", 1.0, {"r": 8}),
        ("tome r13", "tome", 1.0, {"r": 13}),
        ("tome r16", "tome", 1.0, {"r": 16}),
        ("static k70", "static", 0.7, {}),
    ],
    "svite": [
        ("svite d50", "svite", 1.0, {"density": 0.5}),
        ("s2vite d50", "s2vite", 1.0, {"density": 0.5}),
        ("s2vite d70", "s2vite", 1.0, {"density": 0.7}),
        ("svite+ k95", "svite_plus", 0.95, {"density": 0.5}),
        ("svite+ k90", "svite_plus", 0.9, {"density": 0.5}),
    ],
}


def model_for(backbone: str, method: str, keep: float, **params):
    model = build_backbone(backbone, num_classes=1000).eval()
    m = create_method(method, keep, **params)
    m.apply(model)
    return m.prepare_inference(model).eval(), m


@torch.no_grad()
def clustering_share(model, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    """(median forward seconds, median share of it spent in the pooling module)."""
    pooler = getattr(model, POOLER)
    spent: list[float] = []
    start: list[float] = []
    pooler.register_forward_pre_hook(lambda *a: start.append(time.perf_counter()))
    pooler.register_forward_hook(lambda *a: spent.append(time.perf_counter() - start[-1]))
    model(x)  # warm-up
    totals, shares = [], []
    for _ in range(repeats):
        spent.clear()
        t0 = time.perf_counter()
        model(x)
        total = time.perf_counter() - t0
        totals.append(total)
        shares.append(sum(spent) / total)
    return statistics.median(totals), statistics.median(shares)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="deit_small_patch16_224")
    ap.add_argument("--batch-sizes", default="32,64")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5, help="paired repeats per variant")
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds per repeat")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--group", choices=sorted(GROUPS), default="reducing")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    dev = torch.device(args.device)
    variants = [("dense", "dense", 1.0, {})] + GROUPS[args.group]
    models, costs = {}, {}
    for label, method, keep, params in variants:
        model, m = model_for(args.backbone, method, keep, **params)
        layers = list(sparse_layers(model)) if m.weight_sparse else None
        rep = count_flops(model, x, layers=layers)
        costs[label] = (
            rep.gmacs,
            rep.gmacs - zero_weight_gmacs(model, rep.by_layer) if m.weight_sparse else None,
            sum(rep.by_module.get(n, 0.0) for n in m.overhead_modules),
            clustering_share(model, x[:1].repeat(sizes[0], 1, 1, 1), 3)[1] if hasattr(model, POOLER) else None,
        )
        models[label] = model
    protocol = TimingProtocol(batch_sizes=sizes, rounds=args.rounds, min_time_s=args.min_time, warmup=1)
    rows = time_paired(models, "dense", image_size=224, device=dev, protocol=protocol, log=print)
    key = device_key(device_fingerprint(dev))
    print(f"\n{args.backbone}, fp32, on {key}; {args.rounds} paired repeats of >= {args.min_time} s per variant")
    print(
        "| variant | batch | GMACs | theory | own | cluster % | img/s (CV) | speed-up [95% CI] | FLOPs-implied | "
        "measured / implied |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    dense_gmacs = costs["dense"][0]
    for row in sorted(rows, key=lambda r: (r["batch_size"], r["label"] != "dense", r["label"])):
        gmacs, theory, own, share = costs[row["label"]]
        implied = dense_gmacs / gmacs
        flag = " (unreliable)" if row["speedup_unreliable"] else ""
        print(
            f"| {row['label']} | {row['batch_size']} | {gmacs:.3f} | {'' if theory is None else f'{theory:.3f}'} | "
            f"{own:.3f} | {'' if share is None else f'{100 * share:.1f}'} | "
            f"{row['img_per_s_median']:.4g} ({row['img_per_s_cv']:.1%}) | "
            f"{row['speedup']:.3f} [{row['speedup_ci_low']:.3f}, {row['speedup_ci_high']:.3f}]{flag} | "
            f"{implied:.3f} | {row['speedup'] / implied:.3f} |"
        )


if __name__ == "__main__":
    main()
