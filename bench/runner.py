"""The three compute steps of a suite, each turning files into files:

pretrain (backbone -> pretrain/<backbone>/model.pth), finetune (run -> runs/<id>/model.pth) and
evaluate (runs/<id>/model.pth -> runs/<id>/run.json). A step that fails writes runs/<id>/failure.json
(never its declared output), so the failure is recorded and the step is retried next time.
"""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.config import Run, Suite, run_identity
from bench.errors import UsageError, clip
from bench.io import atomic_torch_save, atomic_write_json, load_torch, safe_unlink
from bench.methods import Method, create_method
from bench.provenance import pick_device, provenance
from bench.requeue import slurm_restarts
from bench.results.collect import FAILURE_FILE, KEPT_NPZ
from bench.results.collect import RUN_FILE as RECORD_FILE
from bench.results.row import check as check_record
from bench.run_setup import (  # the names marked noqa are re-exported (bench.cli uses them from here)
    INDEX_FILE,  # noqa: F401
    MODEL_FILE,
    _data,
    _model,
    _torch_data,
    build_run_model,
    evaluated_inputs,  # noqa: F401
    finetune_basis,
    index_path,  # noqa: F401
    pretrain_basis,
    pretrain_dir,
    pretrain_output,  # noqa: F401
    run_dir,
    step_output,
)
from bench.runtime import Runtime
from bench.train import TrainResult, train_model
from bench.train import distributed as D
from bench.train.checkpoint import made_for

#: how a model was trained across processes: batch size and learning-rate scaling made explicit
TRAIN_META_KEYS = (
    "world_size",
    "per_device_batch_size",
    "global_batch_size",
    "lr",
    "lr_effective",
    "optimizer_groups",
    "lr_rule",
    "accumulation_steps",
    "micro_batch_size",
)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _train_meta(result: TrainResult | None) -> dict[str, Any]:
    """Batch size, learning-rate scaling and optimiser groups of a training run, explicit in model.pth and
    the records."""
    return {
        **{k: getattr(result, k) if result else None for k in TRAIN_META_KEYS},
        "train_runtime": result.runtime if result else None,
    }


def _save_trained(path: Path, model: nn.Module, result: TrainResult | None, meta: dict[str, Any]) -> None:
    """model.pth: the weights, the EMA weights when the recipe kept an EMA, and the run's metadata."""
    payload = {"model": model.state_dict(), "meta": meta}
    if result is not None and result.ema_state is not None:
        payload["model_ema"] = result.ema_state
    atomic_torch_save(path, payload)


def _device(device: str | None) -> tuple[torch.device, D.DistEnv]:
    """The device picked as for one process; under a multi-process launcher, this rank's device of that type."""
    dev = pick_device(device)
    env = D.init_distributed(dev.type)
    return (env.device if env.world_size > 1 else dev), env


def pretrain(
    suite: Suite,
    backbone_name: str,
    *,
    root: str | Path = "results",
    device: str | None = None,
    runtime: Runtime | None = None,
) -> Path:
    """Produce the dense starting point of every fine-tune: trained from scratch, from the hub, or a file.

    Under a multi-process launcher every rank trains its shard; rank 0 alone evaluates and saves.
    """
    dev, env = _device(device)
    backbone = suite.backbone(backbone_name)
    out = pretrain_dir(suite, backbone_name, root)
    bundle = _data(suite, root)
    init = {"scratch": False, "hub": True}.get(backbone.init, backbone.init)
    torch.manual_seed(suite.pretrain_seed)  # a from-scratch init is reproducible, and one process matches N
    recipe = suite.pretrain_recipe
    purpose = made_for(*pretrain_basis(suite, backbone_name, root))  # before anything is written
    model = _model(suite, backbone, bundle, init, recipe)
    from bench.evaluate import evaluate

    t0 = time.time()
    result = None
    train_ds, val_ds = _torch_data(suite, model, bundle, recipe)
    if recipe["epochs"] > 0:
        result = train_model(
            model,
            create_method("dense"),
            train_ds,
            recipe,
            seed=suite.pretrain_seed,
            out_dir=out,
            device=dev,
            runtime=runtime,
            made_for=purpose,
        )
    if not env.is_main:
        D.barrier()  # returns once rank 0 has saved model.pth
        return out / MODEL_FILE
    acc = evaluate(
        model,
        val_ds,
        device=dev,
        batch_size=suite.evaluate["batch_size"],
        max_images=suite.evaluate["max_val_images"],
        runtime=runtime,
    )
    _log(f"pretrained {backbone_name}: val top-1 {acc.top1:.2f}% on {acc.images} images")
    meta = {
        "backbone": backbone_name,
        "init": backbone.init,
        "recipe": recipe,
        "recipe_sources": suite.pretrain_sources,
        "seed": suite.pretrain_seed,
        "wall_s": time.time() - t0,
        "train_peak_mem_mb": result.peak_mem_mb if result else None,
        "val_top1": acc.top1,
        "val_top5": acc.top5,
        "dataset": bundle.name,
        "data_index": bundle.index,
        "train_requeues": slurm_restarts(),
        **_train_meta(result),
        **provenance(dev),
    }
    _save_trained(out / MODEL_FILE, model.cpu(), result, meta)
    safe_unlink(out / "train_state.pth")
    D.barrier()
    return out / MODEL_FILE


def finetune(
    suite: Suite, run: Run, *, root: str | Path = "results", device: str | None = None, runtime: Runtime | None = None
) -> Path:
    """Fine-tune one run from its pretrained backbone; under a multi-process launcher rank 0 saves."""
    if run.finetune is None:
        raise UsageError(
            f"run {run.run_id!r} is evaluated without fine-tuning (finetune: none); run `bench evaluate` on it"
        )
    dev, env = _device(device)
    out = run_dir(suite, run, root)
    ckpt = pretrain_dir(suite, run.backbone, root) / MODEL_FILE
    if not ckpt.exists():
        raise UsageError(f"no pretrained backbone at {ckpt}; run the pretrain step first")
    bundle = _data(suite, root)
    purpose = made_for(*finetune_basis(suite, run, root))
    torch.manual_seed(run.seed)  # modules a method adds start from the same init in every process and rerun
    model, method = build_run_model(suite, run, bundle, ckpt, run.finetune)
    teacher = None
    if method.needs_teacher():
        teacher = _model(suite, suite.backbone(run.backbone), bundle, str(ckpt))
    train_ds, _ = _torch_data(suite, model, bundle, run.finetune)
    result = train_model(
        model,
        method,
        train_ds,
        run.finetune,
        seed=run.seed,
        out_dir=out,
        device=dev,
        teacher=teacher,
        runtime=runtime,
        made_for=purpose,
    )
    meta = {
        "run_id": run.run_id,
        "recipe": run.finetune,
        "recipe_sources": run.finetune_sources,
        "train_epochs": result.epochs,
        "train_steps": result.steps,
        "train_wall_s": result.wall_s,
        "train_final_loss": result.final_loss,
        "train_peak_mem_mb": result.peak_mem_mb,
        "resumed_from_epoch": result.resumed_from_epoch,
        "batch_size": run.finetune["batch_size"],
        "device": dev.type,
        "train_requeues": slurm_restarts(),
        "data_index": bundle.index,
        **_train_meta(result),
        "method_train_metrics": result.method_metrics,
    }
    if env.is_main:
        _save_trained(out / MODEL_FILE, model.cpu(), result, meta)
        safe_unlink(out / "train_state.pth")
    D.barrier()
    return out / MODEL_FILE


def evaluate_run(
    suite: Suite, run: Run, *, root: str | Path = "results", device: str | None = None, runtime: Runtime | None = None
) -> dict[str, Any]:
    """Accuracy, tokens and FLOPs of a fine-tuned run, written as its run.json record. Throughput is measured
    by the timing step (bench.timing), every run of a backbone against dense in one job."""
    from bench.evaluate import evaluate
    from bench.measure.cost import measure_cost
    from bench.train.loaders import in_memory

    dev = pick_device(device)
    out = run_dir(suite, run, root)
    bundle = _data(suite, root)
    saved, model, method = _trained_model(suite, run, bundle, root)
    _, val_ds = _torch_data(suite, model, bundle)
    ev_cfg = suite.evaluate
    t0 = time.time()
    acc = evaluate(
        model, val_ds, device=dev, batch_size=ev_cfg["batch_size"], max_images=ev_cfg["max_val_images"], runtime=runtime
    )
    eval_wall = time.time() - t0
    acc_ema = None
    if saved.get("model_ema") is not None:  # the EMA weights, scored as their own metrics
        ema_model = _ema_model(suite, run, bundle, saved)
        acc_ema = evaluate(
            ema_model,
            val_ds,
            device=dev,
            batch_size=ev_cfg["batch_size"],
            max_images=ev_cfg["max_val_images"],
            runtime=runtime,
        )
        del ema_model

    model.to("cpu")
    n_flops = ev_cfg["flops_images"] if method.input_dependent else 1
    sample = torch.stack([val_ds[i][0] for i in range(min(n_flops, len(val_ds)))])
    cost = measure_cost(model, method, sample, batch_size=16)  # the same function as `bench flops`
    _record_kept_tokens(model, method, val_ds, out)

    meta = saved.get("meta", {})
    record = {
        **run_identity(suite, run, bundle.name),
        "status": "ok",
        "error": None,
        "top1": acc.top1,
        "top5": acc.top5,
        "val_images": acc.images,
        "top1_ema": acc_ema.top1 if acc_ema else None,
        "top5_ema": acc_ema.top5 if acc_ema else None,
        "finetuned": run.finetune is not None,
        "weights": run.weights,
        "recipe_sources": meta.get("recipe_sources"),
        # what the method derived for this model beyond its parameters (e.g. ToMe's r from the keep ratio)
        "method_derived": {
            k: v
            for k, v in method.describe().items()
            if k not in ("method", "keep_ratio", "seed") and k not in method.config
        },
        **cost,  # GMACs (total, the method's own, nonzero weights only), params, ops fvcore skipped
        "mean_tokens": acc.mean_tokens,
        "tokens_per_block": acc.tokens_per_block,
        "token_schedule": method.token_schedule(model),
        "train_epochs": meta.get("train_epochs"),
        "train_wall_s": meta.get("train_wall_s"),
        "train_peak_mem_mb": meta.get("train_peak_mem_mb"),
        "batch_size": meta.get("batch_size"),
        "method_train_metrics": meta.get("method_train_metrics"),
        **{k: meta.get(k) for k in TRAIN_META_KEYS},
        "train_requeues": meta.get("train_requeues"),
        "train_runtime": meta.get("train_runtime"),
        "eval_runtime": (runtime or Runtime()).record(in_memory(val_ds)),
        "data_index": bundle.index,
        "eval_wall_s": eval_wall,
        **provenance(dev),
    }
    atomic_write_json(out / RECORD_FILE, check_record(record))  # off the schema: fails here, not at collect
    safe_unlink(out / FAILURE_FILE)
    return record


def _state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights from a harness model.pth ({"model": ...}), an official-style {"model": ...} or a bare state_dict.

    ``weights_only``: a checkpoint in a shared folder must not run code when loaded.
    """
    obj = load_torch(path)
    sd = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UsageError(f"{path}: not a state_dict or a checkpoint holding one under 'model'")
    return sd


def _trained_model(suite: Suite, run: Run, bundle, root: str | Path) -> tuple[dict[str, Any], nn.Module, Method]:
    """(saved checkpoint, model ready for inference, method) of a run: its fine-tuned model.pth, or with
    ``finetune: none`` the pretrained backbone with the method applied (and the method's given weights)."""
    if run.finetune is not None:
        path = run_dir(suite, run, root) / MODEL_FILE
        if not path.is_file():
            raise UsageError(
                f"run {run.run_id!r} is not trained yet (no {path}); run its finetune step first "
                f"(bench train SUITE --run {run.run_id})"
            )
        saved = load_torch(path)
        model, method = build_run_model(suite, run, bundle, None)
        model.load_state_dict(saved["model"])
    else:
        saved = {"meta": {}}
        model, method = build_run_model(suite, run, bundle, pretrain_dir(suite, run.backbone, root) / MODEL_FILE)
        if run.weights:
            missing, unexpected = model.load_state_dict(_state_dict(run.weights), strict=False)
            if missing or unexpected:
                what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
                raise UsageError(
                    f"{run.weights}: does not fit the {run.method_name} model of {run.backbone} "
                    f"({what}{', ...' if len(missing or unexpected) > 3 else ''})"
                )
    return saved, method.prepare_inference(model), method  # e.g. S2ViTE removes its cut heads and neurons


def _ema_model(suite: Suite, run: Run, bundle, saved: dict[str, Any]) -> nn.Module:
    """The EMA weights in a model of their own. For methods with a weight budget (SViTE's weights, S2ViTE's
    heads and neurons) the trained model's zeros are applied to the average (an EMA of pruned-and-regrown
    weights is not sparse), so it keeps the budget and S2ViTE's cut structures are removed from it too."""
    model, method = build_run_model(suite, run, bundle, None)
    ema = dict(saved["model_ema"])
    if method.weight_sparse or not method.reduces_tokens:
        for k, v in saved["model"].items():
            if v.is_floating_point() and k in ema:
                ema[k] = torch.where(v == 0, torch.zeros_like(ema[k]), ema[k])
    model.load_state_dict(ema)
    return method.prepare_inference(model)


def _record_kept_tokens(model: nn.Module, method: Method, val_ds, out: Path, n_images: int = 6) -> None:
    """For token-reducing methods (before or inside blocks): a few val images and each reduction's kept patches
    (and merged groups), which the report's gallery draws."""
    from timm.data import resolve_data_config

    from bench.measure.kept_tokens import record_kept_tokens

    schedule = method.token_schedule(model)
    if not hasattr(method, "record_kept") or min(schedule) == max(schedule):
        return
    cfg = resolve_data_config(model=model)
    images = torch.stack([val_ds[i][0] for i in range(min(n_images, len(val_ds)))])
    record_kept_tokens(model, method, images, out / KEPT_NPZ, mean=cfg["mean"], std=cfg["std"])


def record_failure(suite: Suite, run: Run, step: str, exc: BaseException, *, root: str | Path = "results") -> Path:
    """Write failure.json for a run whose step raised; the run's declared outputs are left absent."""
    from bench.train.distributed import is_main

    path = run_dir(suite, run, root) / FAILURE_FILE
    if not is_main():  # in a multi-process run rank 0 speaks for all
        return path
    result = step_output(suite, run, "evaluate", root)
    if result.matches():  # a failed re-attempt (wrong --device, a --force) never hides the good result
        _log(
            f"bench: {run.run_id}: {step} failed, but {result.output} holds a valid result; not recording the "
            f"failure over it"
        )
        return result.output
    from bench.data import describe_data

    try:
        dataset = describe_data(suite.data)
    except Exception:  # the data config itself may be what failed
        dataset = str(suite.data.get("name") or suite.data.get("path"))
    record = {
        **run_identity(suite, run, dataset),
        "status": "failed",
        "failed_step": step,
        "error": clip(f"{type(exc).__name__}: {exc}", 500),
        "traceback": "".join(traceback.format_exception(exc))[-4000:],
        **provenance(pick_device()),
    }
    atomic_write_json(path, check_record(record))
    return path
