"""Named training recipes: the papers' settings as presets a suite names and may override key by key.

Each preset (``bench/recipes/<name>.yaml``) gives every value with its source (official file and line),
and ``official_arguments.csv`` keeps the official arguments they were read from; a test holds the two
equal. Loading a preset does not import torch (suites are validated before anything runs).
"""

from __future__ import annotations

import csv
import functools
from importlib import resources
from typing import Any

import yaml

from bench.errors import UsageError

OFFICIAL_TABLE = "official_arguments.csv"


@functools.cache
def _read(name: str) -> dict[str, Any]:
    return yaml.safe_load(resources.files("bench.recipes").joinpath(f"{name}.yaml").read_text())


def list_presets() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("bench.recipes").iterdir() if p.name.endswith(".yaml"))


def preset(name: str) -> dict[str, tuple[Any, str]]:
    """``{key: (value, source)}`` of a named recipe; the source names the official file and line."""
    if name not in list_presets():
        from bench.registry import did_you_mean

        raise UsageError(
            f"unknown recipe {name!r}{did_you_mean(name, list_presets())} (recipes: {', '.join(list_presets())})"
        )
    doc = _read(name)
    return {k: (v["value"], f"recipe {name}: {doc['official']} {v['source']}") for k, v in doc["values"].items()}


def describe(name: str) -> str:
    return str(_read(name).get("description", ""))


def official_table() -> list[dict[str, str]]:
    """Rows of the official arguments behind the presets (recipe, official_argument, official_value, source,
    harness_key, harness_value, note)."""
    text = resources.files("bench.recipes").joinpath(OFFICIAL_TABLE).read_text()
    return list(csv.DictReader(text.splitlines()))
