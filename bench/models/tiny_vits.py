"""Small ViTs for the embedded 32x32 canvas data, registered in timm's registry like any other model.

They keep the 12-block (or 8-block) layout of DeiT so the 3/6/9 pruning stages sit where the papers
put them; width is what shrinks.
"""

from __future__ import annotations

from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer


def _tiny_vit(embed_dim: int, depth: int, num_heads: int, **kwargs) -> VisionTransformer:
    args = dict(
        img_size=32,
        patch_size=4,
        in_chans=1,
        num_classes=10,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=4.0,
    )
    args.update(
        {
            k: v
            for k, v in kwargs.items()
            if k not in ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")
        }
    )
    model = VisionTransformer(**args)
    # the embedded data is grayscale in [0, 1]; normalise to roughly [-1, 1]
    model.pretrained_cfg = dict(
        input_size=(args["in_chans"], args["img_size"], args["img_size"]),
        mean=(0.5,) * args["in_chans"],
        std=(0.5,) * args["in_chans"],
        crop_pct=1.0,
        num_classes=args["num_classes"],
    )
    return model


@register_model
def tb_vit_pico_patch4_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """64-dim, 8 blocks, 2 heads, 64 patch tokens: the smoke-suite backbone (about 0.4M parameters)."""
    return _tiny_vit(64, 8, 2, **kwargs)


@register_model
def tb_vit_nano_patch4_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """96-dim, 12 blocks, 3 heads: DeiT's depth at a CPU-friendly width (about 1.4M parameters)."""
    return _tiny_vit(96, 12, 3, **kwargs)
