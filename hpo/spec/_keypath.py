"""A position in the spec file (file + key path) that every error message names, e.g.
``search_spaces/x.yaml: search_space.lr.low: expected a number, got 'abc'``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from hpo.errors import SpecError
from hpo.spec._checks import _BOOL, _FLOAT, _INT, _NUM, _STR, _bool, _is_int, _is_number


def _number(v: Any) -> str | None:
    return None if _is_number(v) else "a number"


_TYPE_CHECKS: dict[str, Callable[[Any], str | None]] = {
    _INT: lambda v: None if _is_int(v) else "an integer",
    _FLOAT: _number,
    _NUM: _number,  # the same check; ``typed`` keeps its value as written
    _BOOL: _bool,
    _STR: lambda v: None if isinstance(v, str) and v != "" else "a non-empty string",
}
"""What a value of each option type (``_checks``' ``_INT`` ...) must be."""


class _At:
    """A position in the spec file (file + key path) that error messages name."""

    def __init__(self, source: str, path: str = "") -> None:
        self.source = source
        self.path = path

    def __truediv__(self, key: Any) -> _At:
        return _At(self.source, f"{self.path}.{key}" if self.path else str(key))

    def error(self, message: str) -> SpecError:
        where = f"{self.source}: {self.path}" if self.path else self.source
        return SpecError(f"{where}: {message}")

    def mapping(self, value: Any, allowed: tuple[str, ...] | None = None) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise self.error(f"expected a mapping, got {_show(value)}")
        for key in value:
            if not isinstance(key, str):
                raise self.error(f"keys must be strings, got {_show(key)}")
            if allowed is not None and key not in allowed:
                raise (self / key).error("unknown key; expected one of " + ", ".join(allowed))
        return dict(value)

    def typed(self, value: Any, kind: str) -> Any:
        """``value`` where it is of ``kind`` (``_INT``, ``_FLOAT`` (made a float), ``_BOOL``,
        ``_STR``), else an error."""
        self.checked(value, _TYPE_CHECKS[kind])
        return float(value) if kind == _FLOAT else value

    def checked(self, value: Any, check: Callable[[Any], str | None]) -> Any:
        """``value`` where ``check`` (one of ``_checks``' checks) passes, else an error that
        says what it expected."""
        expected = check(value)
        if expected:
            raise self.error(f"expected {expected}, got {_show(value)}")
        return value

    def require(self, d: Mapping[str, Any], keys: Iterable[str], why: str) -> None:
        """An error naming the first of ``keys`` missing from ``d``: ``missing; {why}``."""
        for key in keys:
            if key not in d:
                raise (self / key).error(f"missing; {why}")


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return str(value)
