"""Does the harness keep a GPU busy? DeiT-S dense and DynamicViT trained for a few hundred steps from a JPEG
folder through the harness's own data path, next to timm's ``benchmark.py --bench train`` (a benchmark for a
GPU machine, not a test; never run in CI).

    python tests/benchmarks/gpu_train_feed.py --folder DIR --timm-benchmark /path/to/timm/benchmark.py
    python tests/benchmarks/gpu_train_feed.py --files 20000 --workers 15 --batch-size 256 --steps 300

What is measured, per model (``deit_small_patch16_224`` dense, and DynamicViT at keep ratio 0.7 with its dense
teacher):

* img/s of ``bench.train.train_model`` (the loop every fine-tune runs) from the folder's index, with the DeiT
  augmentation of ``recipe: dynamicvit`` (RandAugment, colour jitter, random erasing, Mixup/CutMix), AMP, the
  runtime's loader workers, pinned memory and persistent workers, over the steps after a warm-up;
* GPU busy time / wall time over a window of steps (``torch.profiler``: the union of the CUDA kernels'
  intervals over the window's wall time); the goal is at least 0.9, i.e. the loader never starves the GPU;
* next to it, timm's ``benchmark.py --bench train`` for the same model and batch (synthetic inputs already on
  the GPU, so no loader at all: the rate the GPU allows), run as a subprocess when ``--timm-benchmark`` gives
  the script (it ships with timm's repository, not its wheel); the ratio harness / timm is what the data path
  and the method cost.

Prints figures; asserts nothing. ``--device cpu --model tb_vit_pico_patch4_32 --image-size 32`` runs the same
code path on a laptop (no busy figure: that needs CUDA).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
GOAL_BUSY = 0.9


def busy_fraction(prof: torch.profiler.profile) -> float | None:
    """Union of the CUDA kernel intervals over the profiled window (first kernel start to last kernel end)."""
    spans = sorted(
        (e.time_range.start, e.time_range.end)
        for e in prof.events()
        if e.device_type == torch.autograd.DeviceType.CUDA and e.time_range.end > e.time_range.start
    )
    if not spans:
        return None
    busy, (lo, hi) = 0, spans[0]
    start = lo
    for a, b in spans[1:]:
        if a > hi:
            busy, lo, hi = busy + hi - lo, a, b
        else:
            hi = max(hi, b)
    busy += hi - lo
    return busy / max(1, hi - start) if hi > start else None


class StepClock:
    """Wraps a method's after_optimizer_step: times every step and drives the profiler's schedule."""

    def __init__(self, method: Any, prof: torch.profiler.profile | None, sync: bool):
        self.times: list[float] = []
        self.prof, self.sync = prof, sync
        original = method.after_optimizer_step

        def after(model: Any, step: int) -> None:
            original(model, step)
            if self.sync:
                torch.cuda.synchronize()
            self.times.append(time.perf_counter())
            if self.prof is not None:
                self.prof.step()

        method.after_optimizer_step = after

    def rate(self, batch: int, warmup: int) -> float:
        t = self.times[warmup:]
        return batch * (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 else float("nan")


def train_harness(args: argparse.Namespace, method_name: str, folder: Path, work: Path) -> dict[str, Any]:
    from bench.config import resolve_recipe
    from bench.data import load_data, make_torch_datasets
    from bench.methods import create_method
    from bench.models import build_backbone
    from bench.runtime import Runtime
    from bench.train import train_model

    device = torch.device(args.device)
    bundle = load_data({"source": "imagefolder", "path": str(folder)}, work / "index.parquet")
    recipe, _ = resolve_recipe(
        (
            "finetune",
            {
                "recipe": "dynamicvit",
                "epochs": 1,
                "batch_size": args.batch_size,
                "max_steps_per_epoch": args.steps,
                "model_ema": False,
                "amp": device.type == "cuda",
            },
        )
    )
    kwargs = {"in_chans": 3, **({"img_size": args.image_size} if args.image_size else {})}
    model = build_backbone(args.model, num_classes=bundle.num_classes, pretrained=False, **kwargs)
    method = create_method(method_name, 0.7) if method_name != "dense" else create_method("dense")
    method.apply(model)
    teacher = (
        build_backbone(args.model, num_classes=bundle.num_classes, pretrained=False, **kwargs)
        if method.needs_teacher()
        else None
    )
    size = int(model.patch_embed.img_size[0])
    train, _ = make_torch_datasets(
        bundle, image_size=size, in_chans=3, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), recipe=recipe
    )
    prof = None
    if device.type == "cuda":
        window = torch.profiler.schedule(wait=args.warmup, warmup=5, active=args.profile_steps, repeat=1)
        prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA], schedule=window)
        prof.start()
    clock = StepClock(method, prof, sync=device.type == "cuda")
    runtime = Runtime(workers=args.workers, prefetch_factor=args.prefetch_factor, device_batch=args.device_batch)
    out = Path(tempfile.mkdtemp(prefix=f"{method_name}-", dir=work))  # fresh: never resume an earlier run
    result = train_model(
        model,
        method,
        train,
        recipe,
        seed=0,
        out_dir=out,
        device=device,
        teacher=teacher,
        runtime=runtime,
        log=lambda s: None,
    )
    if prof is not None:
        prof.stop()
    return {
        "method": method_name,
        "img_s": clock.rate(args.batch_size, args.warmup),
        "steps": result.steps,
        "busy": busy_fraction(prof) if prof is not None else None,
        "workers": result.runtime["workers"],
        "accumulation_steps": result.accumulation_steps,
        "peak_mem_mb": result.peak_mem_mb,
    }


def timm_benchmark(args: argparse.Namespace, work: Path) -> float | None:
    """timm's own train benchmark for the same model and batch (synthetic inputs on the device)."""
    if not args.timm_benchmark:
        return None
    out = work / "timm_bench.json"
    cmd = [
        sys.executable,
        args.timm_benchmark,
        "--bench",
        "train",
        "-m",
        args.model,
        "-b",
        str(args.batch_size),
        "--device",
        args.device,
        "--num-bench-iter",
        str(max(40, args.steps // 2)),
        "--results-file",
        str(out),
        "--results-format",
        "json",
        "--opt",
        "adamw",
    ]
    if args.device.startswith("cuda"):
        cmd += ["--amp", "--amp-dtype", "bfloat16"]
    if args.image_size:
        cmd += ["--img-size", str(args.image_size), "--model-kwargs", f"img_size={args.image_size}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not out.exists():
        print(f"timm benchmark.py failed: {done.stderr.strip().splitlines()[-1:] or done.returncode}")
        return None
    rows = json.loads(out.read_text())
    row = rows[0] if isinstance(rows, list) else rows
    return float(row.get("train_samples_per_sec") or row.get("samples_per_sec"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", type=Path, help="an ImageNet-style folder (DIR/train/<class>/*); else one is generated")
    p.add_argument("--files", type=int, default=20_000, help="images to generate when no --folder is given")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "tokenbench-gpu-feed")
    p.add_argument("--model", default="deit_small_patch16_224")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device-batch", type=int, default=None)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=30, help="steps not timed (workers start, cudnn picks kernels)")
    p.add_argument("--profile-steps", type=int, default=40)
    p.add_argument("--workers", type=int, default=None, help="loader workers (default: the job's CPUs minus one)")
    p.add_argument("--prefetch-factor", type=int, default=4)
    p.add_argument("--methods", nargs="+", default=["dense", "dynamicvit"])
    p.add_argument("--timm-benchmark", default=None, help="path to timm's benchmark.py (from its repository)")
    args = p.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    folder = args.folder
    if folder is None:
        from tests.benchmarks.train_loader_vs_timm import generate_folder

        n_val = max(100, args.files // 50)
        folder = generate_folder(args.workdir / "images", 100, args.files - n_val, n_val, seed=0, val_split="val")
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(
        f"{args.model} on {name}, batch {args.batch_size}, {args.steps} steps ({args.warmup} warm-up), folder {folder}"
    )
    reference = timm_benchmark(args, args.workdir)
    for method in args.methods:
        r = train_harness(args, method, folder, args.workdir)
        ratio = f"{r['img_s'] / reference:.2f}x timm benchmark.py" if reference else "timm benchmark.py not run"
        busy = f"{r['busy']:.2f} (goal >= {GOAL_BUSY})" if r["busy"] is not None else "n/a (no CUDA)"
        print(
            f"  {method:10s} {r['img_s']:8.1f} img/s  ({ratio})  GPU busy/wall {busy}  workers {r['workers']}  "
            f"accumulation {r['accumulation_steps']}  peak {r['peak_mem_mb']:.0f} MiB"
        )
    if reference:
        print(f"  timm benchmark.py --bench train: {reference:.1f} img/s (synthetic inputs, plain CE, no teacher)")


if __name__ == "__main__":
    main()
