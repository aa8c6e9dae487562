"""The worker's tracker: which steps of a trial's metrics each tool has, and what it gets at
the trial's start, at each report and at its end. The tools themselves (``_sink.Sink``) are
``_mlflow`` and ``_tensorboard``."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpo.records import (
    FAIL_REASON_ATTR,
    FIRST_GUESS_ATTR,
    METRICS_ATTR,
    PRUNE_REASON_ATTR,
    REPEAT_OF_ATTR,
    RESUMED_FROM_ATTR,
)
from hpo.run.tracking._sink import Sink, TrialEnd

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from hpo.spec import Spec

log = logging.getLogger("hpo")

TAGGED_ATTRS = (RESUMED_FROM_ATTR, REPEAT_OF_ATTR, FIRST_GUESS_ATTR)
"""Trial attrs, known at its start, that its run carries as tags (``hpo.resumed_from``, ...)."""


class TrialRecord:
    """One trial's records while this worker runs it: ``record`` gets every write of its
    attrs (``hpo.run.worker._objective.StudyTrial.set_attrs``)."""

    def __init__(self, tracker: Tracker, trial: optuna.Trial) -> None:
        self.tracker = tracker
        self.trial = trial
        self.number = trial.number
        attrs = trial.user_attrs
        # Steps it has from before this attempt (a re-queued trial's, a paused configuration's
        # curve carried on by its continuation): logged already, in that attempt's run.
        self.before = set(attrs.get(METRICS_ATTR) or ())
        self.tags = {f"hpo.{k}": str(attrs[k]) for k in TAGGED_ATTRS if k in attrs}
        self.handles: dict[int, Any] = {}
        self.logged: dict[int, set[str]] = {}

    def record(self, attrs: Mapping[str, Any]) -> None:
        """A write of the trial's attrs: the steps its ``metrics`` gained, to every tool."""
        history = attrs.get(METRICS_ATTR)
        if history:
            self.tracker.write(self, history, lambda: self.trial.params)


class Tracker:
    """A worker's records of its trials in the tools ``spec.tracking`` names."""

    def __init__(self, spec: Spec, sinks: list[Sink], attrs: Mapping[str, Any]) -> None:
        self.sinks = sinks
        self.metric = spec.study.metric
        self.objectives = list(spec.study.objectives) if spec.study.multi else [self.metric]
        self.tags = {f"hpo.{k}": str(v) for k, v in attrs.items() if k in ("host", "worker")}
        self.open: dict[int, TrialRecord] = {}

    def start(self, trial: optuna.Trial) -> TrialRecord:
        """The trial's record, as the worker starts it (its runs open at its first report)."""
        record = TrialRecord(self, trial)
        self.open[trial.number] = record
        return record

    def write(
        self,
        record: TrialRecord,
        history: Mapping[str, Mapping[str, Any]],
        params: Callable[[], dict[str, Any]],
    ) -> None:
        """Every tool gets the steps of ``history`` it lacks (all of them, for a tool that
        answers again after an outage), its run opened first where it has none yet."""
        for i, sink in enumerate(self.sinks):
            handle = record.handles.get(i)
            if handle is None:
                handle = sink.open(record.number, params(), {**self.tags, **record.tags})
                if handle is None:
                    continue
                record.handles[i] = handle
            logged = record.logged.setdefault(i, set())
            new = sorted(
                (int(step), numbers(m))
                for step, m in history.items()
                if step not in record.before and step not in logged
            )
            if new and sink.log(handle, new):
                logged.update(str(step) for step, _ in new)

    def finish(self, trial: FrozenTrial) -> None:
        """After the trial's tell: what its runs still lack, and how it ended."""
        record = self.open.pop(trial.number, None)
        if record is None:  # not run here (a continuation replaced before it ran)
            return
        history = trial.user_attrs.get(METRICS_ATTR) or {
            str(step): {self.metric: value} for step, value in trial.intermediate_values.items()
        }
        self.write(record, history, lambda: dict(trial.params))
        values = trial.values if trial.state.name == "COMPLETE" and trial.values else []
        reason = trial.user_attrs.get(
            FAIL_REASON_ATTR if trial.state.name == "FAIL" else PRUNE_REASON_ATTR
        )
        end = TrialEnd(
            state=trial.state.name,
            reason=None if reason is None or trial.state.name == "COMPLETE" else str(reason),
            values={f"best_{n}": float(v) for n, v in zip(self.objectives, values)},
        )
        for i, handle in record.handles.items():
            self.sinks[i].end(handle, end)

    def interrupt(self, why: str) -> None:
        """The worker was preempted: its trial goes back to the queue, its runs end killed
        (the next attempt goes on in the same MLflow run)."""
        for record in self.open.values():
            for i, handle in record.handles.items():
                self.sinks[i].end(handle, TrialEnd("WAITING", why))
        self.open.clear()

    def close(self, study_over: bool) -> None:
        """The worker stops."""
        for sink in self.sinks:
            sink.close(study_over)


_NOT_IN_NAMES = re.compile(r"[^\w\-. /]")


def numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    """A report's numbers (per-class lists and nulls left out), by names MLflow accepts."""
    return {
        _NOT_IN_NAMES.sub("_", name): float(v)
        for name, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def tracker_for(spec: Spec, study_name: str, attrs: Mapping[str, Any]) -> Tracker | None:
    """The worker's tracker for ``spec.tracking`` (None without one).

    Args:
        spec: the study's spec.
        study_name: the study.
        attrs: the worker's attrs (``host``, ``worker``): tags of every run.
    """
    if spec.tracking is None:
        return None
    sinks: list[Sink] = []
    if spec.tracking.mlflow:
        from hpo.run.tracking._mlflow import MlflowSink

        sinks.append(MlflowSink(spec, study_name))
    if spec.tracking.tensorboard:
        from hpo.run.tracking._tensorboard import TensorBoardSink

        sinks.append(TensorBoardSink(spec.tracking.tensorboard, study_name))
    return Tracker(spec, sinks, attrs)


def log_export(
    spec: Spec, study_name: str, out: Path, trial_number: int
) -> tuple[bool, str] | None:
    """``hpo export``'s folder ``out`` as artifacts of the study's MLflow run (``export/``),
    the run tagged with the exported trial, and that trial's run tagged ``hpo.exported``.

    Returns:
        Whether it went, and a line for the user that says where (or why not); None when
        the spec tracks nothing in MLflow.
    """
    if spec.tracking is None or not spec.tracking.mlflow:
        return None
    from hpo.run.tracking._mlflow import MlflowSink

    return MlflowSink(spec, study_name).log_export(out, trial_number)
