"""Suite values refused by class (bench.suite_values, bench.suite_file): each check covers every member of its
class (every integer field, every name field, every key type, every recipe the schedule would build), and what it
accepts the harness can run."""

import io
import math
import random
import sys
from collections import Counter
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import yaml

from bench.config import DEFAULT_RECIPE, list_suites, load_suite, suite_schema
from bench.errors import UsageError, one_line
from bench.suite_file import MAX_NODES, read_yaml
from bench.suite_values import HARNESS_KWARGS, check_recipe

sys.path.insert(0, str(Path(__file__).parent / "benchmarks"))
from bad_input_kit import BASE, prepare, sub  # noqa: E402
from bad_inputs_values import CASES  # noqa: E402


def _load(tmp_path, text: str):
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return load_suite(p, check_names=False)


def _refused(tmp_path, text: str) -> str:
    with pytest.raises(UsageError) as e:
        _load(tmp_path, text)
    message = str(e.value)
    assert "\n" not in message and len(message) < 400, message
    return message


def test_shipped_suites_and_presets_pass_the_value_checks():
    for name in list_suites():
        load_suite(name, check_names=False)


INTEGER_RECIPE_KEYS = sorted(
    k for k, v in suite_schema()["$defs"]["recipe"]["properties"].items() if "integer" in str(v.get("type"))
)
FT = "finetune: {epochs: 1, batch_size: 64, max_steps_per_epoch: 2}"


@pytest.mark.parametrize("key", INTEGER_RECIPE_KEYS)
def test_every_integer_recipe_field_refuses_an_integral_float(tmp_path, key):
    body = {"epochs": 1, "batch_size": 64, "max_steps_per_epoch": 2, key: 2.0}
    message = _refused(tmp_path, sub(FT, "finetune: {" + ", ".join(f"{k}: {v}" for k, v in body.items()) + "}"))
    assert f"finetune.{key}" in message and "not an integer (write 2)" in message


#: (text in BASE, the same with a name built from ``{h}`` + a valid name + ``{t}``, the field the message names)
NAME_FIELDS = [
    ("name: tiny", 'name: "{h}tiny{t}"', "field name"),
    ("backbones: [tb_vit_pico_patch4_32]", 'backbones: ["{h}tb_vit_pico_patch4_32{t}"]', "backbones[0]"),
    (
        "backbones: [tb_vit_pico_patch4_32]",
        'backbones: [{{name: tb_vit_pico_patch4_32, label: "{h}p{t}"}}]',
        "backbones[0].label",
    ),
    ("methods: [dense,", 'methods: ["{h}dense{t}",', "methods[0]"),
    ("methods: [dense,", 'methods: [{{name: dense, label: "{h}d{t}"}},', "methods[0].label"),
]


@pytest.mark.parametrize("tail", ["\n", "\r", "\t", "\x00", "\x1b[31m", "\u200b", "\u202e", "\u00e9", "/x", " "])
@pytest.mark.parametrize("old, new, field", NAME_FIELDS)
def test_every_name_field_refuses_what_cannot_name_a_folder(tmp_path, old, new, field, tail):
    escaped = tail.encode("unicode_escape").decode()
    message = _refused(tmp_path, sub(old, new.format(h="", t=escaped)))
    assert field in message


@pytest.mark.parametrize("head", ["-", "--", ".", "..", "+", "@"])
@pytest.mark.parametrize("old, new, field", NAME_FIELDS)
def test_no_name_field_starts_like_an_option_or_a_hidden_folder(tmp_path, old, new, field, head):
    """A run id or label is a command-line argument of the pipeline's steps (`bench evaluate SUITE RUN_ID`)."""
    _load(tmp_path, sub(old, new.format(h="", t="")))  # the name itself is fine
    message = _refused(tmp_path, sub(old, new.format(h=head, t="")))
    assert field in message


def test_a_run_id_longer_than_a_file_name_allows_is_refused_by_its_method(tmp_path):
    ok = "[dense, {name: static, label: " + "s" * 150 + "}]"
    _load(tmp_path, sub("methods: [dense, static, dynamicvit, token_pooling, svite]", f"methods: {ok}"))
    too_long = ok.replace("s" * 150, "s" * 170)
    message = _refused(
        tmp_path, sub("methods: [dense, static, dynamicvit, token_pooling, svite]", f"methods: {too_long}")
    )
    assert "methods[1]" in message and "run id" in message


@pytest.mark.parametrize("key", ["1", "-2", "1.5", "null", "~", "true", "no", "2020-01-01", "[a]", "{a: 1}"])
@pytest.mark.parametrize("where", ["top", "recipe", "kwargs", "params"])
def test_every_key_that_is_not_a_string_is_refused_by_its_line(tmp_path, key, where):
    entry = f"? {key}\n: 1\n" if key.startswith(("[", "{")) else f"{key}: 1\n"
    if where == "top":
        text = BASE + entry
    else:
        flow = f"{{? {key} : 1}}" if key.startswith(("[", "{")) else f"{{{key}: 1}}"
        text = {
            "recipe": BASE.replace("finetune: {epochs: 1,", f"finetune: {{? {key} : 1, epochs: 1,"),
            "kwargs": sub(
                "backbones: [tb_vit_pico_patch4_32]", f"backbones: [{{name: tb_vit_pico_patch4_32, kwargs: {flow}}}]"
            ),
            "params": BASE.replace("svite]", f"{{name: svite, params: {flow}}}]"),
        }[where]
    message = _refused(tmp_path, text)
    assert "key" in message and "line" in message


@pytest.mark.parametrize("width, depth", [(2, 16), (3, 10), (9, 5), (10, 5), (100, 3), (2, 40)])
def test_alias_expansion_is_bounded_whatever_its_shape(tmp_path, width, depth):
    """w**depth values from a few hundred bytes: refused when the expansion passes MAX_NODES, read otherwise."""
    lines = [f"a0: &a0 [{', '.join(['x'] * width)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, depth)]
    p = tmp_path / "bomb.yaml"
    p.write_text("\n".join(lines) + "\n")
    expanded = sum(width**i for i in range(1, depth + 1))
    if expanded > MAX_NODES:
        with pytest.raises(UsageError, match="aliases are expanded"):
            read_yaml(p)
    else:
        assert read_yaml(p)["a0"] == ["x"] * width


def test_a_recursive_anchor_is_refused_wherever_it_closes(tmp_path):
    for body in ("a: &x [*x]", "a: &x {b: *x}", "a: &x [1, [2, {c: *x}]]", "a: &x {b: [1, *x]}"):
        p = tmp_path / "r.yaml"
        p.write_text(body + "\n")
        with pytest.raises(UsageError, match="contains itself"):
            read_yaml(p)


def _accepted(recipe: dict) -> bool:
    try:
        check_recipe(recipe, {}, "finetune", "s.yaml")
        return True
    except UsageError:
        return False


def test_every_recipe_accepted_builds_a_schedule_that_warms_up_and_stays_finite():
    """Random recipes near the edges: whatever check_recipe accepts, timm's schedule (built as the loop builds it)
    has finite non-negative lrs, ends its warm-up before the run ends and never goes below its floor or above its
    peak, and its weight decay never zeroes the weights in a step."""
    import torch

    from bench.train.loop import batch_plan
    from bench.train.optim import GroupSchedule

    rng = random.Random(0)
    accepted = refused = 0
    for _ in range(400):
        r = {
            **DEFAULT_RECIPE,
            "epochs": rng.choice([1, 2, 5, 30]),
            "batch_size": rng.choice([1, 64, 1024]),
            "lr": float(f"{rng.uniform(1, 9):.3f}e{rng.choice([-330, -320, -6, -5, -4, -3, -2, -1, 0, 300, 308])}"),
            "lr_base_batch": rng.choice([None, 256, 1e-300, 1e300]),
            "min_lr": rng.choice([0, 1e-6, 1e-3, 1.0]),
            "warmup_lr": rng.choice([0, 1e-6, 1.0]),
            "warmup_epochs": rng.choice([0, 0.5, 1, 5, 30]),
            "weight_decay": rng.choice([0, 0.05, 1e3]),
            "lr_step": rng.choice(["step", "epoch"]),
        }
        if not _accepted(r):
            refused += 1
            continue
        accepted += 1
        _, _, peak = batch_plan(r, world=1, n_train=10**6)
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
        for g in opt.param_groups:
            g["lr_scale"] = 1.0
        sched = GroupSchedule(opt, r, steps_per_epoch=4)
        lrs = [sched.scheduled_lr(step, step // 4 + 1) for step in range(r["epochs"] * 4)]
        assert all(math.isfinite(x) and x >= 0 for x in lrs), (r, lrs)
        assert max(lrs) <= peak * (1 + 1e-9) and min(lrs[1:] or lrs) >= min(r["min_lr"], r["warmup_lr"]) * (1 - 1e-9)
        assert peak * r["weight_decay"] < 1
        if r["warmup_epochs"]:
            assert r["warmup_epochs"] < r["epochs"]
    assert accepted > 50 and refused > 50


def test_cutmix_minmax_is_refused_exactly_where_timms_box_draw_fails():
    """timm's rand_bbox_minmax (what the training loop's Mixup calls) fails exactly for the (size, range) pairs the
    check refuses."""
    from timm.data.mixup import rand_bbox_minmax

    from bench.suite_values import check_cutmix_boxes

    rng = random.Random(0)
    for _ in range(300):
        size = rng.choice([8, 30, 32, 64, 224])
        lo = round(rng.uniform(0.0, 1.0), 3)
        pair = [lo, round(rng.uniform(lo, 1.0), 3)]
        recipe = {**DEFAULT_RECIPE, "epochs": 1, "cutmix": 1.0, "cutmix_minmax": pair}
        try:
            check_cutmix_boxes(recipe, "finetune", {"b": size}, "s.yaml")
            accepted = True
        except UsageError:
            accepted = False
        try:
            rand_bbox_minmax((2, 3, size, size), pair)
            drawn = True
        except ValueError:
            drawn = False
        assert accepted == drawn, (size, pair)


def test_the_embedded_sets_digit_count_is_sklearns():
    from sklearn.datasets import load_digits

    from bench.suite_values import N_DIGITS

    assert len(load_digits().target) == N_DIGITS


def test_every_kwarg_the_harness_passes_to_timm_is_refused_in_a_suite(monkeypatch):
    """The keywords the harness gives timm.create_model for a fine-tune (drop path on, a checkpoint init) are all
    in HARNESS_KWARGS: a suite's kwargs cannot collide with one silently."""
    from types import SimpleNamespace

    import bench.models.backbones as backbones
    from bench.config import Backbone
    from bench.run_setup import _model

    seen: dict = {}

    def create_model(name, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop")

    monkeypatch.setattr(backbones.timm, "create_model", create_model)
    b = Backbone("tb_vit_pico_patch4_32", 48, "scratch", {"depth": 3}, "pico")
    bundle = SimpleNamespace(num_classes=10, in_chans=3)
    with pytest.raises(UsageError):
        _model(None, b, bundle, pretrained=True, recipe={**DEFAULT_RECIPE, "drop_path": 0.1})
    harness = set(seen) - set(b.kwargs)
    assert harness and harness <= set(HARNESS_KWARGS), harness - set(HARNESS_KWARGS)


def test_a_long_quoted_value_is_described_paths_are_kept():
    assert one_line("unknown method '" + "m" * 3000 + "' (known: a, b)") == (
        "unknown method <a value of 3,000 characters> (known: a, b)"
    )
    path = "'/scratch/group/results/smoke/runs/static__deit_small_patch16_224__k0.70__s0/model.pth'"
    assert one_line(f"{path} is not a checkpoint\nsecond line") == f"{path} is not a checkpoint second line"


@pytest.mark.parametrize("case", [c for c in CASES if not c.snakemake], ids=lambda c: c.name)
def test_value_cases_are_short_lines_and_compute_nothing(case, tmp_path, monkeypatch):
    """Beyond tests/test_bad_inputs.py (exit 2, one line naming the field): the line is short, whatever the value
    (a 10 MB scalar, a 3000-byte name), and no results folder is made (those given to `bench train` included)."""
    from bench.cli import main

    monkeypatch.chdir(tmp_path)
    argv = prepare(case, tmp_path)
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        code = main(argv)
    lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and case.expect in lines[0], lines
    assert len(lines[0].replace(str(tmp_path), "<tmp>")) <= 320, lines[0]
    assert not (tmp_path / "results").exists()


def test_the_value_table_covers_every_class():
    kinds = Counter(c.kind for c in CASES)
    assert set(kinds) == {"impossible number", "recipe cross-field", "name", "yaml", "kwargs"}, kinds
    assert min(kinds.values()) >= 9 and sum(kinds.values()) >= 45, kinds


def test_yaml_reads_back_what_a_plain_safe_load_reads(tmp_path):
    """The bounded loader changes nothing for a suite within its bounds (anchors and merge keys included)."""
    text = sub("recipe: {epochs: 1,", "recipe: &r {epochs: 1,").replace(
        FT, "finetune: {<<: *r, max_steps_per_epoch: 2}"
    )
    p = tmp_path / "s.yaml"
    p.write_text(text)
    assert read_yaml(p) == yaml.safe_load(text) and read_yaml(p)["finetune"]["batch_size"] == 64
    for name in list_suites():
        path = Path("suites") / f"{name}.yaml"
        assert read_yaml(path) == yaml.safe_load(path.read_text())
