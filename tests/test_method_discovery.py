"""Methods are found without a list to edit: this package's modules, and plugins through entry points."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench.methods import METHODS
from bench.methods.discovery import builtin_modules

PLUGIN = """
from bench.methods.base import Method, register_method


@register_method
class Halve(Method):
    name = "{name}"
    roles = ("control",)
    description = "a plugin method"
"""


def _install_plugin(root: Path, name: str) -> dict[str, str]:
    """A real distribution on sys.path (a dist-info folder with entry_points.txt), no pip needed."""
    (root / "tb_plugin.py").write_text(PLUGIN.format(name=name))
    info = root / "tb_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tb-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[tokenbench.methods]\nhalve = tb_plugin\n")
    return {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def _bench(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, env=env)


def test_every_module_of_the_package_is_imported():
    modules = set(builtin_modules())
    assert {METHODS.get(n).__module__ for n in METHODS.names()} <= modules
    assert "bench.methods.catalog" not in modules and "bench.methods.base" not in modules


def test_a_plugin_registers_through_its_entry_point(tmp_path):
    env = _install_plugin(tmp_path, "halve")
    p = _bench(env, "ls", "methods")
    assert p.returncode == 0, p.stderr
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("halve"))
    assert "[control]" in line and "plugin tb-plugin: tb_plugin" in line


def test_a_plugin_reusing_a_name_is_refused(tmp_path):
    env = _install_plugin(tmp_path, "static")
    p = _bench(env, "ls", "methods")
    assert p.returncode == 2 and "'static' is already registered" in p.stderr
    assert "plugin entry point 'halve'" in p.stderr and len(p.stderr.strip().splitlines()) == 1
