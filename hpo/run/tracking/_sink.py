"""What the tracker hands a tool (``Sink``): a trial's steps, and how it ended."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

Steps = list[tuple[int, dict[str, float]]]
"""A trial's report steps, each with its metrics (numbers only), in order."""


@dataclass(frozen=True)
class TrialEnd:
    """How a trial ended, for the tools."""

    state: str
    """Optuna's state: ``COMPLETE``, ``PRUNED`` (stopped or paused), ``FAIL``; ``WAITING`` for
    a trial preempted and re-queued (its next attempt goes on in the same run)."""
    reason: str | None = None
    """The ``prune_reason`` (``pruned``, ``paused``, ``nan``, ...) or ``fail_reason``."""
    values: dict[str, float] = field(default_factory=dict)
    """The trial's objective values by name (``best_val_loss``, ...); empty unless complete."""


class Sink(Protocol):
    """A tool trials are recorded in: each call does its best and never raises."""

    def open(self, number: int, params: dict[str, Any], tags: dict[str, str]) -> Any | None:
        """The trial's run (a handle), created or found again; None if not now."""

    def log(self, handle: Any, steps: Steps) -> bool:
        """Log ``steps``; whether they were written."""

    def end(self, handle: Any, end: TrialEnd) -> None:
        """The trial's final state and reason."""

    def close(self, study_over: bool) -> None:
        """The worker stops; ``study_over``: its study's budget is spent."""
