"""What a value of the spec must be: the domain checks of hyperparameters and keys, and the
types of sampler and pruner options (what ``_keypath``'s ``_At.typed`` checks)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

# A check returns None when the value is fine, else what was expected.


def _positive(v: Any) -> str | None:
    return None if _is_number(v) and v > 0 else "a number > 0"


def _non_negative(v: Any) -> str | None:
    return None if _is_number(v) and v >= 0 else "a number >= 0"


def _unit_interval(v: Any) -> str | None:
    return None if _is_number(v) and 0 <= v < 1 else "a number in [0, 1)"


def _positive_int(v: Any) -> str | None:
    return None if _is_int(v) and v >= 1 else "an integer >= 1"


def _non_negative_int(v: Any) -> str | None:
    return None if _is_int(v) and v >= 0 else "an integer >= 0"


def _fraction(v: Any) -> str | None:
    return None if _is_number(v) and 0 < v < 1 else "a number in (0, 1)"


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else "true or false"


def _one_of(options: tuple[str, ...]) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if v in options else "one of " + ", ".join(options)

    return check


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# Option types: what a sampler's or pruner's option must be.

_INT, _FLOAT, _BOOL, _STR = "int", "float", "bool", "str"
_NUM = "number"
"""An int or a float, kept as written (``_FLOAT`` makes it a float)."""
