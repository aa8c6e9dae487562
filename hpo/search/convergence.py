"""Knowing when to stop: ``budget.stop_when_converged``.

Once ``budget.min_trials`` trials are complete, the best configuration so far is rerun
``budget.repeats`` times with other seeds (enqueued trials with the user attrs ``repeat_of``
and ``seed``; the seed replaces ``task.seed``, so the data split, the head's initialization
and the data order change). The spread of its values over the seeds is the noise of the
objective, recorded as the study user attr ``hpo.seed_spread`` and shown beside the best
value. From then on, after every trial, Optuna's regret bound (``RegretBoundEvaluator``: a
Gaussian process's bound on how much better than the best so far the search space can still
do) is compared with that noise: below it, further trials cannot be told apart from seed luck,
and the workers start no new trial. Why is recorded as the study user attr ``hpo.stopped``.

This is Optuna's ``Terminator`` with a ``StaticErrorEvaluator`` of the measured noise, done
here because the noise is measured during the study and the check runs on the worker's own
read of the trials.
"""

from __future__ import annotations

import logging
import os
import socket
import statistics
import warnings
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from hpo.records import REPEAT_OF_ATTR, SEED_ATTR, SEED_SPREAD_ATTR, STOPPED_ATTR, rank_key
from hpo.spec import Spec, TaskSpec

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

log = logging.getLogger("hpo")


def converged(study: optuna.Study, spec: Spec, trials: list[FrozenTrial]) -> bool:
    """Whether the study has converged (the workers start no new trial).

    Also enqueues the repeats of the best configuration once ``min_trials`` trials are
    complete (by the worker that completed the ``min_trials``-th), and records the seed
    spread when they are done.

    Args:
        study: the study.
        spec: its spec (``budget.stop_when_converged`` set; else always False, no read).
        trials: the study's trials as last read.
    """
    from optuna.trial import TrialState

    budget = spec.budget
    if not budget.stop_when_converged:
        return False
    attrs = study.user_attrs
    if attrs.get(STOPPED_ATTR):
        return True  # another worker decided
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if len(complete) < budget.first_judged:
        return False
    repeats = [t for t in trials if REPEAT_OF_ATTR in t.user_attrs]
    if not repeats:
        _enqueue_repeats(study, spec, complete)
        return False
    if any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in repeats):
        return False
    spread = attrs.get(SEED_SPREAD_ATTR) or _record_spread(study, spec, trials, repeats)
    if spread is None:
        return False  # every repeat failed or was pruned: no noise measured, no stop
    bound = regret_bound(complete, spec.study.maximize)
    if bound is None or bound >= spread["std"]:
        return False
    last = max(t.number for t in complete)
    why = (
        f"converged at trial {last}: the regret bound {bound:.4g} is below the seed "
        f"spread {spread['std']:.4g} (std over {len(spread['values'])} seeds of "
        f"#{spread['trial']})"
    )
    study.set_user_attr(STOPPED_ATTR, why)
    log.warning("study %s %s", study.study_name, why)
    return True


_last_bound: dict[tuple, float | None] = {}
"""The last bound computed, by the complete trials it read: a worker waiting at the end of the
budget asks every few seconds, and the bound (a Gaussian process fit) changes only when a
trial completes."""


def regret_bound(complete: list[FrozenTrial], maximize: bool = False) -> float | None:
    """Optuna's bound on how much the best value can still improve in the search space
    (``RegretBoundEvaluator``, fixed seed, in the study's direction: ``maximize``); None
    where it cannot be computed (e.g. the trials share no searched parameter). Computed
    once for the same complete trials."""
    from optuna.study import StudyDirection
    from optuna.terminator import RegretBoundEvaluator

    key = (maximize, *sorted((t.number, t.value, str(t.datetime_complete)) for t in complete))
    if key in _last_bound:
        return _last_bound[key]
    bound = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental (and deprecated in Optuna 6)
        try:
            direction = StudyDirection.MAXIMIZE if maximize else StudyDirection.MINIMIZE
            bound = float(RegretBoundEvaluator(seed=0).evaluate(complete, direction))
        except ValueError as e:
            log.warning("convergence not judged: %s", e)
    _last_bound.clear()
    _last_bound[key] = bound
    return bound


def repeat_task(trial: Any, task: TaskSpec) -> TaskSpec:
    """The task a trial runs: a repeat's seed replaces ``task.seed``; else ``task``."""
    seed = trial.user_attrs.get(SEED_ATTR)
    return task if seed is None else replace(task, seed=int(seed))


def _enqueue_repeats(study: optuna.Study, spec: Spec, complete: list[FrozenTrial]) -> None:
    """Enqueue the repeats of the best trial, if this process completed the ``min_trials``-th
    complete trial: one worker of however many does it. Should that worker be gone before it
    could (killed, recycled), the one that completes the third trial after it does, and so on.
    """
    in_order = sorted(complete, key=lambda t: (t.datetime_complete, t.number))
    first = spec.budget.first_judged
    judged = in_order[first + 3 * ((len(in_order) - first) // 3) - 1]
    mine = (
        judged.user_attrs.get("host") == socket.gethostname()
        and judged.user_attrs.get("pid") == os.getpid()
    )
    if not mine:
        return
    key = rank_key(spec.study.maximize)  # the best in the study's direction
    best = min(complete, key=lambda t: (key(t), t.number))
    for i in range(1, spec.budget.n_repeats + 1):
        study.enqueue_trial(
            dict(best.params),
            user_attrs={REPEAT_OF_ATTR: best.number, SEED_ATTR: spec.task.seed + i},
        )
    log.info(
        "trial %d rerun with %d other seeds to measure the noise",
        best.number,
        spec.budget.n_repeats,
    )


def _record_spread(
    study: optuna.Study, spec: Spec, trials: list[FrozenTrial], repeats: list[FrozenTrial]
) -> dict[str, Any] | None:
    """The repeated trial's values over its seeds, recorded as ``hpo.seed_spread``."""
    from optuna.trial import TrialState

    number = repeats[0].user_attrs[REPEAT_OF_ATTR]
    repeats = [t for t in repeats if t.user_attrs[REPEAT_OF_ATTR] == number]
    first = next(t for t in trials if t.number == number)
    runs = [(spec.task.seed, first)] + [(t.user_attrs[SEED_ATTR], t) for t in repeats]
    runs = [(seed, t.value) for seed, t in runs if t.state == TrialState.COMPLETE]
    if len(runs) < 2:
        return None
    values = [v for _, v in runs]
    spread = {
        "trial": number,
        "seeds": [s for s, _ in runs],
        "values": values,
        "std": statistics.stdev(values),
        "min": min(values),
        "max": max(values),
    }
    study.set_user_attr(SEED_SPREAD_ATTR, spread)
    return spread
