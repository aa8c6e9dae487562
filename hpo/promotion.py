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
  configuration once, judged at the depth it shares with each other one
  (``hpo.judging``);
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
from typing import TYPE_CHECKING

import optuna

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


class PromotionPruner(optuna.pruners.BasePruner):
    """The ``promotion`` pruner: pauses a trial at a rung unless it is in the top
    ``1 / reduction_factor`` of the configurations that reached it (an Optuna pruner: it says
    when to pause; the worker asks it which of its prunes were pauses, ``take_pause``).

    Args:
        min_resource: epochs to the first rung (a fraction on the ``evals_per_epoch`` grid).
        reduction_factor: ``eta``: one in ``eta`` goes on at each rung.
        evals_per_epoch: evaluations (reports) an epoch.
        max_epochs: the largest epochs of the search space (no rung at or past it).
    """

    def __init__(
        self, min_resource: float, reduction_factor: int, evals_per_epoch: int, max_epochs: int
    ) -> None:
        self.min_resource = min_resource
        self.reduction_factor = reduction_factor
        self.evals_per_epoch = evals_per_epoch
        self.rungs = rung_steps(min_resource, reduction_factor, evals_per_epoch, max_epochs)
        self._paused: dict[int, int] = {}

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
        self._paused[trial.number] = step
        return True

    def take_pause(self, number: int) -> int | None:
        """The step at which this pruner (in this process) paused trial ``number``, once;
        None if its prune was no pause. The worker turns exactly those into paused
        configurations."""
        return self._paused.pop(number, None)


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
    study: optuna.Study,
    pruner: PromotionPruner,
    trials: list[FrozenTrial],
    finishing: bool = False,
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
