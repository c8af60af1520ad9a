"""A backbone patched by a method outside any suite: what `bench flops` and `bench throughput` measure."""

from __future__ import annotations

from torch import nn

from bench.errors import UsageError
from bench.methods import Method


def standalone_model(
    backbone: str,
    method: str,
    keep_ratio: float,
    image_size: int | None,
    num_classes: int,
    in_chans: int | None,
    param: tuple[str, ...],
) -> tuple[nn.Module, Method]:
    """BACKBONE patched by METHOD at KEEP_RATIO, ready for inference; ``param`` holds KEY=VALUE strings (YAML values)."""
    from bench.methods import create_method
    from bench.models import build_backbone
    from bench.suite_file import parse_yaml

    params = {}
    for p in param:
        if "=" not in p:
            raise UsageError(f"--param {p!r} is not KEY=VALUE")
        k, v = p.split("=", 1)
        params[k] = parse_yaml(v, f"--param {k}")  # the suite's bounded YAML loader (bench.suite_file)
    model = build_backbone(backbone, num_classes=num_classes, in_chans=in_chans, img_size=image_size)
    m = create_method(method, keep_ratio, 0, **params)
    m.apply(model)
    return m.prepare_inference(model).eval(), m
