"""One measurement of a patched model's cost, shared by the run record (bench.runner) and `bench flops`.

Everything is fvcore's convention, 1 multiply-add = 1 "flop", in GMACs per image:

* ``gmacs_fvcore_1mac_eq_1flop``: the whole model, averaged over the images given (input-dependent methods
  differ per image); the method's own modules (``method.overhead_modules``) counted by what they execute,
  not only by what feeds the output (:mod:`bench.measure.flops`).
* ``method_gmacs_fvcore_1mac_eq_1flop``: the share of those modules (clustering, prediction modules), already
  inside the total.
* ``theoretical_gmacs_nonzero_weights_fvcore_1mac_eq_1flop``: for weight-sparse methods, the total less the
  multiply-adds on zero weights (what sparse kernels could at best run); None for the others.
* ``params_m`` / ``nonzero_params_m``: parameters, all and nonzero, in millions.
* ``flops_skipped_ops`` / ``flops_skipped_op_count``: the operators the count has no cost for (elementwise ops
  and reductions: a product without a handle fails the count instead), as ``"aten::add:25;aten::gelu:12"``
  sorted by name, each with its most calls in one counted batch ("" when none), and those calls summed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bench.errors import UsageError
from bench.measure.flops import mean_flops, skipped_text

#: the keys :func:`measure_cost` returns, in the order the run record lists them
COST_KEYS: tuple[str, ...] = (
    "gmacs_fvcore_1mac_eq_1flop",
    "method_gmacs_fvcore_1mac_eq_1flop",
    "theoretical_gmacs_nonzero_weights_fvcore_1mac_eq_1flop",
    "nonzero_params_m",
    "params_m",
    "flops_skipped_ops",
    "flops_skipped_op_count",
)


def measure_cost(model: nn.Module, method: Any, images: torch.Tensor, *, batch_size: int = 16) -> dict[str, Any]:
    """GMACs, the method's share, theoretical sparse GMACs, parameters and skipped operators of ``model``
    (patched by ``method``) on ``images`` (N, C, H, W), counted ``batch_size`` images per trace.

    Returns exactly :data:`COST_KEYS`. The model's weights and training flags are left as they were.
    """
    from bench.methods.sparse import sparse_layers, zero_weight_gmacs

    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[0] < 1:
        raise UsageError(
            f"measure_cost needs a (N, C, H, W) batch of at least one image, got "
            f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}"
        )
    if batch_size < 1:
        raise UsageError(f"measure_cost: batch_size must be >= 1, got {batch_size}")
    overhead = list(method.overhead_modules)
    sparse = list(sparse_layers(model)) if method.weight_sparse else []
    flops = mean_flops(
        model,
        images.split(batch_size),
        max_images=int(images.shape[0]),
        layers=sparse + overhead,
        executed_modules=overhead,
    )
    theoretical = flops.gmacs - zero_weight_gmacs(model, flops.by_layer) if method.weight_sparse else None
    return {
        "gmacs_fvcore_1mac_eq_1flop": flops.gmacs,
        # the method's own compute (clustering, prediction modules), already inside the total above
        "method_gmacs_fvcore_1mac_eq_1flop": sum(flops.by_layer.get(n, 0.0) for n in overhead),
        # only nonzero weights counted: what sparse kernels could at best run (SViTE's savings on paper)
        "theoretical_gmacs_nonzero_weights_fvcore_1mac_eq_1flop": theoretical,
        "nonzero_params_m": sum(int((p != 0).sum()) for p in model.parameters()) / 1e6,
        "params_m": flops.params / 1e6,
        "flops_skipped_ops": skipped_text(flops.skipped_ops),
        "flops_skipped_op_count": int(sum(flops.skipped_ops.values())),
    }
