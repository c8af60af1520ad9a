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
import functools
import math
import re
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


# -- failing on uncounted products ------------------------------------------------------------------------------

#: A skipped operator multiplies tensors when a part of its name (namespace dropped, split at "_" and ".",
#: lower case) matches one of these in full: matrix and batched products (mm, bmm, addmm, baddbmm, addbmm,
#: _int_mm, _scaled_mm, mv, addmv, dot, matmul, einsum, tensordot, outer/ger/addr, kron, linear, bilinear,
#: cdist), convolutions (conv1d.., convolution, conv_transpose.., cudnn_convolution..), attention kernels
#: (scaled_dot_product_attention and its flash/efficient/cudnn variants) and recurrent layers. Elementwise
#: ops and reductions (add, mul, pow, sum, softmax, gelu, ...) match none of them.
MATMUL_LIKE_PATTERNS: tuple[str, ...] = (
    r"[a-z]*mm",                                       # mm bmm addmm baddbmm addbmm sspaddmm (_int_mm, _scaled_mm)
    r"(add)?mv",
    r"v?dot|inner|tensordot|matmul|einsum",            # chain_matmul, linalg_multi_dot by their parts
    r"outer|ger|addr|kron",
    r"bilinear|linear|cdist",
    r"conv(\d+d|olution)?",                            # conv2d, conv_transpose2d, _convolution, mkldnn_convolution
    r"attention|lstm|gru|rnn",
)
_MATMUL_LIKE = re.compile("|".join(f"(?:{p})" for p in MATMUL_LIKE_PATTERNS))


class UncountedOperator(RuntimeError):
    """A skipped operator that multiplies tensors: counting on would silently drop its multiply-adds."""


def is_matmul_like(op_name: str) -> bool:
    """True when ``op_name`` (e.g. ``"aten::baddbmm"``) multiplies tensors, by :data:`MATMUL_LIKE_PATTERNS`."""
    base = op_name.split("::")[-1].lower()
    return any(_MATMUL_LIKE.fullmatch(part) for part in re.split(r"[_.]", base) if part)


def check_skipped(skipped: Mapping[str, int]) -> None:
    """Raise :class:`UncountedOperator` (one line, naming the operators) if a skipped op multiplies tensors."""
    bad = sorted(op for op in skipped if is_matmul_like(op))
    if bad:
        raise UncountedOperator(
            f"FLOP count has no handle for {', '.join(f'{op} ({skipped[op]}x)' for op in bad)}, which multiplies "
            f"tensors: its multiply-adds would vanish from the total; register one with "
            f"bench.measure.flops.add_op_handle")


def skipped_text(skipped: Mapping[str, int]) -> str:
    """``{"aten::gelu": 12, "aten::add": 24}`` -> ``"aten::add:24;aten::gelu:12"`` (sorted by name; "" for none)."""
    return ";".join(f"{op}:{int(n)}" for op, n in sorted(skipped.items()) if n)


# -- executed work: a dispatch-level count of what modules run -------------------------------------------------

#: a module whose class sets this attribute True is always counted by execution (see the module docstring)
EXECUTED_FLAG = "count_executed_flops"

# Dispatch-level ops that move or allocate memory, or that fvcore ignores in the trace: neither counted nor skipped.
_IGNORED_DISPATCH_OPS: frozenset[str] = frozenset({
    "aten::view", "aten::_unsafe_view", "aten::_reshape_alias", "aten::as_strided", "aten::alias", "aten::t",
    "aten::transpose", "aten::permute", "aten::expand", "aten::unsqueeze", "aten::squeeze", "aten::slice",
    "aten::select", "aten::split", "aten::split_with_sizes", "aten::unbind", "aten::clone", "aten::_to_copy",
    "aten::copy_", "aten::detach", "aten::lift_fresh", "aten::empty", "aten::empty_like", "aten::empty_strided",
    "aten::zeros", "aten::zeros_like", "aten::ones", "aten::full", "aten::full_like", "aten::fill_", "aten::zero_",
    "aten::new_empty", "aten::new_zeros", "aten::new_full", "aten::new_empty_strided", "aten::arange", "aten::cat",
    "aten::stack", "aten::eq", "aten::ne", "aten::lt", "aten::le", "aten::gt", "aten::ge", "aten::masked_fill",
    "aten::masked_fill_", "aten::clamp", "aten::clamp_", "aten::relu", "aten::relu_", "aten::index_put_",
    "aten::contiguous", "aten::constant_pad_nd", "aten::flatten", "aten::reshape", "aten::narrow",
    "aten::bitwise_not", "aten::__and__", "aten::floor", "aten::floor_divide", "aten::remainder", "aten::roll",
    "aten::max", "aten::nonzero", "aten::dropout", "aten::sym_size", "aten::sym_stride", "aten::sym_numel",
    "aten::_local_scalar_dense", "aten::item",
})


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
    "aten::mv": _elements("self"),                      # (n, m) @ (m,): n * m multiply-adds
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
        self.names = names                                    # module -> its name and its ancestors' up to a root
        self.stack: list[list[str]] = []
        self.flops: Counter[str] = Counter()                  # module name -> flops (the module and everything inside)
        self.by_operator: dict[str, Counter[str]] = {}        # executed root -> operator -> flops
        self.skipped: dict[str, Counter[str]] = {}            # executed root -> op -> calls

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


def _under(name: str, root: str) -> bool:
    """``root`` is ``name`` or inside it (the model itself is ``""``)."""
    return name == "" or root == name or root.startswith(name + ".")


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
        below = [r for r in roots if _under(name, r)]
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
        report = count_flops(model, batch, extra_handles=extra_handles, layers=layers,
                             executed_modules=executed_modules)
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
