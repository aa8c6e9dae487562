"""What the worker lends a job besides the trial and the task (no torch: custom jobs and the
worker import it without loading torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class JobContext:
    """What the worker lends a job besides the trial and the task."""

    cache: dict = field(default_factory=dict)
    """Lives as long as the worker process: loaded datasets and tokenized text, keyed by the
    dataset spec, so later trials in the process reuse them."""
    checkpoint_path: Path | None = None
    """Save this trial's checkpoint here after every epoch; ``None``: no checkpoint."""
    resume_path: Path | None = None
    """A checkpoint of an earlier attempt of this trial: resume at its next epoch."""
    pauses: bool = False
    """A pruned trial may be resumed later (a scheduler that pauses: ``promotion``, ``pbt``):
    the loop checkpoints the evaluation it stops at."""
    measure_first: bool = False
    """Measure the objectives besides the validation loss (``hpo.job.objectives``) before
    training, not after: a scheduler ranks trials on all of them at each report (the
    ``promotion`` scheduler with several objectives). They do not change as the model
    trains."""
    final: bool = False
    """``hpo retrain``: fit on the train and val examples together (no validation, no
    pruning) and evaluate once on the test split at the end."""
    hold_stops: Any = None
    """The worker's ``signals_held``: a SIGTERM that arrives while the fit loop trains waits
    for the step in flight to end; the loop, seeing ``stop_asked``, checkpoints after that
    step and raises ``hpo.job.errors.JobPreempted``, and the re-queued trial resumes at the
    next batch. ``None``: a stop interrupts the job where it is (its last checkpoint
    resumes)."""
    stop_asked: Any = None
    """Whether the worker was asked to stop (its SIGTERM): read after every step while
    ``hold_stops`` holds."""
    latency: Any = None
    """``hpo.spec.LatencySpec`` where ``latency_ms`` is an objective: measure the fitted
    model's latency (``hpo.job.objectives``); ``None``: do not."""
    metric: str = "val_loss"
    """The objective (``study.metric``): ``val_loss`` or another validation metric the fit
    records (``hpo.job.metrics``: ``val_f1``, ...). Its value at each evaluation is reported;
    the best one is the trial's value."""
    maximize: bool = False
    """Whether ``metric`` is maximized (``study.direction``): the best evaluation, early
    stopping and the trial's value follow it."""
