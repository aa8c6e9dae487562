"""One trial's lifecycle on the worker's side: claim, run the job (``_objective``), tell.

Claiming, heartbeat, telling and re-queueing go through ``hpo.store._optuna``, the one
package that uses Optuna's private API.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import optuna

from hpo.records import (
    PAUSED_AT_ATTR,
    PROMOTED_ATTR,
    PRUNE_REASON_ATTR,
    is_continuation,
    reason,
)
from hpo.run.worker._budget import over_budget
from hpo.run.worker._gang import GangBroken
from hpo.run.worker._housekeeping import quietly
from hpo.run.worker._objective import Stopped
from hpo.run.worker._signals import Preempted, signals_held
from hpo.search.schedulers import PAUSE, Decision, Resume
from hpo.search.schedulers.continuation import queue_continuation
from hpo.spec import Spec
from hpo.store import _optuna

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial


log = logging.getLogger("hpo")


def new_queue(study: optuna.Study, trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The queued trials a new claim may take (``trials``: the study as last read): stale
    trials are failed first where some trial was running (their retries join the queue, read
    afresh); continuations run through ``Scheduler.next_work`` alone, outside the budget."""
    from optuna.trial import TrialState

    if any(t.state == TrialState.RUNNING for t in trials):
        _optuna.fail_stale(study)
        trials = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    return [t for t in trials if not is_continuation(t)]


def claim_new(
    study: optuna.Study, spec: Spec, attrs: dict[str, Any], queued: list[FrozenTrial]
) -> optuna.Trial | None:
    """Claim a trial of ``queued``, else a new one, within the budget; None if the budget's
    trials are all running or finished (one claimed at the same moment by another worker as
    the budget's last goes back to the queue)."""
    trial = _optuna.ask(study, attrs, queued, spec.budget.n_trials)
    if trial is not None and over_budget(study, spec, trial.number):
        _optuna.requeue(study, trial)
        return None
    return trial


def run_trial(
    study: optuna.Study,
    spec: Spec,
    objective: Callable[[optuna.Trial], float | list[float]],
    attrs: dict[str, Any],
    trials: list[FrozenTrial],
    resume: Resume | None = None,
) -> int | None:
    """One trial, start to finish: what Optuna's ``study.optimize(n_trials=1)`` does, in
    fewer database round trips (what a trial's coordination costs, benchmarks/overhead.py):

    - the trial is claimed with the worker's user attrs and a heartbeat in one transaction,
      which refuses it if the budget's trials are all running or finished;
    - stale trials are looked for only if some trial was running at the worker's last read,
      ``trials`` (a trial is stale only after running for the grace period, so it was running
      then);
    - if none was, the queue is not read again: ``trials``, read right after the worker's
      last trial, says which trials are queued.

    SIGTERM / SIGINT wait while the trial is claimed and told; one that arrives while it runs
    re-queues it (``Preempted`` is raised on). A failing job fails the trial (the progress
    line says why), not the worker; a stopped one is PRUNED, and where the scheduler paused
    it its configuration is queued as a continuation first; a trial past the budget goes
    back to the queue unrun.

    With ``resume`` (``Scheduler.next_work``), that continuation alone is claimed, outside
    the budget (it resumes a configuration the budget has counted); if another worker took it
    first, nothing runs. A ``resume`` with params is replaced, not run
    (``hpo.search.schedulers.continuation``).

    Returns:
        The number of the trial claimed (and finished), or None if none was.
    """

    trial: optuna.Trial | None = None
    told = False
    try:
        with signals_held():
            if resume is not None:
                trial = _optuna.ask(
                    study, {**attrs, PROMOTED_ATTR: True}, [resume.trial], create=False
                )
            else:
                trial = claim_new(study, spec, attrs, new_queue(study, trials))
            if trial is None:
                return None  # the rest of the budget was claimed a moment ago: the loop decides
            if resume is not None and resume.params is not None:
                _replace(study, trial, resume)
                told = True
                return trial.number
        with _optuna.heartbeat(study, trial):  # Optuna's heartbeat thread, as in optimize
            try:
                value, state, error, decision = outcome(lambda: objective(trial))
            except GangBroken as e:  # a rank died: as if the worker had (retry from checkpoint)
                with signals_held():
                    _optuna.fail_and_retry(study, [trial], reason(e))
                    told = True
                log.warning(
                    "trial %d: %s; failed and re-queued to resume from its checkpoint",
                    trial.number,
                    e,
                )
                return trial.number
        # A pause and its tell are one step for a signal: one that landed between them
        # re-queued a trial whose continuation was queued (the configuration ran twice).
        with signals_held():
            if decision is not None and decision.action == PAUSE:
                _pause(study, trial, decision)
            told_state, message = _optuna.tell(study, trial, value, state)
            told = True
    except Preempted as e:
        if trial is not None and not told:
            _requeue(study, trial, e)
        raise
    said_told(trial, told_state, message, error)
    return trial.number


Outcome = tuple[Any, Any, Exception | None, Decision | None]
"""What ended a trial's job: its value, the state to tell (None: complete), the error that
failed it, the scheduler's decision that stopped it."""


def outcome(job: Callable[[], float | list[float]]) -> Outcome:
    """Run ``job`` (an ``Objective``'s call, or its ``settle`` of a fused member) and catch
    what ended it; a ``GangBroken`` and a ``Preempted`` go through."""
    from optuna.trial import TrialState

    try:
        return job(), None, None, None
    except Stopped as stopped:
        return None, TrialState.PRUNED, None, stopped.decision
    except (GangBroken, Preempted):
        raise
    except Exception as e:
        return None, TrialState.FAIL, e, None


def said_told(trial: optuna.Trial, told_state: Any, message: str, error: Exception | None) -> None:
    """The log line of a tell that was not recorded, or of a failed trial."""
    from optuna.trial import TrialState

    if told_state is None:
        log.warning("trial %d: result not recorded: %s", trial.number, message)
    elif told_state == TrialState.FAIL:
        log.info(
            "trial %d failed: %s",
            trial.number,
            reason(error) if error else message,
            exc_info=error if log.isEnabledFor(logging.DEBUG) else None,
        )


def _pause(study: optuna.Study, trial: optuna.Trial, decision: Decision) -> None:
    """Queue the paused ``trial``'s continuation, before its tell (signals held around both):
    a worker that dies between
    the two leaves the pause queued and its trial running, which its reaper tells PRUNED, as
    the pause it was, with no retry (``paused_from``, ``hpo.store._optuna.tell_queued_pauses``).
    The other order lost the pause."""
    from optuna.trial import TrialState

    def queue() -> None:
        _optuna.set_user_attrs(trial, {PRUNE_REASON_ATTR: decision.reason})
        paused = _optuna.frozen(study, trial)
        if paused.state == TrialState.RUNNING:  # not failed as stale meanwhile
            assert decision.step is not None  # a pause is decided at a report
            queue_continuation(study, paused, decision.step)
            log.info("trial %d paused at step %d", trial.number, decision.step)

    quietly(queue)


def _replace(study: optuna.Study, trial: optuna.Trial, resume: Resume) -> None:
    """The claimed continuation ``trial`` goes on as a new continuation with ``resume``'s
    params, attrs and curve (queued first, as a pause is), and is told PRUNED."""
    from optuna.trial import TrialState

    claimed = _optuna.frozen(study, trial)
    step = int(claimed.user_attrs.get(PAUSED_AT_ATTR, claimed.last_step or 0))
    queue_continuation(
        study,
        claimed,
        step,
        params=resume.params,
        distributions=resume.distributions,
        attrs=resume.attrs,
        intermediate_values=resume.intermediate_values,
    )
    _optuna.set_user_attrs(trial, {PRUNE_REASON_ATTR: resume.reason})
    _optuna.tell(study, trial, None, TrialState.PRUNED)
    log.info("trial %d: %s; its continuation runs with other params", trial.number, resume.reason)


def _requeue(study: optuna.Study, trial: optuna.Trial, why: Preempted) -> None:
    from hpo.store.outage import first_line

    try:
        _optuna.requeue(study, trial)
    except Exception as error:  # the storage is gone: stop all the same, not wait
        log.warning(
            "%s: trial %d not re-queued (%s); it is retried from its checkpoint once its "
            "heartbeat goes stale",
            why,
            trial.number,
            first_line(error),
        )
    else:
        log.warning("%s: trial %d re-queued", why, trial.number)
