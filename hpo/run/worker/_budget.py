"""The budget: whether a worker starts another trial, waits, or stops.

The budget counts every worker's trials: ``n_trials`` finished (complete or pruned) trials of
the study, and a timeout from the worker's start. A worker whose budget is all running on
other workers waits: those trials may still fail, and their retries need a worker.

It counts configurations: a continuation (a paused configuration resumed:
``hpo.search.schedulers.continuation``) takes none of it. While one runs, a worker with nothing else
to do waits too: it may pause and make another paused configuration resumable.
"""

from __future__ import annotations

import time
from enum import Enum
from typing import TYPE_CHECKING

from hpo.records import is_continuation, is_paused, state_counts
from hpo.spec import Spec
from hpo.store import _optuna

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial


class Stop(str, Enum):
    """Why a worker stops (or, ``WAIT``, looks again in a moment): a ``str`` as well."""

    BUDGET = "budget"
    TIMEOUT = "timeout"
    CONVERGED = "converged"
    WAIT = "wait"
    FAILURES = "failures"
    RECYCLE = "recycle"
    PREEMPTED = "preempted"

    def __str__(self) -> str:
        return self.value


def over_budget(study: optuna.Study, spec: Spec, number: int) -> bool:
    """True if the budget's running + finished trials are all numbered before ``number``.

    Workers that ask at the same moment all see each other's new trials; counting only the
    trials *before* one's own makes exactly the later ones yield, however many asked at once.
    """
    from optuna.trial import TrialState

    n = spec.budget.n_trials
    if n is None or number < n:
        # A trial's number counts the trials created before it, so fewer than n running or
        # finished ones can precede it: no read needed for all but the budget's last trials.
        return False
    active = study.get_trials(
        deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    )
    return sum(t.number < number and not is_continuation(t) for t in active) >= n


def should_stop(
    study: optuna.Study, spec: Spec, started: float, trials: list[FrozenTrial]
) -> Stop | None:
    """Why to start no new trial (``BUDGET``, ``TIMEOUT``, ``CONVERGED``: see
    ``hpo.search.convergence``), ``WAIT`` while the rest of the
    budget is running on other workers, or None to go on. The budget counts every worker's
    trials; ``trials`` is the study as last read (read again only when running trials decide
    it)."""
    from optuna.trial import TrialState

    timeout = spec.budget.timeout
    if timeout is not None and time.monotonic() - started >= timeout:
        return Stop.TIMEOUT
    if spec.budget.stop_when_converged:
        from hpo.search.convergence import converged

        if converged(study, spec, trials):
            return Stop.CONVERGED
    n_trials = spec.budget.n_trials
    if n_trials is None:
        return None
    counts = state_counts(t for t in trials if not is_continuation(t))
    if any(t.state == TrialState.RUNNING for t in trials) and budget_taken(counts, n_trials):
        # Some of those running trials may belong to dead workers: fail and re-queue them
        # before deciding (Optuna does this itself before each trial it starts).
        _optuna.fail_stale(study)
        trials = study.get_trials(deepcopy=False)
        counts = state_counts(t for t in trials if not is_continuation(t))
    if counts["COMPLETE"] + counts["PRUNED"] >= n_trials:
        if any(
            is_continuation(t)
            and (
                t.state == TrialState.RUNNING
                or (t.state == TrialState.WAITING and not is_paused(t))
            )
            for t in trials
        ):
            # One running may pause and make a paused configuration promotable; one queued
            # again (a retry, a re-queue) runs outside the budget: look again.
            return Stop.WAIT
        return Stop.BUDGET
    if budget_taken(counts, n_trials):
        # The rest is running elsewhere; a trial of it may still fail and need this worker.
        return Stop.WAIT
    return None


def budget_taken(counts: dict[str, int], n_trials: int) -> bool:
    """Whether the budget's trials are all finished or running (``counts``: by state name,
    ``hpo.records.state_counts``)."""
    return counts["COMPLETE"] + counts["PRUNED"] + counts["RUNNING"] >= n_trials
