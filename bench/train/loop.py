"""The training loop every method goes through: AdamW + warm-up/cosine (timm factories), AMP on GPU,
gradient clipping, per-epoch atomic checkpoints with automatic resume, and a hard stop on non-finite loss.

Resume is exact on CPU: the data order of epoch e depends only on (seed, e), and the RNG states of torch
and of the method are checkpointed with the weights.
"""
from __future__ import annotations

import json
import math
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from bench.errors import RunFailed
from bench.io import atomic_torch_save, atomic_write_text
from bench.methods.base import Method, TrainContext

STATE_FILE = "train_state.pth"
LOG_FILE = "train_log.jsonl"


@dataclass
class TrainResult:
    epochs: int
    steps: int
    wall_s: float
    final_loss: float
    peak_mem_mb: float
    resumed_from_epoch: int | None


def _loader(ds: Dataset, batch_size: int, seed: int, epoch: int, workers: int, shuffle: bool) -> DataLoader:
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, drop_last=shuffle and len(ds) >= batch_size,
                      generator=g, num_workers=workers, pin_memory=torch.cuda.is_available())


def _peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is KiB on Linux: the process's peak resident memory, not the model's alone
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def train_model(model: nn.Module, method: Method, train_ds: Dataset, recipe: dict[str, Any], *, seed: int,
                out_dir: Path, device: torch.device, teacher: nn.Module | None = None,
                log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> TrainResult:
    out_dir.mkdir(parents=True, exist_ok=True)
    epochs = int(recipe["epochs"])
    torch.manual_seed(seed)
    model.to(device)
    if teacher is not None:
        teacher.to(device).eval().requires_grad_(False)

    steps_per_epoch = len(_loader(train_ds, recipe["batch_size"], seed, 0, 0, True))
    if recipe.get("max_steps_per_epoch"):
        steps_per_epoch = min(steps_per_epoch, int(recipe["max_steps_per_epoch"]))
    total = max(1, epochs * steps_per_epoch)
    groups = method.optimizer_groups(model, recipe)
    optimizer = create_optimizer_v2(groups if groups is not None else model, opt=recipe["opt"], lr=recipe["lr"],
                                    weight_decay=recipe["weight_decay"])
    scheduler = CosineLRScheduler(optimizer, t_initial=total, lr_min=recipe["min_lr"],
                                  warmup_t=int(recipe["warmup_epochs"] * steps_per_epoch),
                                  warmup_lr_init=recipe["warmup_lr"], t_in_epochs=False)
    amp_dtype = _amp_dtype(device, bool(recipe.get("amp", True)))
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    start_epoch, resumed = 0, None
    state_path = out_dir / STATE_FILE
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        method.load_train_state(state["method"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        start_epoch = resumed = int(state["epoch"]) + 1
        log(f"resuming from the checkpoint of epoch {start_epoch - 1} ({state_path})")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    t0, step, loss_value = time.time(), start_epoch * steps_per_epoch, float("nan")
    for epoch in range(start_epoch, epochs):
        model.train()
        method.on_epoch_start(model, epoch, epochs)
        loader = _loader(train_ds, recipe["batch_size"], seed, epoch, recipe.get("num_workers", 0), True)
        sums: dict[str, float] = {}
        bar = tqdm(loader, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                   disable=None, mininterval=2.0, file=sys.stderr)
        for i, (images, targets) in enumerate(bar):
            if i >= steps_per_epoch:
                break
            images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            scheduler.step_update(step)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = model(images)
                teacher_logits = None
                if teacher is not None:
                    with torch.no_grad():
                        teacher_logits = teacher(images)
                terms = {"ce": F.cross_entropy(logits.float(), targets, label_smoothing=recipe["label_smoothing"])}
                terms.update(method.extra_losses(model, TrainContext(images, targets, logits, teacher_logits)))
                loss = sum(terms.values())
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise RunFailed(f"non-finite loss ({loss_value}) at epoch {epoch + 1}, step {step + 1}; "
                                f"terms: {', '.join(f'{k}={float(v.detach()):.4g}' for k, v in terms.items())}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if recipe.get("clip_grad"):
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), recipe["clip_grad"])
            method.before_optimizer_step(model, step)
            scaler.step(optimizer)
            scaler.update()
            method.after_optimizer_step(model, step)
            step += 1
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
        n = max(1, min(steps_per_epoch, len(loader)))
        record = {"epoch": epoch + 1, "step": step, "lr": optimizer.param_groups[0]["lr"], "loss": sum(sums.values()) / n,
                  **{f"loss_{k}": v / n for k, v in sums.items()}, "elapsed_s": round(time.time() - t0, 2)}
        log(json.dumps(record))
        _append_log(out_dir / LOG_FILE, record)
        atomic_torch_save(state_path, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "method": method.train_state(), "epoch": epoch, "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        })
    return TrainResult(epochs=epochs, steps=step, wall_s=time.time() - t0, final_loss=loss_value,
                       peak_mem_mb=_peak_mem_mb(device), resumed_from_epoch=resumed)


def _append_log(path: Path, record: dict[str, Any]) -> None:
    # the log is rewritten whole, so a crash mid-write cannot leave a torn line
    lines = path.read_text().splitlines() if path.exists() else []
    lines = [ln for ln in lines if json.loads(ln).get("epoch", 0) < record["epoch"]] + [json.dumps(record)]
    atomic_write_text(path, "\n".join(lines) + "\n")
