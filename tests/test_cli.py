"""The `bench` command line: help everywhere, one-line errors with exit code 2, real measurements."""

import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import cli, main

COMMANDS = sorted(cli.commands)


def run_main(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("cmd", [[]] + [[c] for c in COMMANDS])
def test_help_everywhere(capsys, cmd):
    code, out, _ = run_main(capsys, *cmd, "--help")
    assert code == 0
    assert "Usage:" in out


@pytest.mark.parametrize(
    "args, needle",
    [
        (["ls", "metods"], "metods"),
        (["validate", "no_such_suite"], "no_such_suite"),
        (["frobnicate"], "frobnicate"),
        (["flops", "deit_smal_patch16_224"], "did you mean 'deit_small_patch16_224'"),
        (["flops", "tb_vit_pico_patch4_32", "--method", "statc"], "did you mean 'static'"),
        (["flops", "tb_vit_pico_patch4_32", "--keep-ratio", "1.5"], "keep-ratio"),
        (["flops", "tb_vit_pico_patch4_32", "--param", "nostage"], "KEY=VALUE"),
        (["throughput", "tb_vit_pico_patch4_32", "--batch-sizes", "1,x"], "batch-sizes"),
        (["throughput", "tb_vit_pico_patch4_32", "--precision", "fp16"], "fp16"),
        (["train", "smoke"], "exactly one of"),
        (["train", "smoke", "--run", "nope"], "no run 'nope'"),
        (["report", "no_such_suite", "--results", "/nonexistent"], "no results"),
    ],
)
def test_bad_arguments_one_line_exit_2(capsys, args, needle):
    code, out, err = run_main(capsys, *args)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("bench: error:")
    assert needle in lines[0]


def test_console_script_exit_code_and_no_traceback():
    p = subprocess.run([sys.executable, "-m", "bench", "validate", "suites/nope.yaml"], capture_output=True, text=True)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_ls_and_validate(capsys):
    code, out, _ = run_main(capsys, "ls", "methods")
    assert code == 0 and {"dense", "static", "random"} <= {line.split()[0] for line in out.splitlines()}
    code, out, _ = run_main(capsys, "validate", "smoke", "--runs")
    assert code == 0 and "dense__tb_vit_pico_patch4_32__k1.00__s0" in out


@pytest.mark.parametrize(
    "argv", [["ls", "methods"], ["ls", "backbones"], ["ls", "suites"], ["ls", "columns"], ["validate", "smoke"]]
)
def test_ls_and_validate_import_no_torch(argv):
    """They answer in a fraction of a second: no torch, timm or seaborn behind them."""
    code = (
        "import sys; from bench.cli import main\n"
        f"sys.argv = ['bench'] + {argv!r}\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "heavy = [m for m in ('torch', 'timm', 'seaborn', 'datasets') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_ls_methods_shows_roles_and_origin(capsys):
    code, out, _ = run_main(capsys, "ls", "methods")
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert "[reference]" in lines["dense"] and "[control]" in lines["random"]
    assert lines["dynamicvit"].endswith("(bench.methods.dynamicvit)")


def test_validate_build_checks_what_needs_the_model(tmp_path, capsys):
    suite = tmp_path / "s.yaml"
    text = (Path(__file__).parents[1] / "suites" / "smoke.yaml").read_text()
    suite.write_text(text.replace("tb_vit_pico_patch4_32", "tb_vit_pico_patch4_3"))
    code, out, err = run_main(capsys, "validate", str(suite))
    assert code == 0 and "static checks only" in out  # backbone names need timm
    code, out, err = run_main(capsys, "validate", "--build", str(suite))
    assert code == 2 and "backbones[0]" in err and "did you mean 'tb_vit_pico_patch4_32'" in err


def test_flops_command_counts_deit_small(capsys):
    code, out, _ = run_main(capsys, "flops", "deit_small_patch16_224")
    assert code == 0
    assert "4.608" in out


def test_flops_command_follows_keep_ratio(capsys):
    code, out, _ = run_main(
        capsys, "flops", "tb_vit_pico_patch4_32", "--method", "static", "--keep-ratio", "0.5", "--num-classes", "10"
    )
    assert code == 0 and "[65, 65, 33, 33, 17, 17, 9, 9]" in out


def test_throughput_command(capsys):
    code, out, _ = run_main(
        capsys,
        "throughput",
        "tb_vit_pico_patch4_32",
        "--batch-sizes",
        "1,4",
        "--repeats",
        "2",
        "--num-classes",
        "10",
        "--min-time",
        "0.01",
    )
    assert code == 0 and "img/s" in out and "batch    4" in out


def test_clipped_messages_end_on_a_word_boundary():
    """A library message quoted in a one-line error is shortened at a word boundary, never mid-word."""
    import random

    from bench.errors import clip

    rng = random.Random(0)
    words = ["connection", "refused", "https://huggingface.co/timm/vit_tiny", "Errno", "111", "a", "(x)", "weights;"]
    for _ in range(500):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 60)))
        limit = rng.randint(10, 200)
        out = clip(text + "\nsecond line", limit)
        assert "\n" not in out
        if len(text) <= limit:
            assert out == text
            continue
        kept = out.removesuffix("…").rstrip()
        assert text.startswith(kept) and len(kept) <= limit
        rest = text[len(kept) :]
        assert kept[-1] in "/,;" or rest[0] == " ", (kept, rest)  # the cut falls between words
    assert clip("x" * 300 + " tail", 50) == "x" * 300 + " …"  # one long token is kept whole


def test_no_message_is_sliced_mid_word_in_the_package():
    """Every quoted error goes through bench.errors.clip: no `str(e)...[:N]` slicing is left in bench/."""
    import re

    sliced = re.compile(r"\[:\d{2,}\]")  # text[:200]; digests ([:24] of a hexdigest) are no message
    hits = [
        f"{p}:{i}"
        for p in sorted((Path(__file__).resolve().parents[1] / "bench").rglob("*.py"))
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if sliced.search(line) and "hexdigest" not in line
    ]
    assert not hits, hits
