"""Custom jobs (``task: {kind: custom, entrypoint: benchmarks.jobs:...}``) that isolate the
service's own costs: a job that does nothing, and one that only waits."""

from __future__ import annotations

import os
import time

SLEEP_VAR = "HPO_BENCH_SLEEP"
"""Seconds ``sleep_job`` waits per trial."""


def noop_job(trial, params, context) -> float:
    """Return at once: what is left of a trial's time is coordination."""
    return params["lr"]


def sleep_job(trial, params, context) -> float:
    """Wait ``$HPO_BENCH_SLEEP`` seconds without using the CPU (a GPU-bound trial, say)."""
    time.sleep(float(os.environ.get(SLEEP_VAR, "1")))
    trial.report(params["lr"], 1)
    return params["lr"]
