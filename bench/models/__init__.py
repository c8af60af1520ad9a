"""Backbones: any timm ViT by name, plus small ViTs sized for the embedded data on a CPU."""
from bench.models.backbones import build_backbone, list_backbones, load_checkpoint_into

__all__ = ["build_backbone", "list_backbones", "load_checkpoint_into"]
