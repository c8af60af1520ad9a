"""The layering the code relies on, checked: what each layer may import, and module size."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "bench"


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports inside functions included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


@pytest.mark.parametrize("path", sorted((BENCH / "report").glob("*.py")), ids=lambda p: p.name)
def test_report_imports_neither_torch_nor_methods(path):
    bad = {
        m
        for m in _imports(path)
        if m.split(".")[0] in ("torch", "timm", "seaborn")
        or m == "bench.methods"
        or m.startswith(("bench.methods.", "bench.measure", "bench.runner"))
    }
    assert not bad, f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize("path", sorted((BENCH / "report").glob("*.py")), ids=lambda p: p.name)
def test_report_modules_use_public_names_of_each_other(path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bench."):
            private = [a.name for a in node.names if a.name.startswith("_")]
            assert not private, f"{path.name} imports private {private} from {node.module}"


def test_building_a_report_imports_no_torch():
    code = (
        "import sys, bench.report.build, bench.results.collect, bench.methods.catalog as c; c.catalog(); "
        "heavy = [m for m in ('torch', 'timm', 'seaborn') if m in sys.modules]; assert not heavy, heavy"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_runner_draws_no_figures():
    assert not {m for m in _imports(BENCH / "runner.py") if m.startswith("bench.report")}


def test_no_module_over_400_lines():
    long = {
        str(p.relative_to(BENCH)): n
        for p in BENCH.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400
    }
    assert not long, f"split these modules (one concern each): {long}"


def test_report_style_is_seaborns():
    """The report takes seaborn's look as values (importing seaborn costs a third of a cold report)."""
    import matplotlib as mpl
    import seaborn as sns

    from bench.report.style import COLORBLIND, WHITEGRID

    assert [mpl.colors.to_hex(c) for c in sns.color_palette("colorblind")] == list(COLORBLIND)
    expected = {k: v for k, v in sns.axes_style("whitegrid").items() if k != "image.cmap"}
    assert WHITEGRID == expected
