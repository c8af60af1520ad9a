"""Method plugins: every module in this package, and every ``tokenbench.methods`` entry point, registers its methods.

Importing ``bench.methods`` imports neither torch nor any method: the first use of the registry (``METHODS``,
``create_method``, ``list_methods``, ...) imports them all (:func:`bench.methods.discovery.load_all`). What a
suite loader or report needs without torch (names, roles, parameters) is in :mod:`bench.methods.catalog`.
"""

from __future__ import annotations

from typing import Any

_FROM_BASE = ("METHODS", "BatchSum", "Method", "TrainContext", "create_method", "list_methods", "register_method")
__all__ = [*_FROM_BASE, "Param"]


def __getattr__(name: str) -> Any:
    if name == "Param":
        from bench.methods.params import Param

        return Param
    if name in _FROM_BASE:
        from bench.methods import base, discovery

        discovery.load_all()
        return getattr(base, name)
    raise AttributeError(f"module 'bench.methods' has no attribute {name!r}")
