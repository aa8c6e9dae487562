"""What the fit loop sees of its trial: report, should_prune, attrs. Nothing else.

The worker backs it with the study's Optuna trial (``hpo.run.worker``), ``hpo retrain`` with a
``FixedTrial`` that records what it is told and never prunes. The job never sees the study,
its database or the process it runs in, so the loop is testable alone.
"""

from __future__ import annotations

from typing import Any, Protocol


class Trial(Protocol):
    """The trial interface of a job."""

    number: int
    """The trial's number (log lines)."""

    def report(self, value: float, step: int) -> None:
        """Record the validation loss after ``step`` (an epoch, or a fraction of one)."""

    def should_prune(self) -> bool:
        """Whether the pruner stops the trial at its latest report."""

    def set_attrs(self, attrs: dict[str, Any]) -> None:
        """Record these attributes on the trial (one write)."""


class FixedTrial:
    """A trial outside any study (``hpo retrain``, tests): keeps the attrs it is told, keeps
    its reports, never prunes."""

    def __init__(self, number: int = 0) -> None:
        self.number = number
        self.attrs: dict[str, Any] = {}
        self.reports: dict[int, float] = {}

    def report(self, value: float, step: int) -> None:
        self.reports[step] = value

    def should_prune(self) -> bool:
        return False

    def set_attrs(self, attrs: dict[str, Any]) -> None:
        self.attrs.update(attrs)
