"""Training recipes: timm's augmentation stack, every recipe key acting, the per-group lr rule, named
recipes held against the official arguments, and the off-the-shelf protocol (``finetune: none``)."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch.utils.data import Dataset, TensorDataset

from bench.config import DEFAULT_RECIPE, load_suite, resolve_recipe
from bench.errors import UsageError
from bench.methods import Method, create_method
from bench.recipes import list_presets, official_table, preset
from bench.train import train_model
from bench.train.loop import STATE_FILE, make_mixup

EVERY_AUGMENTATION = {
    "auto_augment": "rand-m9-mstd0.5-inc1",
    "color_jitter": 0.4,
    "re_prob": 0.25,
    "mixup": 0.8,
    "cutmix": 1.0,
    "repeated_aug": 3,
    "model_ema": True,
    "model_ema_decay": 0.9,
    "drop_path": 0.1,
}


class Photos(Dataset):
    """Seeded random RGB photos (PIL, 40x40) through a timm training transform."""

    def __init__(self, transform, n=48):
        g = torch.Generator().manual_seed(0)
        self.pixels = (torch.rand(n, 40, 40, 3, generator=g) * 255).to(torch.uint8).numpy()
        self.labels = torch.randint(0, 10, (n,), generator=g).tolist()
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.pixels[i])), self.labels[i]


def photo_transform(recipe):
    from bench.data.transforms import build_transform

    return build_transform(
        train=True, image_size=32, in_chans=3, mean=(0.5,) * 3, std=(0.5,) * 3, native_size=None, recipe=recipe
    )


def test_deit_recipe_transform_holds_randaugment_m9_and_random_erasing():
    from timm.data.auto_augment import RandAugment
    from timm.data.random_erasing import RandomErasing

    recipe, _ = resolve_recipe(("finetune", "deit"))
    t = photo_transform(recipe).transforms
    ra = [x for x in t if isinstance(x, RandAugment)]
    assert len(ra) == 1 and ra[0].num_layers == 2
    assert {op.magnitude for op in ra[0].ops} == {9} and {op.magnitude_std for op in ra[0].ops} == {0.5}
    erasing = [x for x in t if isinstance(x, RandomErasing)]
    assert len(erasing) == 1 and erasing[0].probability == 0.25 and erasing[0].mode == "pixel"
    # the defaults add nothing: no RandAugment, no erasing
    plain = photo_transform(DEFAULT_RECIPE).transforms
    assert not any(isinstance(x, (RandAugment, RandomErasing)) for x in plain)


def test_augmentation_keys_act_on_fixed_size_data_only_when_set():
    from bench.data.transforms import FixedSizeTransform, build_transform

    kw = dict(train=True, image_size=32, in_chans=1, mean=(0.5,), std=(0.5,), native_size=32)
    assert isinstance(build_transform(**kw, recipe=DEFAULT_RECIPE), FixedSizeTransform)  # smoke stays as it was
    t = build_transform(**kw, recipe={**DEFAULT_RECIPE, "re_prob": 1.0})
    x = t(np.full((32, 32), 200, np.uint8))
    assert x.shape == (1, 32, 32) and not torch.allclose(x, x[0, 0, 0])  # erased patch of noise


def test_mixup_gives_soft_targets_and_the_loss_is_soft_target_ce(tiny_vit, tmp_path):
    from timm.loss import SoftTargetCrossEntropy

    recipe = {**DEFAULT_RECIPE, "mixup": 0.8, "cutmix": 1.0, "label_smoothing": 0.1}
    mix = make_mixup(recipe, 10)
    np.random.seed(0)
    _, soft = mix(torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 3]))
    assert soft.shape == (4, 10) and torch.allclose(soft.sum(1), torch.ones(4))
    assert (soft.max(1).values < 1.0).all() and (soft > 0).all()  # mixed and smoothed, not one-hot

    seen = {}

    class Probe(Method):
        name = "probe"

        def extra_losses(self, model, ctx):
            seen["targets"], seen["logits"] = ctx.targets.detach(), ctx.logits.detach()
            return {}

    ds = TensorDataset(torch.randn(8, 1, 32, 32), torch.randint(0, 10, (8,)))
    train_model(
        tiny_vit(),
        Probe(),
        ds,
        {**recipe, "epochs": 1, "batch_size": 8},
        seed=0,
        out_dir=tmp_path,
        device=torch.device("cpu"),
        log=lambda s: None,
    )
    log = json.loads((tmp_path / "train_log.jsonl").read_text().splitlines()[-1])
    assert seen["targets"].shape == (8, 10)
    assert log["loss_ce"] == pytest.approx(SoftTargetCrossEntropy()(seen["logits"], seen["targets"]).item(), rel=1e-6)


def test_student_carries_the_recipe_drop_path_and_the_teacher_none():
    from bench.runner import _model

    bundle = SimpleNamespace(num_classes=10, in_chans=1)
    backbone = SimpleNamespace(name="tb_vit_pico_patch4_32", image_size=None, kwargs={})
    student = _model(None, backbone, bundle, None, {**DEFAULT_RECIPE, "drop_path": 0.1})
    teacher = _model(None, backbone, bundle, None)
    assert student.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)  # timm's linear decay ends at the rate
    assert all(isinstance(b.drop_path1, torch.nn.Identity) for b in teacher.blocks)


def _dynamicvit_schedule(tiny_vit, **over):
    from bench.train.optim import GroupSchedule, build_optimizer, param_groups

    model = tiny_vit()
    method = create_method("dynamicvit", 0.5)
    method.apply(model)
    recipe, _ = resolve_recipe(("finetune", {"recipe": "dynamicvit", "epochs": 10, **over}))
    groups = param_groups(model, method.lr_scales(), recipe)
    optimizer = build_optimizer(groups, recipe, recipe["lr"])
    return model, optimizer, GroupSchedule(optimizer, recipe, steps_per_epoch=1000), recipe


def test_backbone_lr_is_its_scale_times_the_scheduled_lr_at_warmup_mid_run_and_floor(tiny_vit):
    _, optimizer, schedule, recipe = _dynamicvit_schedule(tiny_vit, freeze_backbone_epochs=0)
    assert recipe["backbone_lr_scale"] == 0.01 and recipe["warmup_epochs"] > 0
    by_name = {g["name"]: g for g in optimizer.param_groups}
    warm, mid, last = 3, int(recipe["warmup_epochs"] * 1000) + 2000, 9999
    for step in (warm, mid, last):
        schedule.apply(step, step // 1000)
        lr = schedule.scheduled_lr(step, step // 1000)
        assert by_name["dynamicvit_predictors"]["lr"] == pytest.approx(lr, rel=1e-12)
        assert by_name["backbone"]["lr"] == by_name["backbone_no_decay"]["lr"] == pytest.approx(0.01 * lr, rel=1e-12)
    assert lr == pytest.approx(recipe["min_lr"], rel=1e-3)  # the floor: 0.01 x min_lr for the backbone, not min_lr
    assert 0 < schedule.scheduled_lr(warm, 0) < schedule.scheduled_lr(mid, 7) < recipe["lr"]


def test_frozen_group_is_held_at_lr_zero_and_stepped_without_changing(tiny_vit, tmp_path):
    model, optimizer, schedule, _ = _dynamicvit_schedule(tiny_vit)
    schedule.apply(3, 0)
    by_name = {g["name"]: g for g in optimizer.param_groups}
    assert by_name["backbone"]["lr"] == 0.0 and by_name["dynamicvit_predictors"]["lr"] > 0

    model = tiny_vit()
    method = create_method("dynamicvit", 0.5, distill_weight=0.0, token_distill_weight=0.0)
    method.apply(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recipe, _ = resolve_recipe(
        (
            "finetune",
            {"recipe": "dynamicvit", "epochs": 1, "batch_size": 4, "mixup": 0.0, "cutmix": 0.0, "model_ema": False},
        )
    )
    ds = TensorDataset(torch.randn(8, 1, 32, 32), torch.randint(0, 10, (8,)))
    train_model(model, method, ds, recipe, seed=0, out_dir=tmp_path, device=torch.device("cpu"), log=lambda s: None)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("dynamicvit_predictors.") for k in changed)
    state = torch.load(tmp_path / STATE_FILE, weights_only=True)["optimizer"]
    frozen = [g for g in state["param_groups"] if g["name"].startswith("backbone")]
    # the optimiser stepped the frozen groups (AdamW moments move), as the official lr-0 groups
    assert frozen and all(g["lr"] == 0.0 for g in frozen)
    assert all(state["state"][i]["exp_avg_sq"].abs().sum() > 0 for g in frozen for i in g["params"])


def _fit_photos(tiny_vit, out, log=lambda s: None, init=None):
    recipe = {**DEFAULT_RECIPE, **EVERY_AUGMENTATION, "epochs": 3, "batch_size": 16, "lr": 1e-3, "warmup_epochs": 1}
    model = tiny_vit(in_chans=3, drop_path_rate=recipe["drop_path"])
    if init is not None:
        init.update({k: v.clone() for k, v in model.state_dict().items()})
    m = create_method("random", 0.5, seed=0)
    m.apply(model)
    res = train_model(
        model, m, Photos(photo_transform(recipe)), recipe, seed=0, out_dir=out, device=torch.device("cpu"), log=log
    )
    return model, res


def test_resume_with_every_augmentation_on_is_bit_identical(tiny_vit, tmp_path, dying_log):
    init = {}
    straight, done = _fit_photos(tiny_vit, tmp_path / "a", init=init)
    with pytest.raises(dying_log.Killed):
        _fit_photos(tiny_vit, tmp_path / "b", log=dying_log(2))
    resumed, res = _fit_photos(tiny_vit, tmp_path / "b")
    assert res.resumed_from_epoch == 1
    for (k, v), w in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(v, w), k
    assert done.ema_state is not None
    for k, v in done.ema_state.items():
        assert torch.equal(v, res.ema_state[k]), k
    # the average moved (updated every step) and is not the model itself
    moved = [k for k, v in done.ema_state.items() if v.is_floating_point() and not torch.equal(v, init[k])]
    assert len(moved) > len(done.ema_state) // 2
    assert any(not torch.equal(done.ema_state[k], straight.state_dict()[k]) for k in moved)


def test_repeated_augmentation_deals_copies_to_different_ranks():
    from bench.train.loaders import EpochBatches

    single = list(EpochBatches(12, 6, 0, repeats=3))
    flat = [i for b in single for i in b]
    assert len(flat) == 12 and all(flat.count(i) == 3 for i in set(flat)) and len(set(flat)) == 4
    assert all(b.count(i) == 3 for b in single for i in b)  # all copies of an image in one global batch
    ranks = [list(EpochBatches(12, 6, 0, rank=r, world=3, repeats=3)) for r in range(3)]
    for step, batch in enumerate(single):
        dealt = [ranks[r][step] for r in range(3)]
        assert sorted(i for d in dealt for i in d) == sorted(batch)  # the ranks make up the global batch
        assert all(len(set(d)) == len(d) for d in dealt)  # no rank gets two copies of an image


class Tracking(dict):
    """A recipe that remembers which keys code read."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.read = set()

    def __getitem__(self, k):
        self.read.add(k)
        return super().__getitem__(k)

    def get(self, k, default=None):
        self.read.add(k)
        return super().get(k, default)


def test_every_recipe_key_in_the_schema_is_read_by_the_code(tiny_vit, tmp_path):
    from importlib import resources

    from bench.runner import _model

    schema = json.loads(resources.files("bench").joinpath("schemas/suite.schema.json").read_text())
    keys = set(schema["$defs"]["recipe"]["properties"]) - {"recipe"}  # "recipe" names a preset (resolve_recipe)
    assert keys == set(DEFAULT_RECIPE)
    recipe = Tracking({**DEFAULT_RECIPE, **EVERY_AUGMENTATION, "epochs": 1, "batch_size": 8, "model_ema_decay": 0.9})
    bundle = SimpleNamespace(num_classes=10, in_chans=3)
    model = _model(
        None, SimpleNamespace(name="tb_vit_pico_patch4_32", image_size=None, kwargs={}), bundle, None, recipe
    )
    method = create_method("dense")
    train_model(
        model,
        method,
        Photos(photo_transform(recipe), n=8),
        recipe,
        seed=0,
        out_dir=tmp_path,
        device=torch.device("cpu"),
        log=lambda s: None,
    )
    assert keys - recipe.read == set(), f"recipe keys no code reads: {sorted(keys - recipe.read)}"


def _value(text):
    return yaml.safe_load(text)


def _param_values(recipe, method, param):
    """What the harness runs for a method parameter: its default, what the recipe's ImageNet suite sets, and for
    the keep ratio the suite's ratios; DynamicViT's stage blocks as computed on a 12-block ViT."""
    from bench.methods.base import METHODS
    from bench.models import build_backbone

    suite = load_suite(f"suites/{recipe}.yaml", check_names=False)
    if param == "keep_ratio":
        return {r.keep_ratio for r in suite.runs if r.method_name == method}
    if param == "stage_blocks":
        model = build_backbone("tb_vit_nano_patch4_32", num_classes=10)
        return [[b for b, _ in create_method(method, 0.7).stages(model)]]
    found = [r.method_params[param] for r in suite.runs if r.method_name == method and param in r.method_params]
    return [METHODS.get(method).params[param].default, *found]


def test_named_recipes_equal_the_official_arguments():
    rows = official_table()
    assert {"deit", "dynamicvit", "svite"} <= set(list_presets())
    for name in list_presets():
        values = {k: v for k, (v, _) in preset(name).items()}
        assert set(values) <= set(DEFAULT_RECIPE), name
        mine = [r for r in rows if r["recipe"] == name]
        checked = set()
        for r in mine:
            key = r["harness_key"]
            if not key:
                assert r["note"].strip(), f"{name}: {r['official_argument']} has no harness key and no explanation"
            elif key.startswith("param:"):
                method, param = key[len("param:") :].split(".")
                assert _value(r["harness_value"]) in _param_values(name, method, param), f"{name}: {key}"
            else:
                assert key in values, f"{name}: the table sets {key} but the preset does not"
                assert values[key] == _value(r["harness_value"]), f"{name}: {key}"
                checked.add(key)
        assert set(values) - checked == set(), f"{name}: preset values without an official row: {set(values) - checked}"
        for k, (_, source) in preset(name).items():
            assert ":" in source.split(" ", 3)[-1], f"{name}.{k}: source {source!r} names no file:line"


def _suite(tmp_path, body):
    p = tmp_path / "s.yaml"
    p.write_text(body)
    return p


BASE = """
name: s
data: {source: embedded, name: canvas-digits, options: {train_placements: 1, val_placements: 1}}
backbones: [tb_vit_pico_patch4_32]
keep_ratios: [0.5]
seeds: [0]
pretrain: {init: scratch, recipe: {epochs: 1}}
"""


def test_finetune_none_refuses_an_untrained_learned_method(tmp_path):
    with pytest.raises(UsageError, match=r"methods\[1\].*learns parameters.*finetune: none"):
        load_suite(_suite(tmp_path, BASE + "methods: [dense, dynamicvit]\nfinetune: none\n"))
    with pytest.raises(UsageError, match="finetune epochs 0"):
        load_suite(_suite(tmp_path, BASE + "methods: [dense, dynamicvit]\nfinetune: {epochs: 0}\n"))
    from bench.methods import create_method
    from bench.models import build_backbone

    model = build_backbone("tb_vit_pico_patch4_32", num_classes=10)  # trained weights: matched at --build
    create_method("dynamicvit", 0.5).apply(model)
    ckpt = tmp_path / "dvit.pth"
    torch.save({"model": model.state_dict()}, ckpt)
    suite = load_suite(
        _suite(tmp_path, BASE + f"methods: [dense, static, {{name: dynamicvit, weights: {ckpt}}}]\nfinetune: none\n")
    )
    assert all(r.finetune is None for r in suite.runs)
    assert [r.weights for r in suite.runs if r.method == "dynamicvit"] == [str(ckpt)]


def test_named_recipe_overrides_and_sources(tmp_path):
    suite = load_suite(
        _suite(
            tmp_path,
            # a warm-up shorter than the run (the preset's 5 epochs would outlast 2: bench.suite_values)
            BASE + "methods: [dense, {name: static, finetune: {epochs: 2, warmup_epochs: 1}}]\n"
            "finetune: {recipe: dynamicvit, lr: 2.0e-3}\n",
        ),
        check_names=False,
    )
    static = next(r for r in suite.runs if r.method == "static")
    assert static.finetune["epochs"] == 2 and static.finetune_sources["epochs"] == "methods[1].finetune"
    assert static.finetune["lr"] == 2e-3 and static.finetune_sources["lr"] == "finetune"
    assert static.finetune["backbone_lr_scale"] == 0.01
    assert static.finetune_sources["backbone_lr_scale"].startswith("recipe dynamicvit: raoyongming/DynamicViT")
    with pytest.raises(UsageError, match="unknown recipe 'dynamicvt'.*did you mean 'dynamicvit'"):
        load_suite(_suite(tmp_path, BASE + "methods: [dense]\nfinetune: {recipe: dynamicvt}\n"), check_names=False)


def test_dynamicvit_suite_trains_its_controls_under_the_learned_method_groups():
    suite = load_suite("suites/dynamicvit.yaml", check_names=False)
    keys = ("backbone_lr_scale", "freeze_backbone_epochs", "frozen_params", "lr", "epochs", "mixup", "model_ema")
    by_method = {r.method: {k: r.finetune[k] for k in keys} for r in suite.runs}
    assert {"dense", "static", "random", "dynamicvit"} <= set(by_method)
    assert all(v == by_method["dynamicvit"] for v in by_method.values())
    assert by_method["dynamicvit"]["backbone_lr_scale"] == 0.01


def test_validate_prints_each_value_with_its_source():
    from click.testing import CliRunner

    from bench.cli import cli

    out = CliRunner().invoke(cli, ["validate", "suites/dynamicvit.yaml", "--recipe"])
    assert out.output.split(" run(s): ")[0].endswith("\n16")
    assert out.exit_code == 0, out.output
    runs = out.output.split(" run(s): ", 1)[1]  # after the pretrain block: the fine-tune recipe of the runs
    assert out.output.count(" run(s): ") == 1 and runs.startswith("dense__")  # one recipe for all 16 runs
    line = next(ln for ln in runs.splitlines() if ln.strip().startswith("backbone_lr_scale"))
    assert "0.01" in line and "recipe dynamicvit:" in line and ":" in line.split("[")[1]
    assert math.isfinite(float(line.split("=")[1].split("[")[0]))


def test_ema_is_trained_saved_and_scored_as_its_own_metrics_keeping_the_weight_budget(tmp_path):
    from bench import runner

    path = _suite(
        tmp_path,
        BASE.replace("keep_ratios: [0.5]", "keep_ratios: [1.0]")
        + """
methods: [{name: s2vite, params: {density: 0.5, update_interval: 1}}]
finetune: {epochs: 1, batch_size: 64, max_steps_per_epoch: 3, model_ema: true, model_ema_decay: 0.5}
evaluate: {max_val_images: 64, flops_images: 2, throughput: {batch_sizes: [2], repeats: 1, warmup: 0, min_time_s: 0.01}}
""",
    )
    suite = load_suite(path)
    run = suite.runs[0]
    root = tmp_path / "results"
    runner.pretrain(suite, run.backbone, root=root)
    runner.finetune(suite, run, root=root)
    saved = torch.load(runner.run_dir(suite, run, root) / runner.MODEL_FILE, weights_only=True)
    assert set(saved["model_ema"]) == set(saved["model"])
    assert any(not torch.equal(saved["model_ema"][k], v) for k, v in saved["model"].items())
    bundle = runner._data(suite, tmp_path)
    # an average that has not decayed where structures were cut (e.g. regrown elsewhere late in training)
    saved = {**saved, "model_ema": {k: v + 0.01 if v.is_floating_point() else v for k, v in saved["model_ema"].items()}}
    ema = runner._ema_model(suite, run, bundle, saved)
    _, trained, _ = runner._trained_model(suite, run, bundle, root)
    # S2ViTE's cut heads and neurons are removed from the EMA model too: the same (smaller) shapes
    assert {k: v.shape for k, v in ema.state_dict().items()} == {k: v.shape for k, v in trained.state_dict().items()}
    assert trained.blocks[0].mlp.fc1.out_features < 4 * 64
    record = runner.evaluate_run(suite, run, root=root)
    assert record["top1_ema"] is not None and 0 <= record["top1_ema"] <= 100
    groups = {g["name"]: g for g in record["optimizer_groups"]}
    assert groups["backbone"]["lr_scale"] == 1.0 and record["lr_rule"].startswith("group lr = lr_scale")


def test_teacher_sees_the_same_mixed_images_as_the_student(tiny_vit, tmp_path):
    seen = {}

    class Distil(Method):
        name = "distil_probe"

        def needs_teacher(self):
            return True

        def attach_teacher(self, teacher):
            teacher.register_forward_pre_hook(lambda m, a: seen.__setitem__("teacher", a[0].clone()))

    model = tiny_vit()
    model.register_forward_pre_hook(lambda m, a: seen.__setitem__("student", a[0].clone()))
    x = torch.randn(8, 1, 32, 32)
    ds = TensorDataset(x, torch.randint(0, 10, (8,)))
    recipe = {**DEFAULT_RECIPE, "mixup": 0.8, "cutmix": 1.0, "epochs": 1, "batch_size": 8}
    train_model(
        model,
        Distil(),
        ds,
        recipe,
        seed=0,
        out_dir=tmp_path,
        device=torch.device("cpu"),
        teacher=tiny_vit(),
        log=lambda s: None,
    )
    assert torch.equal(seen["teacher"], seen["student"])
    assert not any(torch.equal(seen["student"][i], x[j]) for i in range(8) for j in range(8))  # mixed


def test_per_epoch_schedule_replays_deits_loop_and_the_warmup_prefix_dynamicvits(tiny_vit):
    from bench.train.optim import GroupSchedule, build_optimizer, param_groups

    model = tiny_vit()
    for name, over in (("deit", {}), ("dynamicvit", {"freeze_backbone_epochs": 0})):
        recipe, _ = resolve_recipe(("finetune", {"recipe": name, **over}))
        opt = build_optimizer(param_groups(model, {}, recipe), recipe, recipe["lr"])
        sched = GroupSchedule(opt, recipe, steps_per_epoch=100)
        w = int(recipe["warmup_epochs"])
        if name == "deit":  # lr_scheduler.step(epoch) after each epoch: epochs 0 and 1 both at warmup_lr
            lrs = []
            for e in range(w + 2):
                sched.apply(e * 100, e)
                lrs.append(opt.param_groups[0]["lr"])
            assert lrs[0] == lrs[1] == recipe["warmup_lr"]
            assert lrs[w + 1] == pytest.approx(recipe["lr"], rel=1e-3) and lrs[w + 1] < recipe["lr"]  # no prefix
            assert lrs[2] < lrs[3] < lrs[w]
        else:  # the cosine starts after the warm-up, at the full lr (utils.cosine_scheduler)
            sched.apply(w * 100, w)
            assert sched.scheduled_lr(w * 100, w) == recipe["lr"]
            assert opt.param_groups[0]["lr"] == pytest.approx(recipe["backbone_lr_scale"] * recipe["lr"], rel=1e-12)
            assert recipe["warmup_lr"] == 0.0


def test_randaugment_magnitude_ten_posterize_does_not_crash():
    """DeiT's rand-m9-mstd0.5-inc1 reaches magnitude 10, where timm's PosterizeIncreasing keeps 0 bits, which
    Pillow >= 13 rejects; the training transform must survive it (as older Pillow: a black image)."""
    from timm.data.auto_augment import AugmentOp

    recipe, _ = resolve_recipe(("finetune", "deit"))
    photo_transform(recipe)  # building the DeiT transform installs the guard
    op = AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10)
    out = op(Image.new("RGB", (8, 8), (200, 100, 50)))
    assert np.asarray(out).max() == 0
    assert (
        np.asarray(
            AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=5)(Image.new("RGB", (8, 8), (200, 100, 50)))
        ).max()
        > 0
    )
