"""Pause and resume: asynchronous successive halving with promotion (the ``promotion`` pruner).

Optuna's pruners stop a trial for good. This one pauses it: a trial that falls behind at a rung
(the evaluation at ``min_resource * reduction_factor ** k`` epochs: an epoch end, or inside
an epoch with ``task.evals_per_epoch``) stops with its checkpoint,
and its configuration waits as a *paused* trial; a worker looking for work resumes it, ahead of
any new configuration, once it ranks in the top ``1 / reduction_factor`` of the configurations
that reached that rung (ASHA's promotion rule, Li et al. 2020; Syne Tune's ``promotion`` type).

In the database:

- the trial that paused is PRUNED, ``prune_reason: paused``. A TPE sampler does not learn
  from it as from a pruned trial, which Optuna ranks below every complete one: it sees each
  configuration once, judged at the depth it shares with each other one (``judged_order``,
  ``judging_sampler``);
- its continuation is a WAITING trial with the same params, its intermediate values and its
  user attrs (the checkpoint), plus ``resumed_from`` (the configuration's first trial) and
  ``paused_at`` (the rung's step): the *paused* state (``hpo.records.is_paused``);
- a worker that promotes it claims it (one winner, as for any queued trial) and writes
  ``promoted: true``; it resumes from the checkpoint and may pause again at the next rung.

The budget counts configurations: continuations take none of ``n_trials``. When it is spent
and nothing runs, a paused trial that leads its rung is promoted all the same (``promotable``'s
``finishing``). A study that ends with paused trials keeps them; ``hpo run`` with a larger
budget may still promote them.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

from hpo.records import (
    CHECKPOINT_ATTR,
    FAIL_REASON_ATTR,
    PAUSED_AT_ATTR,
    PAUSED_FROM_ATTR,
    PROMOTED_ATTR,
    PRUNE_REASON_ATTR,
    RESUMED_FROM_ATTR,
    is_continuation,
    is_paused,
)

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

log = logging.getLogger("hpo")

_NOT_COPIED = (PRUNE_REASON_ATTR, FAIL_REASON_ATTR, PROMOTED_ATTR, "pruned_at_step")
"""The paused trial's user attrs its continuation does not inherit: they describe its end."""


def configuration(trial: FrozenTrial) -> int:
    """The number of the configuration's first trial: a continuation's ``resumed_from``, a
    retry's first failed attempt, else the trial's own number."""
    if RESUMED_FROM_ATTR in trial.user_attrs:
        return int(trial.user_attrs[RESUMED_FROM_ATTR])
    history = trial.system_attrs.get("retry_history")
    return int(history[0]) if history else trial.number


def rung_values(trials: list[FrozenTrial], step: int) -> dict[int, float]:
    """Each configuration's validation loss at ``step``, from the trials that ran it (a
    queued continuation holds only copies of its configuration's values)."""
    from optuna.trial import TrialState

    values: dict[int, float] = {}
    for t in trials:
        if t.state != TrialState.WAITING and step in t.intermediate_values:
            value = t.intermediate_values[step]
            if math.isfinite(value):
                values.setdefault(configuration(t), value)
    return values


def in_top(values: dict[int, float], config: int, eta: int, maximize: bool = False) -> bool:
    """Whether ``config`` ranks in the top ``floor(n / eta)`` of the ``n`` configurations of
    ``values`` (ASHA's rule: none while fewer than ``eta`` have reached the rung)."""
    if config not in values:
        return False
    sign = -1.0 if maximize else 1.0
    ranked = sorted(values, key=lambda c: (sign * values[c], c))
    return ranked.index(config) < len(values) // eta


def make_promotion_pruner(
    min_resource: float, reduction_factor: int, evals_per_epoch: int, max_epochs: int
) -> optuna.pruners.BasePruner:
    """The ``promotion`` pruner (an Optuna pruner: it says when to pause)."""
    import optuna

    class PromotionPruner(optuna.pruners.BasePruner):
        """Pauses a trial at a rung unless it is in the top ``1 / reduction_factor`` there.

        ``paused`` maps the numbers of the trials it paused (in this process) to the step:
        the worker turns exactly those into paused configurations.
        """

        def __init__(self) -> None:
            self.min_resource = min_resource
            self.reduction_factor = reduction_factor
            self.evals_per_epoch = evals_per_epoch
            self.rungs = rung_steps(min_resource, reduction_factor, evals_per_epoch, max_epochs)
            self.paused: dict[int, int] = {}

        def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
            step = trial.last_step
            if step is None or step not in self.rungs:
                return False
            epochs = trial.params.get("epochs")
            if isinstance(epochs, int) and step >= epochs * self.evals_per_epoch:
                return False  # its own last evaluation: nothing is left to resume
            maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
            values = rung_values(study.get_trials(deepcopy=False), step)
            values[configuration(trial)] = trial.intermediate_values[step]
            if in_top(values, configuration(trial), self.reduction_factor, maximize):
                return False
            self.paused[trial.number] = step
            return True

    return PromotionPruner()


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


def is_promotion(pruner: Any) -> bool:
    """Whether ``pruner`` is the ``promotion`` pruner (whose pruned trials pause)."""
    return hasattr(pruner, "paused") and hasattr(pruner, "rungs")


def pause(study: optuna.Study, trial: FrozenTrial, step: int) -> FrozenTrial:
    """Queue the ``trial``'s configuration as a paused continuation (see the module
    docstring): same params, intermediate values and user attrs, ``resumed_from``,
    ``paused_at`` and ``paused_from`` added. The worker queues it before it tells the trial
    PRUNED. Returns what was queued."""
    import optuna
    from optuna.trial import TrialState

    attrs = {k: v for k, v in trial.user_attrs.items() if k not in _NOT_COPIED}
    attrs.update(
        {
            RESUMED_FROM_ATTR: configuration(trial),
            PAUSED_AT_ATTR: step,
            PAUSED_FROM_ATTR: trial.number,
        }
    )
    queued = optuna.trial.create_trial(
        state=TrialState.WAITING,
        params=trial.params,
        distributions=trial.distributions,
        user_attrs=attrs,
        intermediate_values=dict(trial.intermediate_values),
    )
    study.add_trial(queued)
    if not trial.user_attrs.get(CHECKPOINT_ATTR):
        log.warning(
            "trial %d paused without a checkpoint: its promotion starts it afresh", trial.number
        )
    return queued


def promotable(
    study: optuna.Study, pruner: Any, trials: list[FrozenTrial], finishing: bool = False
) -> list[FrozenTrial]:
    """The continuations to run next, outside the budget (``trials``: the study as read a
    moment ago): first those promoted already and queued again (re-queued by SIGTERM, or the
    retry of one whose worker died), then the paused trials that now rank in the top of their
    rung, the highest rung first and the best first within it.

    ``finishing``: the budget is spent and nothing runs, so no configuration will reach a
    rung any more: the paused trial that *leads* its rung is promoted too, where fewer than
    ``reduction_factor`` configurations reached it (ASHA's rule holds them all there). Else
    a study could end with its best configuration paused short of its epochs; this costs at
    most one configuration a rung."""
    import optuna
    from optuna.trial import TrialState

    again = [
        t
        for t in trials
        if t.state == TrialState.WAITING and is_continuation(t) and not is_paused(t)
    ]
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    ready = []
    for t in trials:
        if not is_paused(t):
            continue
        step = int(t.user_attrs[PAUSED_AT_ATTR])
        values = rung_values(trials, step)
        eta = (
            min(pruner.reduction_factor, max(1, len(values)))
            if finishing
            else pruner.reduction_factor
        )
        if in_top(values, configuration(t), eta, maximize):
            sign = -1.0 if maximize else 1.0
            ready.append((-step, sign * values[configuration(t)], t.number, t))
    return again + [t for *_, t in sorted(ready, key=lambda r: r[:3])]


# --------------------------------------------------------------------------------------------
# What the sampler learns from: each configuration once, judged where it stopped.


def judged_order(
    configs: dict[int, tuple[dict[int, float], float | None]], maximize: bool = False
) -> list[int]:
    """The configurations best first, each judged at the depth it shares with the other.

    ``configs`` maps a configuration to its learning curve (report step -> validation loss)
    and its final value (None while it has not completed: paused, or pruned). Two
    configurations are compared at the shallower of their depths (a paused one's last step;
    a complete one has all depths): by the best value each had reached by that step, a
    complete configuration that ended sooner by its final value. So a configuration paused at
    1.5 epochs ranks by how it stood at 1.5 epochs against one that completed 1 epoch, not
    below it because it has not completed: Optuna's TPE ranks every pruned trial below every
    complete one, and with the ``promotion`` pruner the short schedules complete first (one
    rung to pass, not two), so TPE turned away from the long schedules (benchmarks/RESULTS.md).
    Ties: the deeper first, then the earlier."""
    from functools import cmp_to_key

    sign = -1.0 if maximize else 1.0
    depth = {
        c: math.inf if final is not None else max(curve, default=0)
        for c, (curve, final) in configs.items()
    }

    def at(c: int, step: float) -> float:
        curve, final = configs[c]
        if final is not None and step >= max(curve, default=0):
            return sign * final
        seen = [sign * v for s, v in curve.items() if s <= step and math.isfinite(v)]
        return min(seen, default=math.inf)

    def compare(a: int, b: int) -> int:
        step = min(depth[a], depth[b])
        key_a = (at(a, step), -depth[a], a)
        key_b = (at(b, step), -depth[b], b)
        return -1 if key_a < key_b else 1 if key_a > key_b else 0

    return sorted(configs, key=cmp_to_key(compare))


def configurations(
    trials: list[FrozenTrial],
) -> dict[int, tuple[FrozenTrial, dict[int, float], float | None]]:
    """Each configuration that has paused, been pruned or completed once, by its number
    (``configuration``): its latest such attempt (its complete one, if it has one), the curve
    of all its attempts (a running continuation's too) and its final value (None while no
    attempt has completed)."""
    from optuna.trial import TrialState

    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    groups: dict[int, list[FrozenTrial]] = {}
    for t in trials:
        if t.state in finished or t.state == TrialState.RUNNING:
            groups.setdefault(configuration(t), []).append(t)
    found = {}
    for config, attempts in groups.items():
        done = [t for t in attempts if t.state in finished]
        if not done:
            continue
        complete = [t for t in done if t.state == TrialState.COMPLETE]
        latest = max(complete or done, key=lambda t: t.number)
        curve: dict[int, float] = {}
        for t in sorted(attempts, key=lambda t: t.number):
            curve.update(t.intermediate_values)
        found[config] = (latest, curve, latest.value if complete else None)
    return found


def judged_trials(trials: list[FrozenTrial], maximize: bool = False) -> list[FrozenTrial]:
    """``trials`` as the sampler should learn from them: each configuration that has paused,
    been pruned or completed once, as a COMPLETE copy of its latest such attempt whose value
    is its place in ``judged_order`` (0 the best; negated when maximizing), with the curve of
    all its attempts. A TPE sampler splits its trials by that order alone. Waiting and failed
    trials, and running ones of a configuration not judged yet, are kept as they are; a
    superseded attempt (a pause that a continuation took over) and a running continuation
    are not shown apart from their configuration."""
    import copy

    from optuna.trial import TrialState

    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    found = configurations(trials)
    configs = {c: (curve, final) for c, (_, curve, final) in found.items()}
    latest = {c: attempt for c, (attempt, _, _) in found.items()}
    judged = []
    for place, config in enumerate(judged_order(configs, maximize)):
        view = copy.copy(latest[config])
        view.state = TrialState.COMPLETE
        view.values = [-float(place) if maximize else float(place)]
        view.intermediate_values = configs[config][0]
        judged.append(view)
    kept = [
        t
        for t in trials
        if t.state not in finished
        and not (t.state == TrialState.RUNNING and configuration(t) in configs)
    ]
    return sorted(judged + kept, key=lambda t: t.number)


def judging_sampler(inner: optuna.samplers.BaseSampler) -> optuna.samplers.BaseSampler:
    """``inner`` (a TPE sampler) learning from ``judged_trials`` instead of the raw trials: a
    study with the ``promotion`` pruner gets it (``hpo.study.make_sampler``)."""
    import optuna

    from hpo._optuna import study_view

    cache: dict[tuple[str, int], list[FrozenTrial]] = {}

    def judged(study: optuna.Study, trial: FrozenTrial) -> Any:
        """The study as ``inner`` sees it while sampling ``trial``: judged once per trial,
        not for each parameter (an independent TPE asks for the trials several times a
        parameter)."""
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE

        def trials_of(trials: list[FrozenTrial]) -> list[FrozenTrial]:
            key = (study.study_name, trial.number)
            if key not in cache:
                cache.clear()
                cache[key] = judged_trials(trials, maximize)
            return cache[key]

        return study_view(study, trials_of)

    class JudgingSampler(optuna.samplers.BaseSampler):
        """Samples as ``inner`` does, from each configuration judged where it stopped."""

        def __init__(self) -> None:
            self.inner = inner

        def infer_relative_search_space(self, study, trial):
            return inner.infer_relative_search_space(judged(study, trial), trial)

        def sample_relative(self, study, trial, search_space):
            return inner.sample_relative(judged(study, trial), trial, search_space)

        def sample_independent(self, study, trial, name, dist):
            return inner.sample_independent(judged(study, trial), trial, name, dist)

        def before_trial(self, study, trial):
            inner.before_trial(study, trial)

        def after_trial(self, study, trial, state, values):
            inner.after_trial(study, trial, state, values)

        def reseed_rng(self) -> None:
            inner.reseed_rng()

    return JudgingSampler()
