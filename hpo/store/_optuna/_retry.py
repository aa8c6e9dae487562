"""Optuna's retry of a trial whose heartbeat went stale, as hpo wants it."""

from __future__ import annotations

import copy

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial

from hpo.records import FAIL_REASON_ATTR, PAUSED_FROM_ATTR


class RetryStale(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a dead trial (values kept), without the dead trial's
    ``fail_reason``: the retry has not failed. A trial whose pause was queued before its
    worker died gets none: its continuation runs the configuration on (``paused_from``; the
    reapers tell such a trial PRUNED, ``_reap.tell_queued_pauses``, and this guards a
    pause queued after their look).
    A module-level class, so that a storage that holds it pickles."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.queue(study, trial)

    def queue(self, study: optuna.Study, trial: FrozenTrial) -> int | None:
        """Queue the retry of ``trial`` (which may still be running: ``_reap`` queues it before
        failing the trial) as ``__call__`` does. Returns the retry's trial id, or None where
        none is queued (its pause queued, its retries used up)."""
        if any(
            t.user_attrs.get(PAUSED_FROM_ATTR) == trial.number
            for t in study.get_trials(deepcopy=False)
        ):
            return None
        system_attrs = {"failed_trial": trial.number, **copy.deepcopy(trial.system_attrs)}
        system_attrs["retry_history"] = [*system_attrs.get("retry_history", ()), trial.number]
        if self._max_retry is not None and self._max_retry < len(system_attrs["retry_history"]):
            return None
        retry = optuna.create_trial(
            state=optuna.trial.TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs={k: v for k, v in trial.user_attrs.items() if k != FAIL_REASON_ATTR},
            system_attrs=system_attrs,
            intermediate_values=(
                trial.intermediate_values if self._inherit_intermediate_values else None
            ),
        )
        return study._storage.create_new_trial(study._study_id, template_trial=retry)
