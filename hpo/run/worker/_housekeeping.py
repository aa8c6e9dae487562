"""Housekeeping: what a study's finished and dead trials leave behind.

Checkpoint retention (``retain_checkpoints``: the files and their artifact-store copies that
no trial can use any more), the upload of a trial's checkpoint while it is among the best, and
reaping (``reap``, ``reap_process``): failing the running trials of dead workers so that
their retries resume from the checkpoint. The worker calls these after each trial, through
``quietly``: bookkeeping that fails must not change a trial's outcome. The launcher and
``hpo reap`` call the reapers.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpo.records import (
    CHECKPOINT_ATTR,
    FAIL_REASON_ATTR,
    maximizes,
    pareto_front,
    rank_key,
    was_paused,
)
from hpo.store import _optuna
from hpo.store.artifacts import (
    CHECKPOINT_ARTIFACT_ATTR,
    KEEP_BEST_CHECKPOINTS,
    remove_checkpoints,
    upload_checkpoint,
)

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from hpo.store.url import StorageUrl

log = logging.getLogger("hpo")

WORKER_DIED, REAPED = "worker died", "reaped"
"""``fail_reason`` of a trial failed because its worker died: by its launcher, by ``hpo reap
--all``; a trial failed by the stale-trial search has none. These trials are retried."""
STALE_REASONS = (None, WORKER_DIED, REAPED)


def quietly(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Best-effort bookkeeping that must not turn a trial's outcome into a crash."""
    try:
        fn(*args, **kwargs)
    except Exception as e:
        log.warning("%s failed: %s", getattr(fn, "__name__", "call"), e)


def _among_best(study: optuna.Study, value: float, k: int = KEEP_BEST_CHECKPOINTS) -> bool:
    from optuna.trial import TrialState

    key, sign = rank_key(maximizes(study)), -1 if maximizes(study) else 1
    better = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if key(t) <= sign * value
    ]
    return len(better) < k


def upload_if_among_best(
    study: optuna.Study, trial: optuna.Trial, value: float, storage_url: str
) -> None:
    """Upload the trial's checkpoint to the artifact store if it is among the best."""
    path = trial.user_attrs.get(CHECKPOINT_ATTR)
    if path and Path(path).is_file() and _among_best(study, value):
        upload_checkpoint(trial, path, storage_url)


def reap(study: optuna.Study, *, everything: bool = False) -> list[int]:
    """Fail the trials of dead workers and re-queue them (bounded, as the storage says).

    Args:
        study: the study.
        everything: treat every RUNNING trial as dead, heartbeat or not (use only when no
            worker of the study is alive).

    Returns:
        The numbers of the trials failed.
    """
    from optuna.trial import TrialState

    def running() -> list[FrozenTrial]:
        return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))

    if everything:
        return _optuna.fail_and_retry(study, running(), REAPED)
    before = {t.number for t in running()}
    _optuna.fail_stale(study)
    return sorted(before - {t.number for t in running()})


def reap_process(study: optuna.Study, host: str, pid: int) -> list[int]:
    """Fail and re-queue the running trials of the dead worker process ``pid`` on ``host``
    at once (its launcher saw it die), without waiting out the grace period.

    Returns:
        The numbers of the trials failed.
    """
    from optuna.trial import TrialState

    mine = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if t.user_attrs.get("host") == host and t.user_attrs.get("pid") == pid
    ]
    return _optuna.fail_and_retry(study, mine, WORKER_DIED)


def retain_checkpoints(
    trials: list[FrozenTrial],
    keep_best: int = KEEP_BEST_CHECKPOINTS,
    max_retry: int | None = None,
    storage_url: str | StorageUrl | None = None,
    maximize: bool = False,
) -> None:
    """Delete checkpoints nobody needs: keep those of running and queued trials, of the best
    ``keep_best`` complete trials, of failed trials that a retry may still resume, and of
    paused trials whose continuation is not queued yet; pruned,
    worse and other failed trials lose theirs. With ``storage_url``, their uploaded copies
    (``checkpoint_artifact``) leave that URL's artifact store too: a trial uploaded while
    among the best loses its copy when it leaves them. An id a kept trial holds stays (a
    retry inherits its failed attempt's attrs, the artifact id included).

    ``trials`` is a snapshot: a trial failed as stale in it may have its retry queued only a
    moment later, so a failed trial keeps its checkpoint until its retry exists or it can no
    longer be retried; a failure the job raised (its ``fail_reason`` says why) is never
    retried.

    Args:
        trials: every trial of the study, freshly read.
        keep_best: how many of the best complete trials keep their checkpoint.
        max_retry: retries of a trial whose worker died (default: the storage's).
        storage_url: the study's storage URL, whose artifact store the workers upload to
            (None: leave the store alone).
        maximize: the objective is maximized (``study.direction``): the best are the highest.
    """
    from optuna.trial import TrialState

    from hpo.search.schedulers.continuation import configuration

    if max_retry is None:
        from hpo.store.storage import MAX_RETRY

        max_retry = MAX_RETRY
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
    kept = [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    kept += [
        t
        for t in trials
        if t.state == TrialState.FAIL
        and t.number not in retried
        and len(t.system_attrs.get("retry_history", ())) < max_retry
        and t.user_attrs.get(FAIL_REASON_ATTR) in STALE_REASONS
    ]
    # A paused trial's continuation is queued before the trial is told PRUNED (and carries
    # its checkpoint), but a study written by an hpo before that has the other order: until
    # a later attempt of its configuration exists, a paused trial's checkpoint is the pause's.
    last = {configuration(t): t.number for t in sorted(trials, key=lambda t: t.number)}
    kept += [t for t in trials if was_paused(t) and last[configuration(t)] == t.number]
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=rank_key(maximize))
    kept += complete[:keep_best]
    if any(len(t.values) > 1 for t in complete):  # several objectives: the Pareto set too
        kept += pareto_front(complete)
    keep = {t.user_attrs.get(CHECKPOINT_ATTR) for t in kept}
    for t in trials:
        path = t.user_attrs.get(CHECKPOINT_ATTR)
        if path and path not in keep and t.state.is_finished():
            if Path(path).is_file():
                Path(path).unlink(missing_ok=True)
            elif Path(path).is_dir():  # a script's checkpoint directory (hpo.session)
                shutil.rmtree(path, ignore_errors=True)
    if storage_url is not None:
        ids = {t.user_attrs.get(CHECKPOINT_ARTIFACT_ATTR) for t in trials if t.state.is_finished()}
        keep_ids = {t.user_attrs.get(CHECKPOINT_ARTIFACT_ATTR) for t in kept}
        remove_checkpoints([i for i in ids - keep_ids if i is not None], storage_url)
