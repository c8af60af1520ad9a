"""DynamicViT (Rao et al., NeurIPS 2021, arXiv 2106.02034): learned, input-dependent hierarchical token pruning.

At each stage (before blocks 3/6/9 of 12) a small prediction module scores the patch tokens and
keeps ``int(num_patches * rho**k)`` of the original ones; the class token is never scored.

* Training (``model.training`` with grad enabled): a hard straight-through Gumbel-Softmax samples a keep
  mask per token, multiplied by the previous stage's mask. No token is removed: from the first stage on,
  attention is masked so that kept tokens attend only to kept tokens (every token still attends to
  itself), as the official ``softmax_with_policy``.
* Evaluation: the shared top-k gather of :class:`StagedPruning`, scored by the keep log-probability.
* Loss: task CE (the loop's) + ratio loss (keep fraction per image regressed to rho**k) + KL to the dense
  teacher's logits + MSE to the teacher's final patch tokens on the tokens kept at the last stage.
* Recipe: the prediction modules have optimiser groups of their own at the scheduled lr; the backbone's
  scale, frozen epochs and never-trained parameters are recipe keys (``recipe: dynamicvit`` gives the
  official 0.01, 5 epochs and ``cls_token``/``pos_embed``), so the dense, static and random controls
  can be fine-tuned under the same groups.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import RunFailed, UsageError
from bench.methods.base import BatchSum, Param, TrainContext, check_vit, register_method
from bench.methods.dynamicvit_layers import TokenPredictor, gumbel_keep, masked_attention
from bench.methods.pruning import StagedPruning

#: attribute of the model that holds the prediction modules (so they are saved in its state_dict)
PREDICTORS = "dynamicvit_predictors"

#: (keep/drop log-probs (B, N, 2), previous keep mask (B, N, 1), stage) -> hard keep decision (B, N, 1)
Sampler = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


@register_method
class DynamicViT(StagedPruning):
    name = "dynamicvit"
    roles = ("learned",)
    family = "dynamicvit"
    description = (
        "learned per-stage token predictors (Gumbel-Softmax + attention masking in training, top-k at inference)"
    )
    learns_parameters = True
    input_dependent = True
    overhead_modules = (PREDICTORS,)
    params = {
        **StagedPruning.params,
        "ratio_weight": Param(2.0, "weight of the keep-ratio loss", minimum=0),
        "distill_weight": Param(0.5, "weight of the KL divergence to the dense teacher's logits", minimum=0),
        "token_distill_weight": Param(
            0.5, "weight of the MSE to the teacher's final patch tokens (kept tokens)", minimum=0
        ),
        "tau": Param(1.0, "Gumbel-Softmax temperature"),
    }

    def __init__(self, keep_ratio: float = 1.0, seed: int = 0, **params: Any):
        for key in ("backbone_lr_scale", "freeze_backbone_epochs"):
            if key in params:
                raise UsageError(
                    f"method {self.name!r}: {key!r} is a recipe key (finetune: {{{key}: ...}}), so "
                    f"controls can train under the same groups; recipe: dynamicvit sets the official value"
                )
        super().__init__(keep_ratio, seed, **params)
        for key in ("ratio_weight", "distill_weight", "token_distill_weight"):
            if self.config[key] < 0:
                raise UsageError(f"method {self.name!r}: parameter {key!r} must be >= 0, got {self.config[key]!r}")
        if self.config["tau"] <= 0:
            raise UsageError(f"method {self.name!r}: parameter 'tau' must be > 0, got {self.config['tau']!r}")
        #: replaces the Gumbel sampling of the keep decision when set (tests fix the decision with it)
        self.sampler: Sampler | None = None
        #: per stage, the (B, num_patches) keep mask of the last training forward
        self.policies: list[torch.Tensor] = []
        self._patch_policy: torch.Tensor | None = None  # (B, num_patches, 1), the running mask
        self._policy: torch.Tensor | None = None  # (B, N, 1) with prefix tokens: what attention reads
        self._tokens: torch.Tensor | None = None  # the student's final patch tokens (training)
        self._teacher_tokens: torch.Tensor | None = None
        self._prefix = 1
        self._patched: list[nn.Module] = []

    # -- patching -----------------------------------------------------------------------------
    def apply(self, model: nn.Module) -> nn.Module:
        check_vit(model, self.name)
        self._prefix = int(model.num_prefix_tokens)
        if self.keep_ratio < 1.0:
            if getattr(model, "global_pool", "token") != "token":
                # the masked training forward cannot express an average over the kept tokens only
                raise UsageError(
                    f"method {self.name!r} needs class-token pooling, got global_pool={model.global_pool!r}"
                )
            first = self.stages(model)[0][0]
            for block in model.blocks[first:]:
                self._patch_attention(block.attn)
            self._handles.append(model.norm.register_forward_hook(self._student_tokens_hook))
        return super().apply(model)

    def attach_learned(self, model: nn.Module) -> None:
        n_stages = len(self.stages(model))
        if not hasattr(model, PREDICTORS):
            dim = int(getattr(model, "embed_dim", model.num_features))
            setattr(model, PREDICTORS, nn.ModuleList(TokenPredictor(dim) for _ in range(n_stages)))
        predictors = getattr(model, PREDICTORS)
        if len(predictors) != n_stages:
            raise UsageError(
                f"method {self.name!r}: the model holds {len(predictors)} prediction modules, "
                f"the method needs {n_stages}"
            )
        if self.keep_ratio >= 1.0:
            predictors.requires_grad_(False)  # attached for a uniform checkpoint, but never used

    def _patch_attention(self, attn: nn.Module) -> None:
        if not all(hasattr(attn, a) for a in ("qkv", "q_norm", "k_norm", "attn_drop", "proj", "proj_drop")):
            raise UsageError(f"method {self.name!r} needs timm's Attention in every block, got {type(attn).__name__}")
        original = attn.forward

        def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            if self._policy is None or args or any(v is not None and v is not False for v in kwargs.values()):
                return original(x, *args, **kwargs)
            return masked_attention(attn, x, self._policy)

        attn.forward = forward
        self._patched.append(attn)

    def remove(self) -> None:
        super().remove()
        for attn in self._patched:
            del attn.forward  # the instance attribute: the class's forward is back
        self._patched.clear()

    def attach_teacher(self, teacher: nn.Module) -> None:
        prefix = int(getattr(teacher, "num_prefix_tokens", 1))

        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            self._teacher_tokens = out[:, prefix:].detach()

        self._handles.append(teacher.norm.register_forward_hook(hook))

    # -- forward ------------------------------------------------------------------------------
    def on_forward_start(self, x: torch.Tensor) -> None:
        self._patch_policy = self._policy = self._tokens = None
        self.policies = []

    def score(self, model: nn.Module, stage: int, patches: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return getattr(model, PREDICTORS)[stage](patches)[..., 0]

    def _make_stage_hook(self, model: nn.Module, stage: int, keep: int, prefix: int):
        gather = super()._make_stage_hook(model, stage, keep, prefix)
        predictor = getattr(model, PREDICTORS)[stage]

        def hook(module: nn.Module, args: tuple) -> tuple | None:
            if not (module.training and torch.is_grad_enabled()):
                return gather(module, args)
            x = args[0]
            patches = x[:, prefix:]
            prev = self._patch_policy
            if prev is None:
                prev = patches.new_ones(patches.shape[0], patches.shape[1], 1, dtype=torch.float32)
            log_probs = predictor(patches, prev)
            if self.sampler is not None:
                decision = self.sampler(log_probs, prev, stage)
            else:
                decision = gumbel_keep(log_probs, self.config["tau"])
            policy = decision.float() * prev  # a dropped token stays dropped
            self._patch_policy = policy
            self.policies.append(policy.squeeze(-1))
            self._policy = torch.cat([policy.new_ones(policy.shape[0], prefix, 1), policy], dim=1)
            return None

        return hook

    def _student_tokens_hook(self, module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        if module.training and torch.is_grad_enabled():
            self._tokens = out[:, self._prefix :]

    # -- training -----------------------------------------------------------------------------
    def needs_teacher(self) -> bool:
        return self.config["distill_weight"] > 0 or self.config["token_distill_weight"] > 0

    def extra_losses(self, model: nn.Module, ctx: TrainContext) -> dict[str, torch.Tensor | BatchSum]:
        cfg, terms = self.config, {}
        if self.policies:
            ratio = sum(((p.mean(dim=1) - self.keep_ratio ** (k + 1)) ** 2).mean() for k, p in enumerate(self.policies))
            terms["ratio"] = cfg["ratio_weight"] * ratio / len(self.policies)
        if not self.needs_teacher():
            return terms
        if ctx.teacher_logits is None:
            raise UsageError(f"method {self.name!r} distils from the dense teacher: train_model needs teacher=")
        if cfg["distill_weight"] > 0:
            kl = F.kl_div(
                F.log_softmax(ctx.logits.float(), dim=-1),
                F.log_softmax(ctx.teacher_logits.float(), dim=-1),
                reduction="batchmean",
                log_target=True,
            )
            terms["kl"] = cfg["distill_weight"] * kl
        if cfg["token_distill_weight"] > 0:
            loss = self._token_distill_loss()
            w = cfg["token_distill_weight"]
            terms["token_distill"] = BatchSum(w * loss.total, loss.count) if isinstance(loss, BatchSum) else w * loss
        return terms

    def _token_distill_loss(self) -> torch.Tensor | BatchSum:
        if self._tokens is None or self._teacher_tokens is None:
            raise RunFailed(
                f"method {self.name!r}: no student/teacher patch tokens were recorded in this step "
                f"(the student must run a training forward and the teacher be given to train_model)"
            )
        err = (self._tokens.float() - self._teacher_tokens.float()).pow(2).mean(dim=-1)  # (B, num_patches)
        if not self.policies:
            return err.mean()
        # tokens kept at the last stage only; the mask selects, it is not trained through this term
        kept = (self.policies[-1].detach() > 0.5).float()
        return BatchSum((err * kept).sum(), kept.sum())  # / the kept tokens of the whole batch

    def lr_scales(self) -> dict[str, float]:
        return {PREDICTORS: 1.0}
