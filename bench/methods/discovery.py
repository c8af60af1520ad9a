"""Find every method: the modules of this package (no list to edit) and the ``tokenbench.methods`` entry points.

A plugin package declares, in its own pyproject.toml::

    [project.entry-points."tokenbench.methods"]
    my_method = "my_package.my_module"          # a module whose classes call @register_method

Registration refuses a duplicate name wherever it comes from; :func:`origins` says where each method came from.
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points

ENTRY_POINT_GROUP = "tokenbench.methods"
#: modules of this package that hold no method (the contract, the catalog, shared layers)
INFRASTRUCTURE = frozenset({"base", "catalog", "discovery", "params"})

_loaded = False


def builtin_modules() -> list[str]:
    """Dotted names of this package's modules, sorted (private helpers, ``_x.py``, included: they may register)."""
    import bench.methods as package

    return sorted(
        f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(package.__path__) if m.name not in INFRASTRUCTURE
    )


def plugin_entry_points() -> list:
    return sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)


def load_all() -> None:
    """Import every built-in method module, then every plugin's (once per process)."""
    global _loaded
    if _loaded:
        return
    _loaded = True  # set first: a plugin importing bench.methods must not re-enter
    for module in builtin_modules():
        importlib.import_module(module)
    for ep in plugin_entry_points():
        try:
            ep.load()
        except Exception as e:  # a broken plugin, or one reusing a name: one line naming it, not a traceback
            from bench.errors import UsageError

            raise UsageError(f"method plugin entry point {ep.name!r} ({ep.value}): {type(e).__name__}: {e}") from None


def origins() -> dict[str, str]:
    """Method name -> where it was registered from ("bench.methods.x" or "plugin <dist>: <module>")."""
    from bench.methods.base import METHODS

    load_all()
    plugins = {ep.value.split(":")[0]: ep for ep in plugin_entry_points()}
    out = {}
    for name in METHODS.names():
        module = METHODS.get(name).__module__
        ep = plugins.get(module)
        dist = getattr(getattr(ep, "dist", None), "name", None) if ep else None
        out[name] = f"plugin {dist or ep.name}: {module}" if ep else module
    return out
