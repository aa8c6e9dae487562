"""Trials recorded where teams keep their experiments (the spec's ``tracking``): MLflow and
TensorBoard, beside the study that stays the record hpo itself reads.

The worker makes one ``Tracker`` (``tracker_for``); every trial it starts gets a
``TrialRecord`` (``Tracker.start``), which the trial's ``StudyTrial`` hands each write of its
attrs: the one place where the built-in job, a gang's rank 0 and a script's relay record a
report's metrics. The steps the ``metrics`` attr gained since are logged; after the tell,
``Tracker.finish`` logs the trial's final state and reason (and, for a custom job that records
no ``metrics``, its intermediate values). ``log_export`` adds what ``hpo export`` wrote to the
study's MLflow run.

Tracking never fails a trial: a tool that cannot be reached or refuses a write is a warning
in the worker's log (``_mlflow``), and what was missed is caught up once it answers again.
mlflow and tensorboard are imported only when a spec names them.
"""

from hpo.run.tracking._tracker import Tracker, TrialRecord, log_export, tracker_for

__all__ = ["Tracker", "TrialRecord", "log_export", "tracker_for"]
