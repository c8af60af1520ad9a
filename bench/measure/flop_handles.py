"""fvcore's operator handles as the harness extends them, and the rule for operators fvcore skips.

See :mod:`bench.measure.flops` for why each handle exists; one multiply-add counts as one flop throughout.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from bench.errors import RunFailed, UsageError

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
    "aten::min": 0,  # input index whose elements are counted
    "aten::argmin": 0,
    "aten::scatter_add": 3,  # scatter_add(self, dim, index, src)
    "aten::scatter_add_": 3,
    "aten::index_add": 3,  # index_add(self, dim, index, source)
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
    r"[a-z]*mm",  # mm bmm addmm baddbmm addbmm sspaddmm (_int_mm, _scaled_mm)
    r"(add)?mv",
    r"v?dot|inner|tensordot|matmul|einsum",  # chain_matmul, linalg_multi_dot by their parts
    r"outer|ger|addr|kron",
    r"bilinear|linear|cdist",
    r"conv(\d+d|olution)?",  # conv2d, conv_transpose2d, _convolution, mkldnn_convolution
    r"attention|lstm|gru|rnn",
)
_MATMUL_LIKE = re.compile("|".join(f"(?:{p})" for p in MATMUL_LIKE_PATTERNS))


class UncountedOperator(RunFailed):
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
            f"bench.measure.flops.add_op_handle"
        )


def skipped_text(skipped: Mapping[str, int]) -> str:
    """``{"aten::gelu": 12, "aten::add": 24}`` -> ``"aten::add:24;aten::gelu:12"`` (sorted by name; "" for none)."""
    return ";".join(f"{op}:{int(n)}" for op, n in sorted(skipped.items()) if n)
