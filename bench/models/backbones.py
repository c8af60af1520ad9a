"""Build a backbone by timm name, with weights from the hub or from a local checkpoint file."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from bench.errors import ArtifactError, UsageError, clip
from bench.io import load_torch
from bench.models import tiny_vits  # noqa: F401  (registers the small ViTs with timm)
from bench.models.names import KNOWN_BACKBONES, list_backbones  # noqa: F401  (re-exported)
from bench.registry import did_you_mean

log = logging.getLogger(__name__)


#: Backbones the harness is tested with; any other timm ViT name works too.
def check_backbone_name(name: str) -> None:
    if not timm.is_model(name):
        candidates = sorted(set(timm.list_models("*vit*")) | set(timm.list_models("deit*")) | set(KNOWN_BACKBONES))
        raise UsageError(f"unknown backbone {name!r}{did_you_mean(name, candidates)}")


def default_image_size(name: str) -> int:
    """The input resolution timm builds ``name`` at (its pretrained_cfg's input size)."""
    check_backbone_name(name)
    cfg = timm.get_pretrained_cfg(name)
    if cfg is not None and cfg.input_size:
        return int(cfg.input_size[-1])
    with torch.device("meta"):  # a model without a pretrained cfg (ours): its patch embedding says
        return int(timm.create_model(name).patch_embed.img_size[0])


def build_backbone(
    name: str,
    *,
    num_classes: int,
    in_chans: int | None = None,
    img_size: int | None = None,
    pretrained: bool | str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Create ``name`` from timm. ``pretrained`` is False/None, True (hub) or a local .pth/.safetensors path."""
    check_backbone_name(name)
    args: dict[str, Any] = dict(num_classes=num_classes, **kwargs)
    if in_chans is not None:
        args["in_chans"] = in_chans
    if img_size is not None:
        args["img_size"] = img_size
    from_hub = pretrained is True
    if from_hub:  # weights not in the cache and no hub: one line now, not timm's retries and a clipped error later
        from bench.preflight import check_hub_reachable

        check_hub_reachable(name)
    try:
        model = timm.create_model(name, pretrained=from_hub, **args)
    except (OSError, RuntimeError, ValueError) as e:
        if from_hub:
            raise UsageError(
                f"could not fetch pretrained weights for {name!r} from the hub ({type(e).__name__}: "
                f"{clip(e, 160)}); pass a local checkpoint path instead"
            ) from None
        raise UsageError(f"could not build backbone {name!r}: {clip(e)}") from None
    if not (hasattr(model, "blocks") and hasattr(model, "patch_embed")):
        raise UsageError(
            f"backbone {name!r} is not a ViT (no blocks/patch_embed); token methods need a timm VisionTransformer"
        )
    if isinstance(pretrained, (str, Path)) and str(pretrained):
        load_checkpoint_into(model, pretrained)
    return model


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path))
        except Exception as e:  # truncated, or not a safetensors file
            raise ArtifactError(
                f"{path}: unreadable (truncated or corrupt: {clip(e)}); delete it and rebuild it"
            ) from None
    else:
        sd = load_torch(path)
    for key in ("model_ema", "model", "state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict):
        raise UsageError(f"checkpoint {str(path)!r} holds no state_dict")
    return {k.removeprefix("module."): v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def load_checkpoint_into(model: nn.Module, path: str | Path) -> list[str]:
    """Load weights; a classifier head of another size and another image size are adapted.

    Returns the keys left at their fresh initialisation (the head when the class count differs).
    """
    sd = read_state_dict(path)
    own = model.state_dict()
    if "pos_embed" in sd and "pos_embed" in own and sd["pos_embed"].shape != own["pos_embed"].shape:
        from timm.layers import resample_abs_pos_embed

        prefix = 0 if getattr(model, "no_embed_class", False) else int(model.num_prefix_tokens)
        sd["pos_embed"] = resample_abs_pos_embed(
            sd["pos_embed"], new_size=list(model.patch_embed.grid_size), num_prefix_tokens=prefix
        )
    dropped = [k for k, v in sd.items() if k in own and own[k].shape != v.shape]
    if any(not k.startswith(("head.", "head_dist.")) for k in dropped):
        bad = next(k for k in dropped if not k.startswith(("head.", "head_dist.")))
        raise UsageError(
            f"checkpoint {str(path)!r} does not fit the model: {bad} is {tuple(sd[bad].shape)}, model wants {tuple(own[bad].shape)}"
        )
    for k in dropped:
        del sd[k]
    missing, unexpected = model.load_state_dict(sd, strict=False)
    unexpected = [k for k in unexpected if not k.startswith("head_dist.")]
    not_head = [k for k in missing if not k.startswith("head.")]
    if not_head or unexpected:
        what = f"missing {not_head[:3]}" if not_head else f"unexpected {unexpected[:3]}"
        raise UsageError(f"checkpoint {str(path)!r} does not fit the model: {what}")
    if missing:
        log.info("checkpoint %s: fresh %s (class count differs)", path, ", ".join(missing))
    return list(missing)
