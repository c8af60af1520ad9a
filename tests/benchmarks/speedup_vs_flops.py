"""Measured speed-up against dense, next to the FLOPs-implied one, for a group of methods on this machine.

    python tests/benchmarks/speedup_vs_flops.py --group token_pooling   # at DynamicViT rho=0.7's schedule
    python tests/benchmarks/speedup_vs_flops.py --group svite           # S2ViTE physically pruned, SViTE+

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

from bench.measure import count_flops, measure_throughput
from bench.methods import create_method
from bench.methods.sparse import sparse_layers, zero_weight_gmacs
from bench.methods.token_pooling import POOLER
from bench.models import build_backbone

GROUPS = {
    "token_pooling": [("dynamicvit", "dynamicvit", 0.7, {}),
                      ("kmedoids w", "token_pooling", 0.7, {}),
                      ("kmeans w", "token_pooling", 0.7, {"clustering": "kmeans"}),
                      ("importance", "importance", 0.7, {}),
                      ("grid_pool", "grid_pool", 0.7, {})],
    "svite": [("svite d50", "svite", 1.0, {"density": 0.5}),
              ("s2vite d50", "s2vite", 1.0, {"density": 0.5}),
              ("s2vite d70", "s2vite", 1.0, {"density": 0.7}),
              ("svite+ k95", "svite_plus", 0.95, {"density": 0.5}),
              ("svite+ k90", "svite_plus", 0.9, {"density": 0.5})],
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
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--group", choices=sorted(GROUPS), default="token_pooling")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.randn(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    print(f"{args.backbone}, batch {args.batch}, {args.threads} threads, fp32, CPU: {torch.get_num_threads()} threads")

    variants = [("dense", "dense", 1.0, {})] + GROUPS[args.group]
    dense_gmacs = dense_tp = None
    print(f"{'variant':<12} {'GMACs':>7} {'theory':>7} {'own':>6} {'cluster %':>9} {'img/s':>7} {'IQR':>6} "
          f"{'speed-up':>8} {'FLOPs-implied':>13} {'ratio':>6}")
    for label, method, keep, params in variants:
        model, m = model_for(args.backbone, method, keep, **params)
        layers = list(sparse_layers(model)) if m.weight_sparse else None
        rep = count_flops(model, x[:2], layers=layers)
        theory = f"{rep.gmacs - zero_weight_gmacs(model, rep.by_layer):7.3f}" if m.weight_sparse else f"{'':>7}"
        own = sum(rep.by_module.get(n, 0.0) for n in m.overhead_modules)
        share = ""
        if hasattr(model, POOLER):
            _, s = clustering_share(model, x, args.repeats)
            share = f"{100 * s:.1f}"
        tp = measure_throughput(model, image_size=224, batch_sizes=[args.batch], repeats=args.repeats, warmup=1).headline()
        if method == "dense":
            dense_gmacs, dense_tp = rep.gmacs, tp["img_per_s_median"]
        speed = tp["img_per_s_median"] / dense_tp
        implied = dense_gmacs / rep.gmacs
        print(f"{label:<12} {rep.gmacs:7.3f} {theory} {own:6.3f} {share:>9} {tp['img_per_s_median']:7.1f} "
              f"{tp['img_per_s_iqr']:6.1f} {speed:8.2f} {implied:13.2f} {speed / implied:6.2f}")


if __name__ == "__main__":
    main()
