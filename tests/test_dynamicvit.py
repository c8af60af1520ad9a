"""DynamicViT: masked training forward == pruned inference, schedule, FLOPs, losses, training recipe, figure."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from bench.config import DEFAULT_RECIPE
from bench.evaluate import TokenCounter
from bench.measure import count_flops
from bench.methods import BatchSum, TrainContext, create_method
from bench.methods.dynamicvit import PREDICTORS
from bench.methods.dynamicvit_layers import softmax_with_policy
from bench.methods.pruning import stage_keep_counts
from bench.models import build_backbone


def patched(tiny_vit, keep=0.5, depth=8, **params):
    model = tiny_vit(depth)
    method = create_method("dynamicvit", keep_ratio=keep, **params)
    method.apply(model)
    return model.eval(), method


def fixed_decision(kept):
    """A sampler that keeps exactly the given original patch positions at each stage."""
    return lambda log_probs, prev, stage: torch.zeros_like(prev).scatter(1, kept[stage].unsqueeze(-1), 1.0)


def exact_counts(method, model):
    """A sampler keeping the first int(N * rho**k) patches: exactly the target ratio when it is integral."""
    counts = [k for _, k in method.stages(model)]

    def sample(log_probs, prev, stage):
        keep = torch.zeros_like(prev)
        keep[:, : counts[stage]] = 1.0
        return keep

    return sample


def test_masked_training_forward_equals_pruned_inference(tiny_vit):
    model, method = patched(tiny_vit, 0.5)
    x = torch.randn(3, 1, 32, 32)
    method.record_kept = True
    with torch.no_grad():
        pruned = model(x)
    kept = [k.clone() for k in method.last_kept]
    model.train()  # dropout and drop-path are 0 in the tiny ViTs
    method.sampler = fixed_decision(kept)
    masked = model(x)
    assert [p.sum(1).tolist() for p in method.policies] == [[float(k.shape[1])] * 3 for k in kept]
    torch.testing.assert_close(masked, pruned, rtol=0, atol=1e-5)


def test_masked_softmax_ignores_dropped_keys():
    scores = torch.randn(2, 3, 5, 5)
    policy = torch.tensor([[1, 1, 0, 1, 0], [1, 0, 1, 1, 1]], dtype=torch.float32).unsqueeze(-1)
    attn = softmax_with_policy(scores, policy)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 3, 5))
    keep = policy[0, :, 0].bool()
    ref = scores[0, :, keep][:, :, keep].softmax(-1)  # kept queries over kept keys only
    torch.testing.assert_close(attn[0, :, keep][:, :, keep], ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("keep", [0.7, 0.5])
def test_eval_schedule_class_token_and_predictor_gradients(tiny_vit, keep):
    model, method = patched(tiny_vit, keep, depth=12)
    patches = model.patch_embed.num_patches
    counter = TokenCounter(model)
    with torch.no_grad():
        model(torch.randn(2, 1, 32, 32))
    counter.remove()
    keeps = stage_keep_counts(patches, keep, 3)
    assert sorted(set(counter.per_block())) == sorted({1.0 + patches, *(1.0 + k for k in keeps)})
    assert counter.per_block() == [float(n) for n in method.token_schedule(model)]
    assert [b for b, _ in method.stages(model)] == [3, 6, 9]

    model.train()
    x, y = torch.randn(4, 1, 32, 32), torch.randint(0, 10, (4,))
    method.config.update(distill_weight=0.0, token_distill_weight=0.0)
    logits = model(x)
    assert len(method.policies) == 3 and method.policies[0].shape == (4, patches)
    loss = F.cross_entropy(logits, y) + sum(
        method.extra_losses(model, TrainContext(x, y, logits)).values()
    )  # ratio only
    loss.backward()
    for i, predictor in enumerate(getattr(model, PREDICTORS)):
        grads = [p.grad for p in predictor.parameters()]
        assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0, f"stage {i}"


def test_class_token_drives_the_masked_forward(tiny_vit):
    """In training the class token (position 0) is never masked: its policy entry is always 1."""
    model, method = patched(tiny_vit, 0.5)
    model.train()
    method.sampler = lambda log_probs, prev, stage: torch.zeros_like(prev)  # drop every patch
    seen = []
    model.blocks[-1].attn.register_forward_pre_hook(lambda m, a: seen.append(method._policy.clone()))
    out = model(torch.randn(2, 1, 32, 32))
    assert torch.isfinite(out).all()
    assert seen[0][:, 0].eq(1).all() and seen[0][:, 1:].eq(0).all()


def test_checkpoint_round_trip(tiny_vit):
    model, _ = patched(tiny_vit, 0.7)
    keys = [k for k in model.state_dict() if k.startswith(PREDICTORS + ".")]
    assert keys and all(".in_conv." in k or ".out_conv." in k for k in keys)
    for keep in (0.7, 1.0):  # a checkpoint loads strictly whatever ratio built the model
        fresh, _ = patched(tiny_vit, keep)
        fresh.load_state_dict(model.state_dict())


def analytic_gmacs(model, method) -> float:
    """fvcore's count from the token schedule: Linear/conv as MACs, LayerNorm 5 per element, SDPA 2 N^2 C."""
    C = model.embed_dim
    patches = model.patch_embed.num_patches
    ph, pw = model.patch_embed.patch_size
    total = patches * C * model.patch_embed.proj.in_channels * ph * pw
    sched = method.token_schedule(model)
    for n in sched:
        total += 2 * 5 * n * C + 3 * n * C * C + 2 * n * n * C + n * C * C + 8 * n * C * C
    total += 5 * sched[-1] * C + C * model.num_classes  # final norm, head on the class token
    predictor = C * C + C * (C // 2) + (C // 2) * (C // 4) + (C // 4) * 2
    for block, _ in method.stages(model):
        n = sched[block - 1] - model.num_prefix_tokens  # patch tokens the stage scores
        total += n * (5 * C + predictor)
    return total / 1e9


def test_deit_small_gmacs_match_analytic_count():
    measured = {}
    for rho in (0.9, 0.8, 0.7):
        model = build_backbone("deit_small_patch16_224", num_classes=1000)
        method = create_method("dynamicvit", rho)
        method.apply(model)
        measured[rho] = count_flops(model, torch.randn(1, 3, 224, 224)).gmacs
        assert measured[rho] == pytest.approx(analytic_gmacs(model, method), rel=0.005)
    print(
        "DeiT-S DynamicViT GMACs (paper: 4.0 / 3.4 / 2.9):",
        " / ".join(f"rho {r}: {g:.3f}" for r, g in measured.items()),
    )
    assert measured[0.9] > measured[0.8] > measured[0.7]


def test_extra_losses_terms_and_weights(tiny_vit):
    model, method = patched(tiny_vit, 0.5)
    teacher = tiny_vit()
    method.attach_teacher(teacher)
    model.train()
    x, y = torch.randn(4, 1, 32, 32), torch.randint(0, 10, (4,))

    method.sampler = exact_counts(method, model)  # 32 / 16 / 8 of 64 patches: exactly rho^k
    logits = model(x)
    with torch.no_grad():
        t_logits = teacher(x)
    terms = method.extra_losses(model, TrainContext(x, y, logits, t_logits))
    assert set(terms) == {"ratio", "kl", "token_distill"}
    assert terms["ratio"].item() == 0.0
    kl = F.kl_div(F.log_softmax(logits, -1), F.log_softmax(t_logits, -1), reduction="batchmean", log_target=True)
    torch.testing.assert_close(terms["kl"], 0.5 * kl)
    with torch.no_grad():
        t_tokens = teacher.forward_features(x)[:, 1:]
    s_tokens = method._tokens
    kept = method.policies[-1] > 0.5
    # a sum over the batch's kept tokens and their count, so accumulated micro-batches divide by the whole count
    assert isinstance(terms["token_distill"], BatchSum) and terms["token_distill"].count.item() == 4 * 8
    torch.testing.assert_close(terms["token_distill"].value(), 0.5 * (s_tokens - t_tokens).pow(2)[kept].mean())

    method.sampler = lambda log_probs, prev, stage: torch.ones_like(prev)  # keeps everything
    logits = model(x)
    terms = method.extra_losses(model, TrainContext(x, y, logits, t_logits))
    expected = sum((1 - 0.5**k) ** 2 for k in (1, 2, 3)) / 3
    assert terms["ratio"].item() == pytest.approx(2.0 * expected)

    quiet = create_method("dynamicvit", 0.5, distill_weight=0.0, token_distill_weight=0.0)
    assert not quiet.needs_teacher() and create_method("dynamicvit", 0.5).needs_teacher()


OFFICIAL_GROUPS = {"backbone_lr_scale": 0.01, "frozen_params": ["cls_token", "pos_embed"]}


def _train(tiny_vit, tmp_path, freeze: int):
    from bench.train import train_model

    model, method = patched(tiny_vit, 0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = TensorDataset(torch.randn(8, 1, 32, 32), torch.randint(0, 10, (8,)))
    recipe = {
        **DEFAULT_RECIPE,
        "epochs": 1,
        "batch_size": 4,
        "lr": 1e-3,
        "warmup_epochs": 0,
        **OFFICIAL_GROUPS,
        "freeze_backbone_epochs": freeze,
    }
    result = train_model(
        model,
        method,
        data,
        recipe,
        seed=0,
        out_dir=tmp_path / f"f{freeze}",
        device=torch.device("cpu"),
        teacher=tiny_vit(),
        log=lambda s: None,
    )
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    log = [json.loads(line) for line in (tmp_path / f"f{freeze}" / "train_log.jsonl").read_text().splitlines()]
    return model, method, result, changed, log[-1]


def test_two_step_training_freezes_backbone_then_scales_its_lr(tiny_vit, tmp_path):
    model, method, result, changed, log = _train(tiny_vit, tmp_path, freeze=1)
    assert result.steps == 2 and math.isfinite(result.final_loss)
    assert all(math.isfinite(log[f"loss_{k}"]) for k in ("ce", "ratio", "kl", "token_distill"))
    assert changed and all(k.startswith(PREDICTORS + ".") for k in changed)  # frozen backbone

    from bench.train.optim import param_groups

    recipe = {**DEFAULT_RECIPE, **OFFICIAL_GROUPS, "freeze_backbone_epochs": 5}
    groups = {g["name"]: g for g in param_groups(model, method.lr_scales(), recipe)}
    assert groups[PREDICTORS]["lr_scale"] == groups[PREDICTORS + "_no_decay"]["lr_scale"] == 1.0
    assert groups["backbone"]["lr_scale"] == groups["backbone_no_decay"]["lr_scale"] == 0.01
    assert groups["backbone"]["frozen_epochs"] == 5 and groups[PREDICTORS]["frozen_epochs"] == 0
    # as optim_factory.py: 1-D and bias parameters of the predictors too are not decayed
    assert groups["backbone_no_decay"]["weight_decay"] == groups[PREDICTORS + "_no_decay"]["weight_decay"] == 0.0
    grouped = {id(p) for g in groups.values() for p in g["params"]}
    assert id(model.pos_embed) not in grouped and id(model.cls_token) not in grouped  # as the official code

    _, _, _, changed, _ = _train(tiny_vit, tmp_path, freeze=0)
    assert any(k.startswith("blocks.") for k in changed) and "pos_embed" not in changed


def test_kept_tokens_record(tiny_vit, tmp_path):
    import numpy as np

    from bench.measure.kept_tokens import kept_masks, record_kept_tokens

    model, method = patched(tiny_vit, 0.5)
    images = torch.randn(2, 1, 32, 32)
    masks = kept_masks(model, method, images)
    assert [int(m[0].sum()) for m in masks] == [32, 16, 8]
    assert all(bool((later <= earlier).all()) for earlier, later in zip(masks, masks[1:]))  # dropped stays dropped
    saved = np.load(record_kept_tokens(model, method, images, tmp_path / "kept.npz", mean=(0.5,), std=(0.5,)))
    assert [int(m.sum()) for m in saved["masks"][:, 0]] == [32, 16, 8] and saved["images"].dtype == np.uint8
    assert not method.record_kept and not model.training


def test_remove_restores_the_dense_forward(tiny_vit):
    model, method = patched(tiny_vit, 0.5)
    dense = tiny_vit()
    method.remove()
    model.train()  # the training path would mask attention if the patched forwards were still there
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(model(x), dense.train()(x), rtol=0, atol=0)
    assert all("forward" not in vars(b.attn) for b in model.blocks)
