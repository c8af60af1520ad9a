"""A method's declared parameter (``Method.params``): plain Python, so suites are checked without torch."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from bench.errors import UsageError


@dataclass(frozen=True)
class Param:
    """A declared method parameter: default value, accepted types and a one-line doc."""

    default: Any
    doc: str
    types: tuple[type, ...] = (float, int)
    choices: tuple[Any, ...] | None = None
    nullable: bool = False
    minimum: float | None = None  # inclusive lower bound of a number
    #: inclusive upper bound: a count past it is a typo that would run for days (iterations, intervals, epochs)
    maximum: float | None = None
    #: a value given for it fixes the method's budget, so the keep ratio is unused (ToMe's ``r``): the suite then
    #: runs the method once, at keep ratio 1.0 ("no token budget"), instead of once per keep ratio
    replaces_keep_ratio: bool = False

    def check(self, method: str, name: str, value: Any) -> Any:
        if value is None and self.nullable:
            return None
        if isinstance(value, bool) and bool not in self.types:
            raise UsageError(f"method {method!r}: parameter {name!r} must be {self._type_names()}, got {value!r}")
        if not isinstance(value, self.types):
            raise UsageError(f"method {method!r}: parameter {name!r} must be {self._type_names()}, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise UsageError(
                f"method {method!r}: parameter {name!r} must be one of {list(self.choices)}, got {value!r}"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"method {method!r}: parameter {name!r} must be a finite number, got {value!r}")
        if self.minimum is not None and isinstance(value, (int, float)) and value < self.minimum:
            raise UsageError(
                f"method {method!r}: parameter {name!r} must be at least {_number(self.minimum)}, got {value!r}"
            )
        if self.maximum is not None and isinstance(value, (int, float)) and value > self.maximum:
            raise UsageError(
                f"method {method!r}: parameter {name!r} must be at most {_number(self.maximum)}, got {value!r}"
            )
        return value

    def _type_names(self) -> str:
        return " or ".join(t.__name__ for t in self.types)


def _number(x: float) -> str:
    """1000000, not 1e+06."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"
