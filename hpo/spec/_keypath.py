"""A position in the spec file (file + key path) that every error message names, e.g.
``search_spaces/x.yaml: search_space.lr.low: expected a number, got 'abc'``."""

from __future__ import annotations

from typing import Any, Mapping

from hpo.errors import SpecError
from hpo.spec._schema import _BOOL, _FLOAT, _INT, _STR, _is_int, _is_number


class _At:
    """A position in the spec file (file + key path) that error messages name."""

    def __init__(self, source: str, path: str = "") -> None:
        self.source = source
        self.path = path

    def __truediv__(self, key: Any) -> "_At":
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
                raise (self / key).error(
                    "unknown key; expected one of " + ", ".join(allowed)
                )
        return dict(value)

    def typed(self, value: Any, kind: str) -> Any:
        ok = {
            _INT: _is_int(value),
            _FLOAT: _is_number(value),
            _BOOL: isinstance(value, bool),
            _STR: isinstance(value, str) and value != "",
        }[kind]
        if not ok:
            expected = {_INT: "an integer", _FLOAT: "a number", _BOOL: "true or false",
                        _STR: "a non-empty string"}[kind]
            raise self.error(f"expected {expected}, got {_show(value)}")
        return float(value) if kind == _FLOAT else value


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
