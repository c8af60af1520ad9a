"""The machinery of the data-source registry: a source of a suite's ``data:`` mapping declares its keys, and the
key checks (``DataSource.normalize``), the ``data`` part of the suite schema (``data_schema``) and the README's
key table (``markdown_table``) are all derived from those declarations, so they cannot disagree.

The sources themselves (embedded, hub, imagefolder, disk) are declared in ``bench.data.sources``, each beside
its loader. Nothing here imports torch, torchvision, timm or datasets: ``bench validate`` reads the declarations
without them, and a loader named as ``"module:function"`` is imported only when data is loaded.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench.errors import UsageError
from bench.registry import Registry, did_you_mean

if TYPE_CHECKING:
    from bench.data.bundle import DataBundle

#: the key that picks the source; every source accepts it, none declares it
SOURCE_KEY = "source"
#: a Key without a default
NO_DEFAULT: Any = type("NoDefault", (), {"__repr__": lambda self: "NO_DEFAULT"})()

#: JSON types a key may declare, and how an error names each
JSON_TYPES = {
    "string": "a non-empty string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "object": "a mapping",
    "array": "a list",
}


def _is_json_type(json_type: str, value: Any) -> bool:
    """``value`` as the suite's checks type it: booleans are no numbers, and 3.0 is no integer (an integer stays one
    all the way to the command line, as bench.suite_values checks every integer field)."""
    if json_type in ("integer", "number"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return json_type == "number" or isinstance(value, int)
    return isinstance(value, {"string": str, "boolean": bool, "object": Mapping, "array": (list, tuple)}[json_type])


@dataclass(frozen=True)
class Key:
    """One key of a source's ``data:`` mapping."""

    name: str
    type: str  # a JSON type: string, integer, number, boolean, object, array
    doc: str  # one line, a noun phrase ("a path to ...": errors read "needs <doc>")
    required: bool = False
    #: how data is fetched, not what it is (cache dir, process count): left out of a run's identity
    runtime: bool = False
    default: Any = NO_DEFAULT
    minimum: int | float | None = None
    choices: tuple[Any, ...] | None = None

    def __post_init__(self) -> None:
        if self.type not in JSON_TYPES:
            raise ValueError(f"data key {self.name!r}: type {self.type!r} is not one of {', '.join(JSON_TYPES)}")
        if self.name == SOURCE_KEY:
            raise ValueError(f"data key {SOURCE_KEY!r} is every source's; do not declare it")
        if self.minimum is not None and self.type not in ("integer", "number"):
            raise ValueError(f"data key {self.name!r}: a minimum needs a numeric type, not {self.type!r}")
        if self.required and self.default is not NO_DEFAULT:
            raise ValueError(f"data key {self.name!r}: a required key has no default")
        if "\n" in self.doc:
            raise ValueError(f"data key {self.name!r}: its doc must be one line")
        if self.default is not NO_DEFAULT:
            self.check(self.default)

    def check(self, value: Any) -> Any:
        """The value, checked (a one-line UsageError naming the key otherwise)."""
        if not _is_json_type(self.type, value) or (self.type == "string" and not value):
            raise UsageError(f"data: {self.name} must be {JSON_TYPES[self.type]}, got {value!r}")
        if self.choices is not None and value not in self.choices:
            options = [str(c) for c in self.choices]
            hint = did_you_mean(value, options) if isinstance(value, str) else ""
            raise UsageError(f"data: {self.name} must be one of {', '.join(options)}, got {value!r}{hint}")
        if self.minimum is not None and value < self.minimum:
            raise UsageError(f"data: {self.name} must be >= {self.minimum}, got {value!r}")
        return value

    def schema(self) -> dict[str, Any]:
        """This key's JSON schema."""
        out: dict[str, Any] = {"type": self.type}
        if self.type == "string":
            out["minLength"] = 1
        if self.choices is not None:
            out["enum"] = list(self.choices)
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.default is not NO_DEFAULT:
            out["default"] = self.default
        out["description"] = self.doc + (" (runtime: not part of a run's identity)" if self.runtime else "")
        return out


@dataclass(frozen=True)
class DataSource:
    """A ``source:`` of the ``data:`` mapping: its keys, and the loader that turns a normalized mapping into a
    DataBundle (a function, or ``"module:function"`` imported when data is loaded)."""

    name: str
    doc: str  # one line: what the data is
    keys: tuple[Key, ...]
    loader: Callable[..., DataBundle] | str
    #: checks beyond the keys' own, without loading data or using the network (e.g. a path exists)
    check: Callable[[dict[str, Any]], Any] | None = None
    #: the dataset label for result rows; None: the ``name`` key, else the path's last part
    describe: Callable[[dict[str, Any]], str] | None = None
    #: the loader reads a local folder through its index: it is called ``loader(cfg, index_path)``
    indexed: bool = False

    def __post_init__(self) -> None:
        names = [k.name for k in self.keys]
        if len(set(names)) != len(names):
            raise ValueError(f"data source {self.name!r} declares a key twice: {names}")
        if "\n" in self.doc:
            raise ValueError(f"data source {self.name!r}: its doc must be one line")

    def key(self, name: str) -> Key:
        return next(k for k in self.keys if k.name == name)

    def allowed(self) -> list[str]:
        """Every key this source accepts, ``source`` included, sorted."""
        return sorted([SOURCE_KEY, *(k.name for k in self.keys)])

    def normalize(self, cfg: Mapping[str, Any]) -> dict[str, Any]:
        """Check ``cfg`` against the declarations and fill the defaults; errors are one line naming the key."""
        allowed = self.allowed()
        for key in cfg:
            if key not in allowed:
                raise UsageError(
                    f"data: unknown key {key!r} for source {self.name!r}"
                    f"{did_you_mean(str(key), allowed)} (allowed: {', '.join(allowed)})"
                )
        out = {SOURCE_KEY: self.name}
        for k in self.keys:
            if k.name in cfg:
                out[k.name] = k.check(cfg[k.name])
            elif k.required:
                raise UsageError(f"data: source {self.name!r} needs {k.doc} (key {k.name!r})")
            elif k.default is not NO_DEFAULT:
                out[k.name] = k.default
        return out

    def load_function(self) -> Callable[..., DataBundle]:
        if callable(self.loader):
            return self.loader
        module, _, attr = self.loader.partition(":")
        return getattr(importlib.import_module(module), attr)

    def schema(self) -> dict[str, Any]:
        """The mapping's schema when ``source`` is this source."""
        props: dict[str, Any] = {SOURCE_KEY: {"const": self.name}}
        props.update({k.name: k.schema() for k in self.keys})
        out: dict[str, Any] = {"properties": props}
        required = [k.name for k in self.keys if k.required]
        if required:
            out["required"] = required
        # propertyNames first: its error names the key and lists the source's keys (the schema's message)
        out["propertyNames"] = {"enum": self.allowed()}
        out["additionalProperties"] = False
        return out


class SourceRegistry(Registry[DataSource]):
    """Data sources by name, in the order they were added (the first is the default source)."""

    def add_source(self, source: DataSource) -> DataSource:
        for k in source.keys:  # a key means one thing: runtime in one source and identity in another would leak
            for other in self._items.values():
                if k.name in (o.name for o in other.keys) and other.key(k.name).runtime != k.runtime:
                    raise ValueError(f"data key {k.name!r} is a runtime key in one source and not in another")
        self.add(source.name, source)
        return source

    def in_order(self) -> list[str]:
        return list(self._items)

    def runtime_keys(self) -> tuple[str, ...]:
        return tuple(sorted({k.name for s in self._items.values() for k in s.keys if k.runtime}))


def data_schema(registry: SourceRegistry) -> dict[str, Any]:
    """The ``data`` part of the suite schema: the source names, and per source (``if``/``then``) its keys."""
    names = registry.in_order()
    return {
        "type": "object",
        "description": "where the images come from; generated from the data-source registry (bench/data/sources.py)",
        "required": [SOURCE_KEY],
        "properties": {SOURCE_KEY: {"enum": names, "description": "the data source"}},
        "allOf": [
            {
                "if": {"properties": {SOURCE_KEY: {"const": name}}, "required": [SOURCE_KEY]},
                "then": registry.get(name).schema(),
            }
            for name in names
        ],
    }


def _cell(key: Key) -> str:
    if key.required:
        return "required"
    if key.default is NO_DEFAULT:
        return ""
    return f"`{str(key.default).lower() if isinstance(key.default, bool) else key.default}`"


def _bounds(key: Key) -> str:
    if key.choices is not None:
        return f"{key.type}: {' or '.join(str(c) for c in key.choices)}"
    if key.minimum is not None:
        return f"{key.type} >= {key.minimum}"
    return key.type


def _markdown(text: str) -> str:
    return text.replace("|", "/").replace("<", "\\<")


def markdown_table(registry: SourceRegistry) -> str:
    """The sources, then every key of every source, as Markdown tables; a key declared alike by several sources
    is one row."""
    names = registry.in_order()
    lines = ["| `source` | data |", "|---|---|"]
    lines += [
        f"| `{name}`{' (default)' if name == names[0] else ''} | {_markdown(registry.get(name).doc)} |"
        for name in names
    ]
    lines.append("")
    rows: dict[tuple[Any, ...], list[str]] = {}
    for name in names:
        for k in registry.get(name).keys:
            doc = k.doc + (" (runtime: not part of a run's identity)" if k.runtime else "")
            rows.setdefault((k.name, _bounds(k), _cell(k), doc), []).append(f"`{name}`")
    lines += ["| key | sources | type | default | meaning |", "|---|---|---|---|---|"]
    lines += [
        f"| `{key}` | {', '.join(srcs)} | {bounds} | {cell} | {_markdown(doc)} |"
        for (key, bounds, cell, doc), srcs in rows.items()
    ]
    return "\n".join(lines)
