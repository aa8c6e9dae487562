"""The job's own error: a task that cannot be set up on this machine."""

from hpo.errors import HpoError


class JobSetupError(HpoError):
    """The model, weights or dataset of a task cannot be loaded here.

    Raised before any training, with one line that says what is missing and how to provide it
    (e.g. weights that need a download on a machine without internet). Every trial of the study
    would fail the same way, so it is bad input, not a failed trial.
    """
