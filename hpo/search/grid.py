"""The grid sampler as hpo runs it: Optuna's ``GridSampler`` without its stop.

Optuna's grid sampler stops the study once every point of its grid has run
(``study.stop()`` in ``after_trial``), which works only inside ``study.optimize``: hpo's
workers ask and tell, and there it raised in the worker that told the grid's last point. A
grid study's budget is its grid (``budget.n_trials`` defaults to the number of points, and
may not exceed it: ``hpo.spec``), so the budget ends it, as it ends every study.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import optuna

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial, TrialState


class GridSampler(optuna.samplers.GridSampler):
    """Every point of the grid once, in the sampler's order; the budget ends the study."""

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        """Nothing: the study ends by its budget (the grid's size), not by ``study.stop()``."""
