"""DynamicViT's building blocks: the token prediction module and attention masked by a keep policy.

Both follow the official code (github.com/raoyongming/DynamicViT): ``PredictorLG`` and
``Attention.softmax_with_policy``. The masked attention reuses a timm ``Attention``'s own submodules, so
no timm code is copied and the state_dict keys stay timm's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TokenPredictor(nn.Module):
    """Keep/drop log-probabilities per patch token from a local feature and a global (kept-token mean) one."""

    def __init__(self, dim: int):
        super().__init__()
        self.in_conv = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())
        self.out_conv = nn.Sequential(
            nn.Linear(dim, dim // 2),
            nn.GELU(),
            nn.Linear(dim // 2, dim // 4),
            nn.GELU(),
            nn.Linear(dim // 4, 2),
            nn.LogSoftmax(dim=-1),
        )
        for m in self.modules():  # the ViT initialisation, as the official model applies to its predictors
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, policy: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (B, N, C) patch tokens, ``policy`` (B, N, 1) current keep mask (None: all kept) -> (B, N, 2)."""
        x = self.in_conv(x)
        B, N, C = x.shape
        local, rest = x[..., : C // 2], x[..., C // 2 :]
        if policy is None:
            glob = rest.mean(dim=1, keepdim=True)
        else:  # the global feature sees only the tokens still kept (none kept: zero, not 0/0)
            glob = (rest * policy).sum(dim=1, keepdim=True) / policy.sum(dim=1, keepdim=True).clamp_min(1e-6)
        return self.out_conv(torch.cat([local, glob.expand(B, N, rest.shape[-1])], dim=-1))


def softmax_with_policy(scores: torch.Tensor, policy: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Softmax over keys that are kept by ``policy`` (B, N, 1); every query still attends to itself.

    Computed in fp32 with DynamicViT's ``eps`` smoothing, which keeps rows of dropped tokens finite.
    """
    B, N, _ = policy.shape
    keep = policy.reshape(B, 1, 1, N).float()
    eye = torch.eye(N, dtype=keep.dtype, device=keep.device).view(1, 1, N, N)
    keep = keep + (1.0 - keep) * eye
    s = scores.float()
    weights = (s - s.amax(dim=-1, keepdim=True)).exp() * keep
    return ((weights + eps / N) / (weights.sum(dim=-1, keepdim=True) + eps)).to(scores.dtype)


def masked_attention(attn: nn.Module, x: torch.Tensor, policy: torch.Tensor) -> torch.Tensor:
    """timm ``Attention.forward`` with the softmax replaced by :func:`softmax_with_policy`."""
    B, N, _ = x.shape
    gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    weights = attn.attn_drop(softmax_with_policy((q * attn.scale) @ k.transpose(-2, -1), policy))
    out = (weights @ v).transpose(1, 2).reshape(B, N, attn.num_heads * attn.head_dim)
    out = attn.norm(out) if hasattr(attn, "norm") else out
    if gate is not None:
        out = out * gate
    return attn.proj_drop(attn.proj(out))


def gumbel_keep(log_probs: torch.Tensor, tau: float) -> torch.Tensor:
    """Hard straight-through Gumbel-Softmax sample of the keep decision: (B, N, 2) -> (B, N, 1) in {0, 1}."""
    return F.gumbel_softmax(log_probs, tau=tau, hard=True)[..., 0:1]
