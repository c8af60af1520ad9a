"""SViTE / S2ViTE / SViTE+: fixed budgets through prune-and-grow and optimiser steps, the drop schedule,
physical removal of heads and neurons, the token selector, cost accounting."""

import math

import pytest
import torch

from bench.config import DEFAULT_RECIPE
from bench.measure import count_flops
from bench.methods import create_method
from bench.methods.sparse import drop_fraction, erk_densities, is_update_step, sparse_layers, zero_weight_gmacs
from bench.methods.structured import remove_structures
from bench.methods.svite import SELECTOR
from bench.train import train_model


def patched(tiny_vit, name="svite", keep=1.0, **params):
    model = tiny_vit(8)
    method = create_method(name, keep_ratio=keep, **params)
    method.apply(model)
    return model, method


def one_step(model, method, step, lr=1e-2):
    """A training step through the method's hooks, as the loop runs them."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    model.train()
    opt.zero_grad()
    model(torch.randn(8, 1, 32, 32)).logsumexp(-1).mean().backward()
    method.before_optimizer_step(model, step)
    opt.step()
    method.after_optimizer_step(model, step)


def nonzeros(model):
    return sum(int((m.weight != 0).sum()) for m in sparse_layers(model).values())


def test_erk_densities_meet_the_budget():
    shapes = {"a": (64, 16), "b": (256, 64), "c": (10, 64), "d": (3 * 64, 64)}
    d = erk_densities(shapes, 0.3)
    total = sum(math.prod(s) for s in shapes.values())
    assert sum(d[k] * math.prod(s) for k, s in shapes.items()) == pytest.approx(0.3 * total)
    assert d["c"] > d["b"] and all(0 < v <= 1 for v in d.values())  # small layers are kept denser


def test_masks_cover_the_papers_weight_matrices(tiny_vit):
    names = set(sparse_layers(tiny_vit(8)))
    assert {
        "patch_embed.proj",
        "blocks.0.attn.qkv",
        "blocks.0.attn.proj",
        "blocks.0.mlp.fc1",
        "blocks.0.mlp.fc2",
        "head",
    } <= names
    assert not any("norm" in n for n in names)


@pytest.mark.parametrize("name", ["svite", "svite_plus"])
def test_nonzero_count_is_constant_through_prune_grow_and_optimiser_steps(tiny_vit, name):
    keep = 0.9 if name == "svite_plus" else 1.0
    model, method = patched(tiny_vit, name, keep, density=0.4, update_interval=2)
    method.on_train_start(model, 20)
    budget = method.sparsity.nonzeros()
    total = sum(m.weight.numel() for m in sparse_layers(model).values())
    assert budget == pytest.approx(0.4 * total, rel=0.01)
    assert nonzeros(model) <= budget
    for step in range(6):
        before = {k: m.clone() for k, m in method.sparsity.masks.items()}
        one_step(model, method, step)
        assert method.sparsity.nonzeros() == budget
        assert nonzeros(model) <= budget  # weights outside the masks are exactly zero
        if is_update_step(step, 20, method.config):
            assert any(not torch.equal(before[k], m) for k, m in method.sparsity.masks.items())
    assert len(method.clock.history) == 2  # steps 2 and 4
    assert method.train_metrics()["nonzero_weights"] == budget


def test_grown_weights_start_at_zero(tiny_vit):
    model, method = patched(tiny_vit, density=0.5)
    model.train()
    model(torch.randn(8, 1, 32, 32)).logsumexp(-1).mean().backward()
    before = {k: m.clone() for k, m in method.sparsity.masks.items()}
    moved = method.sparsity.prune_and_grow(0.3)
    assert moved > 0
    grew = 0
    for name, layer in sparse_layers(model).items():
        grown = method.sparsity.masks[name] & ~before[name]
        grew += int(grown.sum())
        assert (layer.weight[grown] == 0).all()
        dropped = before[name] & ~method.sparsity.masks[name]
        assert (layer.weight[dropped] == 0).all()
    assert grew > 0


def test_drop_fraction_follows_the_cosine_schedule():
    # the official CosineDecay: torch's CosineAnnealingLR from the death rate, T_max = all training iterations
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    official = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 1000, eta_min=0.005)
    for step in range(800):
        assert drop_fraction(step, 1000) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9), step
        opt.step()
        official.step()
    assert drop_fraction(500, 1000) == pytest.approx(0.005 + 0.495 * 0.5)  # halfway through training
    assert drop_fraction(799, 1000) == pytest.approx(0.0527, abs=1e-4)  # the last update, not yet at 0.005
    assert drop_fraction(800, 1000) == 0.0
    values = [drop_fraction(s, 1000) for s in range(800)]
    assert values == sorted(values, reverse=True)
    cfg = {"update_interval": 100, "stop_fraction": 0.8}
    assert [s for s in range(1000) if is_update_step(s, 1000, cfg)] == [100, 200, 300, 400, 500, 600, 700]


def test_s2vite_keeps_a_constant_number_of_heads_and_neurons(tiny_vit):
    model, method = patched(tiny_vit, "s2vite", density=0.5, update_interval=1, drop_start=0.5)
    method.on_train_start(model, 10)
    counts = method.sparsity.counts()
    assert counts == {"heads": 8 * 1, "neurons": 8 * 128}  # pico: 2 heads and 256 neurons per block
    for step in range(4):
        one_step(model, method, step)
        assert method.sparsity.counts() == counts
        for block, heads in zip(model.blocks, method.sparsity.head_masks):
            cols = block.attn.proj.weight.view(64, 2, 32)
            assert (cols[:, ~heads] == 0).all()
    assert len(method.clock.history) == 3
    assert method.train_metrics()["active_params"] == method.sparsity.active_params()


def test_physically_removed_model_computes_the_masked_logits(tiny_vit):
    model, method = patched(tiny_vit, "s2vite", density=0.5, update_interval=1)
    method.on_train_start(model, 10)
    for step in range(3):
        one_step(model, method, step)
    model.eval()
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        masked = model(x)
        gmacs_masked = count_flops(model, x[:1]).gmacs
        removed = remove_structures(model)
        smaller = model(x)
    assert removed == {"heads": 8, "neurons": 8 * 128}
    assert all(b.attn.num_heads == 1 and b.mlp.fc1.out_features == 128 for b in model.blocks)
    torch.testing.assert_close(smaller, masked, rtol=1e-5, atol=1e-5)
    assert count_flops(model, x[:1]).gmacs < 0.6 * gmacs_masked


def test_token_selector_keeps_k_plus_the_class_token_and_trains_the_scorer(tiny_vit):
    model, method = patched(tiny_vit, "svite_plus", keep=0.75, density=0.5)
    method.on_train_start(model, 10)
    seen = []
    model.blocks[0].register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    model.train()
    x = torch.randn(3, 1, 32, 32)
    model(x).logsumexp(-1).sum().backward()
    # training zeroes the unselected tokens (official code): exactly int(64 * 0.75) patches stay nonzero
    assert seen[-1].shape[1] == 65
    assert ((seen[-1][:, 1:].abs().sum(-1) > 0).sum(1) == 48).all()
    grad = getattr(model, SELECTOR).weight.grad
    assert grad is not None and grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
    assert seen[-1].shape[1] == 49
    assert torch.equal(a, b)  # evaluation is deterministic top-k, without Gumbel noise
    # the class token enters block 0 untouched
    emb = model.patch_embed(x)
    assert torch.equal(seen[-1][:, 0], (model.cls_token + model.pos_embed[:, :1]).expand(3, -1, -1)[:, 0])
    assert emb.shape[1] == 64


def test_temperature_anneals_linearly(tiny_vit):
    model, method = patched(tiny_vit, "svite_plus", keep=0.9)
    method.on_train_start(model, 11)
    assert method.tau == pytest.approx(10.0)
    method.after_optimizer_step(model, 4)
    assert method.tau == pytest.approx(10.0 - 9.9 * 0.5)
    method.after_optimizer_step(model, 9)
    assert method.tau == pytest.approx(0.1)


def test_theoretical_gmacs_count_only_nonzero_weights(tiny_vit):
    model, _ = patched(tiny_vit, "svite", density=0.5)
    layers = list(sparse_layers(model))
    report = count_flops(model, torch.randn(1, 1, 32, 32), layers=layers)
    matmul = sum(report.by_layer.values())
    saved = zero_weight_gmacs(model, report.by_layer)
    assert saved == pytest.approx(0.5 * matmul, rel=0.02)  # ERK keeps half of all weights; MACs follow closely
    assert report.gmacs == pytest.approx(count_flops(tiny_vit(8), torch.randn(1, 1, 32, 32)).gmacs)


def test_training_loop_keeps_the_budget_and_records_it(tiny_vit, tmp_path):
    from torch.utils.data import TensorDataset

    model, method = patched(tiny_vit, "svite", density=0.3, update_interval=2)
    data = TensorDataset(torch.randn(64, 1, 32, 32), torch.randint(0, 10, (64,)))
    recipe = {**DEFAULT_RECIPE, "epochs": 2, "batch_size": 16, "lr": 1e-3}
    budget = method.sparsity.nonzeros()
    result = train_model(model, method, data, recipe, seed=0, out_dir=tmp_path, device=torch.device("cpu"))
    assert result.method_metrics["nonzero_weights"] == budget
    assert nonzeros(model) <= budget
    assert result.peak_mem_mb > 0
    log = (tmp_path / "train_log.jsonl").read_text().splitlines()
    assert all(f'"nonzero_weights": {budget}' in line for line in log)


def test_weight_budget_methods_refuse_token_keep_ratios():
    from bench.errors import UsageError

    with pytest.raises(UsageError, match="density"):
        create_method("svite", 0.7)
    with pytest.raises(UsageError, match="density"):
        create_method("s2vite", 0.5, density=1.5)


def test_suites_run_weight_sparse_methods_at_full_token_budget():
    from bench.config import load_suite

    suite = load_suite("suites/svite_canvas.yaml", check_names=False)
    ratios = {(r.method_name, r.keep_ratio) for r in suite.runs}
    assert ratios == {("dense", 1.0), ("svite", 1.0), ("s2vite", 1.0), ("svite_plus", 0.9), ("svite_plus", 0.7)}
    paper = load_suite("suites/svite.yaml", check_names=False)
    plus = [r for r in paper.runs if r.method_name == "svite_plus"]
    assert {r.keep_ratio for r in plus} == {0.95, 0.9} and all(r.method_params["from_scratch"] for r in plus)


def test_selector_learning_rate_group(tiny_vit):
    model, method = patched(tiny_vit, "svite_plus", keep=0.9, selector_lr_scale=50.0)
    from bench.config import DEFAULT_RECIPE
    from bench.train.optim import param_groups

    groups = param_groups(model, method.lr_scales(), DEFAULT_RECIPE)
    selector = getattr(model, SELECTOR)
    own = [g for g in groups if g["name"].startswith(SELECTOR)]
    assert all(g["lr_scale"] == 50.0 for g in own)
    assert {id(p) for g in own for p in g["params"]} == {id(p) for p in selector.parameters()}
    assert all(g["lr_scale"] == 1.0 for g in groups if g not in own)
    assert sum(len(g["params"]) for g in groups) == len([p for p in model.parameters() if p.requires_grad])
