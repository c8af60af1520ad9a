"""FLOP counting with fvcore, reported in GMACs (one multiply-add = one "flop" in fvcore).

Two gaps in stock fvcore are closed here:

* timm's fused attention calls ``F.scaled_dot_product_attention``, which fvcore does not know,
  so the q@k^T and attn@v matmuls silently vanish (DeiT-S: 4.25 instead of 4.61 GMACs).
  :func:`sdpa_flop_handle` counts them. The traced graph holds SDPA as one node (its
  decomposition is not traced), so there is nothing else to subtract: fused and unfused
  attention give the same count.
* Token-pruning methods gather/topk tokens in forward pre-hooks. Those index ops cost no MACs
  but fvcore would list them as "skipped"; :data:`ZERO_COST_OPS` get explicit zero handles.

* Token clustering (Token Pooling) computes distances with ``baddbmm`` (:func:`baddbmm_flop_handle`),
  assigns tokens with ``min``/``argmin`` over them and sums clusters with ``index_add``. Those are counted one flop per element compared or added
  (:data:`ELEMENT_OPS`): not multiply-adds, but the work the method adds, which should not vanish.

Method plugins with other custom ops add handles with :func:`add_op_handle` (global) or pass
``extra_handles`` to :func:`count_flops`.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch
from torch import nn

from bench.errors import UsageError

with warnings.catch_warnings():
    # fvcore scripts its focal loss at import; recent torch flags torch.jit.script as deprecated.
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
    from fvcore.nn import FlopCountAnalysis

# fvcore's handle signature: (jit input values, jit output values) -> count or Counter.
Handle = Callable[[list[Any], list[Any]], Any]

# Index/sort/scatter ops used by token pruning: memory movement and comparisons, no MACs.
ZERO_COST_OPS: tuple[str, ...] = (
    "aten::topk",
    "aten::sort",
    "aten::argsort",
    "aten::gather",
    "aten::index_select",
    "aten::index",
    "aten::scatter",
    "aten::scatter_",
    "aten::scatter_reduce",
    "aten::take_along_dim",
    "aten::masked_select",
    "aten::argmax",
    "aten::expand_as",
    "aten::repeat",
    "aten::ones_like",
    "aten::new_ones",
    "aten::one_hot",
)

# Clustering's assignment and accumulation: one flop per element compared (min/argmin over the
# distance matrix) or added (scatter_add's source).
ELEMENT_OPS: dict[str, int] = {
    "aten::min": 0,            # input index whose elements are counted
    "aten::argmin": 0,
    "aten::scatter_add": 3,    # scatter_add(self, dim, index, src)
    "aten::scatter_add_": 3,
    "aten::index_add": 3,      # index_add(self, dim, index, source)
    "aten::index_add_": 3,
}


def _shape(value: Any) -> list[int] | None:
    """Static shape of a traced jit value, or None when it is not a complete tensor."""
    return list(value.type().sizes()) if value.isCompleteTensor() else None


def sdpa_flop_handle(inputs: list[Any], outputs: list[Any]) -> int:
    """MACs of ``aten::scaled_dot_product_attention``: q@k^T plus attn@v.

    Per (batch, head): Nq*Nk*D for the scores and Nq*Nk*Dv for the weighted sum. Using the
    output shape (``[..., Nq, Dv]``) for the leading dims handles broadcasting / GQA.
    Softmax and scaling are not counted, matching fvcore's treatment of the unfused path.
    """
    q, k = _shape(inputs[0]), _shape(inputs[1])
    out = _shape(outputs[0])
    if q is None or k is None or out is None:
        raise RuntimeError("scaled_dot_product_attention traced without static shapes")
    nk, d = k[-2], q[-1]
    rows = math.prod(out[:-1])  # leading dims * Nq
    return rows * nk * d + math.prod(out) * nk


def element_count_handle(position: int) -> Handle:
    """A handle counting one flop per element of input ``position``."""

    def handle(inputs: list[Any], outputs: list[Any]) -> int:
        shape = _shape(inputs[position])
        return math.prod(shape) if shape is not None else 0

    return handle


def baddbmm_flop_handle(inputs: list[Any], outputs: list[Any]) -> int:
    """MACs of ``baddbmm(bias, a, b)``: the batched product a @ b (the bias add is not a MAC)."""
    a, b = _shape(inputs[1]), _shape(inputs[2])
    if a is None or b is None:
        raise RuntimeError("baddbmm traced without static shapes")
    return a[0] * a[1] * a[2] * b[2]


def zero_cost_handle(inputs: list[Any], outputs: list[Any]) -> int:
    """Handle for ops that are counted, but cost no MACs (keeps them out of ``skipped_ops``)."""
    return 0


# Global registry applied by every count; plugins extend it with add_op_handle.
EXTRA_HANDLES: dict[str, Handle] = {
    "aten::scaled_dot_product_attention": sdpa_flop_handle,
    "aten::baddbmm": baddbmm_flop_handle,
    **{op: zero_cost_handle for op in ZERO_COST_OPS},
    **{op: element_count_handle(i) for op, i in ELEMENT_OPS.items()},
}


def add_op_handle(op_name: str, handle: Handle) -> None:
    """Register a handle for ``op_name`` (e.g. ``"aten::cdist"``) for all later counts."""
    if "::" not in op_name:
        raise UsageError(f"op name must be qualified like 'aten::cdist', got {op_name!r}")
    EXTRA_HANDLES[op_name] = handle


def register_handles(analysis: Any, extra: Mapping[str, Handle] | None = None) -> Any:
    """Install :data:`EXTRA_HANDLES` (and ``extra``, which wins) on an fvcore analysis."""
    handles = {**EXTRA_HANDLES, **(extra or {})}
    analysis.set_op_handle(**handles)
    return analysis


@dataclass(frozen=True)
class FlopReport:
    """FLOP count of a model, per image. ``gmacs`` uses fvcore's convention (1 MAC = 1 flop)."""

    gmacs: float
    params: int
    by_module: dict[str, float] = field(default_factory=dict)
    by_operator: dict[str, float] = field(default_factory=dict)
    skipped_ops: dict[str, int] = field(default_factory=dict)
    images: int = 1
    by_layer: dict[str, float] = field(default_factory=dict)  # GMACs of the submodules asked for by name

    def to_dict(self) -> dict[str, Any]:
        return {
            "gmacs": self.gmacs,
            "params": self.params,
            "by_module": dict(self.by_module),
            "by_operator": dict(self.by_operator),
            "skipped_ops": dict(self.skipped_ops),
            "images": self.images,
            "by_layer": dict(self.by_layer),
        }


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode; restore every submodule's own training flag afterwards.

    Per-module restore (rather than ``model.train(prev)``) keeps mixed states intact, e.g. a
    frozen backbone in eval mode inside a model that is training.
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in flags:
            module.training = training


_HOOK_DICTS = (
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
)


@contextlib.contextmanager
def _no_leaked_hooks(model: nn.Module) -> Iterator[None]:
    """fvcore adds scope hooks to every module and does not remove them if tracing raises;
    drop any hook added during the block so a failed count leaves the model as it was."""
    before = {
        (id(m), name): set(getattr(m, name, {}).keys())
        for m in model.modules()
        for name in _HOOK_DICTS
    }
    try:
        yield
    finally:
        for m in model.modules():
            for name in _HOOK_DICTS:
                hooks = getattr(m, name, None)
                if hooks is None:
                    continue
                for key in set(hooks.keys()) - before.get((id(m), name), set()):
                    hooks.pop(key, None)


def _model_device(model: nn.Module) -> torch.device | None:
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return None


def _check_inputs(inputs: Any) -> int:
    if not isinstance(inputs, torch.Tensor):
        raise UsageError(f"count_flops expects a tensor batch, got {type(inputs).__name__}")
    if inputs.dim() < 1 or inputs.shape[0] < 1:
        raise UsageError(f"count_flops needs a non-empty batch, got shape {tuple(inputs.shape)}")
    return int(inputs.shape[0])


def count_flops(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    extra_handles: Mapping[str, Handle] | None = None,
    layers: Iterable[str] | None = None,
) -> FlopReport:
    """Trace ``model`` on ``inputs`` with fvcore and return GMACs per image (and per named submodule
    in ``layers``, e.g. the weight matrices a sparse method masks).

    Counting runs in eval mode under ``torch.no_grad``; training flags are restored and the
    parameters/state_dict are untouched. Tracer and "unsupported operator" warnings are
    silenced; ops fvcore could not count are returned in ``skipped_ops`` instead.
    Input-dependent models (token pruning) are counted for this batch only; see
    :func:`mean_flops` for an average over several batches.
    """
    batch = _check_inputs(inputs)
    device = _model_device(model)
    if device is not None and inputs.device != device:
        inputs = inputs.to(device)

    with eval_mode(model), torch.no_grad(), _no_leaked_hooks(model):
        analysis = FlopCountAnalysis(model, inputs)
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        analysis.tracer_warnings("none")
        register_handles(analysis, extra_handles)
        total = analysis.total()
        modules = analysis.by_module()
        operators = analysis.by_operator()
        skipped = analysis.unsupported_ops()

    by_module = {name: modules.get(name, 0) / batch / 1e9 for name, _ in model.named_children()}
    return FlopReport(
        by_layer={name: modules.get(name, 0) / batch / 1e9 for name in (layers or ())},
        gmacs=total / batch / 1e9,
        params=sum(p.numel() for p in model.parameters()),
        by_module=by_module,
        by_operator={op: n / batch / 1e9 for op, n in sorted(operators.items())},
        skipped_ops={op: int(n) for op, n in sorted(skipped.items())},
        images=batch,
    )


def mean_flops(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    max_images: int = 64,
    *,
    extra_handles: Mapping[str, Handle] | None = None,
    layers: Iterable[str] | None = None,
) -> FlopReport:
    """Mean GMACs per image over up to ``max_images`` images, for input-dependent models.

    Each batch is traced separately (batches are trimmed so the total is exactly
    ``min(max_images, available)``) and weighted by its size. ``batches`` may yield tensors or
    ``(images, labels, ...)`` tuples, as a DataLoader does. ``skipped_ops`` holds, per op, the
    largest count seen in one trace (summing traces would just scale with the batch count).
    """
    if max_images < 1:
        raise UsageError(f"max_images must be >= 1, got {max_images}")
    seen = 0
    total = 0.0
    modules: Counter[str] = Counter()
    operators: Counter[str] = Counter()
    per_layer: Counter[str] = Counter()
    layers = list(layers) if layers is not None else None
    skipped: dict[str, int] = {}
    params = 0
    for batch in batches:
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        batch = batch[: max_images - seen]
        report = count_flops(model, batch, extra_handles=extra_handles, layers=layers)
        n = report.images
        seen += n
        total += report.gmacs * n
        modules.update({k: v * n for k, v in report.by_module.items()})
        per_layer.update({k: v * n for k, v in report.by_layer.items()})
        operators.update({k: v * n for k, v in report.by_operator.items()})
        for op, count in report.skipped_ops.items():
            skipped[op] = max(skipped.get(op, 0), count)
        params = report.params
        if seen >= max_images:  # stop before a DataLoader loads a batch that is not needed
            break
    if seen == 0:
        raise UsageError("mean_flops got no images to count")
    return FlopReport(
        gmacs=total / seen,
        params=params,
        by_module={k: modules.get(k, 0.0) / seen for k, _ in model.named_children()},
        by_operator={k: v / seen for k, v in sorted(operators.items())},
        skipped_ops=dict(sorted(skipped.items())),
        images=seen,
        by_layer={k: v / seen for k, v in per_layer.items()},
    )
