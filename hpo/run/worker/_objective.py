"""What a trial runs and what the job sees of it: the objective of the worker's trials.

The job gets a ``StudyTrial``: the narrow trial of ``hpo.job.trial`` (report, should_prune,
attrs) backed by the study's Optuna trial, whose ``should_prune`` asks the study's scheduler
(``hpo.search.schedulers``) and keeps its decision. ``Objective`` runs a trial's job and turns
what ends it into what the study is told; fused trials (``_fused``) use its parts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from hpo.job.errors import JobPreempted
from hpo.records import CHECKPOINT_ATTR, FAIL_REASON_ATTR, PRUNE_REASON_ATTR, reason
from hpo.run.worker._gang import run_on_devices
from hpo.run.worker._housekeeping import quietly, upload_if_among_best
from hpo.run.worker._signals import Preempted, signals_held
from hpo.search.schedulers import STOP, Decision, Scheduler, scheduler_of
from hpo.spec import Spec, suggest
from hpo.store import _optuna
from hpo.store.outage import stop_requested

if TYPE_CHECKING:
    from hpo.job import JobContext
    from hpo.run.tracking import Tracker
    from hpo.store.url import StorageUrl


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


class Objective:
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
    """

    def __init__(
        self,
        study: optuna.Study,
        spec: Spec,
        scheduler: Scheduler,
        cache: dict[str, Any],
        checkpoint_dir: Path,
        storage_url: str | StorageUrl | None,
        tracker: Tracker | None = None,
    ) -> None:
        self.study, self.spec, self.scheduler = study, spec, scheduler
        self.cache, self.checkpoint_dir, self.storage_url = cache, checkpoint_dir, storage_url
        self.tracker = tracker
        self.run_job = job_function(spec)
        self.in_process_fit = spec.task.kind not in ("custom", "script") and (
            spec.resources.devices_per_trial == 1
        )

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        """Run the trial's job; what it tells the study.

        Raises:
            Stopped: the job stopped the trial early (the scheduler's decision, or the job's).
        """
        from hpo.search.convergence import repeat_task

        job_trial = self.job_trial(trial)
        # suggest: a sampler's error fails the trial with its reason. A repeat
        # (hpo.search.convergence) runs with its own seed.
        return self.settle(
            trial,
            job_trial,
            lambda: self.run_job(
                job_trial,
                trial,
                repeat_task(trial, self.spec.task),
                suggest(trial, self.spec),
                self.context(trial),
            ),
        )

    def job_trial(self, trial: optuna.Trial) -> StudyTrial:
        """What the job sees of ``trial``."""
        return StudyTrial(trial, self.scheduler, self.spec.study.multi, self.tracker)

    def context(self, trial: optuna.Trial) -> JobContext:
        """The trial's ``JobContext``: its checkpoint path, the resume of an earlier attempt."""
        from hpo.job import JobContext

        spec = self.spec
        previous = trial.user_attrs.get(CHECKPOINT_ATTR)  # a re-queued or resumed trial's
        resume = Path(previous) if previous and Path(previous).is_file() else None
        return JobContext(
            cache=self.cache,
            checkpoint_path=self.checkpoint_dir / f"trial-{trial.number}.pt",
            resume_path=resume,
            latency=spec.study.latency,
            metric=spec.study.metric,
            maximize=spec.study.maximize,
            pauses=self.scheduler.pauses,
            measure_first=self.scheduler.pauses and spec.study.multi,
            # The built-in job in this process takes a SIGTERM after its step in flight.
            hold_stops=signals_held if self.in_process_fit else None,
            stop_asked=stop_requested,
        )

    def settle(
        self, trial: optuna.Trial, job_trial: StudyTrial, job: Callable[[], float]
    ) -> float | list[float]:
        """What ``job()`` (the trial's job, or a fused member's outcome) tells the study.

        Raises:
            Stopped: the job stopped the trial early.
            Preempted: the worker's SIGTERM stopped it, checkpointed.
        """
        try:
            value = job()
            if self.storage_url is not None and trial.user_attrs.get(CHECKPOINT_ATTR):
                quietly(upload_if_among_best, self.study, trial, value, self.storage_url)
            return objective_values(self.spec, value, trial.user_attrs)
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
