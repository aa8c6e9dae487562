"""The job: a trial's params and the task -> model, data, optimizer -> one fit loop.

A job sees a trial and its params, never a process or a GPU id; it runs on ``cuda`` when the
process sees a GPU, else on the CPU. ``import hpo.job`` imports torch; torchvision and
transformers load only for a task that needs them.
"""

from hpo.job.errors import JobSetupError
from hpo.job.run import JobContext, run_job

__all__ = ["JobContext", "JobSetupError", "run_job"]
