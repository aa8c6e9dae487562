"""Paused configurations and their continuations, as the study stores them (every scheduler's).

In the database:

- the trial that paused is PRUNED, ``prune_reason: paused``;
- its continuation is a WAITING trial with the same params, its intermediate values and its
  user attrs (the checkpoint), plus ``resumed_from`` (the configuration's first trial),
  ``paused_at`` (the step) and ``paused_from`` (the trial that paused): the *paused* state
  (``hpo.records.is_paused``);
- a worker that resumes it claims it (one winner, as for any queued trial) and writes
  ``promoted: true``; it resumes from the checkpoint and may pause again;
- a continuation that a scheduler resumes with other params (``hpo.search.schedulers.Resume``: PBT's
  exploit) is claimed, *replaced* by a continuation with those params (queued first), then
  told PRUNED with the scheduler's reason.

The budget counts configurations: continuations take none of ``n_trials``.
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


def at_its_end(trial: FrozenTrial, evals_per_epoch: int) -> bool:
    """Whether ``trial``'s last report is its own last evaluation (its ``epochs`` param's):
    nothing is left to resume, so no scheduler pauses there."""
    epochs = trial.params.get("epochs")
    step = trial.last_step
    return isinstance(epochs, int) and step is not None and step >= epochs * evals_per_epoch


def rung_values(trials: list[FrozenTrial], step: int) -> dict[int, float]:
    """Each configuration's validation loss at ``step``, from the trials that ran it (a
    queued continuation holds only copies of its configuration's values; a configuration's
    own attempt comes before a replacement that copied another's curve)."""
    from optuna.trial import TrialState

    values: dict[int, float] = {}
    for t in sorted(trials, key=lambda t: t.number):
        if t.state != TrialState.WAITING and step in t.intermediate_values:
            value = t.intermediate_values[step]
            if math.isfinite(value):
                values.setdefault(configuration(t), value)
    return values


def queue_continuation(
    study: optuna.Study,
    trial: FrozenTrial,
    step: int,
    *,
    params: dict[str, Any] | None = None,
    distributions: dict[str, Any] | None = None,
    attrs: dict[str, Any] | None = None,
    intermediate_values: dict[int, float] | None = None,
) -> FrozenTrial:
    """Queue ``trial``'s configuration as a paused continuation at ``step`` (see the module
    docstring): its params, intermediate values and user attrs, ``resumed_from``,
    ``paused_at`` and ``paused_from`` added. The worker queues it before it tells ``trial``.

    Args:
        params: other params to resume with (a replacement), else the trial's.
        distributions: those params' distributions, else the trial's.
        attrs: user attrs over the copied ones (another checkpoint, a lineage).
        intermediate_values: the continuation's curve, else the trial's.

    Returns:
        What was queued.
    """
    import optuna
    from optuna.trial import TrialState

    copied = {k: v for k, v in trial.user_attrs.items() if k not in _NOT_COPIED}
    copied.update(attrs or {})
    copied.update(
        {
            RESUMED_FROM_ATTR: configuration(trial),
            PAUSED_AT_ATTR: step,
            PAUSED_FROM_ATTR: trial.number,
        }
    )
    queued = optuna.trial.create_trial(
        state=TrialState.WAITING,
        params=trial.params if params is None else params,
        distributions=trial.distributions if distributions is None else distributions,
        user_attrs=copied,
        intermediate_values=dict(
            trial.intermediate_values if intermediate_values is None else intermediate_values
        ),
    )
    study.add_trial(queued)
    if not copied.get(CHECKPOINT_ATTR):
        log.warning(
            "trial %d paused without a checkpoint: its continuation starts afresh", trial.number
        )
    return queued


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
