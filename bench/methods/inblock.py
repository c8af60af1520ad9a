"""Reductions inside a block: between a timm ``Block``'s attention and its MLP (EViT, ToMe).

Where a method may act, and what it may read:

* **Before a block** (:class:`bench.methods.pruning.StagedPruning`): a forward pre-hook replaces the tokens that
  enter the block. It reads the tokens only.
* **Inside a block** (this module): after the attention residual and before the MLP, :meth:`InBlockMethod.reduce`
  replaces the tokens, and the MLP (and every later block) sees the reduced set. It reads the block's
  :class:`BlockView`: the tokens, the keys averaged over heads (ToMe's similarity metric), the class token's
  attention probabilities averaged over heads (EViT's inattentiveness score) and the per-token sizes the method
  keeps across blocks. A method may also add a bias to the attention logits of any block
  (:meth:`InBlockMethod.attention_bias`, e.g. ToMe's proportional attention ``log(size)``).

How, without forking timm's code: the block's own ``attn`` module runs unchanged, with the bias passed as its
additive ``attn_mask`` (timm hands it to ``F.scaled_dot_product_attention``, so fused attention stays on); the
keys and queries come from a forward hook on ``attn.qkv`` (plus ``q_norm``/``k_norm``), and the class-token
row of the attention is recomputed from them (one row: N x head_dim per head, not N x N). Only ``Block.forward``
itself is replaced, by the same two residual lines with the reduction between them (as ToMe's official timm
patch does); ``remove`` restores it. No parameter or state_dict key is added.

The class token (and any prefix token) is never reduced: ``reduce`` receives and returns prefix tokens first and
unchanged (the contract tests check this for every in-block method; a check in the forward would cost a host
synchronisation).
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bench.methods.base import Method, check_vit, num_patches


@dataclass
class BlockView:
    """What a reduction inside block ``index`` may read."""

    index: int
    #: tokens after the attention residual, (B, N, C); prefix tokens first
    x: torch.Tensor
    #: number of prefix tokens (class token, registers) at the front: never reduced
    prefix: int
    #: (B, N, head_dim) keys averaged over heads, when the method asks for them (``reads`` has "keys")
    keys: torch.Tensor | None = None
    #: (B, N) attention of the first prefix token (class token) to every token, averaged over heads, with the
    #: block's attention bias applied, when the method asks for it (``reads`` has "cls_attention"; such a method
    #: declares ``needs_class_token``, so a model whose token 0 is a register or a patch is refused at ``apply``)
    cls_attention: torch.Tensor | None = None


@dataclass
class ForwardState:
    """Per-forward state a method carries across blocks (reset before the first block of every forward)."""

    #: (B, N, 1) how many input patches (or prefix tokens) each current token stands for
    size: torch.Tensor | None = None
    #: (B, N_patches) index of the current patch token holding each original patch (``record_kept`` only)
    source: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class InBlockMethod(Method):
    """Base for methods that reduce tokens between the attention and the MLP of some blocks."""

    #: what :class:`BlockView` must carry: "keys", "cls_attention"
    reads: tuple[str, ...] = ()

    def __init__(self, keep_ratio: float = 1.0, seed: int = 0, **params: Any):
        super().__init__(keep_ratio, seed, **params)
        self.state = ForwardState()
        #: kept-token records for the gallery (``bench.measure.kept_tokens``), filled when ``record_kept``: per
        #: reduction, (B, k) original patch positions still tokens of their own, and for merging methods
        #: (B, N_patches) the current token each original patch is in
        self.record_kept = False
        self.last_kept: list[torch.Tensor] = []
        self.last_groups: list[torch.Tensor] = []
        self._captured: dict[int, torch.Tensor] = {}
        self._num_prefix = 1
        self._forwards: dict[int, Any] = {}

    # -- what a method defines ----------------------------------------------------------------
    def reduction_blocks(self, model: nn.Module) -> list[int]:
        """Indices of the blocks whose forward is patched (they reduce, or take an attention bias)."""
        raise NotImplementedError

    def reduce(self, model: nn.Module, view: BlockView) -> torch.Tensor:
        """The tokens that replace ``view.x`` (prefix tokens first, unchanged); update ``self.state``."""
        return view.x

    def attention_bias(self, model: nn.Module, index: int) -> torch.Tensor | None:
        """An additive bias for block ``index``'s attention logits, broadcastable to (B, heads, N, N), or None."""
        return None

    def start_forward(self, x: torch.Tensor, prefix: int) -> None:
        """Called before the first block of every forward, with the tokens entering it."""

    # -- patching -----------------------------------------------------------------------------
    @property
    def reads_class_token(self) -> bool:
        return self.needs_class_token or "cls_attention" in self.reads  # the view reads token 0's row

    def apply(self, model: nn.Module) -> nn.Module:
        check_vit(model, self.name)
        self.check_model(model)
        self._num_prefix = int(model.num_prefix_tokens)
        blocks = self.reduction_blocks(model)
        if not blocks:
            return model  # nothing reduced: the model computes exactly what the dense one does
        self._handles.append(model.blocks[0].register_forward_pre_hook(self._reset))
        for i in blocks:
            block = model.blocks[i]
            self._forwards[i] = block.forward  # the instance attribute is removed again in `remove`
            block.forward = types.MethodType(_make_forward(self, model, i), block)
            if self.reads:
                self._handles.append(block.attn.qkv.register_forward_hook(self._capture(i)))
        return model

    def remove(self) -> None:
        super().remove()
        for block in list(self._patched_blocks()):
            del block.forward
        self._forwards.clear()

    def _patched_blocks(self):
        for fn in self._forwards.values():
            yield fn.__self__

    def _reset(self, module: nn.Module, args: tuple) -> None:
        x = args[0]
        self.state = ForwardState()
        self.last_kept, self.last_groups = [], []
        self.start_forward(x, self._num_prefix)

    def _capture(self, index: int):
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            self._captured[index] = out

        return hook

    # -- helpers for methods ------------------------------------------------------------------
    def sizes(self, x: torch.Tensor) -> torch.Tensor:
        """The current token sizes, (B, N, 1): ones until a merge sets them."""
        if self.state.size is None:
            self.state.size = torch.ones(x.shape[0], x.shape[1], 1, dtype=x.dtype, device=x.device)
        return self.state.size


def _views(method: InBlockMethod, block: nn.Module, index: int, bias: torch.Tensor | None) -> dict[str, Any]:
    """Keys and class-token attention of ``block`` from the qkv output captured during its attention."""
    if not method.reads:
        return {}
    attn = block.attn
    qkv = method._captured.pop(index)
    B, N, _ = qkv.shape
    q, k, _v = qkv.reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    out: dict[str, Any] = {}
    if "keys" in method.reads:
        out["keys"] = k.mean(1)
    if "cls_attention" in method.reads:
        logits = (q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)  # (B, H, 1, N): the class token's row only
        if bias is not None:  # the class token's row of the bias (a per-key bias has one row for all queries)
            logits = logits + (bias if bias.shape[-2] == 1 else bias[..., :1, :])
        out["cls_attention"] = logits.softmax(dim=-1).mean(1)[:, 0]
    return out


def _make_forward(method: InBlockMethod, model: nn.Module, index: int):
    def forward(block: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None = None, **kwargs: Any):
        bias = method.attention_bias(model, index)
        mask = bias if attn_mask is None else (attn_mask if bias is None else attn_mask + bias)
        x = x + block.drop_path1(block.ls1(block.attn(block.norm1(x), attn_mask=mask, **kwargs)))
        view = BlockView(index, x, method._num_prefix, **_views(method, block, index, bias))
        x = method.reduce(model, view)
        return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))

    return forward


def log_size_bias(size: torch.Tensor) -> torch.Tensor:
    """ToMe's proportional attention: log(size) of each key, (B, 1, 1, N), added to every query's logits."""
    return size.log()[:, None, None, :, 0]


__all__ = ["BlockView", "ForwardState", "InBlockMethod", "log_size_bias", "num_patches"]
