"""Build every run's parts cheaply before anything runs, so a bad value fails in one line, not after pretraining.

The schema checks each field alone; this pass checks what only the code can: the method's parameters on the
actual backbone (stage blocks that exist, a schedule that fits its depth), each recipe's optimiser, lr schedule,
Mixup and timm transform, and that ``init: hub`` names a backbone with hub weights. Models are built on the
meta device (no memory, no init cost); methods whose ``apply`` reads weight values (``reads_weights``: SViTE's
masks) get a real two-block CPU model of the same widths, once per method and backbone. The result is cached with the suite's other name checks (``bench.config``).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.errors import UsageError, clip

#: classes and image statistics stand-ins: the real ones come from the data, which is not read here
_CLASSES, _MEAN, _STD = 10, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def _at(where: str, field_name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run one check; any failure becomes one line naming the suite field."""
    try:
        return fn(*args, **kwargs)
    except UsageError as e:
        raise UsageError(f"{where}: field {field_name}: {e}") from None
    except Exception as e:  # noqa: BLE001 - an exception from a library on a bad value is bad input too
        text = clip(e)
        raise UsageError(f"{where}: field {field_name}: {type(e).__name__}: {text}") from None


def check_hub_weights(name: str) -> None:
    import timm

    if not timm.is_model_pretrained(name):
        raise UsageError(
            f"backbone {name!r} has no hub weights in timm (init: hub would train from random "
            f"weights); use init: scratch or a checkpoint file"
        )


#: seconds the hub may take to answer one HEAD request at validation (the pipeline would wait far longer)
HUB_TIMEOUT_S = 4.0


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _hub_cache() -> Path:
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(os.environ.get("HF_HUB_CACHE") or os.path.join(home, "hub"))


def _head(url: str) -> str | None:
    """None when ``url``'s server answers a HEAD request (any HTTP status: it is reachable), else why not; bounded
    by HUB_TIMEOUT_S (in a thread, so a name lookup that hangs cannot hold validation either)."""
    import threading
    import urllib.error
    import urllib.request

    outcome: list[str | None] = []

    def head() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=HUB_TIMEOUT_S).close()
            outcome.append(None)
        except urllib.error.HTTPError:  # an answer (404, 401, ...): the server is there; timm reports what it finds
            outcome.append(None)
        except Exception as e:  # noqa: BLE001 - connection refused, no name resolution, timeout, TLS
            reason = getattr(e, "reason", e)
            outcome.append(f"{type(reason).__name__}: {clip(reason, 120)}")

    worker = threading.Thread(target=head, daemon=True)
    worker.start()
    worker.join(HUB_TIMEOUT_S + 1.0)
    return outcome[0] if outcome else f"no answer within {HUB_TIMEOUT_S:g} s"


def check_hub_reachable(name: str) -> None:
    """``init: hub`` downloads the weights when pretraining starts: check now, in seconds, that it can (the weights
    are in the local cache, or the hub answers), instead of a failure a minute into the pipeline."""
    from huggingface_hub import hf_hub_url, try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None or not cfg.hf_hub_id:  # timm fetches these from cfg.url (torch.hub's cache) or a local file
        return _check_url_reachable(name, getattr(cfg, "url", "") or "")
    repo_id, _, revision = cfg.hf_hub_id.partition("@")
    files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
    cache = _hub_cache()
    if any(
        isinstance(try_to_load_from_cache(repo_id, f, cache_dir=cache, revision=revision or None), str) for f in files
    ):
        return
    if _hub_offline():
        raise UsageError(
            f"HF_HUB_OFFLINE is set and {name}'s hub weights ({repo_id}) are not in the local cache ({cache}); "
            f"unset HF_HUB_OFFLINE, fill the cache once where the hub is reachable, or use a checkpoint file"
        )
    endpoint = os.environ.get("HF_ENDPOINT") or None
    why = _head(hf_hub_url(repo_id, files[0], revision=revision or None, endpoint=endpoint))
    if why:
        raise UsageError(
            f"the hub ({endpoint or 'https://huggingface.co'}) is unreachable from this machine, no network? ({why}); "
            f"{name}'s weights ({repo_id}) are not in the local cache ({cache}): fill it where the network "
            f"reaches the hub, or use a checkpoint file"
        )


def _check_url_reachable(name: str, url: str) -> None:
    if not url:
        return
    import torch.hub

    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url.split("?")[0])
    if cached.is_file():
        return
    if _hub_offline():  # timm honours it for every download
        raise UsageError(f"HF_HUB_OFFLINE is set and {name}'s weights ({url}) are not in the cache ({cached.parent})")
    why = _head(url)
    if why:
        raise UsageError(
            f"{url} is unreachable from this machine, no network? ({why}); put {name}'s weights in {cached.parent} "
            f"or use a checkpoint file"
        )


def check_opt(name: str) -> None:
    from timm.optim import list_optimizers

    from bench.registry import did_you_mean

    known = list_optimizers()
    if name.lower().removeprefix("lookahead_") not in known:
        raise UsageError(f"unknown optimizer {name!r}{did_you_mean(name.lower(), known)} (timm's optimizers)")


def recipe_checks(recipe: dict[str, Any], model: Any, lr_scales: dict[str, float]) -> list[tuple[str, Callable]]:
    """(recipe key, check) for the parts the loop would build from ``recipe``: the optimiser, the lr schedule,
    Mixup and the training transform."""
    from bench.data.transforms import build_transform
    from bench.train.loop import make_mixup
    from bench.train.optim import GroupSchedule, build_optimizer, param_groups

    def schedule() -> None:
        optimizer = build_optimizer(param_groups(model, lr_scales, recipe), recipe, float(recipe["lr"]))
        GroupSchedule(optimizer, recipe, steps_per_epoch=10)

    size = int(model.patch_embed.img_size[0])
    augment = next((k for k in ("auto_augment", "color_jitter", "re_mode", "scale", "ratio") if recipe.get(k)), "")
    return [
        ("opt", lambda: check_opt(recipe["opt"])),
        ("frozen_params", lambda: param_groups(model, lr_scales, recipe)),
        ("", schedule),
        ("mixup", lambda: make_mixup(recipe, _CLASSES)),
        (
            augment,
            lambda: build_transform(
                train=True, image_size=size, in_chans=3, mean=_MEAN, std=_STD, native_size=None, recipe=recipe
            ),
        ),
    ]


def check_recipe_at(
    where: str, field_name: str, recipe: dict[str, Any], model: Any, lr_scales: dict[str, float]
) -> None:
    if int(recipe["epochs"]) == 0:  # nothing is built from a recipe that trains no epoch
        return
    for key, check in recipe_checks(recipe, model, lr_scales):
        _at(where, f"{field_name}.{key}" if key else field_name, check)


def preflight(suite: Any, where: str, *, check_hub: bool = False) -> None:
    """Raise a one-line UsageError for the first run whose method, backbone or recipe cannot be built."""
    import torch

    from bench.methods import create_method
    from bench.models import build_backbone

    meta_models: dict[str, Any] = {}
    cpu_models: dict[str, Any] = {}
    index = {b.label: i for i, b in enumerate(suite.backbones)}

    def backbone(label: str, device: str) -> Any:
        cache = meta_models if device == "meta" else cpu_models
        if label not in cache:
            b = suite.backbone(label)
            # a real model only for methods that read weight values: two blocks of the same widths and patches
            # (what their checks depend on) cost a fraction of the full depth's init and masks
            shallow = {"depth": 2} if device != "meta" and "depth" not in b.kwargs else {}
            with torch.device(device):
                try:
                    cache[label] = build_backbone(
                        b.name, num_classes=_CLASSES, img_size=b.image_size, **b.kwargs, **shallow
                    )
                except Exception:  # noqa: BLE001 - e.g. a model that fixes its depth: built as it is
                    cache[label] = _at(
                        where,
                        f"backbones[{index[label]}]",
                        build_backbone,
                        b.name,
                        num_classes=_CLASSES,
                        img_size=b.image_size,
                        **b.kwargs,
                    )
            if device == "meta":  # weights no machine holds, refused before a real model is built (bench.suite_values)
                from bench.suite_values import oversized_model

                why = oversized_model(cache[label])
                if why:
                    at = f"backbones[{index[label]}]" + (".kwargs" if b.kwargs else "")
                    raise UsageError(f"{where}: field {at}: {why}")
        return cache[label]

    for i, b in enumerate(suite.backbones):
        if b.init == "hub":
            _at(where, f"backbones[{i}].init", check_hub_weights, b.name)
            if check_hub:
                _at(where, f"backbones[{i}].init", check_hub_reachable, b.name)
        check_recipe_at(where, "pretrain.recipe", suite.pretrain_recipe, backbone(b.label, "meta"), {})

    labels = _method_fields(suite.raw)
    checked: set[tuple] = set()
    applied_for_real: set[tuple[str, str]] = set()
    for run in suite.runs:
        field_name = labels[run.method]
        key = (run.method, run.backbone, run.keep_ratio)
        if key in checked:
            continue
        checked.add(key)
        method = _at(where, field_name, create_method, run.method_name, run.keep_ratio, run.seed, **run.method_params)
        if method.reads_weights:  # a real (random, shallow) model, once per method and backbone: masks cost
            if (run.method_name, run.backbone) in applied_for_real:
                continue
            applied_for_real.add((run.method_name, run.backbone))
        model = copy.deepcopy(backbone(run.backbone, "cpu" if method.reads_weights else "meta"))
        try:
            method.check_model(model)
        except UsageError as e:  # the backbone lacks what the method reads (a class token): no parameter fixes it
            raise UsageError(f"{where}: field {field_name}: on backbone {run.backbone}: {e}") from None
        try:
            method.apply(model)
        except UsageError as e:
            raise UsageError(f"{where}: field {field_name}.params: on backbone {run.backbone}: {e}") from None
        except Exception as e:  # noqa: BLE001
            raise UsageError(
                f"{where}: field {field_name}.params: do not fit {run.backbone}: {type(e).__name__}: {clip(e)}"
            ) from None
        _at(where, f"{field_name}.params", method.token_schedule, model)
        if run.finetune is not None:
            recipe_field = f"{field_name}.finetune" if _own_recipe(suite.raw, run.method) else "finetune"
            check_recipe_at(where, recipe_field, run.finetune, model, method.lr_scales())
    # checkpoint files (init, weights) opened and matched to the model they load into, once the runs are known good
    from bench.models.checkpoint_checks import check_checkpoints

    check_checkpoints(suite, where)


def _method_fields(raw: dict[str, Any]) -> dict[str, str]:
    out = {}
    for i, m in enumerate(raw["methods"]):
        m = {"name": m} if isinstance(m, str) else m
        out[m.get("label", m["name"])] = f"methods[{i}]"
    return out


def _own_recipe(raw: dict[str, Any], label: str) -> bool:
    for m in raw["methods"]:
        if isinstance(m, dict) and m.get("label", m["name"]) == label:
            return "finetune" in m
    return False
