"""Reading a suite file: UTF-8 text, YAML without repeated keys, finite numbers; every failure one line."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from bench.errors import UsageError


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (PyYAML keeps the last one silently)."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            mark = key_node.start_mark
            raise UsageError(
                f"key {key!r} appears twice in one mapping (line {seen[key]} and line {mark.line + 1}); keep one"
            )
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def read_yaml(path: Path) -> Any:
    """A YAML file as plain data; every way it can be unreadable is one UsageError naming the file."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(
            f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); save it as UTF-8 YAML"
        ) from None
    except OSError as e:
        raise UsageError(f"{path}: cannot be read ({e.strerror})") from None
    if "\x00" in text:
        raise UsageError(f"{path}: a binary file, not YAML text")
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except UsageError as e:
        raise UsageError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UsageError(f"{path}: not valid YAML{at}: {getattr(e, 'problem', e)}") from None
    _refuse_non_finite(raw, str(path), "")
    return raw


def _refuse_non_finite(value: Any, where: str, field_name: str) -> None:
    """YAML's .nan and .inf pass every schema bound (comparisons with NaN are false): refuse them by field."""
    if isinstance(value, float) and not math.isfinite(value):
        raise UsageError(f"{where}: field {field_name or '(top level)'}: {value!r} is not a finite number")
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        _refuse_non_finite(
            v, where, f"{field_name}[{k}]" if isinstance(k, int) else f"{field_name}.{k}" if field_name else str(k)
        )
