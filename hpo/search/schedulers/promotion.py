"""Asynchronous successive halving that pauses and promotes: the ``promotion`` scheduler.

Optuna's pruners stop a trial for good. This one pauses it: a trial that falls behind at a rung
(the evaluation at ``min_resource * reduction_factor ** k`` epochs: an epoch end, or inside
an epoch with ``task.evals_per_epoch``) stops with its checkpoint, and its configuration waits
as a *paused* continuation (``hpo.search.schedulers.continuation``); a worker looking for work
resumes it, ahead of any new configuration, once it ranks in the top ``1 / reduction_factor``
of the configurations that reached that rung (ASHA's promotion rule, Li et al. 2020; Syne
Tune's ``promotion`` type). A TPE sampler does not learn from a paused trial as from a pruned
one: it sees each configuration once, judged at the depth it shares with each other one
(``hpo.search.judging``).

With several objectives a rung ranks its configurations by non-dominated sorting, then by
crowding distance within a front (MO-ASHA, Schmucker et al. 2021): each configuration's
vector is its validation loss at the rung and its other objectives (the job measures them
before training: ``params``, ``trainable_params``, ``latency_ms`` do not change as it trains).

When the budget is spent and nothing runs (``next_work``'s ``finishing``), a paused trial on
the first non-dominated front of its rung is promoted all the same: with one objective the
rung's leader, with several every configuration no other dominates there, so that the study's
Pareto set (of complete trials: the models a user can export) holds a trained configuration
for each trade-off the rungs found. A study that ends with paused trials keeps them; ``hpo
run`` with a larger budget may still promote them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hpo.records import PAUSED_AT_ATTR, PAUSED_REASON, is_continuation, is_paused
from hpo.search.schedulers import GO_ON, PAUSE, Decision, Resume, Scheduler
from hpo.search.schedulers.continuation import at_its_end, configuration, rung_values

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from hpo.spec import Spec


class Promotion(Scheduler):
    """Pauses a trial at a rung unless it is in the top ``1 / reduction_factor`` of the
    configurations that reached it; resumes a paused one once it is.

    Args:
        min_resource: epochs to the first rung (a fraction on the ``evals_per_epoch`` grid).
        reduction_factor: ``eta``: one in ``eta`` goes on at each rung.
        evals_per_epoch: evaluations (reports) an epoch.
        max_epochs: the largest epochs of the search space (no rung at or past it).
        objectives: the study's objectives; after ``val_loss``, the user attrs that rank a
            rung with it (several objectives: non-dominated sorting, then crowding).
        maximize: the one objective is maximized (``study.direction``): the highest values
            at a rung go on.
    """

    pauses = True

    def __init__(
        self,
        min_resource: float,
        reduction_factor: int,
        evals_per_epoch: int,
        max_epochs: int,
        objectives: tuple[str, ...] = ("val_loss",),
        maximize: bool = False,
    ) -> None:
        self.min_resource = min_resource
        self.reduction_factor = reduction_factor
        self.evals_per_epoch = evals_per_epoch
        self.rungs = rung_steps(min_resource, reduction_factor, evals_per_epoch, max_epochs)
        self.objectives = tuple(objectives)
        self.maximize = maximize

    @classmethod
    def from_spec(cls, spec: Spec) -> Promotion:
        from hpo.spec import max_epochs

        options = spec.pruner.options
        return cls(
            options.get("min_resource", 1),
            options.get("reduction_factor", 3),
            spec.task.evals_per_epoch,
            max_epochs(spec),
            spec.study.objectives,
            spec.study.maximize,
        )

    def decide(self, study: optuna.Study, trial: FrozenTrial) -> Decision:
        step = trial.last_step
        if step is None or step not in self.rungs:
            return GO_ON
        if at_its_end(trial, self.evals_per_epoch):
            return GO_ON
        trials = [t for t in study.get_trials(deepcopy=False) if t.number != trial.number]
        config = configuration(trial)
        points = self.rung_points(trials + [trial], step)
        if in_top(points, config, self.reduction_factor):
            return GO_ON
        return Decision(PAUSE, PAUSED_REASON, step)

    def rung_points(self, trials: list[FrozenTrial], step: int) -> dict[int, tuple[float, ...]]:
        """Each configuration's objectives at the rung ``step``, lower is better: its
        reported value there (negated where maximized), then its other objectives (user
        attrs; missing: infinity, ranked last)."""
        from optuna.trial import TrialState

        losses = rung_values(trials, step)
        if len(self.objectives) == 1:
            sign = -1.0 if self.maximize else 1.0
            return {c: (sign * v,) for c, v in losses.items()}
        attrs: dict[int, dict] = {}
        for t in trials:
            if t.state != TrialState.WAITING and configuration(t) in losses:
                attrs.setdefault(configuration(t), {}).update(t.user_attrs)
        return {
            c: (v, *(float(attrs[c].get(o, float("inf"))) for o in self.objectives[1:]))
            for c, v in losses.items()
        }

    def next_work(
        self, study: optuna.Study, trials: list[FrozenTrial], finishing: bool = False
    ) -> list[Resume]:
        """First the continuations promoted already and queued again (re-queued by SIGTERM,
        or the retry of one whose worker died), then the paused trials that now rank in the
        top of their rung, the highest rung first and the best first within it.

        ``finishing``: the budget is spent and nothing runs, so no configuration will reach a
        rung any more: a paused trial on the first non-dominated front of its rung
        (``front_points``: of tied ones, the first) is promoted too. With one objective that
        is the rung's leader, which matters where fewer than ``reduction_factor``
        configurations reached it (ASHA's rule holds them all there): else a study could end
        with its best configuration paused short of its epochs. With several objectives it
        is every configuration no other dominates at the rung: a study's Pareto set is of
        complete trials, and where few configurations reach a rung ASHA's rule leaves most
        of its front paused (``benchmarks/RESULTS.md``). A promoted one pauses again at the
        next rung unless it goes on there, and is promoted again if it is on that rung's
        front."""
        from optuna.trial import TrialState

        again = [
            t
            for t in trials
            if t.state == TrialState.WAITING and is_continuation(t) and not is_paused(t)
        ]
        ready = []
        for t in trials:
            if not is_paused(t):
                continue
            step = int(t.user_attrs[PAUSED_AT_ATTR])
            points = self.rung_points(trials, step)
            order = ranked(points)
            config = configuration(t)
            if in_top(points, config, self.reduction_factor) or (
                finishing and config in front_points(points)
            ):
                ready.append((-step, order.index(config), t.number, t))
        return [Resume(t) for t in again] + [
            Resume(t) for *_, t in sorted(ready, key=lambda r: r[:3])
        ]


SCHEDULER = Promotion


def rung_steps(
    min_resource: float, reduction_factor: int, evals_per_epoch: int, max_epochs: int
) -> frozenset[int]:
    """The report steps of the rungs: the evaluations at ``min_resource * reduction_factor
    ** k`` epochs, below ``max_epochs`` (a trial's last evaluation is never a pause).
    ``min_resource`` may be a fraction of an epoch on the ``evals_per_epoch`` grid (the spec
    checks it): 0.25 with 4 evaluations an epoch puts the rungs at steps 1, 3, 9, ..."""
    rungs, step = set(), max(1, round(min_resource * evals_per_epoch))
    while step < max_epochs * evals_per_epoch:
        rungs.add(step)
        step *= reduction_factor
    return frozenset(rungs)


def in_top(points: dict[int, tuple[float, ...]], config: int, eta: int) -> bool:
    """Whether ``config`` ranks in the top ``floor(n / eta)`` of the ``n`` configurations of
    ``points`` (ASHA's rule: none while fewer than ``eta`` have reached the rung)."""
    if config not in points:
        return False
    return ranked(points).index(config) < len(points) // eta


def ranked(points: dict[int, tuple[float, ...]]) -> list[int]:
    """The configurations best first: by their one value (lowest first), or with several
    objectives by non-dominated front, then by crowding distance within a front (largest
    first: the front's ends, then its sparse parts), then by number."""
    if all(len(p) == 1 for p in points.values()):
        return sorted(points, key=lambda c: (points[c][0], c))
    order: list[int] = []
    for front in fronts(points):
        distance = crowding(front, points)
        order += sorted(front, key=lambda c: (-distance[c], c))
    return order


def front_points(points: dict[int, tuple[float, ...]]) -> list[int]:
    """The first non-dominated front, one configuration a point: of configurations tied on
    every objective (the same params twice), the first ``ranked``. With one objective, the
    leader."""
    if not points:
        return []
    order = ranked(points)
    kept: dict[tuple[float, ...], int] = {}
    for c in sorted(fronts(points)[0], key=order.index):
        kept.setdefault(points[c], c)
    return list(kept.values())


def fronts(points: dict[int, tuple[float, ...]]) -> list[list[int]]:
    """Non-dominated sorting (NSGA-II's): the first front is dominated by nobody, the next by
    nobody outside the first, and so on. Every objective is minimized."""

    def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
        return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))

    left, found = set(points), []
    while left:
        front = sorted(c for c in left if not any(dominates(points[d], points[c]) for d in left))
        found.append(front)
        left -= set(front)
    return found


def crowding(front: list[int], points: dict[int, tuple[float, ...]]) -> dict[int, float]:
    """NSGA-II's crowding distance of each configuration of ``front``: the sum over the
    objectives of the gap between its two neighbours, normalized by the front's range; the
    front's ends on any objective get infinity."""
    distance = {c: 0.0 for c in front}
    if len(front) <= 2:
        return {c: float("inf") for c in front}
    for k in range(len(points[front[0]])):
        along = sorted(front, key=lambda c: (points[c][k], c))
        low, high = points[along[0]][k], points[along[-1]][k]
        distance[along[0]] = distance[along[-1]] = float("inf")
        if high == low or not all(map(lambda c: points[c][k] < float("inf"), along)):
            continue
        for before, c, after in zip(along, along[1:], along[2:]):
            distance[c] += (points[after][k] - points[before][k]) / (high - low)
    return distance
