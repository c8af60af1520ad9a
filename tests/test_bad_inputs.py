"""Every bad input is one line on stderr, exit code 2, naming the field or file, before anything runs.

The cases live in ``tests/benchmarks/bad_inputs.py`` (which prints them as a table, each in its own
process); here the ``bench`` ones run in-process and the Snakefile ones through snakemake.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "benchmarks"))
from bad_input_kit import case_env, prepare, run_case  # noqa: E402
from bad_inputs import CASES  # noqa: E402

from bench.cli import main  # noqa: E402


@pytest.mark.parametrize("case", [c for c in CASES if not c.snakemake], ids=lambda c: c.name)
def test_bench_bad_input_is_one_line_exit_2(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for key, value in case_env(case, tmp_path).items():
        monkeypatch.setenv(key, value)
    argv = prepare(case, tmp_path)
    code = main(argv)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert not any("internal error" in ln or "Traceback" in ln for ln in err), err
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("bench: error: "), err
    assert case.expect in err[0], err[0]
    assert not (tmp_path / "PWNED").exists()  # a planted pickle never runs


@pytest.mark.parametrize("case", [c for c in CASES if c.snakemake], ids=lambda c: c.name)
def test_snakefile_bad_config_is_one_line_exit_2(case, tmp_path):
    code, lines = run_case(case, tmp_path)
    assert not any("internal error" in ln or "Traceback" in ln for ln in lines), lines
    assert code == 2 and len(lines) == 1 and case.expect in lines[0], lines
    assert not (tmp_path / "results").exists()
