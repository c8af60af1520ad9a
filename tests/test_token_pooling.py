"""Token Pooling: clustering properties, the class token, schedules and GMACs, training, baselines."""

import pytest
import torch

from bench.measure import count_flops
from bench.methods import create_method
from bench.methods.clustering import farthest_point_init, kmeans, kmedoids, reconstruction_error, significance_init
from bench.methods.pruning import stage_keep_counts
from bench.methods.token_pooling import POOLER, pooled_grid, window_cells

FITS = {"kmeans": kmeans, "kmedoids": kmedoids}


def tokens(b=3, n=40, c=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, c, generator=g, dtype=torch.float64)
    w = torch.rand(b, n, generator=g, dtype=torch.float64) + 0.1
    return x, w


def as_set(t):
    """(B, K, C) -> rows sorted per image, so two outputs compare as sets."""
    return torch.stack([r[torch.argsort(r[:, 0])] for r in t])


@pytest.mark.parametrize("fit", FITS)
def test_k_equals_n_returns_the_tokens(fit):
    x, w = tokens()
    out = FITS[fit](x, x.shape[1], significance_init(w, x.shape[1]), weights=w, iterations=3)
    torch.testing.assert_close(as_set(out.tokens), as_set(x))


@pytest.mark.parametrize("fit", FITS)
@pytest.mark.parametrize("weighted", [False, True])
def test_reconstruction_error_never_increases(fit, weighted):
    x, w = tokens(n=64)
    out = FITS[fit](x, 10, significance_init(w, 10), weights=w if weighted else None, iterations=8, track_error=True)
    assert len(out.errors) == 9
    assert all(b <= a + 1e-9 for a, b in zip(out.errors, out.errors[1:])), out.errors
    assert out.errors[-1] < out.errors[0]  # the iterations do something
    final = reconstruction_error(x, out.tokens, w if weighted else None).sum()
    assert float(final) <= out.errors[-1] + 1e-9


@pytest.mark.parametrize("fit", FITS)
def test_uniform_weights_give_the_unweighted_result(fit):
    x, w = tokens()
    init = significance_init(w, 7)
    a = FITS[fit](x, 7, init, weights=None, iterations=5)
    b = FITS[fit](x, 7, init, weights=torch.full_like(w, 3.0), iterations=5)
    torch.testing.assert_close(a.tokens, b.tokens)
    assert torch.equal(a.assignment, b.assignment)


@pytest.mark.parametrize("fit", FITS)
@pytest.mark.parametrize("init", ["significance", "farthest"])
def test_output_is_invariant_to_token_permutation(fit, init):
    x, w = tokens()
    perm = torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(1))

    def run(x, w):
        seeds = significance_init(w, 9) if init == "significance" else farthest_point_init(x, w, 9)
        return FITS[fit](x, 9, seeds, weights=w, iterations=5).tokens

    torch.testing.assert_close(as_set(run(x, w)), as_set(run(x[:, perm], w[:, perm])))


def test_kmedoids_outputs_are_input_tokens_and_kmeans_are_weighted_means():
    x, w = tokens()
    med = kmedoids(x, 6, significance_init(w, 6), weights=w)
    torch.testing.assert_close(med.tokens, torch.gather(x, 1, med.representative.unsqueeze(-1).expand(-1, -1, 8)))
    km = kmeans(x, 6, significance_init(w, 6), weights=w)
    for j in range(6):
        members = km.assignment[0] == j
        if members.any():
            mean = (x[0, members] * w[0, members, None]).sum(0) / w[0, members].sum()
            torch.testing.assert_close(km.tokens[0, j], mean)


def test_clustering_is_batched_and_deterministic():
    x, w = tokens(b=4)
    init = significance_init(w, 5)
    whole = kmeans(x, 5, init, weights=w).tokens
    singles = torch.cat([kmeans(x[i : i + 1], 5, init[i : i + 1], weights=w[i : i + 1]).tokens for i in range(4)])
    torch.testing.assert_close(whole, singles)
    torch.testing.assert_close(whole, kmeans(x, 5, init, weights=w).tokens, rtol=0, atol=0)


def patched(tiny_vit, name="token_pooling", keep=0.5, depth=8, **params):
    model = tiny_vit(depth)
    method = create_method(name, keep_ratio=keep, **params)
    method.apply(model)
    return model.eval(), method


@pytest.mark.parametrize("clustering", ["kmedoids", "kmeans"])
def test_class_token_passes_through_untouched(tiny_vit, clustering):
    model, method = patched(tiny_vit, clustering=clustering)
    seen = {}
    for i, block in enumerate(model.blocks):
        block.register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(i, a[0][:, 0].clone()))
    dense = tiny_vit(8).eval()
    dense.load_state_dict(model.state_dict())
    ref = {}
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        model(x)
        for i, block in enumerate(dense.blocks):
            block.register_forward_pre_hook(lambda m, a, i=i: ref.__setitem__(i, a[0][:, 0].clone()))
        dense(x)
    first = method.stages(model)[0][0]
    # the class token entering the first pooled block is exactly the dense model's
    torch.testing.assert_close(seen[first], ref[first], rtol=0, atol=1e-6)


@pytest.mark.parametrize("schedule", ["stages", "every_block"])
@pytest.mark.parametrize("name", ["token_pooling", "importance", "grid_pool"])
def test_schedule_and_gmacs_follow_declared_budgets(tiny_vit, name, schedule):
    model, method = patched(tiny_vit, name, keep=0.6, depth=8, schedule=schedule)
    sched = method.token_schedule(model)
    n = model.patch_embed.num_patches
    if schedule == "stages" and name != "grid_pool":
        assert sched == [65] * 2 + [1 + k for k in stage_keep_counts(n, 0.6, 3) for _ in range(2)]
    final = stage_keep_counts(n, 0.6, 3)[-1]
    assert sched[-1] <= 1 + final and sched == sorted(sched, reverse=True)
    seen = []
    for block in model.blocks:
        block.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1]))
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        model(x)
    assert seen == sched
    # GMACs: the backbone follows the schedule; the clustering is booked on its own and in the total
    dense = count_flops(tiny_vit(8), x[:1]).gmacs
    report = count_flops(model, x)
    overhead = report.by_module.get(POOLER, 0.0)
    assert (overhead > 0) == (name == "token_pooling")
    final_norm = 5 * 64 * (sched[-1] - 65) / 1e9  # the last norm sees every remaining token
    expected = dense - blocks_gmacs([65] * 8, 64) + blocks_gmacs(sched, 64) + final_norm
    if name == "grid_pool":  # fvcore counts one flop per averaged input element
        expected += sum(sched[b - 1] - 1 for b, _ in method.stages(model)) * 64 / 1e9
    assert report.gmacs - overhead == pytest.approx(expected, rel=1e-6)


def blocks_gmacs(schedule, dim, mlp_ratio=4):
    """fvcore's count of ViT blocks: qkv + proj (4 N d^2), q@k^T and attn@v (2 N^2 d), MLP (2 r N d^2),
    two affine layer norms (fvcore: 5 per element)."""
    return sum(4 * n * dim**2 + 2 * n * n * dim + 2 * mlp_ratio * n * dim**2 + 10 * n * dim for n in schedule) / 1e9


def test_every_block_schedule_reaches_the_stage_schedule_final_budget(tiny_vit):
    model = tiny_vit(12)
    every = create_method("token_pooling", 0.7, schedule="every_block")
    stages = create_method("token_pooling", 0.7)
    assert every.token_schedule(model)[-1] == stages.token_schedule(model)[-1]
    assert len(every.stages(model)) > 3


def test_deit_small_gmacs_with_clustering_cost():
    from bench.models import build_backbone

    model = build_backbone("deit_small_patch16_224", num_classes=1000)
    method = create_method("token_pooling", 0.7, clustering="kmeans")
    method.apply(model)
    report = count_flops(model, torch.randn(1, 3, 224, 224))
    # the backbone at the DynamicViT rho=0.7 schedule, plus the K-Means cost on its own
    sched = method.token_schedule(model)
    assert sched == [197] * 3 + [138] * 3 + [97] * 3 + [68] * 3
    expected = 4.6083 - blocks_gmacs([197] * 12, 384) + blocks_gmacs(sched, 384) + 5 * 384 * (68 - 197) / 1e9
    # exactly 5 Lloyd steps per stage (no early exit): distances, argmin, weighted sums (C + 1 columns)
    overhead = report.by_module[POOLER]
    steps = sum(5 * (n * k * 384 + n * k + n * 385) for n, k in [(196, 137), (137, 96), (96, 67)]) / 1e9
    assert overhead == pytest.approx(steps, rel=1e-12)
    assert report.gmacs - overhead == pytest.approx(expected, abs=1e-4)


def kmedoids_macs(n, k, c, iterations=5):
    """What K-Medoids runs per image (clustering.kmedoids), fvcore's conventions: the pairwise distances (one
    (N x C) @ (C x N) product), then per step the assignment (min over N x K distances to the medoids), the
    medoid costs (a (K x N) @ (N x N) product) and their argmin (K x N), and a last assignment pass."""
    return n * n * c + iterations * (n * k + k * n * n + k * n) + n * k


def test_kmedoids_counts_what_it_runs_when_it_converges_at_once(tiny_vit):
    """At keep 0.9 every stage's medoids are its seeds from the first step on (checked below): the pooled tokens
    depend on the seeds alone, which a trace that keeps only what feeds the output once counted as zero
    clustering work. Counted by execution, the clustering is every product and comparison the loop ran."""
    model, method = patched(tiny_vit, keep=0.9)
    calls = []
    getattr(model, POOLER).register_forward_hook(
        lambda m, args, out: calls.append(
            (args[0].shape[1], args[2], torch.equal(out.representative, significance_init(args[1], args[2])))
        )
    )
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    report = count_flops(model, x)
    stages = [(n, k) for n, k, _ in calls[len(calls) // 2 :]]  # count_flops runs the trace, then the executed pass
    assert stages == [(64, 57), (57, 51), (51, 46)]
    assert all(converged for *_, converged in calls), "the premise: K-Medoids converges at once here"
    dim = model.embed_dim
    expected = sum(kmedoids_macs(n, k, dim) for n, k in stages) / 1e9
    clustering = report.by_module[POOLER]
    assert clustering > 0
    assert clustering == pytest.approx(expected, rel=0.005)
    assert clustering == pytest.approx(expected, rel=1e-12)  # exactly, in fact
    # the last assignment pass feeds no output: the trace alone misses it, the executed count does not
    assert report.traced[POOLER] == pytest.approx(expected - sum(n * k for n, k in stages) / 1e9, rel=1e-12)
    # in the method's share and in the total
    from bench.measure.cost import measure_cost

    cost = measure_cost(model, method, x, batch_size=2)
    assert cost["method_gmacs_fvcore_1mac_eq_1flop"] == pytest.approx(expected, rel=1e-12)
    assert cost["gmacs_fvcore_1mac_eq_1flop"] == pytest.approx(report.gmacs, rel=1e-12)


@pytest.mark.parametrize("fit", FITS)
def test_no_early_exit_changes_no_output(fit):
    """Every call runs all its iterations (testing for convergence would sync with the host): past convergence
    a step is a fixed point, so more iterations give the same tokens as the converged few."""
    x, w = tokens(n=64)
    init = significance_init(w, 10)
    converged = FITS[fit](x, 10, init, weights=w, iterations=50)
    again = FITS[fit](x, 10, init, weights=w, iterations=80)
    torch.testing.assert_close(again.tokens, converged.tokens, rtol=0, atol=0)
    assert torch.equal(again.assignment, converged.assignment)


@pytest.mark.parametrize("clustering", ["kmedoids", "kmeans"])
def test_gradients_flow_through_pooled_tokens(tiny_vit, clustering):
    model, method = patched(tiny_vit, clustering=clustering)
    model.train()
    model(torch.randn(4, 1, 32, 32)).logsumexp(-1).sum().backward()
    # the first blocks only get gradients through the pooled tokens
    assert model.blocks[0].mlp.fc1.weight.grad.abs().sum() > 0
    assert model.patch_embed.proj.weight.grad.abs().sum() > 0


def test_pooling_groups_cover_every_patch(tiny_vit):
    model, method = patched(tiny_vit, keep=0.5)
    method.record_kept = True
    with torch.no_grad():
        model(torch.randn(2, 1, 32, 32))
    counts = [k for _, k in method.stages(model)]
    for groups, k in zip(method.last_groups, counts):
        assert groups.shape == (2, 64)
        assert int(groups.max()) < k and int(groups.min()) >= 0


def test_grid_pool_groups_are_its_pooling_windows(tiny_vit):
    model, method = patched(tiny_vit, "grid_pool", keep=0.5)
    method.record_kept = True
    with torch.no_grad():
        model(torch.randn(2, 1, 32, 32))
    grids = method._grids  # 8x8 patches pooled stage by stage
    assert len(method.last_groups) == len(grids) - 1
    for groups, (r, c) in zip(method.last_groups, grids[1:]):
        assert groups.shape == (2, 64) and torch.equal(groups[0], groups[1])  # windows do not depend on the image
        assert sorted(groups[0].unique().tolist()) == list(range(r * c))  # every pooled cell owns patches
        cells = groups[0].reshape(8, 8)
        # row-major windows: cell indices never decrease along a row or down a column
        assert (cells.diff(dim=1) >= 0).all() and (cells.diff(dim=0) >= 0).all()
    assert window_cells((4, 4), (2, 2)).tolist() == [0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3]


def test_remove_restores_the_dense_model(tiny_vit):
    model, method = patched(tiny_vit)
    dense = tiny_vit(8).eval()
    dense.load_state_dict(model.state_dict())
    method.remove()
    assert not hasattr(model, POOLER)
    assert all(b.attn.fused_attn == dense.blocks[0].attn.fused_attn for b in model.blocks)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), dense(x))


def test_importance_keeps_the_most_attended_tokens(tiny_vit):
    model, method = patched(tiny_vit, "importance", keep=0.5)
    method.record_kept = True
    with torch.no_grad():
        model(torch.randn(2, 1, 32, 32))
    first_block = method.stages(model)[0][0]
    sig = method.tap.scores[first_block - 1][:, 1:]
    k = method.stages(model)[0][1]
    expected = torch.topk(sig, k, dim=1).indices.sort(dim=1).values
    assert torch.equal(method.last_kept[0], expected)


@pytest.mark.parametrize(
    "rows,cols,budget,expected",
    [(8, 8, 32, (4, 8)), (8, 8, 44, (6, 7)), (14, 14, 137, (11, 12)), (14, 14, 196, (14, 14)), (4, 4, 1, (1, 1))],
)
def test_pooled_grid_is_the_largest_within_budget(rows, cols, budget, expected):
    assert pooled_grid(rows, cols, budget) == expected


def test_grid_pool_stages_stay_two_dimensional(tiny_vit):
    model, method = patched(tiny_vit, "grid_pool", keep=0.5)
    method.stages(model)
    assert method._grids == [(8, 8), (4, 8), (4, 4), (2, 4)]  # budgets 32, 16, 8 of a square 8x8 grid
    assert pooled_grid(4, 8, 16) == (2, 8) and pooled_grid(4, 8, 16, aspect=1.0) == (4, 4)


def test_grid_pool_averages_windows(tiny_vit):
    model, method = patched(tiny_vit, "grid_pool", keep=0.5)
    block, keep = method.stages(model)[0]
    captured = {}
    model.blocks[block - 1].register_forward_hook(lambda m, a, out: captured.__setitem__("before", out))
    model.blocks[block].register_forward_pre_hook(lambda m, a: captured.__setitem__("after", a[0]))
    with torch.no_grad():
        model(torch.randn(1, 1, 32, 32))
    r, c = method._grids[1]
    grid = captured["before"][:, 1:].transpose(1, 2).reshape(1, -1, 8, 8)
    expected = torch.nn.functional.adaptive_avg_pool2d(grid, (r, c)).flatten(2).transpose(1, 2)
    torch.testing.assert_close(captured["after"][:, 1:], expected)
