"""EViT (``bench/methods/evit.py``) against an independent reference of the official algorithm (youweiliang/evit,
``evit.py`` and ``helpers.py``), written out here on the same timm weights: explicit attention, the class token's
row, topk, the attention-weighted fuse. Every test here fails for some wrong EViT (the planted bugs in the
module's history: least attended kept, a plain mean or renormalised weights as the fuse, floor instead of ceil,
the class token's own column ranked, an unprotected class token, kept tokens re-sorted, the schedule flipped).
"""

from __future__ import annotations

import math

import pytest
import timm
import torch

from bench.errors import UsageError
from bench.evaluate import TokenCounter
from bench.measure import count_flops
from bench.measure.kept_tokens import kept_masks
from bench.methods import create_method

RATES = [0.9, 0.7, 0.5, 0.25]


# -- the reference ------------------------------------------------------------------------------------------------
def official_keep_rate(iters, epoch, warmup_epochs, total_epochs, iters_per_epoch, base_keep_rate, max_keep_rate=1):
    """helpers.adjust_keep_rate, as the official engine calls it (warmup = shrink_start_epoch, total = start +
    shrink_epochs, ``iters`` counted from 0 over the whole run)."""
    if epoch < warmup_epochs:
        return 1
    if epoch >= total_epochs:
        return base_keep_rate
    total_iters = iters_per_epoch * (total_epochs - warmup_epochs)
    iters = iters - iters_per_epoch * warmup_epochs
    return base_keep_rate + (max_keep_rate - base_keep_rate) * (math.cos(iters / total_iters * math.pi) + 1) * 0.5


@torch.no_grad()
def official_evit(model, images, rate, fuse, drop_loc=(3, 6, 9)):
    """Official EViT's forward on a timm ViT's weights. Returns the logits, the tokens entering each block, and per
    reduction what it saw and did (tokens after the attention residual, head-averaged class attention of the N-1
    non-class tokens, kept indices, the original patch positions of the tokens, -1 for a fused one)."""
    x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))
    B = x.shape[0]
    positions = [list(range(x.shape[1] - 1)) for _ in range(B)]
    entering, reductions = [], []
    for i, blk in enumerate(model.blocks):
        entering.append(x)
        _, N, C = x.shape
        a = blk.attn
        qkv = a.qkv(blk.norm1(x)).reshape(B, N, 3, a.num_heads, C // a.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * a.scale).softmax(dim=-1)  # (B, H, N, N)
        x = x + blk.ls1(a.proj((attn @ v).transpose(1, 2).reshape(B, N, C)))
        left = math.ceil(rate * (N - 1))
        if i in drop_loc and rate < 1 and left != N - 1:
            cls_attn = attn[:, :, 0, 1:].mean(dim=1)  # (B, N-1)
            idx = torch.topk(cls_attn, left, dim=1, largest=True, sorted=True).indices
            non_cls = x[:, 1:]
            kept = torch.gather(non_cls, 1, idx.unsqueeze(-1).expand(-1, -1, C))
            record = {"block": i, "x": x, "cls_attn": cls_attn, "idx": idx}
            kept_pos = [[positions[b][j] for j in idx[b].tolist()] for b in range(B)]
            if fuse:
                rest = torch.tensor([sorted(set(range(N - 1)) - set(idx[b].tolist())) for b in range(B)])
                others = torch.gather(non_cls, 1, rest.unsqueeze(-1).expand(-1, -1, C))
                extra = torch.sum(others * torch.gather(cls_attn, 1, rest).unsqueeze(-1), dim=1, keepdim=True)
                x = torch.cat([x[:, :1], kept, extra], dim=1)
                positions = [p + [-1] for p in kept_pos]
            else:
                x = torch.cat([x[:, :1], kept], dim=1)
                positions = kept_pos
            record["positions"] = positions
            reductions.append(record)
        x = x + blk.ls2(blk.mlp(blk.norm2(x)))
    return model.forward_head(model.norm(x)), entering, reductions


def sharpened(model):
    """Scale the attention logits up (x16) so the class attention of a randomly initialised model is far from
    ties: which tokens are kept, and their order, must not hang on the last bit of a float."""
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.qkv.weight[: 2 * blk.attn.qkv.out_features // 3].mul_(4.0)
    return model


def evit_model(tiny_vit, rate, depth=12, **params):
    model = sharpened(tiny_vit(depth))
    method = create_method("evit", rate, **params)
    method.apply(model)
    return model.eval(), method


def images(batch=4, seed=0):
    return torch.randn(batch, 1, 32, 32, generator=torch.Generator().manual_seed(seed))


# -- faithfulness -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("rate", RATES)
def test_logits_and_every_token_equal_the_official_reference(tiny_vit, rate, fuse):
    """Same logits, and the same tokens in the same order entering every block (class token, kept tokens in
    descending attention, then the fused one): a ViT's logits do not see the order, the next block's input does."""
    model, method = evit_model(tiny_vit, rate, fuse=fuse)
    reference = sharpened(tiny_vit(12))
    x = images()
    seen = {}
    for i, blk in enumerate(model.blocks):
        blk.register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(i, a[0]))
    with torch.no_grad():
        out = model(x)
    logits, entering, reductions = official_evit(reference, x, rate, fuse)
    torch.testing.assert_close(out, logits, rtol=0, atol=1e-5)
    assert [t.shape[1] for t in entering] == method.token_schedule(model)
    for i, tokens in enumerate(entering):
        torch.testing.assert_close(seen[i], tokens, rtol=0, atol=1e-5, msg=lambda m, i=i: f"block {i}: {m}")
    assert [r["block"] for r in reductions] == [3, 6, 9]


def test_the_reference_is_far_from_ties(tiny_vit):
    """The class attention gaps that decide the kept set and order are far above float error (else the
    comparison above would hang on rounding)."""
    _, _, reductions = official_evit(sharpened(tiny_vit(12)), images(), 0.5, True)
    for r in reductions:
        ranked = r["cls_attn"].sort(dim=1, descending=True).values
        gaps = (ranked[:, :-1] - ranked[:, 1:]) / ranked[:, :1]
        assert gaps.min() > 1e-5, (r["block"], gaps.min())


def test_deit_small_logits_equal_the_official_reference():
    torch.manual_seed(0)
    model = sharpened(timm.create_model("deit_small_patch16_224", pretrained=False, num_classes=10).eval())
    reference = sharpened(timm.create_model("deit_small_patch16_224", pretrained=False, num_classes=10).eval())
    reference.load_state_dict(model.state_dict())
    create_method("evit", 0.7).apply(model)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(x)
    logits, entering, _ = official_evit(reference, x, 0.7, True)
    torch.testing.assert_close(out, logits, rtol=0, atol=1e-5)
    assert [t.shape[1] for t in entering] == [197] * 4 + [140] * 3 + [100] * 3 + [72] * 2


# -- the reduction inside the block ---------------------------------------------------------------------------------
def _explicit_cls_attention(block, x):
    """Block ``block``'s own head-averaged class-token attention to every token, from the tokens entering it."""
    a = block.attn
    B, N, C = x.shape
    q, k, _ = a.qkv(block.norm1(x)).reshape(B, N, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    return ((q @ k.transpose(-2, -1)) * a.scale).softmax(-1)[:, :, 0].mean(1)


@pytest.mark.parametrize("rate", [0.7, 0.5])
def test_inside_the_block_the_most_attended_are_kept_and_the_rest_fused_by_attention(tiny_vit, rate):
    model, method = evit_model(tiny_vit, rate)
    entering, calls = {}, []
    for i in (3, 6, 9):
        model.blocks[i].register_forward_pre_hook(lambda m, a, i=i: entering.__setitem__(i, a[0]))
    reduce = method.reduce

    def spy(model, view):
        out = reduce(model, view)
        calls.append((view, out))
        return out

    method.reduce = spy
    with torch.no_grad():
        model(images())
    assert [v.index for v, _ in calls] == [3, 6, 9]
    for view, out in calls:
        x = view.x
        B, N, C = x.shape
        left = math.ceil(rate * (N - 1))
        assert out.shape == (B, 1 + left + 1, C)
        assert torch.equal(out[:, 0], x[:, 0]), "the class token is first and unchanged"
        # this block's attention, computed from its own weights and input
        with torch.no_grad():
            attn = _explicit_cls_attention(model.blocks[view.index], entering[view.index])[:, 1:]
        kept = out[:, 1 : 1 + left]
        match = (kept[:, :, None] == x[:, None, 1:]).all(-1)  # (B, left, N-1): which input token each one is
        assert (match.sum(-1) == 1).all(), "every kept token is one of the block's tokens, unchanged"
        idx = match.int().argmax(-1)
        kept_attn = attn.gather(1, idx)
        dropped = torch.ones_like(attn, dtype=torch.bool).scatter(1, idx, False)
        assert (kept_attn.min(1).values >= attn.masked_fill(~dropped, -1).max(1).values).all(), "most attended kept"
        assert (kept_attn[:, :-1] >= kept_attn[:, 1:]).all(), "kept in descending attention order"
        fused = ((x[:, 1:] * attn.unsqueeze(-1)) * dropped.unsqueeze(-1)).sum(1)
        torch.testing.assert_close(out[:, -1], fused, rtol=0, atol=1e-6, msg="fused = sum of dropped * raw attention")


def test_without_fuse_the_rest_is_dropped(tiny_vit):
    model, method = evit_model(tiny_vit, 0.5, fuse=False)
    outs = []
    reduce = method.reduce
    method.reduce = lambda m, view: outs.append((view.x, reduce(m, view))) or outs[-1][1]
    with torch.no_grad():
        model(images())
    for x, out in outs:
        left = math.ceil(0.5 * (x.shape[1] - 1))
        assert out.shape[1] == 1 + left
        assert (out[:, 1:, None] == x[:, None, 1:]).all(-1).any(-1).all(), "only original tokens remain"


# -- counts, schedule, cost ---------------------------------------------------------------------------------------
def test_token_schedule_of_deit_small():
    model = timm.create_model("deit_small_patch16_224", pretrained=False)
    # fused: 196 -> ceil(137.2) = 138 (+cls +fused) -> 139 -> ceil(97.3) = 98 -> 99 -> ceil(69.3) = 70
    assert create_method("evit", 0.7).token_schedule(model) == [197] * 4 + [140] * 3 + [100] * 3 + [72] * 2
    # dropped: 196 -> 138 -> ceil(96.6) = 97 -> ceil(67.9) = 68
    assert create_method("evit", 0.7, fuse=False).token_schedule(model) == [197] * 4 + [139] * 3 + [98] * 3 + [69] * 2
    assert create_method("evit", 0.5).token_schedule(model)[4:] == [100] * 3 + [52] * 3 + [28] * 2
    assert create_method("evit", 1.0).token_schedule(model) == [197] * 12
    assert create_method("evit", 1.0).reduction_blocks(model) == []


def test_stage_blocks(tiny_vit):
    model, method = evit_model(tiny_vit, 0.5, depth=8, stage_blocks=[0, 5])
    counter = TokenCounter(model)
    with torch.no_grad():
        model(images(2))
    # inside block 0 already: 64 -> 32 (+cls +fused) = 34 from block 1 on; inside block 5: 33 -> 17 -> 19
    assert method.token_schedule(model) == [65, 34, 34, 34, 34, 34, 19, 19]
    assert counter.per_block() == [float(n) for n in method.token_schedule(model)]
    for bad in ([3, 3], [6, 2], [8], [-1], [True]):
        with pytest.raises(UsageError, match="stage_blocks"):
            create_method("evit", 0.5, stage_blocks=bad).token_schedule(model)


def analytic_gmacs(schedule, C, patches, patch_in, classes, fuse_reduced):
    """fvcore's convention (1 multiply-add = 1 flop) written out per block: qkv 3NC^2, q@k^T and attn@v 2N^2C,
    proj NC^2, MLP 8N'C^2 on the N' tokens after the block's reduction; layer norms 5 per element; a reducing
    block's class-token row q_cls@k^T (NC). Plus the patch embedding and the head."""
    total, norms, cls_rows = patches * patch_in * C + C * classes, 0, 0
    for i, n in enumerate(schedule):
        n_out = schedule[i + 1] if i + 1 < len(schedule) else n
        total += 3 * n * C * C + 2 * n * n * C + n * C * C + 8 * n_out * C * C
        norms += 5 * n * C + 5 * n_out * C
        cls_rows += n * C if i in fuse_reduced else 0
    norms += 5 * schedule[-1] * C  # the final norm, on every token
    return total / 1e9, (total + norms + cls_rows) / 1e9


#: the official README's DeiT-S GMACs per keep rate (fused and not: the same figures)
README_GMACS = {0.5: 2.3, 0.6: 2.6, 0.7: 3.0, 0.8: 3.5, 0.9: 4.0}


@pytest.mark.parametrize("fuse", [True, False])
def test_deit_small_gmacs_match_the_analytic_count_and_the_readme(fuse):
    model = timm.create_model("deit_small_patch16_224", pretrained=False).eval()
    x = torch.randn(1, 3, 224, 224)
    for rate, readme in README_GMACS.items():
        method = create_method("evit", rate, fuse=fuse)
        method.apply(model)
        schedule = method.token_schedule(model)
        measured = count_flops(model, x).gmacs
        method.remove()
        plain, full = analytic_gmacs(schedule, 384, 196, 3 * 16 * 16, 1000, fuse_reduced={3, 6, 9})
        assert measured == pytest.approx(plain, rel=5e-3)
        assert measured == pytest.approx(full, rel=1e-6)
        assert round(measured, 1) == readme, (rate, measured, readme)  # the README rounds to 0.1
    dense, _ = analytic_gmacs([197] * 12, 384, 196, 3 * 16 * 16, 1000, fuse_reduced=set())
    assert count_flops(model, x).gmacs == pytest.approx(dense, rel=5e-3)  # removed: the dense 4.6


# -- the keep rate in training ------------------------------------------------------------------------------------
@pytest.mark.parametrize("start, span", [(0, 0), (2, 0), (1, 3), (0, 2)])
def test_training_keep_rate_follows_the_official_schedule(tiny_vit, start, span):
    model, method = evit_model(tiny_vit, 0.5, depth=8, shrink_start_epoch=start, shrink_epochs=span)
    epochs, per_epoch = 6, 5
    method.on_train_start(model, epochs * per_epoch)
    step, rates, expected = 0, [], []
    for epoch in range(epochs):
        method.on_epoch_start(model, epoch, epochs)
        for _ in range(per_epoch):
            rates.append(method.train_keep_rate)  # what this step's forward runs at
            expected.append(official_keep_rate(step, epoch, start, start + span, per_epoch, 0.5))
            method.before_optimizer_step(model, step)
            method.after_optimizer_step(model, step)
            step += 1
    assert rates == pytest.approx(expected, abs=1e-12)
    assert all(a >= b for a, b in zip(rates, rates[1:])), "the keep rate only falls"
    assert rates[: start * per_epoch] == [1.0] * (start * per_epoch)
    assert rates[(start + span) * per_epoch :] == [0.5] * (epochs - start - span) * per_epoch
    if span:
        assert rates[start * per_epoch] == 1.0 and 0.5 < rates[start * per_epoch + 1] < 1.0


def test_the_schedule_reaches_the_forward_in_training_not_in_evaluation(tiny_vit):
    """Before shrinking starts a training forward is the dense one; evaluation runs at the target meanwhile."""
    dense = tiny_vit(8).train()
    model, method = evit_model(tiny_vit, 0.5, depth=8, shrink_start_epoch=1, shrink_epochs=2)
    sharpened(dense)
    method.on_train_start(model, 10)
    method.on_epoch_start(model, 0, 5)
    x = images(2)
    model.train()
    counter = TokenCounter(model)
    torch.testing.assert_close(model(x), dense(x), rtol=0, atol=0)
    assert counter.per_block() == [65.0] * 8
    model.eval()
    counter = TokenCounter(model)
    with torch.no_grad():
        model(x)
    assert counter.per_block() == [float(n) for n in method.token_schedule(model)] != [65.0] * 8


def test_a_training_run_shrinks_the_tokens_per_iteration(tiny_vit, tmp_path):
    from torch.utils.data import TensorDataset

    from bench.config import DEFAULT_RECIPE
    from bench.train import train_model

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(96, 1, 32, 32, generator=g), torch.randint(0, 10, (96,), generator=g))
    recipe = {**DEFAULT_RECIPE, "epochs": 3, "batch_size": 32, "lr": 1e-3, "warmup_epochs": 0}
    model = tiny_vit(8)
    method = create_method("evit", 0.5, shrink_start_epoch=1, shrink_epochs=1)
    method.apply(model)
    seen = []  # patch tokens entering block 3 (after block 2's reduction) in each training forward
    model.blocks[3].register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1] - 1) if m.training else None)
    train_model(model, method, data, recipe, seed=0, out_dir=tmp_path, device=torch.device("cpu"))
    rates = [official_keep_rate(it, it // 3, 1, 2, 3, 0.5) for it in range(9)]  # 1, 1, 1, 1, .875, .625, .5 ...
    expected = [min(64, math.ceil(r * 64)) + (1 if r < 1 else 0) for r in rates]
    assert seen == expected == [64, 64, 64, 64, 57, 41, 33, 33, 33]


# -- the gallery's records --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fuse, rate", [(True, 0.5), (False, 0.5), (True, 0.2)])
def test_recorded_kept_patches_are_the_original_positions(tiny_vit, fuse, rate):
    model, method = evit_model(tiny_vit, rate, fuse=fuse)
    x = images(8)
    masks = kept_masks(model, method, x)
    _, _, reductions = official_evit(sharpened(tiny_vit(12)), x, rate, fuse)
    assert len(method.last_kept) == len(masks) == len(reductions) == 3
    for recorded, mask, r in zip(method.last_kept, masks, reductions):
        for b, positions in enumerate(r["positions"]):
            # the fused token is recorded as -1 and marks no patch, also when it is the only token kept
            # (rate 0.2, last stage: 1 of 4), where the mask is empty rather than a stand-in patch
            own = {p for p in positions if p >= 0}
            assert set(recorded[b].tolist()) - {-1} == own
            assert set(mask[b].flatten().nonzero().flatten().tolist()) == own
    if not fuse:
        assert method.last_groups == []
        return
    for groups, r in zip(method.last_groups, reductions):
        for b, positions in enumerate(r["positions"]):
            # one group per token after the reduction; the kept patches of their own are alone in theirs
            assert len(set(groups[b].tolist())) == len(positions)
            sizes = torch.bincount(groups[b])
            assert {p for p in range(64) if sizes[groups[b][p]] == 1} >= {p for p in positions if p >= 0}


# -- a model without a class token ----------------------------------------------------------------------------------
NO_CLASS_TOKEN = {
    "avg_pool": {"class_token": False, "global_pool": "avg"},
    "avg_pool_and_4_registers": {"class_token": False, "global_pool": "avg", "reg_tokens": 4},
}


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("layout", list(NO_CLASS_TOKEN), ids=str)
def test_a_model_without_a_class_token_is_refused_in_one_line(tiny_vit, layout, fuse):
    """Token 0 would be a patch or a register: EViT never ranks by its attention, at any keep ratio."""
    for rate in (0.5, 1.0):
        model = tiny_vit(**NO_CLASS_TOKEN[layout])
        with pytest.raises(UsageError) as e:
            create_method("evit", rate, fuse=fuse).apply(model)
        msg = str(e.value)
        assert "'evit'" in msg and "no class token" in msg and "\n" not in msg
        assert ("register" in msg) == ("registers" in layout)
        assert not hasattr(model.blocks[3], "forward") or "forward" not in vars(model.blocks[3])  # nothing patched


def test_registers_beside_a_class_token_are_kept_and_the_class_token_ranks(tiny_vit):
    """With registers after the class token, token 0 is still the class token: EViT applies, and the prefix tokens
    (class token and 4 registers) leave the first reducing block exactly as the dense model's do."""
    images = torch.randn(2, 1, 32, 32)
    entering: dict[str, torch.Tensor] = {}
    for tag, keep in (("dense", 1.0), ("evit", 0.5)):
        model = tiny_vit(reg_tokens=4)
        method = create_method("evit", keep)
        method.apply(model)
        first = method.stage_blocks(model)[0]
        model.blocks[first + 1].register_forward_pre_hook(lambda m, a, tag=tag: entering.__setitem__(tag, a[0]))
        with torch.no_grad():
            model(images)
    assert entering["evit"].shape[1] == 5 + math.ceil(0.5 * 64) + 1 < entering["dense"].shape[1] == 5 + 64
    torch.testing.assert_close(entering["evit"][:, :5], entering["dense"][:, :5], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["static", "random", "importance", "token_pooling", "grid_pool", "tome", "svite_plus"])
def test_methods_that_read_no_class_token_run_without_one(tiny_vit, name):
    """The documented rule (Method.needs_class_token): the other token methods score patches by what they read
    themselves (attention received over all queries, keys, a learned scorer, position) and keep every prefix token
    (registers) unchanged; they need no class token."""
    from bench.methods.base import has_class_token

    model = tiny_vit(**NO_CLASS_TOKEN["avg_pool_and_4_registers"])
    assert not has_class_token(model)
    method = create_method(name, 0.5)
    assert not method.reads_class_token
    method.apply(model)
    with torch.no_grad():
        out = model(torch.randn(2, 1, 32, 32))
    assert torch.isfinite(out).all()
    assert method.token_schedule(model)[-1] < 4 + 64  # it did reduce
