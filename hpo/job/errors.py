"""The job's own errors: a task that cannot be set up on this machine; a stop taken after a
step."""

from hpo.errors import HpoError


class JobSetupError(HpoError):
    """The model, weights or dataset of a task cannot be loaded here.

    Raised before any training, with one line that says what is missing and how to provide it
    (e.g. weights that need a download on a machine without internet). Every trial of the study
    would fail the same way, so it is bad input, not a failed trial.
    """


class JobPreempted(Exception):
    """The worker asked the trial to stop (SIGTERM): the fit loop checkpointed after the step
    in flight and stopped. The worker re-queues the trial; its next attempt resumes there."""
