"""The method contract, checked for every registered method automatically."""

import pytest
import torch

from bench.errors import UsageError
from bench.evaluate import TokenCounter
from bench.measure import count_flops
from bench.methods import METHODS, create_method
from bench.methods.base import num_tokens
from bench.methods.inblock import InBlockMethod
from bench.methods.pruning import default_stage_blocks, stage_keep_counts

ALL = METHODS.names()
RATIOS = [1.0, 0.7, 0.5]
# methods whose budget is a token count (weight-sparse methods run at keep ratio 1.0)
TOKEN = [n for n in ALL if METHODS.get(n).reduces_tokens]


def keep_for(name, keep):
    return keep if METHODS.get(name).reduces_tokens else 1.0


def patched(tiny_vit, name, keep, depth=8, seed=0, **params):
    model = tiny_vit(depth)
    method = create_method(name, keep_ratio=keep_for(name, keep), seed=seed, **params)
    method.apply(model)
    return method.prepare_inference(model).eval(), method


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("keep", RATIOS)
def test_output_shape_and_schedule(tiny_vit, name, keep):
    model, method = patched(tiny_vit, name, keep)
    counter = TokenCounter(model)
    with torch.no_grad():
        out = model(torch.randn(3, 1, 32, 32))
    counter.remove()
    assert out.shape == (3, 10)
    assert torch.isfinite(out).all()
    assert counter.per_block() == [float(n) for n in method.token_schedule(model)]


@pytest.mark.parametrize("name", ALL)
def test_class_token_is_kept(tiny_vit, name):
    """The token entering each block at position 0 is the class token the previous block produced."""
    model, _ = patched(tiny_vit, name, 0.5)
    outs, ins = {}, {}
    for i, b in enumerate(model.blocks):
        b.register_forward_pre_hook(lambda m, a, i=i: ins.__setitem__(i, a[0][:, 0].clone()))
        b.register_forward_hook(lambda m, a, o, i=i: outs.__setitem__(i, o[:, 0].clone()))
    with torch.no_grad():
        model(torch.randn(2, 1, 32, 32))
    for i in range(1, len(model.blocks)):
        torch.testing.assert_close(ins[i], outs[i - 1], rtol=0, atol=0)


IN_BLOCK = [n for n in ALL if issubclass(METHODS.get(n), InBlockMethod)]


@pytest.mark.parametrize("name", IN_BLOCK)
def test_class_token_is_kept_inside_the_block(tiny_vit, name):
    """Where a reduction happens inside a block, the prefix tokens come out first and unchanged."""
    model, method = patched(tiny_vit, name, 0.5)
    seen = []
    reduce = method.reduce

    def checked(m, view):
        out = reduce(m, view)
        seen.append(view.index)
        torch.testing.assert_close(out[:, : view.prefix], view.x[:, : view.prefix], rtol=0, atol=0)
        assert out.shape[1] <= view.x.shape[1]
        return out

    method.reduce = checked
    with torch.no_grad():
        model(torch.randn(2, 1, 32, 32))
    assert seen, "no reduction inside a block at keep ratio 0.5"


@pytest.mark.parametrize("name", IN_BLOCK)
def test_method_derived_settings_are_recordable(tiny_vit, name):
    """What the runner records of a method (describe()) fits the run record's schema."""
    from bench.results.row import flatten

    model, method = patched(tiny_vit, name, 0.5)
    derived = {k: v for k, v in method.describe().items() if k not in ("method", "keep_ratio", "seed")}
    flatten({"run_id": "x", "method_derived": {k: v for k, v in derived.items() if k not in method.config}})


@pytest.mark.parametrize("name", ALL)
def test_keep_ratio_one_equals_dense(tiny_vit, name):
    """ToMe's rule: with nothing to drop (keep 1.0, and density 1.0 for weight sparsity) logits are the dense ones."""
    dense = tiny_vit()
    model, _ = patched(tiny_vit, name, 1.0, **METHODS.get(name).identity_params)
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), dense(x))


@pytest.mark.parametrize("name", ALL)
def test_no_new_state_dict_keys_unless_learned(tiny_vit, name):
    model, method = patched(tiny_vit, name, 0.5)
    extra = set(model.state_dict()) - set(tiny_vit().state_dict())
    assert bool(extra) == method.learns_parameters


@pytest.mark.parametrize("name", TOKEN)
def test_fvcore_traces_and_counts_follow_schedule(tiny_vit, name):
    model, method = patched(tiny_vit, name, 0.5)
    dense_model, _ = patched(tiny_vit, "dense", 1.0)
    pruned = count_flops(model, torch.randn(1, 1, 32, 32)).gmacs
    dense = count_flops(dense_model, torch.randn(1, 1, 32, 32)).gmacs
    if name == "dense":
        assert pruned == pytest.approx(dense)
    else:
        assert pruned < dense
        # per-block cost is near linear in tokens at this size: the ratio tracks the schedule
        sched = method.token_schedule(model)
        if isinstance(method, InBlockMethod):  # reduced between attention and MLP: the MLP, 2/3 of a block's
            # multiply-adds, sees the tokens entering the next block
            sched = [(n + 2 * m) / 3 for n, m in zip(sched, sched[1:] + sched[-1:])]
        full = [num_tokens(model)] * len(sched)
        assert pruned / dense == pytest.approx(sum(sched) / sum(full), rel=0.15)


@pytest.mark.parametrize("name", ALL)
def test_method_params_validated(name):
    with pytest.raises(UsageError, match="no parameter"):
        create_method(name, 0.5, 0, not_a_param=1)
    with pytest.raises(UsageError, match="keep_ratio"):
        create_method(name, 0.0)


@pytest.mark.parametrize("name", ALL)
def test_catalog_read_without_torch_equals_the_registry(name):
    """The suite loader reads each method's declarations from its source; they must be what the class says."""
    from bench.methods.catalog import catalog

    cls, info = METHODS.get(name), catalog()[name]
    assert (info.description, info.roles, info.family, info.params) == (
        cls.description,
        frozenset(cls.roles),
        cls.family,
        dict(cls.params),
    )
    assert (info.learns_parameters, info.input_dependent, info.reduces_tokens) == (
        cls.learns_parameters,
        cls.input_dependent,
        cls.reduces_tokens,
    )


def test_catalog_lists_exactly_the_registered_methods():
    from bench.methods.catalog import catalog

    assert sorted(catalog()) == ALL


def test_roles_are_consistent():
    from bench.methods.catalog import with_role

    assert len(with_role("reference")) == 1, "exactly one method is the reference every speed-up is measured against"
    assert with_role("control") and with_role("learned"), "the ablation needs controls and learned methods"
    for name in ALL:
        roles = set(METHODS.get(name).roles)
        assert not ({"reference", "control"} <= roles or {"control", "learned"} <= roles), name
        if "weight_budget" in roles:
            assert not METHODS.get(name).reduces_tokens


def test_every_family_has_a_paper_figure():
    from bench.report.figures import FIGURES

    drawn = {FIGURES.get(name).family for name in FIGURES.names()}
    assert {METHODS.get(n).family for n in ALL} - {""} <= drawn


def test_an_undeclared_role_is_refused():
    from bench.methods.base import Method

    with pytest.raises(ValueError, match="unknown role 'contol'; did you mean 'control'"):
        type("Typo", (Method,), {"name": "typo", "roles": ("contol",)})


def test_importing_the_package_imports_no_torch():
    import subprocess
    import sys

    code = (
        "import sys, bench.methods, bench.methods.catalog as c; c.catalog(); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_method_suggests_close_name():
    with pytest.raises(UsageError, match="did you mean 'random'"):
        create_method("randon")


def test_registry_refuses_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        METHODS.add("dense", METHODS.get("dense"))


def test_stage_placement_follows_dynamicvit():
    assert default_stage_blocks(12) == [3, 6, 9]
    assert default_stage_blocks(8) == [2, 4, 6]
    assert default_stage_blocks(24) == [6, 12, 18]
    assert stage_keep_counts(196, 0.7, 3) == [137, 96, 67]
    assert stage_keep_counts(64, 0.5, 3) == [32, 16, 8]


def test_deit_schedule_matches_paper(tiny_vit):
    model = tiny_vit(12)
    method = create_method("static", 0.7)
    assert method.token_schedule(model)[:4] == [65, 65, 65, 45]


def test_static_keeps_centre_patches(tiny_vit):
    model, method = patched(tiny_vit, "static", 0.5)
    method.record_kept = True
    with torch.no_grad():
        model(torch.randn(2, 1, 32, 32))
    last = method.last_kept[-1][0]  # 8 patches of an 8x8 grid
    rows, cols = last // 8, last % 8
    assert rows.min() >= 2 and rows.max() <= 5 and cols.min() >= 2 and cols.max() <= 5
    assert torch.equal(method.last_kept[-1][0], method.last_kept[-1][1])  # input independent


def test_random_is_seeded_and_differs_per_image(tiny_vit):
    x = torch.randn(2, 1, 32, 32)
    kept = []
    for seed in (0, 0, 1):
        model, method = patched(tiny_vit, "random", 0.5, seed=seed)
        method.record_kept = True
        with torch.no_grad():
            model(x)
        kept.append(method.last_kept[0])
    assert torch.equal(kept[0], kept[1])
    assert not torch.equal(kept[0], kept[2])
    assert not torch.equal(kept[0][0], kept[0][1])


def test_random_prunes_in_training_too(tiny_vit):
    model, method = patched(tiny_vit, "random", 0.5)
    model.train()
    counter = TokenCounter(model)
    model(torch.randn(2, 1, 32, 32)).sum().backward()
    assert counter.per_block() == [float(n) for n in method.token_schedule(model)]


#: parameters that make a method's training state move within the contract's few steps
RESUME_PARAMS = {
    "svite": {"update_interval": 2},
    "s2vite": {"update_interval": 2},
    "svite_plus": {"update_interval": 2},
}


def _train(tiny_vit, name, out, log=lambda s: None):
    from torch.utils.data import TensorDataset

    from bench.config import DEFAULT_RECIPE
    from bench.train import train_model

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(96, 1, 32, 32, generator=g), torch.randint(0, 10, (96,), generator=g))
    recipe = {
        **DEFAULT_RECIPE,
        "epochs": 3,
        "batch_size": 32,
        "lr": 1e-3,
        "warmup_epochs": 1,
        # the smoke suite's DynamicViT groups: frozen parameters and clipping (their stale gradients once
        # entered the clipped norm and made a resume differ)
        **({"frozen_params": ["cls_token", "pos_embed"], "backbone_lr_scale": 0.01} if name == "dynamicvit" else {}),
    }
    torch.manual_seed(0)  # what the runner does before building a run's model: a method's modules start alike
    model, method = tiny_vit(), create_method(name, keep_for(name, 0.5), seed=0, **RESUME_PARAMS.get(name, {}))
    method.apply(model)
    teacher = tiny_vit() if method.needs_teacher() else None
    train_model(model, method, data, recipe, seed=0, out_dir=out, device=torch.device("cpu"), teacher=teacher, log=log)
    return model


@pytest.mark.parametrize("name", ALL)
def test_resume_after_a_kill_is_bit_identical(tiny_vit, name, tmp_path, dying_log):
    """Killed after epoch 1's checkpoint (while epoch 2 ends, before its own) and resumed in fresh objects, a
    run ends with exactly the weights of one that was never interrupted: every tensor torch.equal."""
    straight = _train(tiny_vit, name, tmp_path / "straight")
    with pytest.raises(dying_log.Killed):
        _train(tiny_vit, name, tmp_path / "killed", log=dying_log(2))
    resumed = _train(tiny_vit, name, tmp_path / "killed")
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} tensors differ after resume, e.g. {differ[:3]}"
