"""What every built-in method declares (name, description, roles, family, parameters), read without torch.

The suite loader (``bench validate``, ``bench ls``) must answer in a fraction of a second, so it reads the method
modules' syntax trees instead of importing them: each ``@register_method`` class's literal declarations, its
base classes' included. Only literals, names bound to literals, ``Param(...)`` and ``dict``/``tuple``/``**``
merges are understood; the contract tests check that this catalog equals the imported registry for every
built-in method, so a declaration it cannot read fails a test instead of going unnoticed. Plugins from entry
points are imported (they are not this package's files).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from bench.errors import UsageError
from bench.methods.params import Param

PACKAGE = "bench.methods"
_HERE = Path(__file__).resolve().parent
_DECLARED = ("name", "description", "roles", "family", "params", "learns_parameters", "input_dependent")
_BUILTINS: dict[str, Any] = {
    "None": None,
    "True": True,
    "False": False,
    "float": float,
    "int": int,
    "str": str,
    "bool": bool,
    "list": list,
    "tuple": tuple,
    "dict": dict,
}


@dataclass(frozen=True)
class MethodInfo:
    name: str
    description: str
    roles: frozenset[str]
    family: str
    params: dict[str, Param]
    module: str
    learns_parameters: bool = False
    input_dependent: bool = False
    origin: str = ""

    @property
    def reduces_tokens(self) -> bool:
        return "weight_budget" not in self.roles

    def has(self, role: str) -> bool:
        return role in self.roles

    def record_columns(self) -> dict[str, Any]:
        """The run record's method columns: family and one flag per role."""
        from bench.roles import ROLES, role_column

        return {"method_family": self.family, **{role_column(r): r in self.roles for r in ROLES}}

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """The method's parameters with defaults filled, each value checked (the same checks as the class)."""
        from bench.registry import did_you_mean

        unknown = sorted(set(params) - set(self.params))
        if unknown:
            raise UsageError(
                f"method {self.name!r} has no parameter {unknown[0]!r}"
                f"{did_you_mean(unknown[0], sorted(self.params))} "
                f"(parameters: {', '.join(sorted(self.params)) or 'none'})"
            )
        out = {k: p.default for k, p in self.params.items()}
        out.update({k: self.params[k].check(self.name, k, v) for k, v in params.items()})
        return out


class _Unreadable(Exception):
    """A declaration that is not a literal this reader understands."""


@dataclass
class _Class:
    module: str
    bases: list[str]
    attrs: dict[str, ast.expr] = field(default_factory=dict)
    registered: bool = False


class _Module:
    """One module's top-level names (literals, imported names, classes), evaluated on demand."""

    def __init__(self, dotted: str):
        path = _HERE / f"{dotted.rsplit('.', 1)[-1]}.py"
        self.dotted = dotted
        self.tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        self.assigns: dict[str, ast.expr] = {}
        self.imports: dict[str, tuple[str, str]] = {}
        self.classes: dict[str, _Class] = {}
        for node in self.tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                self.assigns[node.targets[0].id] = node.value
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
                self.assigns[node.target.id] = node.value
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PACKAGE):
                for alias in node.names:
                    self.imports[alias.asname or alias.name] = (node.module, alias.name)
            elif isinstance(node, ast.ClassDef):
                cls = _Class(dotted, [b.id for b in node.bases if isinstance(b, ast.Name)])
                cls.registered = any(isinstance(d, ast.Name) and d.id == "register_method" for d in node.decorator_list)
                for stmt in node.body:
                    target = (
                        stmt.targets[0]
                        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                        else (stmt.target if isinstance(stmt, ast.AnnAssign) and stmt.value is not None else None)
                    )
                    if isinstance(target, ast.Name):
                        cls.attrs[target.id] = stmt.value  # type: ignore[union-attr]
                self.classes[node.name] = cls

    def lookup(self, name: str) -> Any:
        if name in self.assigns:
            return _evaluate(self, self.assigns[name])
        if name in self.classes:
            return ("class", self, name)
        if name in self.imports:
            module, original = self.imports[name]
            if module == f"{PACKAGE}.params" and original == "Param":
                return Param
            return _module(module).lookup(original)
        if name in _BUILTINS:
            return _BUILTINS[name]
        raise _Unreadable(name)

    def attribute(self, cls_name: str, attr: str) -> Any:
        """A class attribute, looked up through the class's bases (in their own modules)."""
        cls = self.classes[cls_name]
        if attr in cls.attrs:
            return _evaluate(self, cls.attrs[attr])
        for base in cls.bases:
            found = self.lookup(base)
            if isinstance(found, tuple) and found[0] == "class":
                try:
                    return found[1].attribute(found[2], attr)
                except KeyError:
                    continue
        raise KeyError(attr)


@cache
def _module(dotted: str) -> _Module:
    return _Module(dotted)


def _evaluate(module: _Module, node: ast.expr) -> Any:
    """A restricted literal evaluator (never ``eval``): what the declarations above are written with."""
    ev = lambda n: _evaluate(module, n)  # noqa: E731
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        items = [ev(e) for e in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else items if isinstance(node, ast.List) else set(items)
    if isinstance(node, ast.Dict):
        out: dict[Any, Any] = {}
        for k, v in zip(node.keys, node.values):
            if k is None:
                out.update(ev(v))  # {**OTHER, ...}
            else:
                out[ev(k)] = ev(v)
        return out
    if isinstance(node, ast.Name):
        return module.lookup(node.id)
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        owner = module.lookup(node.value.id)
        if isinstance(owner, tuple) and owner[0] == "class":
            try:
                return owner[1].attribute(owner[2], node.attr)
            except KeyError:
                raise _Unreadable(f"{node.value.id}.{node.attr}") from None
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -ev(node.operand)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.BitOr)):
        left, right = ev(node.left), ev(node.right)
        return (
            {**left, **right}
            if isinstance(left, dict)
            else left + right
            if isinstance(node.op, ast.Add)
            else left | right
        )
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        fn = module.lookup(node.func.id)
        if fn in (Param, dict, tuple, list, frozenset, set) or (fn is type and len(node.args) == 1):
            args = [ev(a) for a in node.args]
            kwargs = {k.arg: ev(k.value) for k in node.keywords if k.arg is not None}
            if fn is type:
                return type(args[0])
            return fn(*args, **kwargs)
    raise _Unreadable(ast.unparse(node))


def _read_builtins() -> dict[str, MethodInfo]:
    from bench.methods.discovery import builtin_modules

    out: dict[str, MethodInfo] = {}
    for dotted in builtin_modules():
        module = _module(dotted)
        for cls_name, cls in module.classes.items():
            if not cls.registered:
                continue
            values: dict[str, Any] = {}
            for attr in _DECLARED:
                try:
                    values[attr] = module.attribute(cls_name, attr)
                except KeyError:
                    values[attr] = {"roles": (), "family": "", "params": {}, "description": ""}.get(attr, False)
                except _Unreadable as e:
                    raise RuntimeError(
                        f"{dotted}.{cls_name}.{attr}: not a literal the method catalog can read "
                        f"without importing the module ({e}); write it as a literal"
                    ) from None
            name = values["name"]
            if name in out:
                raise ValueError(f"method {name!r} is already registered")
            out[name] = MethodInfo(
                name,
                values["description"],
                frozenset(values["roles"]),
                values["family"],
                dict(values["params"]),
                dotted,
                bool(values["learns_parameters"]),
                bool(values["input_dependent"]),
                origin=dotted,
            )
    return out


def _from_class(cls: Any, origin: str) -> MethodInfo:
    return MethodInfo(
        cls.name,
        cls.description,
        frozenset(cls.roles),
        cls.family,
        dict(cls.params),
        cls.__module__,
        bool(cls.learns_parameters),
        bool(cls.input_dependent),
        origin=origin,
    )


@lru_cache(maxsize=1)
def catalog() -> dict[str, MethodInfo]:
    """Every method by name: built-ins read from source, plugins (if any are installed) imported."""
    from bench.methods.discovery import plugin_entry_points

    out = _read_builtins()
    if plugin_entry_points():  # only then is torch imported
        from bench.methods.base import METHODS
        from bench.methods.discovery import origins

        for name, where in origins().items():
            if name not in out:
                out[name] = _from_class(METHODS.get(name), where)
    return dict(sorted(out.items()))


def method_info(name: str) -> MethodInfo:
    from bench.registry import did_you_mean

    known = catalog()
    if name not in known:
        raise UsageError(f"unknown method {name!r}{did_you_mean(name, list(known))} (known: {', '.join(known)})")
    return known[name]


def with_role(role: str) -> list[str]:
    """Names of the methods that declare ``role``, sorted."""
    return [name for name, info in catalog().items() if role in info.roles]
