"""The worker: one process that pulls trials of a study until the global budget is met.

The worker owns everything about *where* a trial runs (host, process, signals, checkpoint
directory, the data cache that lives as long as the process); the job sees only the trial, its
params and the task. Every worker seeds its sampler differently (``seed + worker index``).

Faults it survives:

- killed (SIGKILL, power loss): its launcher fails the trial at once and queues a retry that
  resumes from the last epoch checkpoint; without a launcher (a worker started by hand, a
  machine gone) its trial stops beating and any worker, or ``hpo reap``, does the same after
  the grace period. A trial has a heartbeat from the moment it is claimed;
- preempted (SIGTERM / SIGINT): the running trial goes back to the queue (state WAITING, same
  number, its intermediate values and checkpoint kept), not counted as a failure; also while
  the storage is down: the signal ends the wait at once, and a trial that cannot be re-queued
  then is retried from its checkpoint once its heartbeat goes stale;
- the database restarting: each storage call is retried until it answers again (up to
  ``$HPO_OUTAGE_SECONDS``), never the training; past that the worker exits non-zero and its
  trial is retried elsewhere;
- memory creep: the process asks to be recycled when memory stays above its baseline;
- a rank of a trial on several devices dying (``_gang``): the other ranks are stopped, the
  trial is failed and retried from rank 0's last epoch checkpoint, as if the worker had died.

A worker stops when the budget's trials are finished. While the rest of the budget is running
on other workers it waits: those trials may still fail, and their retries need a worker.

Inside: ``_loop`` (the loop, the worker's identity), ``_budget`` (start, wait or stop),
``_trial`` (one trial's claim, job and tell; the trial the job sees), ``_gang`` (a trial's
ranks on several devices) and ``_housekeeping`` (checkpoint retention, the upload of the best,
reaping dead workers' trials).
"""

from hpo.run.worker._budget import Stop, over_budget, should_stop
from hpo.run.worker._gang import GangBroken, RankFailed, describe_exit, run_gang, run_on_devices
from hpo.run.worker._housekeeping import (
    STALE_REASONS,
    WORKER_DIED,
    reap,
    reap_process,
    retain_checkpoints,
    upload_if_among_best,
)
from hpo.run.worker._loop import (
    BUDGET_WAIT_SECONDS,
    CHECKPOINT_DIR_VAR,
    MAX_CONSECUTIVE_FAILURES,
    RESTART_SEED_STRIDE,
    WORKER_INDEX_VAR,
    WorkerReport,
    checkpoint_root,
    launched_worker_name,
    run_worker,
    stop_signal_words,
    worker_identity,
)
from hpo.run.worker._objective import StudyTrial, job_function
from hpo.run.worker._signals import Preempted

__all__ = [
    "BUDGET_WAIT_SECONDS",
    "CHECKPOINT_DIR_VAR",
    "MAX_CONSECUTIVE_FAILURES",
    "RESTART_SEED_STRIDE",
    "STALE_REASONS",
    "WORKER_DIED",
    "WORKER_INDEX_VAR",
    "GangBroken",
    "Preempted",
    "RankFailed",
    "Stop",
    "StudyTrial",
    "WorkerReport",
    "checkpoint_root",
    "describe_exit",
    "job_function",
    "launched_worker_name",
    "over_budget",
    "reap",
    "reap_process",
    "retain_checkpoints",
    "run_gang",
    "run_on_devices",
    "run_worker",
    "should_stop",
    "stop_signal_words",
    "upload_if_among_best",
    "worker_identity",
]
