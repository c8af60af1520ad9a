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

Two rules keep the count honest:

* A skipped operator that multiplies tensors (:data:`MATMUL_LIKE_PATTERNS`: matrix products, convolutions,
  attention) fails the count with :class:`UncountedOperator`, naming it: without a handle its multiply-adds
  would simply vanish. Other skipped operators (elementwise, reductions) are returned in ``skipped_ops``.
* fvcore's jit trace keeps only the ops that feed the output. A method's own work that runs but does not
  (a clustering loop past convergence, a final assignment pass, a scorer whose result is discarded) would
  drop out. The modules named in ``executed_modules`` (the runner passes the method's ``overhead_modules``),
  and any module whose class sets ``count_executed_flops = True``, are therefore counted by what they
  *execute*: a second, eager pass under a :class:`~torch.utils._python_dispatch.TorchDispatchMode` counts
  every op dispatched inside them, whether or not it feeds the output, with the same conventions as the
  fvcore handles here (:data:`EXECUTED_HANDLES`: 1 multiply-add = 1 flop; layer norm 5 per element; one
  per element compared or added by the clustering ops). That count replaces the traced one for those
  modules in every total; the rest of the model stays fvcore's.
"""

from __future__ import annotations

import contextlib
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bench.errors import UsageError
from bench.measure.flop_handles import (  # noqa: F401  (re-exported: the public names of the FLOP count)
    ELEMENT_OPS,
    EXTRA_HANDLES,
    MATMUL_LIKE_PATTERNS,
    ZERO_COST_OPS,
    Handle,
    UncountedOperator,
    add_op_handle,
    baddbmm_flop_handle,
    check_skipped,
    element_count_handle,
    is_matmul_like,
    register_handles,
    sdpa_flop_handle,
    skipped_text,
    zero_cost_handle,
)
from bench.measure.flops_executed import EXECUTED_FLAG, EXECUTED_HANDLES, count_executed, executed_roots, under  # noqa: F401  (re-exported)

with warnings.catch_warnings():
    # fvcore scripts its focal loss at import; recent torch flags torch.jit.script as deprecated.
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
    from fvcore.nn import FlopCountAnalysis


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
    #: GMACs of the submodules counted by execution (already inside every figure above), and what fvcore's
    #: trace alone had given them: the work that ran but did not feed the output is the difference
    executed: dict[str, float] = field(default_factory=dict)
    traced: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "gmacs": self.gmacs,
            "params": self.params,
            "by_module": dict(self.by_module),
            "by_operator": dict(self.by_operator),
            "skipped_ops": dict(self.skipped_ops),
            "images": self.images,
            "by_layer": dict(self.by_layer),
            "executed": dict(self.executed),
            "traced": dict(self.traced),
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
    before = {(id(m), name): set(getattr(m, name, {}).keys()) for m in model.modules() for name in _HOOK_DICTS}
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
    executed_modules: Iterable[str] | None = None,
) -> FlopReport:
    """Trace ``model`` on ``inputs`` with fvcore and return GMACs per image (and per named submodule
    in ``layers``, e.g. the weight matrices a sparse method masks).

    Submodules in ``executed_modules`` (a method's ``overhead_modules``) and modules flagged with
    :data:`EXECUTED_FLAG` are counted by what they execute, not by what feeds the output (module docstring).
    Counting runs in eval mode under ``torch.no_grad``; training flags are restored and the
    parameters/state_dict are untouched. Tracer and "unsupported operator" warnings are
    silenced; ops fvcore could not count are returned in ``skipped_ops`` instead, except those that
    multiply tensors, which raise :class:`UncountedOperator`.
    Input-dependent models (token pruning) are counted for this batch only; see
    :func:`mean_flops` for an average over several batches.
    """
    batch = _check_inputs(inputs)
    device = _model_device(model)
    if device is not None and inputs.device != device:
        inputs = inputs.to(device)
    roots = executed_roots(model, executed_modules)
    layers = list(layers or ())

    with eval_mode(model), torch.no_grad(), _no_leaked_hooks(model):
        analysis = FlopCountAnalysis(model, inputs)
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        analysis.tracer_warnings("none")
        register_handles(analysis, extra_handles)
        total = analysis.total()
        modules: Counter[str] = Counter(analysis.by_module())
        operators: Counter[str] = Counter(analysis.by_operator())
        skipped: Counter[str] = Counter(analysis.unsupported_ops())
        executed = count_executed(model, inputs, roots) if roots else None
        traced = {r: modules.get(r, 0) for r in roots}
        if executed is not None:
            per_module = analysis.by_module_and_operator()
            for r in roots:  # the traced share of each executed module makes way for what it ran
                operators.subtract(per_module.get(r, Counter()))
                operators.update(executed.by_operator.get(r, Counter()))
                skipped.subtract(analysis.unsupported_ops(r))
                skipped.update(executed.skipped.get(r, Counter()))

    def gmacs(name: str) -> float:
        if executed is None:
            return modules.get(name, 0) / batch / 1e9
        inside = [r for r in roots if name == r or name.startswith(r + ".")]
        if inside:
            return executed.flops.get(name, 0) / batch / 1e9
        below = [r for r in roots if under(name, r)]
        n = modules.get(name, 0) - sum(traced[r] for r in below) + sum(executed.flops.get(r, 0) for r in below)
        return n / batch / 1e9

    skipped_ops = {op: int(n) for op, n in sorted(skipped.items()) if n > 0}
    check_skipped(skipped_ops)
    return FlopReport(
        by_layer={name: gmacs(name) for name in layers},
        gmacs=gmacs("") if executed is not None else total / batch / 1e9,
        params=sum(p.numel() for p in model.parameters()),
        by_module={name: gmacs(name) for name, _ in model.named_children()},
        by_operator={op: n / batch / 1e9 for op, n in sorted(operators.items()) if n},
        skipped_ops=skipped_ops,
        images=batch,
        executed={r: gmacs(r) for r in roots},
        traced={r: traced[r] / batch / 1e9 for r in roots},
    )


def mean_flops(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    max_images: int = 64,
    *,
    extra_handles: Mapping[str, Handle] | None = None,
    layers: Iterable[str] | None = None,
    executed_modules: Iterable[str] | None = None,
) -> FlopReport:
    """Mean GMACs per image over up to ``max_images`` images, for input-dependent models.

    Each batch is traced separately (batches are trimmed so the total is exactly
    ``min(max_images, available)``) and weighted by its size. ``batches`` may yield tensors or
    ``(images, labels, ...)`` tuples, as a DataLoader does. ``skipped_ops`` holds, per op, the
    largest count seen in one trace (summing traces would just scale with the batch count).
    ``executed_modules`` as in :func:`count_flops`.
    """
    if max_images < 1:
        raise UsageError(f"max_images must be >= 1, got {max_images}")
    seen = 0
    total = 0.0
    modules: Counter[str] = Counter()
    operators: Counter[str] = Counter()
    per_layer: Counter[str] = Counter()
    executed: Counter[str] = Counter()
    traced: Counter[str] = Counter()
    layers = list(layers) if layers is not None else None
    executed_modules = list(executed_modules) if executed_modules is not None else None
    skipped: dict[str, int] = {}
    params = 0
    for batch in batches:
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        batch = batch[: max_images - seen]
        report = count_flops(
            model, batch, extra_handles=extra_handles, layers=layers, executed_modules=executed_modules
        )
        n = report.images
        seen += n
        total += report.gmacs * n
        modules.update({k: v * n for k, v in report.by_module.items()})
        per_layer.update({k: v * n for k, v in report.by_layer.items()})
        operators.update({k: v * n for k, v in report.by_operator.items()})
        executed.update({k: v * n for k, v in report.executed.items()})
        traced.update({k: v * n for k, v in report.traced.items()})
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
        executed={k: v / seen for k, v in executed.items()},
        traced={k: v / seen for k, v in traced.items()},
    )
