"""Backbone names the harness is tested with (plain Python: `bench ls backbones` imports no torch)."""

from __future__ import annotations

#: the small ViTs sized for the embedded data on a CPU (registered with timm by bench.models.tiny_vits)
TINY_VITS = ("tb_vit_pico_patch4_32", "tb_vit_nano_patch4_32")
KNOWN_BACKBONES = (
    *TINY_VITS,
    "deit_tiny_patch16_224",
    "deit_small_patch16_224",
    "deit_base_patch16_224",
    "vit_tiny_patch16_224",
    "vit_small_patch16_224",
    "vit_base_patch16_224",
)


def list_backbones() -> list[str]:
    return list(KNOWN_BACKBONES)
