"""Executed work: a dispatch-level count of the ops a model's modules run, whether or not they feed the output.

fvcore's jit trace keeps only the ops that feed the output, so a method's work that runs but does not (a
clustering loop past convergence, a discarded scorer) would vanish; :mod:`bench.measure.flops` counts those
modules with this instead, with fvcore's conventions (1 multiply-add = 1 flop).
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from bench.measure.flop_handles import ZERO_COST_OPS

# -- executed work: a dispatch-level count of what modules run -------------------------------------------------

#: a module whose class sets this attribute True is always counted by execution (see the module docstring)
EXECUTED_FLAG = "count_executed_flops"

# Dispatch-level ops that move or allocate memory, or that fvcore ignores in the trace: neither counted nor skipped.
_IGNORED_DISPATCH_OPS: frozenset[str] = frozenset(
    {
        "aten::view",
        "aten::_unsafe_view",
        "aten::_reshape_alias",
        "aten::as_strided",
        "aten::alias",
        "aten::t",
        "aten::transpose",
        "aten::permute",
        "aten::expand",
        "aten::unsqueeze",
        "aten::squeeze",
        "aten::slice",
        "aten::select",
        "aten::split",
        "aten::split_with_sizes",
        "aten::unbind",
        "aten::clone",
        "aten::_to_copy",
        "aten::copy_",
        "aten::detach",
        "aten::lift_fresh",
        "aten::empty",
        "aten::empty_like",
        "aten::empty_strided",
        "aten::zeros",
        "aten::zeros_like",
        "aten::ones",
        "aten::full",
        "aten::full_like",
        "aten::fill_",
        "aten::zero_",
        "aten::new_empty",
        "aten::new_zeros",
        "aten::new_full",
        "aten::new_empty_strided",
        "aten::arange",
        "aten::cat",
        "aten::stack",
        "aten::eq",
        "aten::ne",
        "aten::lt",
        "aten::le",
        "aten::gt",
        "aten::ge",
        "aten::masked_fill",
        "aten::masked_fill_",
        "aten::clamp",
        "aten::clamp_",
        "aten::relu",
        "aten::relu_",
        "aten::index_put_",
        "aten::contiguous",
        "aten::constant_pad_nd",
        "aten::flatten",
        "aten::reshape",
        "aten::narrow",
        "aten::bitwise_not",
        "aten::__and__",
        "aten::floor",
        "aten::floor_divide",
        "aten::remainder",
        "aten::roll",
        "aten::max",
        "aten::nonzero",
        "aten::dropout",
        "aten::sym_size",
        "aten::sym_stride",
        "aten::sym_numel",
        "aten::_local_scalar_dense",
        "aten::item",
    }
)


def _numel(value: Any) -> int:
    return value.numel() if isinstance(value, torch.Tensor) else 0


def _sdpa_macs(args: dict[str, Any], out: Any) -> int:
    """q@k^T + attn@v of a dispatch-level attention kernel: (B, H, L, E) x (B, H, S, E), (B, H, S, Ev)."""
    q, k, v = args["query"], args["key"], args["value"]
    rows = math.prod(q.shape[:-1])  # B * H * L
    return rows * k.shape[-2] * q.shape[-1] + rows * k.shape[-2] * v.shape[-1]


def _norm(weight_arg: str) -> Callable[[dict[str, Any], Any], int]:
    def handle(args: dict[str, Any], out: Any) -> int:  # fvcore's norm_flop_counter: 5 per element (4 without affine)
        return _numel(args["input"]) * (5 if args.get(weight_arg) is not None else 4)

    return handle


def _batch_norm(args: dict[str, Any], out: Any) -> int:  # fvcore's batchnorm_flop_jit
    affine = args.get("weight") is not None
    if args.get("training", False):
        return _numel(args["input"]) * (5 if affine else 4)
    return _numel(args["input"]) * (2 if affine else 1)


def _elements(arg: str, scale: int = 1, output: bool = False) -> Callable[[dict[str, Any], Any], int]:
    def handle(args: dict[str, Any], out: Any) -> int:
        first = out[0] if isinstance(out, (tuple, list)) else out
        return scale * (_numel(first) if output else _numel(args[arg]))

    return handle


def _zero(args: dict[str, Any], out: Any) -> int:
    return 0


#: The costs the executed pass gives dispatch-level ops, mirroring the fvcore handles above (fvcore's own and
#: :data:`EXTRA_HANDLES`): matrix products, convolutions and attention kernels take torch's formulas
#: (torch.utils.flop_counter, 2 flops per multiply-add) halved to multiply-adds; norms, pooling and the
#: clustering's element ops as fvcore counts them; the index ops of :data:`ZERO_COST_OPS` cost nothing.
#: A composite op is counted as what it decomposes into (matmul and linear: mm/bmm/addmm, the same MACs;
#: einsum: its bmm; adaptive_avg_pool2d to 1x1: a mean, skipped where fvcore counts one per input element).
EXECUTED_HANDLES: dict[str, Callable[[dict[str, Any], Any], int]] = {
    "aten::_scaled_dot_product_flash_attention_for_cpu": _sdpa_macs,
    "aten::_scaled_dot_product_fused_attention_overrideable": _sdpa_macs,
    "aten::native_layer_norm": _norm("weight"),
    "aten::native_group_norm": _norm("weight"),
    "aten::native_batch_norm": _batch_norm,
    "aten::_native_batch_norm_legit": _batch_norm,
    "aten::_native_batch_norm_legit_no_training": _batch_norm,
    "aten::upsample_nearest2d": _elements("input", 1, output=True),
    "aten::upsample_bilinear2d": _elements("input", 4, output=True),
    "aten::grid_sampler_2d": _elements("input", 4, output=True),
    "aten::_adaptive_avg_pool2d": _elements("self"),
    "aten::adaptive_avg_pool2d": _elements("self"),
    "aten::mv": _elements("self"),  # (n, m) @ (m,): n * m multiply-adds
    "aten::addmv": _elements("mat"),
    "aten::dot": _elements("self"),
    "aten::vdot": _elements("self"),
    "aten::addbmm": lambda a, out: _numel(a["batch1"]) * a["batch2"].shape[-1],
    "aten::min": _elements("self"),
    "aten::argmin": _elements("self"),
    "aten::scatter_add": _elements("src"),
    "aten::scatter_add_": _elements("src"),
    "aten::index_add": _elements("source"),
    "aten::index_add_": _elements("source"),
    **{op: _zero for op in ZERO_COST_OPS},
}


@functools.cache
def _torch_macs(packet: Any) -> Callable[[tuple, dict, Any], int] | None:
    """torch.utils.flop_counter's formula for ``packet`` in multiply-adds, or None when it has none."""
    from torch.utils.flop_counter import flop_registry

    formula = flop_registry.get(packet)
    if formula is None:
        return None
    return lambda args, kwargs, out: int(formula(*args, **kwargs, out_val=out)) // 2


class _ExecutedCounter:
    """Counts, per module name, the cost of every op dispatched while that module's forward runs."""

    def __init__(self, names: Mapping[nn.Module, list[str]]):
        self.names = names  # module -> its name and its ancestors' up to a root
        self.stack: list[list[str]] = []
        self.flops: Counter[str] = Counter()  # module name -> flops (the module and everything inside)
        self.by_operator: dict[str, Counter[str]] = {}  # executed root -> operator -> flops
        self.skipped: dict[str, Counter[str]] = {}  # executed root -> op -> calls

    def push(self, module: nn.Module, args: Any) -> None:
        self.stack.append(self.names[module])

    def pop(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.stack:
            self.stack.pop()

    def record(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        if not self.stack:
            return
        op = func._schema.name  # "aten::bmm"
        root = self.stack[0][0]
        cost: int | None = None
        handle = EXECUTED_HANDLES.get(op)
        if handle is not None:
            named = dict(zip((a.name for a in func._schema.arguments), args))
            named.update(kwargs)
            cost = int(handle(named, out))
        else:
            formula = _torch_macs(func.overloadpacket)
            if formula is not None:
                cost = formula(args, kwargs, out)
        if cost is None:
            if op not in _IGNORED_DISPATCH_OPS and not op.startswith("prim::"):
                self.skipped.setdefault(root, Counter())[op] += 1
            return
        label = op.split("::")[-1]
        self.by_operator.setdefault(root, Counter())[label] += cost
        for name in {n for chain in self.stack for n in chain}:
            self.flops[name] += cost


def _dispatch_mode(counter: _ExecutedCounter) -> Any:
    from torch.utils._python_dispatch import TorchDispatchMode

    class Mode(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            counter.record(func, args, kwargs, out)
            return out

    return Mode()


def executed_roots(model: nn.Module, names: Iterable[str] | None = None) -> list[str]:
    """Submodules counted by execution: those of ``names`` the model has, plus modules flagged with
    :data:`EXECUTED_FLAG`; a module inside another of them is covered by it."""
    modules = dict(model.named_modules())
    wanted = {n for n in (names or ()) if n in modules and n != ""}
    wanted |= {n for n, m in modules.items() if n and getattr(m, EXECUTED_FLAG, False)}
    return sorted(n for n in wanted if not any(n.startswith(o + ".") for o in wanted))


def count_executed(model: nn.Module, inputs: torch.Tensor, roots: Iterable[str]) -> _ExecutedCounter:
    """Run ``model`` on ``inputs`` once, eagerly, counting every op dispatched inside the ``roots`` submodules
    (and their children, by name). Call in eval mode under no_grad, as :func:`count_flops` does."""
    modules = dict(model.named_modules())
    names: dict[nn.Module, list[str]] = {}
    for r in roots:
        for sub, m in modules[r].named_modules():
            parts = sub.split(".") if sub else []
            names.setdefault(m, [".".join([r, *parts[:i]]) for i in range(len(parts) + 1)])
    counter = _ExecutedCounter(names)
    handles = []
    try:
        for m in names:
            handles.append(m.register_forward_pre_hook(counter.push))
            handles.append(m.register_forward_hook(counter.pop, always_call=True))
        with _dispatch_mode(counter):
            model(inputs)
    finally:
        for h in handles:
            h.remove()
    return counter


def under(name: str, root: str) -> bool:
    """``root`` is ``name`` or inside it (the model itself is ``""``)."""
    return name == "" or root == name or root.startswith(name + ".")
