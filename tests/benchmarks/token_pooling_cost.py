"""Token Pooling's cost on this machine: clustering time as a share of the forward pass, and throughput
against dense at the DynamicViT rho=0.7 schedule (speed-up divided by the FLOPs-implied speed-up).

    python tests/benchmarks/token_pooling_cost.py [--backbone deit_small_patch16_224] [--batch 64] [--threads 2]

Prints figures; asserts nothing (timings depend on the machine).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.measure import count_flops, measure_throughput
from bench.methods import create_method
from bench.methods.token_pooling import POOLER
from bench.models import build_backbone


def model_for(backbone: str, method: str, keep: float, **params):
    model = build_backbone(backbone, num_classes=1000).eval()
    m = create_method(method, keep, **params)
    m.apply(model)
    return model, m


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
    ap.add_argument("--keep", type=float, default=0.7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.randn(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    print(f"{args.backbone}, batch {args.batch}, {args.threads} threads, fp32, CPU: {torch.get_num_threads()} threads")

    variants = [("dense", "dense", 1.0, {}),
                ("dynamicvit", "dynamicvit", args.keep, {}),
                ("kmedoids w", "token_pooling", args.keep, {}),
                ("kmeans w", "token_pooling", args.keep, {"clustering": "kmeans"}),
                ("importance", "importance", args.keep, {}),
                ("grid_pool", "grid_pool", args.keep, {})]
    dense_gmacs = dense_tp = None
    print(f"{'variant':<12} {'GMACs':>7} {'own':>6} {'cluster %':>9} {'img/s':>7} {'IQR':>6} {'speed-up':>8} "
          f"{'FLOPs-implied':>13} {'ratio':>6}")
    for label, method, keep, params in variants:
        model, m = model_for(args.backbone, method, keep, **params)
        rep = count_flops(model, x[:2])
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
        print(f"{label:<12} {rep.gmacs:7.3f} {own:6.3f} {share:>9} {tp['img_per_s_median']:7.1f} "
              f"{tp['img_per_s_iqr']:6.1f} {speed:8.2f} {implied:13.2f} {speed / implied:6.2f}")


if __name__ == "__main__":
    main()
