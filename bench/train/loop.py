"""The training loop every method goes through: timm's optimiser, warm-up/cosine schedule with per-group
lr scales (``bench.train.optim``), Mixup/CutMix with soft-target cross-entropy, repeated augmentation,
model EMA (all timm), AMP on GPU, gradient clipping, per-epoch atomic checkpoints with automatic resume,
and a hard stop on non-finite loss.

Resume is exact on CPU: the data order of epoch e depends only on (seed, e), and the RNG states of torch,
numpy and Python (Mixup and timm's transforms draw from them) and of the method are checkpointed with
the weights, the optimiser and the EMA. A checkpoint made for another spec or other inputs (its ``made_for``
key differs) is set aside and training starts from epoch 0: a resume never mixes two specs.

Under a process group of N ranks (see ``bench.train.distributed``) the recipe's ``batch_size`` stays the
global batch: every rank draws the same permutation and takes its slice of each global batch, the model
is wrapped in DistributedDataParallel (gradients are averaged, so a step equals the single-process step),
logged losses are averaged over ranks, and only rank 0 writes files.
"""

from __future__ import annotations

import functools
import json
import random
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset
from tqdm import tqdm

from bench.errors import RunFailed, UsageError
from bench.io import atomic_torch_save, safe_mkdir
from bench.methods.base import Method
from bench.progress import TrainProgress
from bench.runtime import Runtime, micro_batches
from bench.suite_values import effective_lr
from bench.train import distributed as D
from bench.train.checkpoint import append_log, fresh_log, load_rng_state, read_state, rng_state
from bench.train.loaders import EpochBatches, in_memory, random_transform, train_loader
from bench.train.optim import LR_RULE, GroupSchedule, build_optimizer, describe_groups, param_groups
from bench.train.step import forward_backward

STATE_FILE = "train_state.pth"
LOG_FILE = "train_log.jsonl"


@dataclass
class TrainResult:
    epochs: int
    steps: int
    wall_s: float
    final_loss: float
    peak_mem_mb: float  # the largest over ranks
    resumed_from_epoch: int | None
    world_size: int
    per_device_batch_size: int
    global_batch_size: int
    lr: float  # the recipe's base learning rate
    lr_effective: float  # after the linear scaling rule, when the recipe sets lr_base_batch
    method_metrics: dict[str, Any] | None = None  # the method's figures at the end (e.g. nonzero weights)
    optimizer_groups: list[dict[str, Any]] | None = None  # name, params, lr_scale, weight_decay, frozen_epochs
    lr_rule: str = LR_RULE
    ema_state: dict[str, Any] | None = None  # the EMA weights (CPU) when the recipe keeps an EMA
    accumulation_steps: int = 1  # micro-batches per optimiser step (the runtime's device_batch cap)
    micro_batch_size: int | None = None
    runtime: dict[str, Any] | None = None  # loader workers, prefetch, cap, channels_last, compile as run


def _peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is KiB on Linux: the process's peak resident memory, not the model's alone
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def batch_plan(recipe: dict[str, Any], world: int, n_train: int) -> tuple[int, int, float]:
    """(global batch, per-device batch, effective lr) of a recipe in a world of ``world`` ranks."""
    global_batch = int(recipe["batch_size"])
    if global_batch % world:
        raise UsageError(
            f"batch_size {global_batch} is the global batch and must be divisible by the {world} processes"
        )
    if mixup_active(recipe) and (global_batch // world) % 2:
        raise UsageError(
            f"mixup/cutmix pair the images of a batch: the per-device batch ({global_batch // world}) must be even"
        )
    if world > 1 and n_train < global_batch:
        raise UsageError(
            f"{n_train} training images are fewer than one global batch ({global_batch}); "
            f"a multi-process run needs at least one full batch"
        )
    return global_batch, global_batch // world, effective_lr(recipe)


def mixup_active(recipe: dict[str, Any]) -> bool:
    return recipe["mixup"] > 0 or recipe["cutmix"] > 0 or recipe["cutmix_minmax"] is not None


def make_mixup(recipe: dict[str, Any], num_classes: int) -> Mixup | None:
    """timm's Mixup/CutMix with label smoothing folded into the soft targets, as DeiT; None when off."""
    if not mixup_active(recipe):
        return None
    return Mixup(
        mixup_alpha=float(recipe["mixup"]),
        cutmix_alpha=float(recipe["cutmix"]),
        cutmix_minmax=recipe["cutmix_minmax"],
        prob=float(recipe["mixup_prob"]),
        switch_prob=float(recipe["mixup_switch_prob"]),
        mode=recipe["mixup_mode"],
        label_smoothing=float(recipe["label_smoothing"]),
        num_classes=num_classes,
    )


def train_model(
    model: nn.Module,
    method: Method,
    train_ds: Dataset,
    recipe: dict[str, Any],
    *,
    seed: int,
    out_dir: Path,
    device: torch.device,
    teacher: nn.Module | None = None,
    runtime: Runtime | None = None,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
    made_for: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` with ``method`` under ``recipe``, resuming from ``out_dir``'s epoch checkpoint. ``made_for``
    (``bench.train.checkpoint.made_for``: the key of the step's spec and inputs) is stored in each checkpoint, and
    one made for anything else is set aside instead of resumed."""
    from bench.config import DEFAULT_RECIPE

    runtime = runtime or Runtime()
    if any(k not in recipe for k in DEFAULT_RECIPE):  # a partial recipe (tests, old records): defaults for the rest
        recipe = {**DEFAULT_RECIPE, **recipe}
    rank, world = D.rank(), D.world_size()
    main = rank == 0
    global_batch, local_batch, lr = batch_plan(recipe, world, len(train_ds))
    micro = micro_batches(local_batch, runtime.device_batch)
    if main:
        safe_mkdir(out_dir)  # a planted link in its place is refused (bench.io)
    epochs = int(recipe["epochs"])
    # independent drop-path, augmentation and mixup noise per shard; unchanged for one process
    torch.manual_seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
    random.seed(seed + rank)
    model.to(device)
    if teacher is not None:
        teacher.to(device).eval().requires_grad_(False)
        method.attach_teacher(teacher)

    sampler = EpochBatches(
        len(train_ds),
        global_batch,
        seed,
        rank,
        world,
        int(recipe["repeated_aug"]),
        sample_seeds=random_transform(train_ds),
    )
    steps_per_epoch = len(sampler)
    if recipe["max_steps_per_epoch"]:
        steps_per_epoch = min(steps_per_epoch, int(recipe["max_steps_per_epoch"]))
    total = max(1, epochs * steps_per_epoch)
    groups = param_groups(model, method.lr_scales(), recipe)
    # frozen_params are in no optimiser group, so optimizer.zero_grad never clears their .grad: it would sum
    # every step's gradient, enter clip_grad's norm and not be checkpointed (a resume would start it at zero).
    # Not optimised, so no gradient either; set before DDP, which registers the parameters that need one.
    for name, p in model.named_parameters():
        if name in recipe["frozen_params"]:
            p.requires_grad_(False)
    group_record = describe_groups(groups)
    optimizer = build_optimizer(groups, recipe, lr)
    schedule = GroupSchedule(optimizer, recipe, steps_per_epoch)
    mixup = make_mixup(recipe, int(model.num_classes))
    soft_ce = SoftTargetCrossEntropy()
    # averaged weights only (never run forward during training), created before DDP wraps the model
    ema = (
        ModelEmaV3(model, decay=float(recipe["model_ema_decay"]), use_warmup=bool(recipe["model_ema_warmup"]))
        if recipe["model_ema"]
        else None
    )
    amp_dtype = _amp_dtype(device, bool(recipe["amp"]))
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    start_epoch, resumed = 0, None
    state_path = out_dir / STATE_FILE
    state = read_state(state_path, made_for, log if main else lambda s: None, main=main)
    if state is None and main:
        fresh_log(out_dir / LOG_FILE)
    if state is not None:  # every rank loads it: optimizer state and RNG streams live in each process
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None:
            if state.get("ema") is None:
                raise RunFailed(f"{state_path} holds no EMA weights but the recipe keeps an EMA; delete it to restart")
            ema.load_state_dict(state["ema"])
        saved_world = int(state.get("world_size", 1))
        if saved_world == world:
            load_rng_state(state["ranks"][rank] if world > 1 else state, method, device)
        else:
            # same global batches and schedule; only the per-process random streams restart
            method.load_train_state(state["method"])
            if main:
                log(
                    f"checkpoint written by {saved_world} process(es), resuming with {world}: "
                    f"random streams are reseeded, so the resume is not bit-exact"
                )
        start_epoch = resumed = int(state["epoch"]) + 1
        if main:
            log(f"resuming from the checkpoint of epoch {start_epoch - 1} ({state_path})")
    if len(set(D.all_gather_object(start_epoch))) > 1:
        raise RunFailed(f"ranks disagree on the epoch to resume from ({state_path} not visible to all?)")
    if runtime.channels_last:  # the patch embedding's convolution is the only 4-D op of a ViT; before DDP's buckets
        model.to(memory_format=torch.channels_last)
    net: nn.Module = model
    if world > 1:
        # hooks were registered on ``model`` by method.apply; DDP calls its forward, so they still fire
        ids = (
            [device.index if device.index is not None else torch.cuda.current_device()]
            if device.type == "cuda"
            else None
        )
        net = DistributedDataParallel(model, device_ids=ids)
    if runtime.compile:
        net = torch.compile(net, **({"backend": runtime.compile} if isinstance(runtime.compile, str) else {}))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    method.on_train_start(model, total)
    task_loss = (
        soft_ce
        if mixup is not None
        else functools.partial(F.cross_entropy, label_smoothing=float(recipe["label_smoothing"]))
    )
    loader = train_loader(train_ds, sampler, runtime)
    t0, step, loss_value = time.time(), start_epoch * steps_per_epoch, float("nan")
    # epoch/step/loss/ETA for the pipeline's terminal (a record beside the step's log, at most every few seconds)
    # and, where tqdm's bar is off (a log file), a log line at most every LOG_EVERY_S seconds instead of per step
    progress = (
        TrainProgress.from_env(
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            batch_size=global_batch,
            log=None if sys.stderr.isatty() else log,
        )
        if main
        else None
    )
    for epoch in range(start_epoch, epochs):
        t_epoch = time.time()
        net.train()
        method.on_epoch_start(model, epoch, epochs)
        sampler.set_epoch(epoch)
        sums: dict[str, float] = {}
        bar = tqdm(
            loader,
            total=steps_per_epoch,
            desc=f"epoch {epoch + 1}/{epochs}",
            leave=False,
            disable=None if main else True,
            mininterval=2.0,
            file=sys.stderr,
        )
        for i, (images, targets) in enumerate(bar):
            if i >= steps_per_epoch:
                break
            images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            if runtime.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            schedule.apply(step, epoch)
            if mixup is not None:  # targets become soft (B, classes); the teacher sees the mixed images too
                if images.shape[0] % 2:  # the one short batch of a tiny dataset: Mixup pairs images
                    images, targets = images[:-1], targets[:-1]
                images, targets = mixup(images, targets)  # the whole per-device batch, before any micro split
            optimizer.zero_grad(set_to_none=True)
            try:
                loss_value, terms = forward_backward(
                    net,
                    model,
                    method,
                    teacher,
                    images,
                    targets,
                    micro_batches=micro,
                    task_loss=task_loss,
                    scaler=scaler,
                    amp_dtype=amp_dtype,
                    world=world,
                    where=f"epoch {epoch + 1}, step {step + 1}",
                )
            except torch.cuda.OutOfMemoryError:
                size = -(-images.shape[0] // micro)
                raise RunFailed(
                    f"out of GPU memory at a per-device micro-batch of {size} images "
                    f"(global batch {global_batch} on {world} device(s)); cap it in the profile: "
                    f"device_batch: {max(1, size // 2)} (or snakemake --config device_batch="
                    f"{max(1, size // 2)}), gradients are then accumulated to the same batch"
                ) from None
            if recipe["clip_grad"]:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(net.parameters(), recipe["clip_grad"])
            method.before_optimizer_step(model, step)
            scaler.step(optimizer)
            scaler.update()
            method.after_optimizer_step(model, step)
            if ema is not None:
                ema.update(model, step=step)
            step += 1
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
            if progress is not None:
                progress.update(epoch=epoch + 1, batch=i + 1, global_step=step, loss=sum(sums.values()) / (i + 1))
        n = max(1, min(steps_per_epoch, len(loader)))
        ranks = D.all_gather_object(rng_state(method, device)) if world > 1 else None
        if main:
            record = {
                "epoch": epoch + 1,
                "step": step,
                "lr": schedule.scheduled_lr(step - 1, epoch),
                **{f"lr_{g['name']}": g["lr"] for g in optimizer.param_groups},
                "loss": sum(sums.values()) / n,
                **{f"loss_{k}": v / n for k, v in sums.items()},
                "elapsed_s": round(time.time() - t0, 2),
                "epoch_s": round(time.time() - t_epoch, 2),
                "epochs_total": epochs,
                **method.train_metrics(),
            }
            log(json.dumps(record))
            append_log(out_dir / LOG_FILE, record, log)
            atomic_torch_save(
                state_path,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(),
                    "epoch": epoch,
                    "world_size": world,
                    "ranks": ranks,
                    **rng_state(method, device),
                    "ema": ema.state_dict() if ema is not None else None,
                    "made_for": made_for,
                },
            )
        D.barrier()  # the checkpoint is complete before any rank moves on
    if progress is not None:
        progress.finish()
    return TrainResult(
        epochs=epochs,
        steps=step,
        wall_s=time.time() - t0,
        final_loss=loss_value,
        peak_mem_mb=D.all_reduce_max(_peak_mem_mb(device), device),
        resumed_from_epoch=resumed,
        world_size=world,
        per_device_batch_size=local_batch,
        global_batch_size=global_batch,
        lr=float(recipe["lr"]),
        lr_effective=lr,
        method_metrics=method.train_metrics() or None,
        optimizer_groups=group_record,
        accumulation_steps=micro,
        micro_batch_size=-(-local_batch // micro),
        runtime=runtime.record(in_memory(train_ds)),
        ema_state={k: v.detach().cpu() for k, v in ema.module.state_dict().items()} if ema else None,
    )
