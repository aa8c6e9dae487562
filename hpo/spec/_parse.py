"""Parsing: YAML -> validated ``Spec``; every error names the file, the key path and what was
expected. The top level and the small sections (study, sampler, pruner, budget) are here; the
task is in ``_task``, the search space in ``_space``."""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from hpo.errors import SpecError
from hpo.spec._adapter import ADAPTER_PARAMS
from hpo.spec._budget import BudgetSpec
from hpo.spec._checks import _BOOL, _is_int, _is_number, _positive_int
from hpo.spec._components import (
    _REQUIRED_OPTIONS,
    PRUNER_OPTIONS,
    SAMPLER_OPTIONS,
    SCHEDULER_CHECKS,
    ComponentSpec,
)
from hpo.spec._hyperparameters import IMAGE_PARAMS
from hpo.spec._keypath import _At, _show
from hpo.spec._schema import ResourcesSpec, Spec, max_epochs
from hpo.spec._space import OWN_TASK_KINDS, _parse_space
from hpo.spec._study import (
    METRICS,
    MULTI_OBJECTIVE_PRUNERS,
    SINGLE_OBJECTIVE_SAMPLERS,
    _parse_study,
)
from hpo.spec._task import _parse_task
from hpo.spec._task_spec import TaskSpec
from hpo.spec._tracking import _parse_tracking
from hpo.spec._warm_start import _parse_warm_start


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


_NOT_WITH_ADAPTER = ("freeze", "freeze_k", "backbone_lr_mult")
_TOP_KEYS = (
    "study",
    "task",
    "search_space",
    "sampler",
    "pruner",
    "budget",
    "resources",
    "warm_start",
    "tracking",
)


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
            another machine may keep its files elsewhere. (``hpo.run.preflight`` checks the data.)
        check_files: with ``check_environment``, check this machine's files as said there.

    Raises:
        SpecError: naming ``source`` and the key path of the first problem.
    """
    at = _At(source)
    if raw is None:
        raise at.error("the spec is empty")
    top = at.mapping(raw, _TOP_KEYS)
    at.require(top, ("task", "search_space"), "every spec needs it")
    study = _parse_study(top.get("study") or {}, at / "study", default_name)
    task = _parse_task(
        top["task"], at / "task", check_environment, check_environment and check_files
    )
    space = _parse_space(top["search_space"], at / "search_space", task.kind)
    sampler = _parse_component(top.get("sampler") or {"name": "tpe"}, at / "sampler", "sampler")
    named = top.get("pruner")
    pruner = _parse_component(named, at / "pruner", "pruner") if named else ComponentSpec("none")
    raw_budget = top.get("budget") or {}
    grid = sampler.name == "grid"
    budget = _parse_budget(raw_budget, at / "budget", grid)
    resources = _parse_resources(top.get("resources") or {}, at / "resources", task)
    warm = top.get("warm_start")
    warm = (
        None
        if warm is None
        else _parse_warm_start(warm, at / "warm_start", study.name, task, sampler.name)
    )
    tracking = top.get("tracking")
    tracking = None if tracking is None else _parse_tracking(tracking, at / "tracking")
    spec = Spec(study, task, space, sampler, pruner, budget, resources, warm, tracking)
    if grid:
        spec = _with_grid_budget(
            spec, isinstance(raw_budget, dict) and "n_trials" in raw_budget, at / "budget"
        )
    if not named:  # the scheduler measured best for this budget, written into the spec
        spec = with_default_pruner(spec, evals_given="evals_per_epoch" in top["task"])
    _check_cross(spec, at)
    check_objectives(spec, at)
    return spec


def _parse_component(raw: Any, at: _At, what: str) -> ComponentSpec:
    tables = SAMPLER_OPTIONS if what == "sampler" else PRUNER_OPTIONS
    d = at.mapping(raw)
    name = d.pop("name", None)
    if not isinstance(name, str) or name not in tables:  # a list or mapping is not hashable
        raise (at / "name").error(
            f"unknown {what} {_show(name)}; expected one of " + ", ".join(tables)
        )
    allowed = tables[name]
    options: dict[str, Any] = {}
    for key, value in d.items():
        if key not in allowed:
            extra = (
                "; it takes no options"
                if not allowed
                else "; expected one of " + ", ".join(allowed)
            )
            raise (at / key).error(f"unknown option of the {name} {what}{extra}")
        kind = allowed[key]
        if kind == "pruner":
            wrapped = _parse_component(value, at / key, "pruner")
            if wrapped.name in SCHEDULER_CHECKS:
                raise (at / key / "name").error(
                    f"the {wrapped.name} scheduler pauses trials and cannot be wrapped"
                )
            options[key] = {"name": wrapped.name, **wrapped.options}
        elif key == "max_resource" and value == "auto":
            options[key] = value
        else:
            options[key] = (at / key).typed(value, kind)
    at.require(options, _REQUIRED_OPTIONS.get((what, name), ()), f"the {name} {what} needs it")
    if name == "qmc" and options.get("qmc_type", "sobol") not in ("sobol", "halton"):
        raise (at / "qmc_type").error(f"expected sobol or halton, got {_show(options['qmc_type'])}")
    if name == "percentile" and not 0 <= options["percentile"] <= 100:
        raise (at / "percentile").error("expected a number in [0, 100]")
    for key in (
        "n_startup_trials",
        "n_warmup_steps",
        "min_resource",
        "bootstrap_count",
        "min_early_stopping_rate",
        "patience",
    ):
        if key in options and options[key] < 0:
            raise (at / key).error(f"expected an integer >= 0, got {options[key]}")
    for key in ("interval_steps", "reduction_factor", "n_min_trials"):
        if key in options and options[key] < 1:
            raise (at / key).error(f"expected an integer >= 1, got {options[key]}")
    return ComponentSpec(name=name, options=options)


def _with_grid_budget(spec: Spec, given: bool, at: _At) -> Spec:
    """A grid study runs each point of its grid once: ``n_trials`` left out (or null) is the
    grid's size, and one above it is refused (the grid sampler would run points again)."""
    try:
        size = math.prod(len(p.grid()) for p in spec.search_space if p.searched)
    except ValueError:
        return spec  # a parameter that is not finite: _check_cross names it
    n = spec.budget.n_trials
    if not given or n is None:
        return replace(spec, budget=replace(spec.budget, n_trials=size))
    if n > size:
        raise (at / "n_trials").error(
            f"{n} is more than the grid's {size} points, each of which runs once; "
            "leave n_trials out to run them all"
        )
    return spec


def _parse_budget(raw: Any, at: _At, grid: bool = False) -> BudgetSpec:
    d = at.mapping(raw, ("n_trials", "timeout", "stop_when_converged", "min_trials", "repeats"))
    n_trials = d.get("n_trials", 20)
    if n_trials is not None:
        (at / "n_trials").checked(n_trials, _positive_int)
    timeout = d.get("timeout")
    if timeout is not None:
        if not _is_number(timeout) or timeout <= 0:
            raise (at / "timeout").error(f"expected seconds > 0, got {_show(timeout)}")
        timeout = float(timeout)
    if n_trials is None and timeout is None and not grid:  # a grid ends with its points
        raise at.error("give n_trials or timeout (or both), else the study never ends")
    converge = (at / "stop_when_converged").typed(d.get("stop_when_converged", False), _BOOL)
    for key in ("min_trials", "repeats"):
        if key in d and not converge:
            raise (at / key).error("only with stop_when_converged: true")
    budget = BudgetSpec(
        n_trials=n_trials,
        timeout=timeout,
        stop_when_converged=converge,
        min_trials=d.get("min_trials"),
        repeats=d.get("repeats"),
    )
    if budget.min_trials is not None and (not _is_int(budget.min_trials) or budget.min_trials < 2):
        raise (at / "min_trials").error(
            f"expected an integer >= 2 (complete trials before "
            f"convergence is judged), got {_show(budget.min_trials)}"
        )
    if budget.repeats is not None:
        (at / "repeats").checked(budget.repeats, _positive_int)
    if converge and n_trials is not None and budget.first_judged >= n_trials:
        given = "" if budget.min_trials is not None else " (the default)"
        raise (at / "min_trials").error(
            f"{budget.first_judged}{given} is not below n_trials ({n_trials}): the study "
            "could not stop early; set a smaller min_trials"
        )
    if converge and n_trials is not None and budget.first_judged + budget.n_repeats >= n_trials:
        raise (at / "repeats").error(
            f"min_trials ({budget.first_judged}) + repeats ({budget.n_repeats}) is not below "
            f"n_trials ({n_trials}): the repeats run inside the budget, and a trial after them "
            "is needed to stop early"
        )
    return budget


def _parse_resources(raw: Any, at: _At, task: TaskSpec) -> ResourcesSpec:
    d = at.mapping(raw, ("devices_per_trial", "fuse"))
    devices = (at / "devices_per_trial").checked(d.get("devices_per_trial", 1), _positive_int)
    if devices > 1 and task.kind == "custom":
        raise (at / "devices_per_trial").error(
            f"a custom job runs in its worker's process; expected 1, got {devices}"
        )
    fuse = (at / "fuse").checked(d.get("fuse", 1), _positive_int)
    if fuse > 1 and task.kind in OWN_TASK_KINDS:
        raise (at / "fuse").error(f"fused trials are of the built-in job, not a {task.kind} task")
    if fuse > 1 and devices > 1:
        raise (at / "fuse").error("fused trials train on one device; devices_per_trial is 1")
    return ResourcesSpec(devices_per_trial=devices, fuse=fuse)


def _check_cross(spec: Spec, at: _At) -> None:
    # What the built-in job does with its hyperparameters; your own code reads its own.
    builtin = spec.task.kind not in OWN_TASK_KINDS
    for p in spec.search_space if builtin else ():
        if p.name in ADAPTER_PARAMS and spec.task.adapter is None:
            raise (at / "search_space" / p.name).error(
                "a LoRA hyperparameter needs an adapter: task.adapter: {kind: lora}"
            )
        if p.name in IMAGE_PARAMS and spec.task.kind != "image_classification":
            raise (at / "search_space" / p.name).error(
                f"augmentation is of images; task.kind is {spec.task.kind}"
            )
        if p.name in _NOT_WITH_ADAPTER and spec.task.adapter is not None:
            raise (at / "search_space" / p.name).error(
                "not used with task.adapter: the pretrained model is frozen, and the adapter "
                "and the head train at lr"
            )
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
    if spec.pruner.name in SCHEDULER_CHECKS:
        SCHEDULER_CHECKS[spec.pruner.name](spec, at)
    if spec.pruner.options.get("max_resource") not in (None, "auto"):
        mr = spec.pruner.options["max_resource"]
        if mr < max_epochs(spec):
            raise (at / "pruner" / "max_resource").error(
                f"{mr} is below the largest epochs in the search space ({max_epochs(spec)})"
            )


def check_objectives(spec: Spec, at: _At) -> None:
    """The sampler, pruner and task must be able to serve several objectives; the metric
    must be one the task records (a built-in job's ``METRICS``; any a script reports)."""
    study = spec.study
    if spec.task.kind == "custom" and study.metric != "val_loss":
        raise (at / "study" / "metric").error(
            f"a custom job returns val_loss; another metric ({study.metric}) is for a "
            "built-in task.kind or a script task (task.kind: script), which reports it"
        )
    if spec.task.kind not in ("script", "custom") and study.metric not in METRICS:
        raise (at / "study" / "metric").error(
            f"the {spec.task.kind} job records {', '.join(METRICS)}; got {_show(study.metric)} "
            "(a script task, task.kind: script, may report any metric)"
        )
    if study.multi and spec.task.kind == "script":
        raise (at / "study" / "objectives").error(
            "a script reports one objective (study.metric); several objectives need a "
            "built-in task.kind (image_classification or text_classification)"
        )
    if not study.multi:
        return
    if spec.pruner.name not in MULTI_OBJECTIVE_PRUNERS:
        raise (at / "pruner" / "name").error(
            f"expected {' or '.join(MULTI_OBJECTIVE_PRUNERS)} with several study.objectives, "
            f"got {_show(spec.pruner.name)}: Optuna's pruners and pbt rank one objective"
        )
    if spec.sampler.name in SINGLE_OBJECTIVE_SAMPLERS:
        raise (at / "sampler" / "name").error(
            f"the {spec.sampler.name} sampler handles one objective only; with several "
            "study.objectives use tpe, nsga2, gp, random, qmc or grid"
        )
    if spec.task.kind == "custom":
        raise (at / "study" / "objectives").error(
            "a custom job returns val_loss alone; "
            f"{', '.join(study.objectives[1:])} need a built-in task.kind "
            "(image_classification or text_classification)"
        )


def with_default_pruner(spec: Spec, evals_given: bool) -> Spec:
    """The ``spec`` (a ``Spec``, parsed without a ``pruner``) with the scheduler that the
    benchmarks measured best for it, written into it (and so into the stored spec: the
    study stays reproducible if the default changes):

    - several objectives: ``none`` (Optuna's pruners refuse them);
    - a custom job or a script: ``median`` (it may not checkpoint where it stops, which a
      pause needs);
    - fewer than 4 trials: ``none`` (a rung compares at least 3);
    - else ``promotion`` (reduction factor 3), its first rung early: with at most 4 epochs,
      4 evaluations an epoch and the first rung at a quarter epoch; with 5-9, 2 and half an
      epoch; with more, at the first epoch. A spec that sets ``task.evals_per_epoch`` keeps
      it, its first rung at its first evaluation (up to 4 epochs) or first epoch.

    The head-to-head benchmark (``benchmarks/RESULTS.md``) measured promotion with the first
    rung at a quarter epoch, 4 evaluations an epoch, against HF's and Ray Tune's searches.
    """
    n = spec.budget.n_trials
    if spec.study.multi or (n is not None and n < 4):
        return replace(spec, pruner=ComponentSpec("none"))
    if spec.task.kind in ("custom", "script"):
        return replace(spec, pruner=ComponentSpec("median"))
    epochs = max_epochs(spec)
    evals = (
        spec.task.evals_per_epoch if evals_given else 4 if epochs <= 4 else 2 if epochs < 10 else 1
    )
    early = epochs <= 4 or (not evals_given and epochs < 10)
    first: float = 1 / evals if early and evals > 1 else 1
    options = {"min_resource": first, "reduction_factor": 3}
    return replace(
        spec,
        task=replace(spec.task, evals_per_epoch=evals),
        pruner=ComponentSpec("promotion", options),
    )
