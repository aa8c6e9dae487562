"""Fused trials on the worker's side (``resources.fuse``): claim up to K new trials at once,
train those that share a model, its data and a batch size as one batched model
(``hpo.job.fused``), and tell each trial its own outcome.

Each trial keeps its own heartbeat, params, reports, attrs and checkpoint; the scheduler's
decisions reach each through its own ``StudyTrial``. A paused member leaves the group with
its checkpoint, and its continuation resumes it alone (continuations are never fused). The
trials that differ from the first in a param that must be shared, and every trial of a model
that cannot fuse, run one at a time after the group, each with a log line that says why.
"""

from __future__ import annotations

import contextlib
import logging
from functools import partial
from typing import TYPE_CHECKING, Any

import optuna

from hpo.run.worker._objective import Objective
from hpo.run.worker._signals import Preempted, signals_held
from hpo.run.worker._trial import (
    Outcome,
    _pause,
    _requeue,
    claim_new,
    new_queue,
    outcome,
    said_told,
)
from hpo.search.schedulers import PAUSE
from hpo.spec import Spec, suggest
from hpo.store import _optuna

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from hpo.job.fused import Member

log = logging.getLogger("hpo")


def run_fused_trials(
    study: optuna.Study,
    spec: Spec,
    objective: Objective,
    attrs: dict[str, Any],
    trials: list[FrozenTrial],
) -> list[int]:
    """Up to ``spec.resources.fuse`` new trials, claimed together, start to finish: as
    ``run_trial`` runs one (the budget checked at each claim, a stale trial failed first).

    Returns:
        The numbers of the trials claimed and told, in claim order; empty if none was.

    Raises:
        Preempted: SIGTERM / SIGINT; every trial claimed and not yet told is re-queued
            (a member resumes from its checkpoint).
    """
    claimed: list[optuna.Trial] = []
    told: set[int] = set()
    try:
        with signals_held():
            queued = new_queue(study, trials)
            while len(claimed) < spec.resources.fuse:
                trial = claim_new(study, spec, attrs, queued)
                if trial is None:
                    break
                claimed.append(trial)
        if not claimed:
            return []
        with contextlib.ExitStack() as beats:
            for trial in claimed:  # Optuna's heartbeat thread for each, as in optimize
                beats.enter_context(_optuna.heartbeat(study, trial))
            outcomes = _run(spec, objective, claimed)
        with signals_held():  # a pause and its tell are one step for a signal (run_trial)
            for trial in claimed:
                value, state, error, decision = outcomes[trial.number]
                if decision is not None and decision.action == PAUSE:
                    _pause(study, trial, decision)
                told_state, message = _optuna.tell(study, trial, value, state)
                told.add(trial.number)
                said_told(trial, told_state, message, error)
    except Preempted as e:
        for trial in claimed:
            if trial.number not in told:
                _requeue(study, trial, e)
        raise
    return [t.number for t in claimed]


def _run(spec: Spec, objective: Objective, claimed: list[optuna.Trial]) -> dict[int, Outcome]:
    """Each claimed trial's outcome: the group's fused, the others' one at a time."""
    from hpo.job.fused import CannotFuse, Member, run_fused
    from hpo.search.convergence import repeat_task

    group: list[tuple[optuna.Trial, Member]] = []
    job_trials = {}
    alone: list[optuna.Trial] = []
    task = None
    for trial in claimed:
        try:
            params = suggest(trial, spec)
        except Exception:  # the sampler's error: its own run fails it with the reason
            alone.append(trial)
            continue
        job_trials[trial.number] = job_trial = objective.job_trial(trial)
        member = Member(job_trial, params, objective.context(trial))
        if not group:
            task = repeat_task(trial, spec.task)
            group.append((trial, member))
            continue
        first = group[0][1]
        differ = _differences(first.params, params)
        if repeat_task(trial, spec.task) != task:
            differ = ["seed", *differ]  # a repeat of a configuration runs with its own seed
        if differ:
            log.info(
                "trial %d runs alone: it differs from trial %d in %s, which fused trials share",
                trial.number,
                group[0][0].number,
                ", ".join(differ),
            )
            alone.append(trial)
        else:
            group.append((trial, member))
    outcomes: dict[int, Outcome] = {}
    if len(group) > 1:
        assert task is not None  # the group's first trial set it
        try:
            run_fused([m for _, m in group], task)
        except CannotFuse as e:
            log.info(
                "resources.fuse: %s; trials %s run one at a time",
                e,
                ", ".join(str(t.number) for t, _ in group),
            )
            alone = [t for t, _ in group] + alone
        else:
            for trial, member in group:
                settle = partial(objective.settle, trial, job_trials[trial.number])
                outcomes[trial.number] = outcome(partial(settle, partial(_result, member)))
    else:
        alone = [t for t, _ in group] + alone
    for trial in sorted(alone, key=lambda t: t.number):
        outcomes[trial.number] = outcome(partial(objective, trial))
    return outcomes


def _differences(first: dict[str, Any], params: dict[str, Any]) -> list[str]:
    """The params, of those fused trials share, in which ``params`` differs from ``first``."""
    from hpo.job.fused import PER_MEMBER

    names = (set(first) | set(params)) - PER_MEMBER
    return sorted(n for n in names if first.get(n) != params.get(n))


def _result(member: Member) -> float:
    """A fused member's best value, or the exception that ended it, raised."""
    if isinstance(member.outcome, BaseException):
        raise member.outcome
    assert member.outcome is not None  # run_fused gives every member its outcome
    return member.outcome
