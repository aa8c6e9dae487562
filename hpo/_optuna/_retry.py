"""Optuna's retry of a trial whose heartbeat went stale, as hpo wants it."""

from __future__ import annotations

import copy

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial

from hpo.records import FAIL_REASON_ATTR


class RetryStale(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a dead trial (values kept), without the dead trial's
    ``fail_reason``: the retry has not failed. A module-level class, so that a storage that
    holds it pickles."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        trial = copy.copy(trial)
        trial.user_attrs = {k: v for k, v in trial.user_attrs.items() if k != FAIL_REASON_ATTR}
        super().__call__(study, trial)
