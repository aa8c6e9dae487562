"""Sampling a spec's search space with Optuna's public suggest API."""

from __future__ import annotations

from typing import Any

from hpo.spec._adapter import ADAPTER_PARAMS
from hpo.spec._hyperparameters import HYPERPARAMETERS
from hpo.spec._schema import Spec


def suggest(trial, spec: Spec) -> dict[str, Any]:
    """Sample the search space with Optuna's public suggest API.

    Parameters are sampled in the spec's order, in which every ``when`` parent comes before
    its children (the parser puts it there). Parameters whose ``when`` condition does not hold
    are not sampled (and so not recorded in the trial); they keep their defaults.

    Args:
        trial: an ``optuna.Trial``.
        spec: the study spec.

    Returns:
        For a built-in or custom job, every hyperparameter of ``HYPERPARAMETERS``: sampled,
        fixed, task default or default (the ``lora_*`` ones only with ``task.adapter``), and a
        custom job's parameters of its own. For a script, the spec's parameters alone (sampled
        or fixed; one whose ``when`` does not hold is left out): the script's own defaults
        (``hpo.session.params(defaults)``) stand for the rest, not hpo's.
    """
    params: dict[str, Any] = {}
    if spec.task.kind != "script":
        params = {
            name: hp.default
            for name, hp in HYPERPARAMETERS.items()
            if spec.task.adapter or name not in ADAPTER_PARAMS
        }
        params["freeze"] = spec.task.freeze
        params["freeze_k"] = spec.task.freeze_k
    for p in spec.search_space:
        # A parent left out (not sampled, no default: a script's) holds none of the values.
        if any(k not in params or params[k] not in values for k, values in p.when):
            continue
        if p.type == "fixed":
            params[p.name] = p.value
        elif p.type == "float":
            params[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.log, step=p.step)
        elif p.type == "int":
            params[p.name] = trial.suggest_int(p.name, p.low, p.high, log=p.log, step=p.step or 1)
        else:
            params[p.name] = trial.suggest_categorical(p.name, list(p.choices))
    return params
