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


def test_shipped_suites_validate(monkeypatch):
    import bench.preflight

    # the suites' content is checked, not whether this machine reaches the hub (tests run with HF_HUB_OFFLINE)
    monkeypatch.setattr(bench.preflight, "check_hub_reachable", lambda name: None)
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
