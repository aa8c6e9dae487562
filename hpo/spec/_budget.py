"""The ``budget`` section's dataclass: when the study stops (its parsing is in ``_parse``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

DEFAULT_MIN_TRIALS = 10
"""``budget.min_trials``: complete trials before convergence is first judged."""
DEFAULT_REPEATS = 2
"""``budget.repeats``: extra seeds of the best configuration that measure the noise."""


@dataclass(frozen=True)
class BudgetSpec:
    """The global budget, across every worker and machine."""

    n_trials: int | None = 20
    """Finished trials (complete + pruned) after which workers stop. With ``sampler: grid``
    the default is the grid's size (each point once), and more than it is refused."""
    timeout: float | None = None
    """Seconds after which a worker starts no new trial."""
    stop_when_converged: bool = False
    """Stop before ``n_trials`` once the room left for improvement (Optuna's regret bound)
    is below the noise (the seed spread of the best configuration, see ``repeats``)."""
    min_trials: int | None = None
    """With ``stop_when_converged``: complete trials before convergence is first judged
    (default 10; with ``repeats``, below ``n_trials``)."""
    repeats: int | None = None
    """With ``stop_when_converged``: reruns of the best configuration with other seeds, which
    measure the noise (default 2); they count in the budget."""

    @property
    def first_judged(self) -> int:
        """Complete trials after which convergence is judged (``min_trials`` or its default)."""
        return self.min_trials if self.min_trials is not None else DEFAULT_MIN_TRIALS

    @property
    def n_repeats(self) -> int:
        """Reruns of the best configuration (``repeats`` or its default)."""
        return self.repeats if self.repeats is not None else DEFAULT_REPEATS

    def to_dict(self) -> dict[str, Any]:
        # The convergence keys only when set: a study stored before they existed reads back
        # the same.
        d = asdict(self)
        for key in ("stop_when_converged", "min_trials", "repeats"):
            if d[key] in (None, False):
                del d[key]
        return d
