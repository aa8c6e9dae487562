"""The ``search_space`` section: each hyperparameter a distribution or a fixed value, and the
``when:`` conditions between them (parents ordered before their children).

A built-in job searches its own hyperparameters (``HYPERPARAMETERS``) and refuses any other
name (a typo must not become a parameter nobody reads). Your own code (``task.kind: script``
or ``custom``, ``OWN_TASK_KINDS``) may also search names of its own (a LoRA ``alpha``, a
``warmup_ratio``): the same distributions, checked alike, in any range (``_domain``)."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from hpo.spec._checks import _BOOL, _FLOAT, _INT
from hpo.spec._hyperparameters import HYPERPARAMETERS, ParamSpec
from hpo.spec._keypath import _At, _show

_PARAM_KEYS = ("type", "low", "high", "log", "step", "choices", "when")
_PARAM_TYPES = ("float", "int", "categorical")
OWN_TASK_KINDS = ("script", "custom")
"""The task kinds whose ``search_space`` may name parameters of their own."""
_OWN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _parse_space(raw: Any, at: _At, task_kind: str) -> tuple[ParamSpec, ...]:
    d = at.mapping(raw)
    for name in d:
        _check_name(name, at / name, task_kind)
    if not d:
        raise at.error("empty; search at least one hyperparameter")
    own = task_kind in OWN_TASK_KINDS
    params = {name: _parse_param(name, value, at / name, own) for name, value in d.items()}
    if not any(p.searched for p in params.values()):
        raise at.error("every entry is a fixed value; search at least one hyperparameter")
    for name, value in d.items():
        if isinstance(value, Mapping) and value.get("when") is not None:
            when = _parse_when(value["when"], at / name / "when", params)
            params[name] = replace(params[name], when=when)
    return tuple(params[name] for name in _parents_first(params, at))


def _parents_first(params: dict[str, ParamSpec], at: _At) -> list[str]:
    """The parameters' names with each ``when:`` parent before its children, so that sampling
    knows a parent's value before it asks for a child.

    The spec's own order stays where no condition says otherwise: a parent listed after its
    child moves up to just before the first parameter that needs it. So the order depends on
    the spec alone, and a spec whose parents already come first keeps its order.

    Raises:
        SpecError: the conditions form a cycle (``a`` when ``b``, ``b`` when ``a``).
    """
    order: list[str] = []
    done: set[str] = set()
    path: list[str] = []  # the parameters being placed, each a child of the one before

    def place(name: str) -> None:
        if name in done:
            return
        if name in path:
            cycle = path[path.index(name) :] + [name]
            raise (at / cycle[0] / "when").error(
                "a cycle: " + " -> ".join(cycle) + " (each one's when: names the next)"
            )
        path.append(name)
        for parent, _ in params[name].when:
            place(parent)
        path.pop()
        done.add(name)
        order.append(name)

    for name in params:
        place(name)
    return order


def _check_name(name: str, at: _At, task_kind: str) -> None:
    """A built-in job's hyperparameter, or (your own code's) a name of letters, digits and _."""
    if name in HYPERPARAMETERS:
        return
    if task_kind not in OWN_TASK_KINDS:
        close = difflib.get_close_matches(name, HYPERPARAMETERS, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise at.error(
            f"unknown key ({hint}a name of your own is for task.kind script or custom); "
            "expected one of " + ", ".join(HYPERPARAMETERS)
        )
    if not _OWN_NAME.match(name):
        raise at.error(
            "a parameter of your own is named with letters, digits and _, not starting with a "
            f"digit; got {_show(name)}"
        )


def _own_value(value: Any) -> str | None:
    """What a parameter of your own may take: a string, a number or a boolean."""
    ok = isinstance(value, (str, int, float, bool)) and value is not None
    return None if ok else "a string, number or boolean"


def _domain(name: str, own: bool) -> Callable[[Any], str | None]:
    """What a value of ``name`` must be. A built-in hyperparameter's numbers keep their domain
    in your own code too (``lr`` > 0, ``dropout`` in [0, 1)); its named choices (``optimizer``,
    ``schedule``, ...) are the built-in job's vocabulary, so your code's are its own."""
    hp = HYPERPARAMETERS.get(name)
    if hp is None or (own and not isinstance(hp.default, (int, float))):
        return _own_value
    return hp.check


def _parse_param(name: str, raw: Any, at: _At, own: bool = False) -> ParamSpec:
    check = _domain(name, own)
    if not isinstance(raw, Mapping):
        expected = check(raw)
        if expected:
            raise at.error(f"expected {expected} or a distribution, got {_show(raw)}")
        return ParamSpec(name=name, type="fixed", value=raw)
    d = at.mapping(raw, _PARAM_KEYS)
    kind = d.get("type")
    if kind not in _PARAM_TYPES:
        raise (at / "type").error(f"expected one of {', '.join(_PARAM_TYPES)}, got {_show(kind)}")
    if kind == "categorical":
        for key in ("low", "high", "log", "step"):
            if key in d:
                raise (at / key).error("not allowed for a categorical parameter; use choices")
        choices = d.get("choices")
        if not isinstance(choices, list):
            raise (at / "choices").error(f"expected a list of options, got {_show(choices)}")
        if not choices:
            raise (at / "choices").error("empty; give at least one option")
        for i, c in enumerate(choices):
            if not isinstance(c, (str, int, float, bool)) or c is None:
                raise (at / "choices" / i).error(f"expected a string or number, got {_show(c)}")
            (at / "choices" / i).checked(c, check)
        if len(set(map(repr, choices))) != len(choices):
            raise (at / "choices").error("has duplicates")
        return ParamSpec(name=name, type="categorical", choices=tuple(choices))

    if "choices" in d:
        raise (at / "choices").error(f"not allowed for a {kind} parameter; use low and high")
    at.require(d, ("low", "high"), f"a {kind} parameter needs low and high")
    value_type = _INT if kind == "int" else _FLOAT
    low = (at / "low").typed(d["low"], value_type)
    high = (at / "high").typed(d["high"], value_type)
    log = (at / "log").typed(d.get("log", False), _BOOL)
    step = d.get("step")
    if step is not None:
        step = (at / "step").typed(step, value_type)
        if step <= 0:
            raise (at / "step").error(f"expected a number > 0, got {_show(d['step'])}")
        if log:
            raise (at / "step").error("cannot be combined with log: true")
    if low > high:
        raise at.error(f"low ({_show(d['low'])}) is greater than high ({_show(d['high'])})")
    if log and low <= 0:
        raise (at / "low").error(f"must be > 0 with log: true, got {_show(d['low'])}")
    for key, v in (("low", low), ("high", high)):
        expected = check(v)
        if expected:
            raise (at / key).error(f"expected {expected} for {name}, got {_show(d[key])}")
    return ParamSpec(name=name, type=kind, low=low, high=high, log=log, step=step)


def _parse_when(raw: Any, at: _At, params: Mapping[str, ParamSpec]):
    """A ``when:`` condition, checked against every parameter of the search space (in any
    order: ``_parents_first`` orders them)."""
    d = at.mapping(raw)
    if not d:
        raise at.error("empty; name a parameter and its values")
    out = []
    for key, values in d.items():
        parent = params.get(key)
        if parent is None:
            raise (at / key).error("no such parameter in search_space")
        if parent.type not in ("categorical", "fixed"):
            raise (at / key).error(
                f"{key} is a {parent.type} parameter; only categorical "
                "or fixed parameters can be conditions"
            )
        values = values if isinstance(values, list) else [values]
        for v in values:
            if v not in parent.values():
                raise (at / key).error(f"{_show(v)} is not among {key}'s values")
        out.append((key, tuple(values)))
    return tuple(out)
