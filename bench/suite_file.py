"""Reading a suite file: UTF-8 text, YAML without repeated keys, finite numbers; every failure one line.

YAML is loaded as data a suite can be: string keys only, no anchor that contains itself, aliases that expand to
at most ``MAX_NODES`` nodes (an alias bomb is refused before anything walks it), nesting at most ``MAX_DEPTH``
deep, from a file of at most ``MAX_BYTES``; a value quoted in a message is cut to one short line.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from bench.errors import UsageError, clip

#: bytes of a suite file: the largest shipped suite is 2.5 kB, and PyYAML parses about 50 kB a second
MAX_BYTES = 256 * 1024
#: nodes a suite may expand to once its aliases are followed (the shipped suites hold at most 160)
MAX_NODES = 20_000
#: how deep a suite's mappings and lists may nest (a suite needs 6 levels)
MAX_DEPTH = 64


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (PyYAML keeps the last one silently) and a key that is
    not a string (an int, null, true, a list or a mapping: no suite field is named by one)."""


def _string_key(loader: yaml.SafeLoader, key_node: yaml.Node) -> str:
    at = f"line {key_node.start_mark.line + 1}, column {key_node.start_mark.column + 1}"
    if not isinstance(key_node, yaml.ScalarNode):
        kind = "list" if isinstance(key_node, yaml.SequenceNode) else "mapping"
        raise UsageError(f"the key at {at} is a {kind}; keys are field names (strings)")
    key = loader.construct_object(key_node)
    if not isinstance(key, str):
        raise UsageError(
            f"the key {clip(repr(key), 60)} at {at} is {type(key).__name__}, not a string; keys are field "
            f"names (quote it: '{key_node.value}')"
        )
    return key


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[str, int] = {}
    for key_node, _ in node.value:  # the mapping's own keys: a merge (<<: *base) may be overridden, not repeated
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = _string_key(loader, key_node)
        if key in seen:
            raise UsageError(
                f"key {clip(repr(key), 60)} appears twice in one mapping (line {seen[key]} and line "
                f"{key_node.start_mark.line + 1}); keep one"
            )
        seen[key] = key_node.start_mark.line + 1
    loader.flatten_mapping(node)  # merged keys first, the mapping's own after them (they win)
    for key_node, _ in node.value:  # merged keys are string keys too
        _string_key(loader, key_node)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)

#: digits of the longest integer a suite may write (every integer field is below 2**64: 20 digits)
MAX_INT_DIGITS = 40


def _bounded_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    """An integer of at most MAX_INT_DIGITS characters (Python refuses to read one of 4300 digits, with a hint
    about sys.set_int_max_str_digits that is no help here)."""
    if len(node.value) > MAX_INT_DIGITS:
        raise UsageError(
            f"the integer at line {node.start_mark.line + 1} is {len(node.value):,} characters long; no suite "
            f"field holds one beyond {MAX_INT_DIGITS} digits"
        )
    return loader.construct_yaml_int(node)


_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:int", _bounded_int)


def _refuse_expansion(root: yaml.Node) -> None:
    """One walk of the composed document, each node once: an anchor that contains itself, nesting deeper than
    MAX_DEPTH and more than MAX_NODES nodes once every alias is expanded (a billion laughs) are refused."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        at = f"line {node.start_mark.line + 1}"
        if id(node) in open_nodes:
            raise UsageError(f"an anchor at {at} contains itself (a recursive alias); a suite is a tree")
        if depth > MAX_DEPTH:
            raise UsageError(f"nested deeper than {MAX_DEPTH} levels at {at}; a suite needs a few")
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        open_nodes.add(id(node))
        total = 1
        for child in children:
            total += size(child, depth + 1)
            if total > MAX_NODES:
                raise UsageError(
                    f"more than {MAX_NODES:,} values once its aliases are expanded (at {at}; an alias bomb?); "
                    f"a suite holds a few hundred"
                )
        open_nodes.discard(id(node))
        sizes[id(node)] = total
        return total

    size(root, 0)


def _load(text: str) -> Any:
    """``yaml.load`` in two halves: the node graph is composed and measured before anything is constructed."""
    loader = _UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_expansion(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_yaml(path: Path) -> Any:
    """A YAML file as plain data; every way it can be unreadable is one UsageError naming the file."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            raise UsageError(f"{path}: larger than {MAX_BYTES // 1024} KiB; a suite is a few kB of YAML")
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(
            f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); save it as UTF-8 YAML"
        ) from None
    except OSError as e:
        raise UsageError(f"{path}: cannot be read ({e.strerror})") from None
    if "\x00" in text:
        raise UsageError(f"{path}: a binary file, not YAML text")
    return parse_yaml(text, str(path))


def parse_yaml(text: str, where: str) -> Any:
    """YAML text (a file's, or a command-line value such as ``--param k=v``) as plain data, with the bounds above;
    every failure is one UsageError starting with ``where``."""
    try:
        raw = _load(text)  # a SafeLoader subclass: no Python objects
    except RecursionError:  # the parser's own recursion, on brackets nested thousands deep
        raise UsageError(f"{where}: nested deeper than {MAX_DEPTH} levels; a suite needs a few") from None
    except UsageError as e:
        raise UsageError(f"{where}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UsageError(f"{where}: not valid YAML{at}: {clip(getattr(e, 'problem', None) or e, 160)}") from None
    _refuse_non_finite(raw, where, "")
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
