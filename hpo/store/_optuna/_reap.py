"""A dead worker's trials through Optuna's private API: failed, their retries queued (which
resume from the checkpoint), or told PRUNED where their pause was queued before they died.

The retry is queued *before* its trial is failed. A worker that reads the study between the
two writes then sees the configuration running or queued, never neither: seeing neither, it
started a new configuration in the dead one's place, and the retry waited past the budget's
end (Optuna's own stale-trial search fails first, then retries). Where the trial turns out
to have finished meanwhile, or another process failed it first, the retry queued here is
withdrawn (failed, ``fail_reason`` saying so) before any worker can have wanted it.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hpo.records import FAIL_REASON_ATTR, PAUSED_FROM_ATTR
from hpo.store._optuna._trials import no_experimental_warnings

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

log = logging.getLogger("hpo")

WITHDRAWN = "retry withdrawn: its attempt had finished"
"""The ``fail_reason`` of a retry queued for a trial that another process ended first."""


def fail_and_retry(
    study: optuna.Study, trials: Sequence[FrozenTrial | optuna.Trial], reason: str | None
) -> list[int]:
    """Fail running trials whose worker is gone and queue their retries, as the stale-trial
    search does, without waiting for the grace period; the retry first (module docstring).

    A trial whose pause was queued before its worker died is told PRUNED instead
    (``tell_queued_pauses``).

    Args:
        study: the study.
        trials: the trials to fail (their current state is read again).
        reason: their ``fail_reason`` (None: none, as the stale-trial search leaves).

    Returns:
        The numbers of the trials failed or told PRUNED here (not those finished meanwhile).
    """
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    from hpo.store._optuna._retry import RetryStale

    storage = study._storage
    callback = _retry_callback(study)
    first = isinstance(callback, RetryStale)  # hpo's own: it can queue before the fail
    current = [storage.get_trial(t._trial_id) for t in trials]
    paused = tell_queued_pauses(study, current)
    failed = sorted(paused)
    for t in current:
        if t.number in paused or t.state != TrialState.RUNNING:
            continue
        retry_id = callback.queue(study, t) if first else None
        try:
            if reason is not None:
                storage.set_trial_user_attr(t._trial_id, FAIL_REASON_ATTR, reason)
            done = storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:
            done = False  # it finished, or another process failed it first
        if not done:
            _withdraw(storage, retry_id)
            continue
        failed.append(t.number)
        if callback is not None and not first:  # someone else's retry: after the fail only
            with no_experimental_warnings():
                callback(study, copy.deepcopy(storage.get_trial(t._trial_id)))
    return failed


def fail_stale(study: optuna.Study) -> None:
    """Optuna's stale-trial search (running trials past the grace period), in the order of
    ``fail_and_retry``: retries queued first; no ``fail_reason``."""
    from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled

    storage = study._storage
    if not (isinstance(storage, BaseHeartbeat) and is_heartbeat_enabled(storage)):
        return
    stale = storage._get_stale_trial_ids(study._study_id)
    if stale:
        fail_and_retry(study, [storage.get_trial(i) for i in stale], None)


def _withdraw(storage: Any, retry_id: int | None) -> None:
    """Fail a retry queued for a trial that had finished (unless a worker claimed it)."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    if retry_id is None:
        return
    try:
        storage.set_trial_user_attr(retry_id, FAIL_REASON_ATTR, WITHDRAWN)
        storage.set_trial_state_values(retry_id, TrialState.FAIL)
    except UpdateFinishedTrialError:
        pass


def _retry_callback(study: optuna.Study) -> Any:
    """The storage's retry of a dead trial (``retry_callback``), or None."""
    from optuna.storages._heartbeat import BaseHeartbeat

    storage = study._storage
    return (
        storage.get_heartbeat_stale_trial_callback() if isinstance(storage, BaseHeartbeat) else None
    )


def queue_retry(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Queue the retry of the failed ``trial`` as the stale-trial search does (its checkpoint
    path and intermediate values kept, at most the storage's retries).

    Returns:
        Whether a retry was queued.
    """
    from hpo.store._optuna._retry import RetryStale

    callback = _retry_callback(study)
    if isinstance(callback, RetryStale):
        return callback.queue(study, trial) is not None
    if callback is None:
        return False
    before = len(study.get_trials(deepcopy=False))
    with no_experimental_warnings():
        callback(study, copy.deepcopy(trial))
    return len(study.get_trials(deepcopy=False)) > before


def tell_queued_pauses(study: optuna.Study, trials: Sequence[FrozenTrial]) -> set[int]:
    """Tell PRUNED those of ``trials`` (running, their worker gone) whose pause was queued
    before their worker died: a continuation names them (``paused_from``). They end as the
    pause they were, with the value a tell of PRUNED gives (the last report's), and no retry.
    Failed, the budget would count their configuration nowhere (a failed trial takes none
    of it, a continuation neither) and start one too many.

    Returns:
        The numbers of the trials told PRUNED here.
    """
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    if not trials:
        return set()
    queued = {t.user_attrs.get(PAUSED_FROM_ATTR) for t in study.get_trials(deepcopy=False)}
    told = set()
    for t in trials:
        if t.number not in queued or t.state != TrialState.RUNNING:
            continue
        last = t.intermediate_values.get(t.last_step) if t.last_step is not None else None
        values = None  # as a tell of PRUNED: the last report, where there is one objective
        if len(study.directions) == 1 and last is not None and math.isfinite(last):
            values = [last]
        try:
            if study._storage.set_trial_state_values(t._trial_id, TrialState.PRUNED, values):
                told.add(t.number)
                log.info("trial %d: its worker died after its pause was queued", t.number)
        except UpdateFinishedTrialError:
            continue  # it finished, or another process ended it first
    return told


def retry_callback(max_retry: int) -> Any:
    """Optuna's retry of a dead trial (values kept), without the dead trial's ``fail_reason``
    (``_retry.RetryStale``)."""
    from hpo.store._optuna._retry import RetryStale

    with no_experimental_warnings():
        return RetryStale(max_retry=max_retry, inherit_intermediate_values=True)
