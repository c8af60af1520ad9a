"""S2ViTE's structured sparsity: attention heads and MLP neurons cut, regrown, and finally removed.

See :mod:`bench.methods.sparse` for the schedule. A head's output enters ``attn.proj`` in columns
``h*head_dim:(h+1)*head_dim``; a neuron's output enters ``mlp.fc2`` in column j. Zeroing those columns
cuts the structure exactly, and :func:`remove_structures` then deletes the matching qkv rows, proj
columns, fc1 rows and fc2 columns, so the pruned model computes the same logits with fewer MACs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _blocks(model: nn.Module) -> list[nn.Module]:
    return list(model.blocks)


def _head_columns(attn: nn.Module, heads: torch.Tensor) -> torch.Tensor:
    """proj input columns of the given heads."""
    hd = attn.head_dim
    return (heads.unsqueeze(1) * hd + torch.arange(hd, device=heads.device)).flatten()


class StructuredSparsity:
    """Head and neuron masks per block at a constant count, with Taylor / L1 drop and gradient regrowth."""

    def __init__(self, density: float):
        self.density = density
        self.head_masks: list[torch.Tensor] = []
        self.neuron_masks: list[torch.Tensor] = []
        self.taylor: list[torch.Tensor] = []  # per block, (H,) accumulated |sum dL/dO_h * O_h|
        self._model: nn.Module | None = None
        self._handles: list[Any] = []

    # -- masks --------------------------------------------------------------------------------
    def attach(self, model: nn.Module) -> list[Any]:
        """Initial cut: per block, the heads and neurons with the largest output-weight norms are kept."""
        self._model = model
        for block in _blocks(model):
            attn, mlp = block.attn, block.mlp
            H = attn.num_heads
            head_norm = attn.proj.weight.detach().abs().view(attn.proj.out_features, H, attn.head_dim).sum((0, 2))
            self.head_masks.append(self._top(head_norm, max(1, round(self.density * H))))
            neuron_norm = mlp.fc1.weight.detach().abs().sum(1) + mlp.fc2.weight.detach().abs().sum(0)
            self.neuron_masks.append(self._top(neuron_norm, max(1, round(self.density * mlp.fc2.in_features))))
            self.taylor.append(torch.zeros(H, device=attn.proj.weight.device))
            self._handles.append(attn.proj.register_forward_hook(self._taylor_hook(len(self.taylor) - 1)))
        self.apply_masks()
        return self._handles

    @staticmethod
    def _top(score: torch.Tensor, k: int) -> torch.Tensor:
        mask = torch.zeros_like(score, dtype=torch.bool)
        mask[torch.topk(score, k).indices] = True
        return mask

    @torch.no_grad()
    def apply_masks(self) -> None:
        for block, heads, neurons in zip(_blocks(self._model), self.head_masks, self.neuron_masks):
            attn, mlp = block.attn, block.mlp
            cut = _head_columns(attn, (~heads).nonzero().flatten().to(attn.proj.weight.device))
            attn.proj.weight[:, cut] = 0.0
            mlp.fc2.weight[:, ~neurons.to(mlp.fc2.weight.device)] = 0.0

    def _taylor_hook(self, index: int):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            o = inputs[0]
            if not (module.training and o.requires_grad):
                return
            attn = self._model.blocks[index].attn
            saved = o.detach()  # not ``o`` itself: o -> hook -> closure -> o would be a cycle that outlives the step

            def grad_hook(g: torch.Tensor) -> None:
                per_head = (g * saved).reshape(*saved.shape[:-1], attn.num_heads, attn.head_dim)
                self.taylor[index] += per_head.sum(dim=tuple(range(per_head.dim() - 2)) + (per_head.dim() - 1,)).abs()

            o.register_hook(grad_hook)

        return hook

    def counts(self) -> dict[str, int]:
        return {
            "heads": int(sum(int(m.sum()) for m in self.head_masks)),
            "neurons": int(sum(int(m.sum()) for m in self.neuron_masks)),
        }

    def active_params(self) -> int:
        """Weights of the kept heads and neurons (their qkv rows and proj columns, fc1 rows and fc2 columns)."""
        total = 0
        for block, heads, neurons in zip(_blocks(self._model), self.head_masks, self.neuron_masks):
            dim, hd = block.attn.proj.out_features, block.attn.head_dim
            total += int(heads.sum()) * hd * dim * 4 + int(neurons.sum()) * dim * 2
        return total

    # -- prune and grow -----------------------------------------------------------------------
    @torch.no_grad()
    def prune_and_grow(self, fraction: float) -> int:
        moved = 0
        for i, block in enumerate(_blocks(self._model)):
            attn, mlp = block.attn, block.mlp
            H, hd = attn.num_heads, attn.head_dim
            g_proj = attn.proj.weight.grad
            g_fc2 = mlp.fc2.weight.grad
            if g_proj is None or g_fc2 is None:
                continue
            head_grow = g_proj.abs().view(attn.proj.out_features, H, hd).sum((0, 2))
            self.head_masks[i], n1 = self._swap(self.head_masks[i], self.taylor[i], head_grow, fraction)
            neuron_drop = mlp.fc1.weight.abs().sum(1) + mlp.fc2.weight.abs().sum(0)
            neuron_grow = g_fc2.abs().sum(0) + (
                mlp.fc1.weight.grad.abs().sum(1) if mlp.fc1.weight.grad is not None else 0
            )
            self.neuron_masks[i], n2 = self._swap(self.neuron_masks[i], neuron_drop, neuron_grow, fraction)
            self.taylor[i].zero_()
            moved += n1 + n2
        self.apply_masks()  # grown heads / neurons start from zero output weights
        return moved

    @staticmethod
    def _swap(
        mask: torch.Tensor, drop_score: torch.Tensor, grow_score: torch.Tensor, fraction: float
    ) -> tuple[torch.Tensor, int]:
        n = int(fraction * int(mask.sum()))
        if n == 0 or int((~mask).sum()) == 0:
            return mask, 0
        n = min(n, int((~mask).sum()))
        dropped = torch.topk(
            torch.where(mask, drop_score, torch.full_like(drop_score, float("inf"))), n, largest=False
        ).indices
        grow = torch.where(mask, torch.full_like(grow_score, -1.0), grow_score)  # only structures cut before
        grown = torch.topk(grow, n).indices
        new = mask.clone()
        new[dropped] = False
        new[grown] = True
        return new, n

    def state(self) -> dict[str, Any]:
        return {"heads": [m.cpu() for m in self.head_masks], "neurons": [m.cpu() for m in self.neuron_masks]}

    def load_state(self, state: dict[str, Any]) -> None:
        if "heads" in state:
            self.head_masks = [m.clone() for m in state["heads"]]
            self.neuron_masks = [m.clone() for m in state["neurons"]]
            self.apply_masks()


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


@torch.no_grad()
def remove_structures(model: nn.Module) -> dict[str, int]:
    """Physically delete heads whose proj columns and neurons whose fc2 columns are all zero.

    Their outputs are multiplied by zero weights, so the logits do not change; qkv rows, proj columns,
    fc1 rows and fc2 columns shrink and the attention's head count follows. Returns what was removed.
    """
    removed = {"heads": 0, "neurons": 0}
    for block in _blocks(model):
        attn, mlp = block.attn, block.mlp
        H, hd = attn.num_heads, attn.head_dim
        if not isinstance(attn.norm, nn.Identity) or getattr(attn, "gate", None) is not None:
            continue  # scale-norm or gated attention mixes heads: cutting columns would change the output
        cols = attn.proj.weight.view(attn.proj.out_features, H, hd)
        keep = (cols != 0).any(dim=(0, 2)).nonzero().flatten()
        if 0 < len(keep) < H:
            rows = torch.cat([t * H * hd + _head_columns(attn, keep) for t in range(3)])
            qkv_bias = attn.qkv.bias[rows] if attn.qkv.bias is not None else None
            attn.qkv = _linear(attn.qkv.weight[rows], qkv_bias)
            attn.proj = _linear(attn.proj.weight[:, _head_columns(attn, keep)], attn.proj.bias)
            removed["heads"] += H - len(keep)
            attn.num_heads = len(keep)
            attn.attn_dim = len(keep) * hd
        alive = (mlp.fc2.weight != 0).any(dim=0).nonzero().flatten()
        if 0 < len(alive) < mlp.fc2.in_features and isinstance(getattr(mlp, "norm", nn.Identity()), nn.Identity):
            removed["neurons"] += mlp.fc2.in_features - len(alive)
            fc1_bias = mlp.fc1.bias[alive] if mlp.fc1.bias is not None else None
            mlp.fc1 = _linear(mlp.fc1.weight[alive], fc1_bias)
            mlp.fc2 = _linear(mlp.fc2.weight[:, alive], mlp.fc2.bias)
    return removed
