"""Backbones: any timm ViT by name, plus small ViTs sized for the embedded data on a CPU.

Importing the package imports no torch; ``build_backbone`` and ``load_checkpoint_into`` import timm on first use.
"""

from __future__ import annotations

from typing import Any

from bench.models.names import list_backbones

__all__ = ["build_backbone", "list_backbones", "load_checkpoint_into"]


def __getattr__(name: str) -> Any:
    if name in ("build_backbone", "load_checkpoint_into"):
        from bench.models import backbones

        return getattr(backbones, name)
    raise AttributeError(f"module 'bench.models' has no attribute {name!r}")
