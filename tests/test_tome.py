"""ToMe (bench/methods/tome.py) against an independent reference of the official timm patch, and the invariants
that make token merging what it is (facebookresearch/ToMe: tome/merge.py, tome/patch/timm.py, tome/utils.py)."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from torch import nn

from bench.evaluate import TokenCounter
from bench.measure import count_flops
from bench.measure.cost import measure_cost
from bench.methods import create_method
from bench.methods.inblock import BlockView, ForwardState

# -- an independent reference: the official ToMeBlock / ToMeAttention written out, one image at a time ------------


def official_r(depth: int, r, inflect: float = 0.0) -> list[int]:
    """tome.utils.parse_r: a list padded with zeros, or the (r, inflect) line from int(r(1-inflect)) to 2r-that."""
    if isinstance(r, list):
        return r + [0] * (depth - len(r))
    first = int(r * (1.0 - inflect))
    last = 2 * r - first
    return [int(first + (last - first) / (depth - 1) * i) for i in range(depth)]


def reference_attention(attn, x, size):
    """Explicit attention (no fused kernel) with + log(size) of each key; returns the output and mean keys."""
    B, N, C = x.shape
    q, k, v = attn.qkv(x).reshape(B, N, 3, attn.num_heads, C // attn.num_heads).permute(2, 0, 3, 1, 4)
    logits = q @ k.transpose(-2, -1) * attn.scale
    if size is not None:
        logits = logits + size.log().view(B, 1, 1, N)
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(B, N, C)
    return attn.proj(out), k.mean(1)


def reference_groups(metric: torch.Tensor, r: int, prefix: int = 1) -> list[list[int]]:
    """ToMe's matching of one image (t, d), by bookkeeping: the groups of input positions, in output order.

    A = even positions, B = odd; each A token's edge is its most cosine-similar B token; the r A tokens with the
    most similar edges join their B token. The class token (A's first) has no edge; the official distillation
    token (B's first; here any second prefix token) takes none and comes second. Without a class token the A
    tokens left stay in edge order (the official code sorts them only with one)."""
    t = metric.shape[0]
    r = min(r, (t - prefix) // 2)
    m = metric / metric.norm(dim=-1, keepdim=True)
    a_pos, b_pos = list(range(0, t, 2)), list(range(1, t, 2))
    sim = m[a_pos] @ m[b_pos].T
    if prefix == 2:
        sim[:, 0] = -math.inf
    best = sim.max(dim=1)
    edges = sorted(range(1 if prefix else 0, len(a_pos)), key=lambda j: -float(best.values[j]))
    joins = {j: int(best.indices[j]) for j in edges[:r]}
    if prefix:
        kept_a = [[a_pos[j]] for j in range(len(a_pos)) if j not in joins]
    else:
        kept_a = [[a_pos[j]] for j in edges[r:]]
    b_groups = [[b] + [a_pos[j] for j in sorted(joins) if joins[j] == k] for k, b in enumerate(b_pos)]
    if prefix == 2:
        return kept_a[:1] + b_groups[:1] + kept_a[1:] + b_groups[1:]
    return kept_a + b_groups


def reference_merge(x, size, metric, r, prefix=1):
    """Size-weighted averages of the groups; sizes summed."""
    xs, ss = [], []
    for i in range(x.shape[0]):
        groups = reference_groups(metric[i], r, prefix)
        xs.append(torch.stack([(x[i, g] * size[i, g]).sum(0) / size[i, g].sum(0) for g in groups]))
        ss.append(torch.stack([size[i, g].sum(0) for g in groups]))
    return torch.stack(xs), torch.stack(ss)


def embed(model, images):
    x = model.patch_embed(images)
    return model.norm_pre(model.patch_drop(model._pos_embed(x)))


def reference_blocks(model, x, rs, prop_attn=True, size=None):
    """The official ToMeBlock.forward over ``model.blocks``: merge between attention and MLP where r > 0."""
    prefix = model.num_prefix_tokens
    for block, r in zip(model.blocks, rs):
        assert isinstance(block.ls1, nn.Identity) and isinstance(block.attn.q_norm, nn.Identity)
        out, metric = reference_attention(block.attn, block.norm1(x), size if prop_attn else None)
        x = x + out
        if r > 0 and (x.shape[1] - prefix) // 2 > 0:
            ones = torch.ones(x.shape[0], x.shape[1], 1) if size is None else size
            x, size = reference_merge(x, ones, metric, r, prefix)
        x = x + block.mlp(block.norm2(x))
    return x, size


def reference_forward(model, images, rs, prop_attn=True):
    x, _ = reference_blocks(model, embed(model, images), rs, prop_attn)
    return model.forward_head(model.norm(x))


def tome(model, keep=0.5, **params):
    method = create_method("tome", keep, **params)
    method.apply(model)
    return method


IMAGES = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))

# -- 1. faithfulness -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prop_attn", [True, False])
@pytest.mark.parametrize(
    "params",
    [{"r": 4}, {"r": [10, 0, 7, 3, 12, 1]}, {"r": 3, "inflect": -1.0}, {"r": 6, "inflect": 0.5}, {"r": 40}],
    ids=["constant", "list", "decreasing", "inflect_half", "capped_at_half"],
)
def test_logits_equal_the_official_forward(tiny_vit, params, prop_attn):
    model, reference = tiny_vit(12), tiny_vit(12)
    method = tome(model, r=params["r"], inflect=params.get("inflect", 0.0), prop_attn=prop_attn)
    rs = official_r(12, params["r"], params.get("inflect", 0.0))
    with torch.no_grad():
        out, expected = model(IMAGES), reference_forward(reference, IMAGES, rs, prop_attn)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    assert all(b.attn.fused_attn for b in model.blocks)  # the bias went through timm's fused attention
    assert method.describe()["r_per_block"] == method.train_metrics()["r_per_block"]


def test_deit_small_at_r13_equals_the_official_forward():
    torch.manual_seed(0)
    model = timm.create_model("deit_small_patch16_224", pretrained=False).eval()
    reference = timm.create_model("deit_small_patch16_224", pretrained=False).eval()
    reference.load_state_dict(model.state_dict())
    tome(model, r=13)
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(images), reference_forward(reference, images, [13] * 12), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "layout",
    [{"reg_tokens": 1}, {"class_token": False, "global_pool": "avg"}],
    ids=["class_and_second_prefix_token_as_distillation_token", "no_class_token"],
)
def test_prefix_layouts_equal_the_official_forward(tiny_vit, layout):
    """Two prefix tokens are the official class + distillation tokens (the second in B, taking no merge); none:
    every token may merge and the A tokens left keep the official edge order."""
    model, reference = tiny_vit(12, **layout), tiny_vit(12, **layout)
    tome(model, r=5)
    with torch.no_grad():
        torch.testing.assert_close(model(IMAGES), reference_forward(reference, IMAGES, [5] * 12), rtol=0, atol=1e-5)


def test_the_r_schedule_is_parse_r():
    from bench.methods.tome import parse_r

    assert parse_r(12, 8, -1.0) == [16, 14, 13, 11, 10, 8, 7, 5, 4, 2, 1, 0]  # the paper's decreasing schedule
    assert parse_r(12, 8, 1.0) == [0, 1, 2, 4, 5, 7, 8, 10, 11, 13, 14, 16]
    assert parse_r(12, 13) == [13] * 12
    assert parse_r(4, [3, 1]) == [3, 1, 0, 0]


# -- 2. invariants -------------------------------------------------------------------------------------------------


def test_merging_duplicated_tokens_with_proportional_attention_changes_nothing(tiny_vit):
    """ToMe's premise: with proportional attention, a sequence whose tokens all come in identical pairs gives the
    class token (indeed every token) of the sequence without the copies, each token of size 2. The pairs are placed so
    that the alternate split pairs each copy with its original; block 0 merges exactly them."""
    model, reference = tiny_vit(12), tiny_vit(12)
    method = tome(model, r=[32], prop_attn=True)
    x = embed(reference, IMAGES)[:, :33]  # class token and 32 distinct patch tokens
    doubled = torch.cat([x[:, :1], x[:, 1:].repeat_interleave(2, dim=1)], dim=1)  # cls, t1, t1, t2, t2, ...
    size = torch.cat([torch.ones(2, 1, 1), torch.full((2, 32, 1), 2.0)], dim=1)
    with torch.no_grad():
        out = doubled
        for block in model.blocks:
            out = block(out)
        expected, _ = reference_blocks(reference, x, [0] * 12, size=size)
    assert out.shape == expected.shape == (2, 33, 96)
    torch.testing.assert_close(method.state.size, size, rtol=0, atol=0)
    torch.testing.assert_close(out[:, 0], expected[:, 0], rtol=0, atol=1e-5)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def _crafted(tiny_vit, r=1, **params):
    """A ToMe method on a model, and a direct call of its reduction on a view of our making."""
    model = tiny_vit(12)
    method = tome(model, r=r, **params)
    method.state = ForwardState()

    def reduce(x, keys, index=0):
        return method.reduce(model, BlockView(index, x, 1, keys=keys))

    return method, reduce


def _unit(*rows):
    t = torch.tensor(rows, dtype=torch.float32)
    return (t / t.norm(dim=-1, keepdim=True)).unsqueeze(0)


def test_the_most_similar_pair_is_merged_and_merges_are_size_weighted(tiny_vit):
    method, reduce = _crafted(tiny_vit)
    x = torch.arange(5 * 3, dtype=torch.float32).view(1, 5, 3) ** 1.5  # cls, b0, a1, b1, a2 (distinct values)
    # edges: a1 -> b1 (cos 0.9), a2 -> b0 (cos 0.99): the most similar, a2 into b0, is the one merged
    keys = _unit([0, 0, 1], [1, 0, 0], [0.4359, 0.9, 0], [0, 1, 0], [0.99, 0.1411, 0])
    out = reduce(x, keys)
    expected = torch.stack([x[0, 0], x[0, 2], (x[0, 1] + x[0, 4]) / 2, x[0, 3]]).unsqueeze(0)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(method.state.size.view(-1), torch.tensor([1.0, 1, 2, 1]))
    # next block: cls, a1 (B), the size-2 token (A), b1 (B): the size-2 token joins a1, weighted 2:1
    keys = _unit([0, 0, 1], [1, 0, 0], [0.95, 0.3122, 0], [0.2, 0.98, 0])
    again = reduce(out, keys, index=1)
    merged = (2 * out[0, 2] + 1 * out[0, 1]) / 3
    torch.testing.assert_close(again, torch.stack([out[0, 0], merged, out[0, 3]]).unsqueeze(0), rtol=0, atol=1e-6)
    torch.testing.assert_close(method.state.size.view(-1), torch.tensor([1.0, 3, 1]))


def test_the_class_token_is_never_merged_even_when_its_key_is_the_closest(tiny_vit):
    method, reduce = _crafted(tiny_vit)
    x = torch.randn(1, 5, 4, generator=torch.Generator().manual_seed(2))
    # the class token's key is b0's exactly; a1 -> b1 is the best edge among the patch tokens
    keys = _unit([1, 0, 0], [1, 0, 0], [0.2, 0.98, 0], [0, 1, 0], [0.0, 0.6, 0.8])
    out = reduce(x, keys)
    expected = torch.stack([x[0, 0], x[0, 4], x[0, 1], (x[0, 2] + x[0, 3]) / 2]).unsqueeze(0)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert method.state.size.sum().item() == 5.0


@pytest.mark.parametrize(
    "params, layout",
    [({"r": 6}, {}), ({"r": 3, "inflect": -1.0}, {}), ({}, {}), ({"r": 6}, {"reg_tokens": 4})],
    ids=["constant", "decreasing", "keep", "four_registers"],
)
def test_in_every_block_the_class_token_stays_first_and_sizes_sum_to_the_tokens(tiny_vit, params, layout):
    model = tiny_vit(12, **layout)
    p = model.num_prefix_tokens
    method = tome(model, keep=0.5, **params)
    seen = []
    reduce = method.reduce

    def checked(model, view):
        out = reduce(model, view)
        seen.append((view.index, view.x[:, :p].clone(), out[:, :p].clone(), method.state.size.clone(), out.shape[1]))
        return out

    method.reduce = checked
    with torch.no_grad():
        model(IMAGES)
    assert [s[0] for s in seen] == method.reduction_blocks(model)
    tokens = method.token_schedule(model) + [64 + p - sum(method.chosen["r_per_block"])]
    for index, prefix_in, prefix_out, size, n in seen:
        assert torch.equal(prefix_in, prefix_out)
        assert size.shape[1] == n == tokens[index + 1]
        assert size[:, :p].eq(1).all()
        torch.testing.assert_close(size.sum(1), torch.full((2, 1), 64.0 + p), rtol=0, atol=0)


def test_the_metric_is_the_keys_not_the_queries(tiny_vit):
    """Block 0's merged groups are the matching on its keys averaged over heads; on its queries (or values) they
    would differ (checked: the test tells them apart)."""
    model = tiny_vit(12)
    method = tome(model, r=[12])
    method.record_kept = True
    seen = {}
    model.blocks[0].norm1.register_forward_hook(lambda m, a, out: seen.setdefault("x", out))
    with torch.no_grad():
        model(IMAGES)
        attn = model.blocks[0].attn
        B, N, C = seen["x"].shape
        q, k, v = attn.qkv(seen["x"]).reshape(B, N, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)

    def groups(metric, i):
        """(N_patches,) the output patch token each input patch is in, from the reference matching."""
        owner = torch.empty(64, dtype=torch.long)
        for g, members in enumerate(reference_groups(metric[i], 12)[1:]):
            owner[torch.tensor(members) - 1] = g
        return owner

    for i in range(B):
        assert torch.equal(method.last_groups[0][i], groups(k.mean(1), i))
        assert not torch.equal(groups(k.mean(1), i), groups(q.mean(1), i))
        assert not torch.equal(groups(k.mean(1), i), groups(v.mean(1), i))


def test_tokens_merged_per_block_are_r_capped_at_half(tiny_vit):
    for r, expected in [
        (5, [65, 60, 55, 50, 45, 40, 35, 30, 25, 20, 15, 10]),
        (40, [65, 33, 17, 9, 5, 3, 2, 2, 2, 2, 2, 2]),
        ([0, 7, 0, 1], [65, 65, 58, 58, 57, 57, 57, 57, 57, 57, 57, 57]),
    ]:
        model = tiny_vit(12)
        method = tome(model, r=r)
        counter = TokenCounter(model)
        with torch.no_grad():
            out = model.forward_features(IMAGES)
        counter.remove()
        assert method.token_schedule(model) == expected
        assert counter.per_block() == [float(n) for n in expected]
        assert out.shape[1] == expected[-1] - method.chosen["r_per_block"][-1]


def test_groups_and_kept_positions_for_the_gallery(tiny_vit):
    from bench.measure.kept_tokens import kept_masks

    model = tiny_vit(12)
    method = tome(model, r=5)
    method.record_kept = True
    with torch.no_grad():
        model(IMAGES)
    assert len(method.last_groups) == len(method.last_kept) == 12
    sizes = method.state.size[:, 1:, 0]  # the last merge's patch-token sizes
    for i in range(2):
        counts = torch.zeros(sizes.shape[1]).index_add_(0, method.last_groups[-1][i], torch.ones(64))
        torch.testing.assert_close(counts, sizes[i], rtol=0, atol=0)
        # each kept position is a patch of the token it stands for
        assert torch.equal(method.last_groups[-1][i][method.last_kept[-1][i]], torch.arange(sizes.shape[1]))
    masks = kept_masks(model, method, IMAGES)
    assert len(masks) == 12 and masks[-1].sum().item() == 2 * sizes.shape[1]


def test_proportional_attention_off_patches_only_the_merging_blocks(tiny_vit):
    on, off = create_method("tome", 1.0, r=[0, 0, 3]), create_method("tome", 1.0, r=[0, 0, 3], prop_attn=False)
    assert on.reduction_blocks(tiny_vit(12)) == list(range(2, 12))
    assert off.reduction_blocks(tiny_vit(12)) == [2]


# -- 3. cost and the keep-ratio axis -------------------------------------------------------------------------------


def _deit():
    torch.manual_seed(0)
    return timm.create_model("deit_small_patch16_224", pretrained=False).eval()


def analytic_gmacs(model, method) -> float:
    """Blocks by bench.methods.tome.block_macs, plus the patch embedding, the final norm and the head."""
    from bench.methods.tome import block_macs

    entering = method.token_schedule(model)
    leaving = entering[1:] + [entering[-1] - method.chosen["r_per_block"][-1]]
    conv = model.patch_embed.proj
    macs = sum(block_macs(b, n, m) for b, n, m in zip(model.blocks, entering, leaving))
    macs += model.patch_embed.num_patches * conv.in_channels * conv.out_channels * math.prod(conv.kernel_size)
    macs += 5 * leaving[-1] * model.embed_dim + model.head.in_features * model.head.out_features
    return macs / 1e9


#: DeiT-S at constant r (fvcore: 1 multiply-add = 1 flop; the similarity a @ b^T included). The ToMe paper's
#: DeiT-S r=13 off the shelf: 2.7 GFLOPs; dense: 4.6
DEIT_S_GMACS = {0: 4.608338304, 8: 3.428157824, 13: 2.71167392, 16: 2.298405248}


@pytest.mark.parametrize("r", [8, 13, 16])
def test_deit_small_gmacs_measured_equal_the_analytic_count(r):
    model = _deit()
    method = tome(model, r=r)
    measured = measure_cost(model, method, torch.randn(1, 3, 224, 224))["gmacs_fvcore_1mac_eq_1flop"]
    assert measured == pytest.approx(analytic_gmacs(model, method), rel=5e-3)
    assert measured == pytest.approx(DEIT_S_GMACS[r], rel=1e-6)
    # the similarity a @ b^T (fvcore's only aten::matmul here): ~0.13% of the total
    similarity = sum((n + 1) // 2 * (n // 2) * 64 for n in method.token_schedule(model)) / 1e9
    assert count_flops(model, torch.randn(1, 3, 224, 224)).by_operator["matmul"] == pytest.approx(similarity, rel=1e-9)
    assert 0.001 < similarity / measured < 0.002


def test_keep_ratio_maps_to_the_r_of_the_staged_gmacs():
    model = _deit()
    chosen = {k: create_method("tome", k).matched_r(model) for k in (0.5, 0.7, 0.9, 1.0)}
    assert chosen == {0.5: 17, 0.7: 12, 0.9: 5, 1.0: 0}
    method = create_method("tome", 0.7)
    assert method.token_schedule(model) == [197 - 12 * i for i in range(12)]
    assert method.describe()["r"] == 12 and method.describe()["r_per_block"] == [12] * 12
    static = create_method("static", 0.7)
    static.apply(staged := _deit())
    tomed = _deit()
    method = tome(tomed, keep=0.7)
    images = torch.randn(1, 3, 224, 224)
    staged_gmacs = measure_cost(staged, static, images)["gmacs_fvcore_1mac_eq_1flop"]
    tome_gmacs = measure_cost(tomed, method, images)["gmacs_fvcore_1mac_eq_1flop"]
    assert tome_gmacs == pytest.approx(staged_gmacs, rel=0.03)


def test_keep_ratio_one_merges_nothing_unless_r_is_given(tiny_vit):
    model, dense = tiny_vit(12), tiny_vit(12)
    method = tome(model, keep=1.0)
    assert method.reduction_blocks(model) == [] and method.chosen["r_per_block"] == [0] * 12
    with torch.no_grad():
        assert torch.equal(model(IMAGES), dense(IMAGES))
    assert tome(tiny_vit(12), keep=1.0, r=2).token_schedule(model)[-1] == 65 - 22


def test_parameters_are_checked():
    from bench.errors import UsageError

    with pytest.raises(UsageError, match="non-negative"):
        create_method("tome", 0.5, r=[1, -1])
    with pytest.raises(UsageError, match="at least"):
        create_method("tome", 0.5, r=-2)
    with pytest.raises(UsageError, match="inflect"):
        create_method("tome", 0.5, r=[1, 2], inflect=-1.0)
    with pytest.raises(UsageError, match="inflect"):
        create_method("tome", 0.5, r=4, inflect=1.5)


def test_an_explicit_r_makes_the_keep_ratio_irrelevant(tiny_vit):
    """Why a suite runs ToMe with ``r`` once (``Param.replaces_keep_ratio``): given r, every keep ratio computes the
    same model; without it the keep ratio chooses r."""
    from bench.methods.catalog import method_info

    assert method_info("tome").params["r"].replaces_keep_ratio
    assert [n for n, p in method_info("tome").params.items() if p.replaces_keep_ratio] == ["r"]
    images = torch.randn(2, 1, 32, 32)
    logits = {}
    for keep in (1.0, 0.7, 0.5):
        model = tiny_vit()
        create_method("tome", keep, r=3).apply(model)
        with torch.no_grad():
            logits[keep] = model(images)
    torch.testing.assert_close(logits[0.7], logits[1.0], rtol=0, atol=0)
    torch.testing.assert_close(logits[0.5], logits[1.0], rtol=0, atol=0)
    chosen = {keep: create_method("tome", keep).schedule(tiny_vit()) for keep in (0.7, 0.5)}
    assert chosen[0.7] != chosen[0.5]
