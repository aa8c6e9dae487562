"""Parsing: YAML -> validated ``Spec``; every error names the file, the key path and what was
expected."""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping

from hpo.errors import SpecError
from hpo.spec._schema import (
    _INT, _FLOAT, _BOOL, _STR, _REQUIRED_OPTIONS, _TASK_DEFAULTS, BudgetSpec, ComponentSpec,
    DIRECTIONS, FREEZE_POLICIES, HYPERPARAMETERS, PRUNER_OPTIONS, SAMPLER_OPTIONS, TASK_KINDS,
    ParamSpec, Spec, StudySection, TaskSpec, _is_int, _is_number, _non_negative_int, _one_of,
    _positive_int, max_epochs, resolve_model,
)


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


def load_spec(path: str | os.PathLike[str], *, check_files: bool = True) -> Spec:
    """Read and validate a spec file.

    Args:
        path: a YAML file; the study name defaults to its stem.
        check_files: also check what the spec names on this machine (see ``parse_spec``);
            off where that lives only on the workers (``hpo run --no-preflight``).

    Returns:
        The validated spec.

    Raises:
        SpecError: the file is missing, is not valid YAML, or does not validate.
    """
    import yaml

    p = Path(path)
    source = str(path)
    if not p.is_file():
        raise SpecError(f"{source}: no such spec file")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError(f"{source}: malformed YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"{source}: cannot read: {e}") from None
    return parse_spec(raw, source=source, default_name=p.stem, check_files=check_files)


_TOP_KEYS = ("study", "task", "search_space", "sampler", "pruner", "budget")


def parse_spec(
    raw: Any,
    *,
    source: str = "<spec>",
    default_name: str | None = None,
    check_environment: bool = True,
    check_files: bool = True,
) -> Spec:
    """Validate a spec given as plain data (as YAML loads it, or as ``Spec.to_dict`` gives it).

    Args:
        raw: the parsed YAML.
        source: what error messages call the spec (its file).
        default_name: the study name when the spec gives none.
        check_environment: also check model and dataset names against torchvision, and (with
            ``check_files``) what the spec names on this machine: a local model directory or
            ``pkg:`` package, a local checkpoint file, a custom job's entrypoint. A spec loaded
            back from a study skips this: it was checked when the study was created, and
            another machine may keep its files elsewhere. (``hpo.preflight`` checks the data.)
        check_files: with ``check_environment``, check this machine's files as said there.

    Raises:
        SpecError: naming ``source`` and the key path of the first problem.
    """
    at = _At(source)
    if raw is None:
        raise at.error("the spec is empty")
    top = at.mapping(raw, _TOP_KEYS)
    for key in ("task", "search_space"):
        if key not in top:
            raise (at / key).error("missing; every spec needs it")
    study = _parse_study(top.get("study") or {}, at / "study", default_name)
    task = _parse_task(top["task"], at / "task", check_environment,
                       check_environment and check_files)
    space = _parse_space(top["search_space"], at / "search_space")
    sampler = _parse_component(top.get("sampler") or {"name": "tpe"}, at / "sampler", "sampler")
    pruner = _parse_component(top.get("pruner") or {"name": "median"}, at / "pruner", "pruner")
    budget = _parse_budget(top.get("budget") or {}, at / "budget")
    spec = Spec(study, task, space, sampler, pruner, budget)
    _check_cross(spec, at)
    return spec


def _parse_study(raw: Any, at: _At, default_name: str | None) -> StudySection:
    d = at.mapping(raw, ("name", "direction"))
    name = d.get("name", default_name)
    if name is None:
        raise (at / "name").error("missing; name the study")
    name = (at / "name").typed(name, _STR)
    direction = d.get("direction", "minimize")
    if direction not in DIRECTIONS:
        raise (at / "direction").error(
            f"expected minimize (the objective is validation loss), got {_show(direction)}"
        )
    return StudySection(name=name, direction=direction)


_DATASET_KEYS = {
    "image_classification": ("name", "root", "image_folder", "train", "val", "test"),
    "text_classification": ("name", "hf", "config", "csv", "jsonl", "text", "label", "test",
                            "train_split", "val_split", "test_split"),
}
_DATASET_TEST = {"image_classification": ("test", "image_folder"),
                 "text_classification": ("test", "csv or jsonl")}
"""The dataset key naming a test split of its own, and the sources it goes with."""
_DATASET_SOURCES = {
    "image_classification": ("name", "image_folder"),
    "text_classification": ("name", "hf", "csv", "jsonl"),
}
BUILTIN_DATASETS = {"image_classification": ("digits",), "text_classification": ("vader",)}


def _parse_task(raw: Any, at: _At, check_environment: bool, check_files: bool) -> TaskSpec:
    d = at.mapping(raw, tuple(_TASK_DEFAULTS))
    if "kind" not in d:
        raise (at / "kind").error("missing; every task needs it")
    kind = d["kind"]
    if kind not in TASK_KINDS:
        raise (at / "kind").error(f"expected one of {', '.join(TASK_KINDS)}, got {_show(kind)}")
    if kind == "custom":
        return _parse_custom_task(d, at, check_files)
    for key in ("model", "dataset"):
        if key not in d:
            raise (at / key).error("missing; every task needs it")
    model = (at / "model").typed(d["model"], _STR)
    dataset = _parse_dataset(d["dataset"], at / "dataset", kind, check_environment)

    out: dict[str, Any] = {"kind": kind, "model": model, "dataset": dataset}
    checks: dict[str, Callable[[Any], str | None]] = {
        "val_fraction": lambda v: None if _is_number(v) and 0 < v < 1 else "a number in (0, 1)",
        "freeze": _one_of(FREEZE_POLICIES),
        "freeze_k": _non_negative_int,
        "max_length": _positive_int,
        "evals_per_epoch": _positive_int,
        "seed": _non_negative_int,
    }
    optional: dict[str, Callable[[Any], str | None]] = {
        "weights": lambda v: None if isinstance(v, str) and v else "a name or a path, or null",
        "test_fraction": lambda v: None if _is_number(v) and 0 < v < 1
        else "a number in (0, 1)",
        "image_size": _positive_int,
        "max_samples": lambda v: None if _is_int(v) and v >= 10 else "an integer >= 10",
        "augment": lambda v: None if isinstance(v, bool) else "true or false",
        "early_stopping_patience": _positive_int,
        "amp": lambda v: None if isinstance(v, bool) else "true or false",
        "channels_last": lambda v: None if isinstance(v, bool) else "true or false",
        "num_workers": _non_negative_int,
    }
    for key, check in {**checks, **optional}.items():
        if key not in d:
            continue
        value = d[key]
        if value is None and key in optional:
            out[key] = None
            continue
        expected = check(value)
        if expected:
            raise (at / key).error(f"expected {expected}, got {_show(value)}")
        out[key] = float(value) if key in ("val_fraction", "test_fraction") else value
    if "compile" in d:
        out["compile"] = (at / "compile").typed(d["compile"], _BOOL)
    task = TaskSpec(**out)
    if task.freeze == "first_k" and "freeze_k" not in d:
        raise (at / "freeze_k").error("missing; freeze: first_k needs freeze_k")
    own_test = [k for k in ("test", "test_split") if k in dataset]
    if task.test_fraction is not None and own_test:
        raise (at / "test_fraction").error(
            f"the dataset names its own test split (dataset.{own_test[0]}); give one or the "
            "other")
    if check_environment:
        _check_model(task, at, check_files)
    return task


def _parse_custom_task(d: dict[str, Any], at: _At, check_files: bool) -> TaskSpec:
    """A ``custom`` task: the user's own job function, found by its entrypoint."""
    entrypoint = (at / "entrypoint").typed(d.get("entrypoint"), _STR)
    if not re.fullmatch(r"[\w.]+:\w+", entrypoint):
        raise (at / "entrypoint").error(f"expected package.module:function, got {entrypoint!r}")
    extra = sorted(set(d) - {"kind", "entrypoint", "seed"})
    if extra:
        raise (at / extra[0]).error("not used by a custom task (only entrypoint and seed)")
    if check_files:
        try:
            load_entrypoint(entrypoint)
        except (ImportError, AttributeError) as e:
            raise (at / "entrypoint").error(f"cannot import {entrypoint}: {e}") from None
    seed = d.get("seed", 0)
    if _non_negative_int(seed):
        raise (at / "seed").error(f"expected an integer >= 0, got {_show(seed)}")
    return TaskSpec(kind="custom", entrypoint=entrypoint, seed=seed)


def load_entrypoint(entrypoint: str) -> Callable[..., float]:
    """``package.module:function`` -> the function."""
    import importlib

    module, _, name = entrypoint.partition(":")
    return getattr(importlib.import_module(module), name)


def _parse_dataset(raw: Any, at: _At, kind: str, check_environment: bool) -> dict[str, Any]:
    d = at.mapping(raw, _DATASET_KEYS[kind])
    sources = [k for k in _DATASET_SOURCES[kind] if k in d]
    if len(sources) != 1:
        raise at.error("expected exactly one of " + ", ".join(_DATASET_SOURCES[kind]))
    for key, value in d.items():
        (at / key).typed(value, _STR)
    if "name" in d:
        name = d["name"]
        builtin = BUILTIN_DATASETS[kind]
        if kind == "text_classification" and name not in builtin:
            raise (at / "name").error(
                f"unknown built-in text dataset {name!r}; expected one of {', '.join(builtin)}"
                " (or use hf, csv or jsonl)"
            )
        if kind == "image_classification" and name not in builtin and check_environment:
            import torchvision.datasets

            if name not in torchvision.datasets.__all__:
                raise (at / "name").error(
                    f"unknown dataset {name!r}; expected digits or a torchvision dataset "
                    "such as CIFAR10, CIFAR100, FashionMNIST, MNIST (or use image_folder)"
                )
            if "root" not in d:
                raise (at / "root").error(f"missing; dataset {name} needs a root directory")
    key, sources_of_test = _DATASET_TEST[kind]
    if key in d and not any(s in d for s in sources_of_test.split(" or ")):
        raise (at / key).error(f"a test {'folder' if kind == 'image_classification' else 'file'}"
                               f" goes with {sources_of_test}"
                               + ("; for hf name a test_split" if "hf" in d else ""))
    for key in ("csv", "jsonl"):
        if key in d:
            for col in ("text", "label"):
                if col not in d:
                    raise (at / col).error(f"missing; a {key} dataset names its {col} column")
    return d


def _check_model(task: TaskSpec, at: _At, check_files: bool) -> None:
    """Check the model (and weights) name against what the library offers, and with
    ``check_files`` that a local model directory and checkpoint file are there."""
    weights = task.weights
    if task.kind == "image_classification":
        import torchvision.models

        names = torchvision.models.list_models(module=torchvision.models)
        if task.model not in names:
            close = [n for n in names if n.startswith(task.model[:4])][:6]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise (at / "model").error(
                f"unknown torchvision classification model {task.model!r}{hint}"
            )
        if weights is not None and weights != "DEFAULT" and not _looks_like_path(weights):
            enum = torchvision.models.get_model_weights(task.model)
            known = [w.name for w in enum]
            if weights not in known:
                raise (at / "weights").error(
                    f"unknown weights {weights!r} for {task.model}; expected DEFAULT, "
                    f"{', '.join(known)}, null, or a local checkpoint path"
                )
    else:
        if check_files:
            try:
                where = resolve_model(task.model)
            except ModuleNotFoundError as e:
                raise (at / "model").error(f"{task.model}: {e}") from None
            if (_looks_like_path(where) or where != task.model) and not Path(
                    where).expanduser().is_dir():
                raise (at / "model").error(f"no model directory at {where}")
        if weights not in (None, "DEFAULT") and not _looks_like_path(weights):
            raise (at / "weights").error(
                f"expected null or DEFAULT (the model's own weights) or a local checkpoint "
                f"path for a text model, got {weights!r}")
    if weights is not None and _looks_like_path(weights) and check_files:
        if not Path(weights).expanduser().is_file():
            raise (at / "weights").error(f"no checkpoint file at {weights}")


def _looks_like_path(s: str) -> bool:
    return s.startswith(("/", "./", "../", "~")) or s.endswith((".pt", ".pth", ".bin",
                                                                 ".safetensors"))


_PARAM_KEYS = ("type", "low", "high", "log", "step", "choices", "when")
_PARAM_TYPES = ("float", "int", "categorical")


def _parse_space(raw: Any, at: _At) -> tuple[ParamSpec, ...]:
    d = at.mapping(raw, tuple(HYPERPARAMETERS))
    if not d:
        raise at.error("empty; search at least one hyperparameter")
    params = {name: _parse_param(name, value, at / name) for name, value in d.items()}
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
            cycle = path[path.index(name):] + [name]
            raise (at / cycle[0] / "when").error("a cycle: " + " -> ".join(cycle)
                                                 + " (each one's when: names the next)")
        path.append(name)
        for parent, _ in params[name].when:
            place(parent)
        path.pop()
        done.add(name)
        order.append(name)

    for name in params:
        place(name)
    return order


def _parse_param(name: str, raw: Any, at: _At) -> ParamSpec:
    hp = HYPERPARAMETERS[name]
    if not isinstance(raw, Mapping):
        expected = hp.check(raw)
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
            expected = hp.check(c)
            if expected:
                raise (at / "choices" / i).error(f"expected {expected}, got {_show(c)}")
        if len(set(map(repr, choices))) != len(choices):
            raise (at / "choices").error("has duplicates")
        return ParamSpec(name=name, type="categorical", choices=tuple(choices))

    if "choices" in d:
        raise (at / "choices").error(f"not allowed for a {kind} parameter; use low and high")
    for key in ("low", "high"):
        if key not in d:
            raise (at / key).error(f"missing; a {kind} parameter needs low and high")
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
        expected = hp.check(v)
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
            raise (at / key).error(f"{key} is a {parent.type} parameter; only categorical "
                                   "or fixed parameters can be conditions")
        values = values if isinstance(values, list) else [values]
        for v in values:
            if v not in parent.values():
                raise (at / key).error(f"{_show(v)} is not among {key}'s values")
        out.append((key, tuple(values)))
    return tuple(out)


def _parse_component(raw: Any, at: _At, what: str) -> ComponentSpec:
    tables = SAMPLER_OPTIONS if what == "sampler" else PRUNER_OPTIONS
    d = at.mapping(raw)
    name = d.pop("name", None)
    if name not in tables:
        raise (at / "name").error(f"unknown {what} {_show(name)}; expected one of "
                                  + ", ".join(tables))
    allowed = tables[name]
    options: dict[str, Any] = {}
    for key, value in d.items():
        if key not in allowed:
            extra = "; it takes no options" if not allowed else "; expected one of " + ", ".join(allowed)
            raise (at / key).error(f"unknown option of the {name} {what}{extra}")
        kind = allowed[key]
        if kind == "pruner":
            wrapped = _parse_component(value, at / key, "pruner")
            options[key] = {"name": wrapped.name, **wrapped.options}
        elif key == "max_resource" and value == "auto":
            options[key] = value
        else:
            options[key] = (at / key).typed(value, kind)
    for key in _REQUIRED_OPTIONS.get((what, name), ()):
        if key not in options:
            raise (at / key).error(f"missing; the {name} {what} needs it")
    if name == "qmc" and options.get("qmc_type", "sobol") not in ("sobol", "halton"):
        raise (at / "qmc_type").error(f"expected sobol or halton, got {_show(options['qmc_type'])}")
    if name == "percentile" and not 0 <= options["percentile"] <= 100:
        raise (at / "percentile").error("expected a number in [0, 100]")
    for key in ("n_startup_trials", "n_warmup_steps", "min_resource", "bootstrap_count",
                "min_early_stopping_rate", "patience"):
        if key in options and options[key] < 0:
            raise (at / key).error(f"expected an integer >= 0, got {options[key]}")
    for key in ("interval_steps", "reduction_factor", "n_min_trials"):
        if key in options and options[key] < 1:
            raise (at / key).error(f"expected an integer >= 1, got {options[key]}")
    return ComponentSpec(name=name, options=options)


def _parse_budget(raw: Any, at: _At) -> BudgetSpec:
    d = at.mapping(raw, ("n_trials", "timeout"))
    n_trials = d.get("n_trials", 20)
    if n_trials is not None:
        if not _is_int(n_trials) or n_trials < 1:
            raise (at / "n_trials").error(f"expected an integer >= 1, got {_show(n_trials)}")
    timeout = d.get("timeout")
    if timeout is not None:
        if not _is_number(timeout) or timeout <= 0:
            raise (at / "timeout").error(f"expected seconds > 0, got {_show(timeout)}")
        timeout = float(timeout)
    if n_trials is None and timeout is None:
        raise at.error("give n_trials or timeout (or both), else the study never ends")
    return BudgetSpec(n_trials=n_trials, timeout=timeout)


def _check_cross(spec: Spec, at: _At) -> None:
    if spec.sampler.name == "grid":
        for p in spec.search_space:
            if not p.searched:
                continue
            try:
                p.grid()
            except ValueError:
                raise (at / "search_space" / p.name).error(
                    "the grid sampler needs a finite parameter: categorical, int without log, "
                    "or float with a step"
                ) from None
    if spec.pruner.options.get("max_resource") not in (None, "auto"):
        mr = spec.pruner.options["max_resource"]
        if mr < max_epochs(spec):
            raise (at / "pruner" / "max_resource").error(
                f"{mr} is below the largest epochs in the search space ({max_epochs(spec)})"
            )
