"""Suite files: schema validation with one-line errors naming the field, and grid expansion."""

import textwrap

import pytest

from bench.config import list_suites, load_suite
from bench.errors import UsageError

GOOD = """
name: t
data: {source: embedded, name: canvas-digits}
backbones: [tb_vit_pico_patch4_32]
methods: [dense, static, {name: random, label: random-b, params: {num_stages: 2}}]
keep_ratios: [0.7, 0.5]
seeds: [0, 1]
"""


def write(tmp_path, text):
    p = tmp_path / "s.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_expansion(tmp_path):
    s = load_suite(write(tmp_path, GOOD))
    ids = [r.run_id for r in s.runs]
    assert len(ids) == len(set(ids)) == 2 + 2 * 2 + 2 * 2  # dense only at keep 1.0
    assert {r.keep_ratio for r in s.runs if r.method == "dense"} == {1.0}
    rb = [r for r in s.runs if r.method == "random-b"][0]
    assert rb.method_name == "random" and rb.method_params == {"num_stages": 2}


@pytest.mark.parametrize(
    "bad, field",
    [
        (GOOD.replace("seeds: [0, 1]", "seeds: [0, -1]"), "seeds[1]"),
        (GOOD.replace("keep_ratios: [0.7, 0.5]", "keep_ratios: [1.5]"), "keep_ratios[0]"),
        (GOOD.replace("name: t", "name: t\nepochs: 3"), "unknown field"),
        (GOOD.replace("methods: [dense,", "methods: [dnese,"), "did you mean 'dense'"),
        (GOOD.replace("tb_vit_pico_patch4_32", "tb_vit_pico"), "backbones[0]"),
        (GOOD.replace("num_stages: 2", "num_stagse: 2"), "methods[2]"),
        (GOOD.replace("source: embedded", "source: embeded"), "data"),
        (GOOD.replace("backbones: [tb_vit_pico_patch4_32]", ""), "'backbones' is a required property"),
        (GOOD + "finetune: {lr: -1}\n", "finetune.lr"),
        ("name: [unclosed\n", "not valid YAML at line"),
    ],
)
def test_bad_suites_give_one_line_naming_the_field(tmp_path, bad, field):
    with pytest.raises(UsageError) as e:
        load_suite(write(tmp_path, bad))
    msg = str(e.value)
    assert field in msg
    assert "\n" not in msg


def test_duplicate_labels_refused(tmp_path):
    with pytest.raises(UsageError, match="appears twice"):
        load_suite(write(tmp_path, GOOD.replace("label: random-b, ", "label: static, ")))


def test_unknown_suite_name_suggests():
    with pytest.raises(UsageError, match="did you mean 'smoke'"):
        load_suite("smok")


def test_shipped_suites_validate():
    names = list_suites()
    assert "smoke" in names
    for name in names:
        assert load_suite(name).runs


def test_reused_checks_only_for_a_suite_that_passed(tmp_path):
    import yaml

    from bench.config import _checks_marker

    good = write(tmp_path, GOOD)
    marker = _checks_marker(yaml.safe_load(good.read_text()))
    marker.unlink(missing_ok=True)
    load_suite(good, reuse_checks=True)
    assert marker.exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text(textwrap.dedent(GOOD.replace("methods: [dense,", "methods: [dnese,")))
    for _ in range(2):  # a failed check is never remembered
        with pytest.raises(UsageError, match="did you mean 'dense'"):
            load_suite(bad, reuse_checks=True)
    # cheap checks still run on a remembered suite: a data source that disappeared is caught
    gone = tmp_path / "imgs"
    gone.mkdir()
    folder_suite = tmp_path / "f.yaml"
    folder_suite.write_text(
        textwrap.dedent(
            GOOD.replace("{source: embedded, name: canvas-digits}", f"{{source: imagefolder, path: {gone}}}")
        )
    )
    load_suite(folder_suite, reuse_checks=True)
    gone.rmdir()
    with pytest.raises(UsageError, match="field data"):
        load_suite(folder_suite, reuse_checks=True)


VARIANTS = """
name: t
data: {source: embedded, name: canvas-digits}
backbones:
  - tb_vit_pico_patch4_32
  - {name: tb_vit_pico_patch4_32, image_size: 64}
  - {name: tb_vit_pico_patch4_32, image_size: 32, label: pico_b, init: scratch}
methods: [dense, static]
keep_ratios: [0.5]
seeds: [0]
"""


def test_a_backbone_listed_twice_is_keyed_by_its_label_and_resolution(tmp_path):
    """Two resolutions and two entries of one model: runs, the pretrain spec and the record's identity columns go by
    label; the resolution is in the label (name@size) and in a typed column."""
    from bench.config import pretrain_spec, run_identity
    from bench.results.row import check

    s = load_suite(write(tmp_path, VARIANTS))
    labels = [b.label for b in s.backbones]
    assert labels == ["tb_vit_pico_patch4_32", "tb_vit_pico_patch4_32@64", "pico_b"]
    ids = [r.run_id for r in s.runs]
    assert len(ids) == len(set(ids)) == 3 * 2
    assert "static__tb_vit_pico_patch4_32@64__k0.50__s0" in ids and "dense__pico_b__k1.00__s0" in ids
    assert s.backbone("tb_vit_pico_patch4_32@64").image_size == 64
    # the label names the folder, not the model: the same model under another label trains the same weights
    assert pretrain_spec(s, "pico_b") == pretrain_spec(s, "tb_vit_pico_patch4_32") | {
        "backbone": {**pretrain_spec(s, "tb_vit_pico_patch4_32")["backbone"], "image_size": 32}
    }
    assert pretrain_spec(s, "tb_vit_pico_patch4_32@64") != pretrain_spec(s, "tb_vit_pico_patch4_32")
    rows = {r.backbone: check(run_identity(s, r, "canvas-digits")) for r in s.runs if r.method == "static"}
    assert {k: (v["backbone_model"], v["image_size"]) for k, v in rows.items()} == {
        "tb_vit_pico_patch4_32": ("tb_vit_pico_patch4_32", 32),
        "tb_vit_pico_patch4_32@64": ("tb_vit_pico_patch4_32", 64),
        "pico_b": ("tb_vit_pico_patch4_32", 32),
    }
    with pytest.raises(UsageError, match="no backbone 'tb_vit_pico_patch4_32@65'.*did you mean"):
        s.backbone("tb_vit_pico_patch4_32@65")


@pytest.mark.parametrize(
    "entries",
    [
        "[tb_vit_pico_patch4_32, tb_vit_pico_patch4_32]",
        "[tb_vit_pico_patch4_32, {name: tb_vit_pico_patch4_32, image_size: 32}]",  # the size its name states
        "[{name: tb_vit_pico_patch4_32, image_size: 64}, {name: tb_vit_nano_patch4_32, label: tb_vit_pico_patch4_32@64}]",
    ],
)
def test_two_entries_with_one_label_are_refused_in_one_line(tmp_path, entries):
    text = VARIANTS.replace(
        VARIANTS[VARIANTS.index("backbones:") : VARIANTS.index("methods:")], f"backbones: {entries}\n"
    )
    with pytest.raises(UsageError, match=r"field backbones\[1\]: label .* is also backbones\[0\]'s") as e:
        load_suite(write(tmp_path, text), check_names=False)
    assert "\n" not in str(e.value)


def test_the_resolution_a_name_states_is_timms():
    """The label omits @size only when the name states that size: the name's number must be timm's input size."""
    import timm

    from bench.config import backbone_label, size_in_name
    from bench.models.backbones import default_image_size

    names = [n for n in timm.list_models("vit_*") + timm.list_models("deit*") if size_in_name(n) is not None]
    assert len(names) > 100
    for name in names:
        assert size_in_name(name) == timm.get_pretrained_cfg(name).input_size[-1], name
    assert size_in_name("tb_vit_pico_patch4_32") == default_image_size("tb_vit_pico_patch4_32") == 32
    assert size_in_name("levit_128") is None and size_in_name("vit_base_patch14_dinov2") is None
    assert backbone_label("deit_small_patch16_224", 160) == "deit_small_patch16_224@160"
    assert backbone_label("deit_small_patch16_224", 224) == "deit_small_patch16_224"
    assert backbone_label("vit_base_patch14_dinov2", 518) == "vit_base_patch14_dinov2@518"  # no size in the name


def test_a_parameter_that_fixes_the_budget_runs_once(tmp_path):
    """ToMe with an explicit r ignores the keep ratio: one run at 1.0, not one identical run per keep ratio."""
    text = GOOD.replace(
        "methods: [dense, static,", "methods: [dense, {name: tome, label: tome_r2, params: {r: 2}}, tome, static,"
    )
    s = load_suite(write(tmp_path, text), build=False)
    grid: dict[str, set] = {}
    for r in s.runs:
        grid.setdefault(r.method, set()).add((r.keep_ratio, r.seed))
    assert grid["tome"] == {(0.7, 0), (0.5, 0), (0.7, 1), (0.5, 1)}  # r from the keep ratio: one run per ratio
    assert grid["tome_r2"] == {(1.0, 0), (1.0, 1)}
    assert grid["static"] == grid["tome"]
    # the method's own keep ratios beside its r: refused, not silently collapsed
    bad = text.replace("params: {r: 2}}", "params: {r: 2}, keep_ratios: [0.7, 0.5]}")
    with pytest.raises(UsageError, match=r"methods\[1\]\.keep_ratios: parameter 'r' fixes tome's budget"):
        load_suite(write(tmp_path, bad), build=False)
    # an explicit r: null is no budget: the keep ratios stand
    none = text.replace("params: {r: 2}}", "params: {r: null}}")
    assert {r.keep_ratio for r in load_suite(write(tmp_path, none), build=False).runs if r.method == "tome_r2"} == {
        0.7,
        0.5,
    }


def test_the_hub_is_checked_by_validate_build_not_by_every_step(tmp_path, monkeypatch):
    """`bench validate --build` refuses init: hub weights it cannot get now; a fine-tune job (which reads the
    pretrained model.pth, never the hub) on an offline node is not refused."""
    text = GOOD.replace("tb_vit_pico_patch4_32", "vit_tiny_patch16_224") + "pretrain: {init: hub}\n"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    assert load_suite(write(tmp_path, text)).runs
    with pytest.raises(UsageError, match=r"backbones\[0\]\.init: HF_HUB_OFFLINE is set"):
        load_suite(write(tmp_path, text), check_hub=True)
