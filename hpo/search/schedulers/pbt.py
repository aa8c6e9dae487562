"""Population-based training: the ``pbt`` scheduler (Jaderberg et al. 2017).

The population is the study's ``budget.n_trials`` configurations, sampled as usual. Each
trains with a fixed schedule and pauses every ``interval`` epochs (its checkpoint there).
When every member has reached that step (or finished), the generation is judged by the
validation loss there: a member in the bottom ``quantile`` *exploits* one in the top
``quantile`` (drawn at random), going on from that member's checkpoint with its params, and
*explores*: each float param (lr, weight decay, dropout, ..., your code's own) is multiplied
by 0.8 or 1.25, or with probability ``resample_probability`` drawn anew from its range. A
script's checkpoint may be a directory. The others go on
from their own checkpoint, unchanged. Ray Tune's ``PopulationBasedTraining`` decides when a
trial reports, against whatever the others reported last; this one waits for the
generation, as the paper's synchronous variant does, so that a member is compared at the
same step and one worker or many give the same population.

The lineage is on each trial: ``pbt_lineage``, one entry per exploit, the step, the member it
copied (``parent``) and the params it ran with from then on; a member's schedule of params is
its first trial's params, then those entries. The trials of a member share its
configuration (``resumed_from``), so the budget counts the population once; an exploiting
member's queued continuation is replaced by one with the new params and the parent's
checkpoint (``hpo.search.schedulers.continuation``) and ends PRUNED, ``prune_reason: exploited``.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpo.records import (
    CHECKPOINT_ATTR,
    PAUSED_AT_ATTR,
    PAUSED_REASON,
    is_continuation,
    is_paused,
    was_paused,
)
from hpo.search.schedulers import GO_ON, PAUSE, Decision, Resume, Scheduler
from hpo.search.schedulers.continuation import at_its_end, configuration, rung_values

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution
    from optuna.trial import FrozenTrial

    from hpo.spec import Spec

LINEAGE_ATTR = "pbt_lineage"
"""Trial user attr: ``[{step, parent, params}, ...]``, one entry per exploit of its member."""
EXPLOITED_REASON = "exploited"
"""The ``prune_reason`` of a continuation replaced by one that exploits another member."""
FACTORS = (0.8, 1.25)
"""Explore multiplies a float param by one of these (the paper's and Ray Tune's)."""


class PBT(Scheduler):
    """Population-based training over the study's configurations.

    Args:
        population: the members (``budget.n_trials``).
        interval: report steps between two exploits.
        evals_per_epoch: report steps an epoch (no pause at a trial's last one).
        quantile: the share of the population at each end.
        resample_probability: explore's chance to draw a float param anew.
        seed: seeds each member's draws at each step (with the member and the step).
        maximize: the objective is maximized (``study.direction``): the highest values are
            the top quantile.
    """

    pauses = True

    def __init__(
        self,
        population: int,
        interval: int,
        evals_per_epoch: int = 1,
        quantile: float = 0.25,
        resample_probability: float = 0.25,
        seed: int | None = None,
        maximize: bool = False,
    ) -> None:
        self.population = population
        self.interval = interval
        self.evals_per_epoch = evals_per_epoch
        self.quantile = quantile
        self.resample_probability = resample_probability
        self.seed = seed
        self.maximize = maximize

    @classmethod
    def from_spec(cls, spec: Spec) -> PBT:
        options = spec.pruner.options
        assert spec.budget.n_trials is not None  # the spec requires it of pbt
        return cls(
            population=spec.budget.n_trials,
            interval=round(options.get("interval", 1) * spec.task.evals_per_epoch),
            evals_per_epoch=spec.task.evals_per_epoch,
            quantile=options.get("quantile", 0.25),
            resample_probability=options.get("resample_probability", 0.25),
            seed=spec.sampler.options.get("seed"),
            maximize=spec.study.maximize,
        )

    def decide(self, study: optuna.Study, trial: FrozenTrial) -> Decision:
        step = trial.last_step
        if step is None or step % self.interval or at_its_end(trial, self.evals_per_epoch):
            return GO_ON
        return Decision(PAUSE, PAUSED_REASON, step)

    def next_work(
        self, study: optuna.Study, trials: list[FrozenTrial], finishing: bool = False
    ) -> list[Resume]:
        """The continuations queued again (a re-queue, a retry) first; then, for each step
        whose generation is complete, the exploiting members' replacements, then the rest."""
        from optuna.trial import TrialState

        again = [
            Resume(t)
            for t in trials
            if t.state == TrialState.WAITING and is_continuation(t) and not is_paused(t)
        ]
        started = {configuration(t) for t in trials if t.state != TrialState.WAITING}
        if len(started) < self.population and not finishing:
            return again  # the population is not all out yet
        work: list[tuple[int, int, int, Resume]] = []
        for step in sorted({int(t.user_attrs[PAUSED_AT_ATTR]) for t in trials if is_paused(t)}):
            if self._behind(trials, step):
                continue
            for order, resume in self._generation(trials, step):
                work.append((step, order, resume.trial.number, resume))
        return again + [r for *_, r in sorted(work, key=lambda w: w[:3])]

    def _behind(self, trials: list[FrozenTrial], step: int) -> bool:
        """Whether a member has still to report ``step``: it has no value there and an attempt
        running or queued (paused short of it, retried, not started)."""
        from optuna.trial import TrialState

        reached = rung_values(trials, step)
        return any(
            configuration(t) not in reached
            and t.state in (TrialState.RUNNING, TrialState.WAITING)
            and not (is_paused(t) and int(t.user_attrs[PAUSED_AT_ATTR]) >= step)
            for t in trials
        )

    def _generation(self, trials: list[FrozenTrial], step: int) -> list[tuple[int, Resume]]:
        """The paused members at ``step``: those in the bottom quantile exploit one of the
        top (order 0: first, while the parents' checkpoints are surely kept), the rest go
        on (order 1)."""
        top, bottom = quantiles(rung_values(trials, step), self.quantile, self.maximize)
        found = []
        for t in trials:
            if not is_paused(t) or int(t.user_attrs[PAUSED_AT_ATTR]) != step:
                continue
            member = configuration(t)
            decided = any(e["step"] == step for e in t.user_attrs.get(LINEAGE_ATTR, ()))
            if member in bottom and not decided:
                exploit = self._exploit(trials, t, step, top)
                if exploit is not None:
                    found.append((0, exploit))
                    continue
            found.append((1, Resume(t)))
        return found

    def _exploit(
        self, trials: list[FrozenTrial], paused: FrozenTrial, step: int, top: list[int]
    ) -> Resume | None:
        """``paused`` goes on from a top member's checkpoint at ``step`` with its params
        explored; None if no top member's checkpoint there is on disk any more."""
        member = configuration(paused)
        rng = random.Random(f"{self.seed}:{member}:{step}")
        parents = {
            configuration(t): t
            for t in trials
            if was_paused(t) and t.last_step == step and configuration(t) in top
        }
        for parent in rng.sample(top, len(top)):
            source = parents.get(parent)
            checkpoint = source.user_attrs.get(CHECKPOINT_ATTR) if source else None
            # A file, or a script's checkpoint directory (hpo.session.report's checkpoint).
            if source is None or not checkpoint or not Path(checkpoint).exists():
                continue
            params = explore(source.params, source.distributions, rng, self.resample_probability)
            lineage = list(paused.user_attrs.get(LINEAGE_ATTR, ()))
            lineage.append({"step": step, "parent": parent, "params": params})
            return Resume(
                paused,
                params=params,
                distributions=dict(source.distributions),
                attrs={CHECKPOINT_ATTR: checkpoint, LINEAGE_ATTR: lineage},
                intermediate_values=dict(source.intermediate_values),
                reason=EXPLOITED_REASON,
            )
        return None


SCHEDULER = PBT


def quantiles(
    values: dict[int, float], quantile: float, maximize: bool = False
) -> tuple[list[int], set[int]]:
    """The members at each end of a generation: the top ``quantile`` (best first: the
    highest values where ``maximize``, else the lowest; ties by member number) and the
    bottom one, at most half of the members each."""
    sign = -1 if maximize else 1
    ranked = sorted(values, key=lambda c: (sign * values[c], c))
    q = min(math.ceil(len(ranked) * quantile), len(ranked) // 2)
    return ranked[:q], set(ranked[len(ranked) - q :]) if q else set()


def is_pbt(study: optuna.Study) -> bool:
    """Whether the study's stored spec names this scheduler (what its report shows)."""
    from hpo.records import SPEC_ATTR

    return ((study.user_attrs.get(SPEC_ATTR) or {}).get("pruner") or {}).get("name") == "pbt"


def explore(
    params: dict[str, Any],
    distributions: dict[str, BaseDistribution],
    rng: random.Random,
    resample_probability: float,
) -> dict[str, Any]:
    """``params`` with each float param perturbed: multiplied by 0.8 or 1.25, or with
    ``resample_probability`` drawn anew (log-uniformly on a log range), kept in its range and
    on its step. Ints and choices stay: they shape the model, the batches and the schedule
    the checkpoint was trained with."""
    from optuna.distributions import FloatDistribution

    explored = dict(params)
    for name, d in distributions.items():
        if not isinstance(d, FloatDistribution) or name not in params or d.low == d.high:
            continue
        if rng.random() < resample_probability:
            if d.log:
                value = math.exp(rng.uniform(math.log(d.low), math.log(d.high)))
            else:
                value = rng.uniform(d.low, d.high)
        else:
            value = params[name] * rng.choice(FACTORS)
        if d.step is not None:
            value = d.low + round((value - d.low) / d.step) * d.step
        explored[name] = min(max(value, d.low), d.high)
    return explored


def schedule(member: list[FrozenTrial]) -> list[tuple[int, dict[str, Any]]]:
    """A member's params over time: ``(0, first params)``, then ``(step, params)`` at each
    exploit (``trials``: the member's attempts)."""
    first = min(member, key=lambda t: t.number)
    latest = max(member, key=lambda t: len(t.user_attrs.get(LINEAGE_ATTR, ())))
    return [(0, dict(first.params))] + [
        (int(e["step"]), dict(e["params"])) for e in latest.user_attrs.get(LINEAGE_ATTR, ())
    ]
