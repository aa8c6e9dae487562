"""The job: a trial's params and the task -> model, data, optimizer -> one fit loop.

A job sees a trial (``Trial``: report, should_prune, attrs) and its params, never a process,
a database or a GPU id; it runs on ``cuda`` when the process sees a GPU, else on the CPU.
``import hpo.job`` does not import torch; ``run_job`` does, and torchvision and transformers
load only for a task that needs them.
"""

from hpo.job.context import JobContext
from hpo.job.errors import JobSetupError
from hpo.job.trial import FixedTrial, Trial

__all__ = ["FixedTrial", "JobContext", "JobSetupError", "Trial", "run_job"]


def __getattr__(name: str):
    # run_job imports torch: only a worker that runs the built-in job pays for it.
    if name == "run_job":
        from hpo.job.run import run_job

        return run_job
    raise AttributeError(f"module 'hpo.job' has no attribute {name!r}")
