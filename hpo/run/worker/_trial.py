"""One trial's lifecycle on the worker's side: claim, run the job, tell; and what the job sees.

The job gets a ``StudyTrial``: the narrow trial of ``hpo.job.trial`` (report, should_prune,
attrs) backed by the study's Optuna trial, whose ``should_prune`` asks the study's scheduler
(``hpo.search.schedulers``) and keeps its decision. Claiming, heartbeat, telling and re-queueing go
through ``hpo.store._optuna``, the one package that uses Optuna's private API.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from hpo.job.errors import JobPreempted
from hpo.records import (
    CHECKPOINT_ATTR,
    FAIL_REASON_ATTR,
    PAUSED_AT_ATTR,
    PROMOTED_ATTR,
    PRUNE_REASON_ATTR,
    is_continuation,
    reason,
)
from hpo.run.worker._budget import over_budget
from hpo.run.worker._gang import GangBroken, run_on_devices
from hpo.run.worker._housekeeping import quietly, upload_if_among_best
from hpo.run.worker._signals import Preempted, signals_held
from hpo.search.schedulers import PAUSE, STOP, Decision, Resume, Scheduler, scheduler_of
from hpo.search.schedulers.continuation import queue_continuation
from hpo.spec import Spec, suggest
from hpo.store import _optuna
from hpo.store.outage import stop_requested

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from hpo.run.tracking import Tracker
    from hpo.store.url import StorageUrl

log = logging.getLogger("hpo")


class Stopped(Exception):
    """The job stopped its trial before the end (``optuna.TrialPruned``): how the scheduler
    decided it (a pause, a stop), or a stop of the job's own (a NaN loss)."""

    def __init__(self, decision: Decision) -> None:
        super().__init__(decision.reason)
        self.decision = decision


class StudyTrial:
    """The job's trial (``hpo.job.trial.Trial``) backed by the study's Optuna trial. Its
    ``should_prune`` asks the study's scheduler and keeps a decision that stops the trial
    (``decision``); in a study of several objectives its reports are kept as the learning
    curve (Optuna refuses ``report`` there), and only an hpo scheduler may stop it. With a
    ``tracker``, each write of its attrs goes to MLflow / TensorBoard too: the one place where
    the built-in job, a gang's rank 0 and a script's relay record a report's metrics."""

    def __init__(
        self,
        trial: optuna.Trial,
        scheduler: Scheduler | None = None,
        several_objectives: bool = False,
        tracker: Tracker | None = None,
    ) -> None:
        self._trial = trial
        self._study = trial.study
        self._scheduler = scheduler or scheduler_of(trial.study)
        self.number = trial.number
        self._several = several_objectives
        self.decision: Decision | None = None
        self._tracked = tracker.start(trial) if tracker is not None else None

    def report(self, value: float, step: int) -> None:
        if self._several:
            _optuna.set_intermediate_value(self._trial, value, step)
        else:
            self._trial.report(value, step)

    def should_prune(self) -> bool:
        decision = self._scheduler.decide(self._study, _optuna.frozen(self._study, self._trial))
        if decision.stops:
            self.decision = decision
        return decision.stops

    def set_attrs(self, attrs: dict[str, Any]) -> None:
        _optuna.set_user_attrs(self._trial, attrs)  # one transaction for all of them
        if self._tracked is not None:
            self._tracked.record(attrs)  # never raises (hpo.run.tracking)


class ScheduledTrial(optuna.Trial):
    """The Optuna trial a custom job sees: Optuna's own (the same state), except that
    ``should_prune`` asks the study's scheduler through the ``StudyTrial``, which keeps its
    decision (a pause, for a job that checkpoints where it stops)."""

    _job_trial: StudyTrial

    @classmethod
    def of(cls, trial: optuna.Trial, job_trial: StudyTrial) -> ScheduledTrial:
        scheduled = cls.__new__(cls)
        scheduled.__dict__ = trial.__dict__  # one trial: what either learns, both know
        scheduled._job_trial = job_trial
        return scheduled

    def should_prune(self) -> bool:
        return self._job_trial.should_prune()


def job_function(spec: Spec) -> Callable[..., float]:
    """The function a trial runs, called with the job's trial (a ``StudyTrial``) and the
    Optuna trial: the built-in fine-tuning job, on a gang of ranks with
    ``resources.devices_per_trial`` > 1, a custom task's own (which sees the Optuna
    trial, its ``should_prune`` answered by the scheduler: ``ScheduledTrial``), or a script
    task's program in a process of its own (``_script``)."""
    if spec.task.kind == "custom":
        from hpo.spec import load_entrypoint

        assert spec.task.entrypoint is not None  # parse_spec requires it of a custom task
        custom = load_entrypoint(spec.task.entrypoint)
        return lambda job_trial, trial, task, params, context: custom(
            ScheduledTrial.of(trial, job_trial), params, context
        )
    if spec.task.kind == "script":
        from hpo.run.worker._script import run_script

        return lambda job_trial, trial, task, params, context: run_script(
            job_trial,
            trial,
            task,
            params,
            context.checkpoint_path.parent,
            spec.study.metric,
            spec.resources.devices_per_trial,
            maximize=spec.study.maximize,
        )
    devices = spec.resources.devices_per_trial
    return lambda job_trial, trial, task, params, context: run_on_devices(
        job_trial, task, params, context, devices
    )


def objective_values(spec: Spec, val_loss: float, attrs: dict[str, Any]) -> float | list[float]:
    """What the trial tells the study: its validation loss, or with several
    ``study.objectives`` the list of them, the others from the attrs the job measured."""
    if not spec.study.multi:
        return val_loss
    return [val_loss] + [float(attrs[name]) for name in spec.study.objectives[1:]]


def make_objective(
    study: optuna.Study,
    spec: Spec,
    scheduler: Scheduler,
    cache: dict[str, Any],
    checkpoint_dir: Path,
    storage_url: str | StorageUrl | None,
    tracker: Tracker | None = None,
) -> Callable[[optuna.Trial], float | list[float]]:
    """The objective of the worker's trials: params from the spec, the job, a resume from an
    earlier attempt's checkpoint, the upload of a checkpoint among the best, and a failed
    job's reason as ``fail_reason``.

    Args:
        study: the study.
        spec: its spec.
        scheduler: the study's (``hpo.search.schedulers.scheduler_of``).
        cache: lives as long as the worker process (datasets, tokenized text).
        checkpoint_dir: this study's checkpoint folder.
        storage_url: whose artifact store receives the checkpoints of trials that complete
            among the best (None: no upload).
        tracker: records the trials in MLflow / TensorBoard (``hpo.run.tracking``).

    Raises:
        Stopped: the job stopped the trial early (the scheduler's decision, or the job's).
    """

    from hpo.job import JobContext
    from hpo.search.convergence import repeat_task

    run_job = job_function(spec)
    in_process_fit = spec.task.kind not in ("custom", "script") and (
        spec.resources.devices_per_trial == 1
    )

    def objective(trial: optuna.Trial) -> float | list[float]:
        previous = trial.user_attrs.get(CHECKPOINT_ATTR)  # a re-queued or resumed trial's
        resume = Path(previous) if previous and Path(previous).is_file() else None
        context = JobContext(
            cache=cache,
            checkpoint_path=checkpoint_dir / f"trial-{trial.number}.pt",
            resume_path=resume,
            latency=spec.study.latency,
            metric=spec.study.metric,
            maximize=spec.study.maximize,
            pauses=scheduler.pauses,
            measure_first=scheduler.pauses and spec.study.multi,
            # The built-in job in this process takes a SIGTERM after its step in flight.
            hold_stops=signals_held if in_process_fit else None,
            stop_asked=stop_requested,
        )
        job_trial = StudyTrial(trial, scheduler, spec.study.multi, tracker)
        try:
            params = suggest(trial, spec)  # a sampler's error fails the trial with its reason
            # A repeat (hpo.search.convergence) runs with its own seed.
            value = run_job(job_trial, trial, repeat_task(trial, spec.task), params, context)
            if storage_url is not None and trial.user_attrs.get(CHECKPOINT_ATTR):
                quietly(upload_if_among_best, study, trial, value, storage_url)
            return objective_values(spec, value, trial.user_attrs)
        except JobPreempted as e:  # the stop its SIGTERM asked for, checkpointed
            raise Preempted(str(e)) from e
        except optuna.TrialPruned as e:
            said = job_trial.decision
            if said is None:  # the job's own stop (NaN, diverged), or a custom job's prune
                said = Decision(STOP, trial.user_attrs.get(PRUNE_REASON_ATTR, "pruned"))
            raise Stopped(said) from e
        except Exception as e:
            if FAIL_REASON_ATTR not in trial.user_attrs:
                quietly(trial.set_user_attr, FAIL_REASON_ATTR, reason(e))
            raise

    return objective


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
    from optuna.trial import TrialState

    if any(t.state == TrialState.RUNNING for t in trials):
        _optuna.fail_stale(study)
        # A stale trial it failed has a retry queued now: read the queue afresh.
        trials = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    trial: optuna.Trial | None = None
    told = False
    try:
        with signals_held():
            if resume is not None:
                trial = _optuna.ask(
                    study, {**attrs, PROMOTED_ATTR: True}, [resume.trial], create=False
                )
            else:  # continuations run through ``resume`` alone, outside the budget
                queued = [t for t in trials if not is_continuation(t)]
                trial = _optuna.ask(study, attrs, queued, spec.budget.n_trials)
            if trial is None:
                return None  # the rest of the budget was claimed a moment ago: the loop decides
            if resume is not None and resume.params is not None:
                _replace(study, trial, resume)
                told = True
                return trial.number
        if resume is None and over_budget(study, spec, trial.number):
            # Another worker claimed the last trial of the budget at the same moment.
            _optuna.requeue(study, trial)
            told = True
            return None
        value, state, error, decision = None, None, None, None
        with _optuna.heartbeat(study, trial):  # Optuna's heartbeat thread, as in optimize
            try:
                value = objective(trial)
            except Stopped as stopped:
                state, decision = TrialState.PRUNED, stopped.decision
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
            except Exception as e:
                state, error = TrialState.FAIL, e
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
    if told_state is None:
        log.warning("trial %d: result not recorded: %s", trial.number, message)
    elif told_state == TrialState.FAIL:
        log.info(
            "trial %d failed: %s",
            trial.number,
            reason(error) if error else message,
            exc_info=error if log.isEnabledFor(logging.DEBUG) else None,
        )
    return trial.number


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
