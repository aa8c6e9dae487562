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
    reapers tell such a trial PRUNED, ``_trials.tell_queued_pauses``, and this guards a
    pause queued after their look).
    A module-level class, so that a storage that holds it pickles."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if any(
            t.user_attrs.get(PAUSED_FROM_ATTR) == trial.number
            for t in study.get_trials(deepcopy=False)
        ):
            return
        trial = copy.copy(trial)
        trial.user_attrs = {k: v for k, v in trial.user_attrs.items() if k != FAIL_REASON_ATTR}
        super().__call__(study, trial)
