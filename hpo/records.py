"""Trials as plain records: what summary, export, report, retrain and the worker share.

The trial record (JSON-ready), counts by state, the best trial or none, how a value is shown,
a study's name made safe for a file, the names of the attributes hpo keeps in a study, and a
failed trial's ``fail_reason`` for an exception (``reason``).
It imports nothing of hpo's: every module above may use it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

SPEC_ATTR = "hpo.spec"
"""Study user attr: the whole spec, so that workers need only the study's name."""
VERSION_ATTR = "hpo.version"
"""Study user attr: the hpo version that created the study."""
RETRAIN_ATTR = "hpo.results.retrain"
"""Study user attr: the latest retrain's summary (trial, epochs, test numbers, folder)."""
CHECKPOINT_ATTR = "checkpoint"
"""Trial user attr: the path of the trial's latest checkpoint."""
CHECKPOINT_ARTIFACT_ATTR = "checkpoint_artifact"
"""Trial user attr: the id of the trial's checkpoint in the artifact store
(``hpo.store.artifacts``)."""
METRICS_ATTR = "metrics"
"""Trial user attr: report step (a string) -> that evaluation's metrics, one number each:
``train_loss``, ``train_accuracy``, ``train_balanced_accuracy``, ``train_precision``,
``train_recall``, ``train_f1`` (macro), ``train_auroc`` (two classes), and the same of ``val_``
(``hpo.job.metrics``). Training's are of the batches trained since the evaluation before.
At most 100 steps (one database value must stay small): past them, the steps that are
multiples of 2, then of 4, ... (and the first and the latest), evenly over the whole fit."""
BEST_METRICS_ATTR = "best_metrics"
"""Trial user attr: the metrics of the trial's best evaluation (its ``best_epoch``), as in
``metrics`` and per class too (``val_f1_per_class``, ...: lists in class order), with the
validation confusion matrix ``val_confusion`` (``[true][predicted]`` counts, up to 50
classes: ``hpo.job.metrics.CONFUSION_CLASSES``)."""
THREADS_ATTR = "threads"
"""Trial user attr: the CPU threads its arithmetic ran on (``torch.get_num_threads()``): a
different count splits sums differently, and so changes the last bits of every loss
(``hpo verify`` reruns with it)."""
FAIL_REASON_ATTR = "fail_reason"
"""Trial user attr: why the trial failed (``oom``, ``worker died``, an exception's line)."""
FIRST_GUESS_ATTR = "first_guess"
"""Trial user attr: where a warm-start trial's params came from (``hpo.search.warm_start``)."""
FIRST_GUESSES_ATTR = "hpo.first_guesses"
"""Study user attr: the origins of the study's first trials, in order
(``hpo.search.warm_start``)."""
REPEAT_OF_ATTR = "repeat_of"
"""Trial user attr: the number of the trial whose params this trial reruns with another seed."""
SEED_ATTR = "seed"
"""Trial user attr: a repeat's seed, which replaces ``task.seed`` for that trial."""
SEED_SPREAD_ATTR = "hpo.seed_spread"
"""Study user attr: the best configuration's values over seeds (``hpo.search.convergence``)."""
STOPPED_ATTR = "hpo.stopped"
"""Study user attr: why the study stopped before its budget (``converged at trial N ...``)."""
PRUNE_REASON_ATTR = "prune_reason"
PAUSED_REASON = "paused"
"""The ``prune_reason`` of a trial the ``promotion`` pruner paused."""
"""Trial user attr: why the trial was pruned (``pruned``, ``paused``, ``nan``, ``diverged``)."""
RESUMED_FROM_ATTR = "resumed_from"
"""Trial user attr of a continuation (the promotion pruner): the number of the configuration's
first trial. A continuation resumes a paused configuration; the budget does not count it."""
PAUSED_AT_ATTR = "paused_at"
"""Trial user attr of a continuation: the step (an epoch end) its configuration paused at."""
PAUSED_FROM_ATTR = "paused_from"
"""Trial user attr of a continuation: the number of the trial that paused (the pause is
queued before that trial is told, so a worker that dies between the two leaves the pause
queued; the dead trial then gets no retry: ``hpo.store._optuna.retry_callback``)."""
PROMOTED_ATTR = "promoted"
"""Trial user attr, written when a continuation is claimed: it is paused no longer."""


def is_continuation(trial: FrozenTrial) -> bool:
    """Whether the trial resumes a paused configuration (and so takes none of the budget)."""
    return RESUMED_FROM_ATTR in trial.user_attrs


def was_paused(trial: FrozenTrial) -> bool:
    """Whether the trial ended paused by the ``promotion`` pruner (PRUNED, its configuration
    queued as a continuation)."""
    return trial.user_attrs.get(PRUNE_REASON_ATTR) == PAUSED_REASON


def is_paused(trial: FrozenTrial) -> bool:
    """Whether the trial is a paused configuration waiting to be promoted: a queued
    continuation that no worker has claimed."""
    from optuna.trial import TrialState

    return (
        trial.state == TrialState.WAITING
        and PAUSED_AT_ATTR in trial.user_attrs
        and not trial.user_attrs.get(PROMOTED_ATTR)
    )


def trial_record(trial: FrozenTrial) -> dict[str, Any]:
    """A trial as plain JSON-ready data: params, value, per-epoch losses, user attrs.

    ``value`` is the objective (the validation loss, or the study's ``metric``); a trial
    of several objectives has ``values`` too, one per objective (the study's
    ``objectives``), its first the same validation loss."""
    several = trial.values is not None and len(trial.values) > 1
    return {
        "number": trial.number,
        "state": trial.state.name,
        "value": val_loss(trial),
        **({"values": list(trial.values)} if several else {}),
        "params": dict(trial.params),
        "intermediate_values": {str(k): v for k, v in sorted(trial.intermediate_values.items())},
        "user_attrs": dict(trial.user_attrs),
        "datetime_start": iso(trial.datetime_start),
        "datetime_complete": iso(trial.datetime_complete),
    }


def val_loss(trial: FrozenTrial) -> float | None:
    """A trial's objective: its value (the validation loss, or the study's ``metric``), or
    its first value in a study of several objectives (``val_loss`` is always the first);
    None before it completed."""
    return trial.values[0] if trial.values else None


def complete_val_loss(trial: FrozenTrial) -> float:
    """``val_loss`` of a complete trial, which has one: the key that ranks complete trials
    where the objective is minimized (``rank_key``: either direction).

    Raises:
        ValueError: the trial has no value (it has not completed).
    """
    loss = val_loss(trial)
    if loss is None:
        raise ValueError(f"trial {trial.number} has no value: it is {trial.state.name}")
    return loss


def metric(study: optuna.Study) -> str:
    """The name of the study's objective, as its stored spec gives it (``study.metric``:
    ``val_loss`` unless it names another, ``val_f1`` say)."""
    spec = study.user_attrs.get(SPEC_ATTR) or {}
    return str(spec.get("study", {}).get("metric") or "val_loss")


def maximizes(study: optuna.Study) -> bool:
    """Whether the study's one objective is maximized (``study.direction: maximize``); a
    study of several objectives minimizes them all."""
    from optuna.study import StudyDirection

    return len(study.directions) == 1 and study.direction == StudyDirection.MAXIMIZE


def rank_key(maximize: bool) -> Callable[[FrozenTrial], float]:
    """The key that sorts complete trials best first: ``complete_val_loss``, negated where
    the objective is maximized (``maximizes``)."""
    if maximize:
        return lambda t: -complete_val_loss(t)
    return complete_val_loss


def better(a: float, b: float | None, maximize: bool) -> bool:
    """Whether the value ``a`` beats ``b`` (None: nothing yet) in the objective's
    direction."""
    return b is None or (a > b if maximize else a < b)


def objectives(study: optuna.Study) -> list[str]:
    """The names of the study's objectives, as its stored spec gives them (``val_loss`` for a
    study of one)."""
    spec = study.user_attrs.get(SPEC_ATTR) or {}
    return list(spec.get("study", {}).get("objectives") or ["val_loss"])


def pareto_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The complete trials no other beats on every objective (the Pareto set), by number; for
    a study of one objective, its best trial alone."""
    from optuna.trial import TrialState

    if len(study.directions) == 1:
        best = best_or_none(study)
        return [] if best is None else [best]
    return pareto_front(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def pareto_front(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """The trials of ``trials`` with values that no other's dominate (as low or lower on
    every objective, lower on one: every objective of hpo is minimized), by number."""
    done = [t for t in trials if t.values]
    return sorted(
        (t for t in done if not any(_dominates(u.values, t.values) for u in done)),
        key=lambda t: t.number,
    )


def _dominates(a: list[float], b: list[float]) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def devices(device: str, world_size: int | None) -> str:
    """A trial's devices as shown: ``cpu``, ``cuda:NVIDIA H200 x2`` (a gang of ranks)."""
    return f"{device} x{world_size}" if world_size and world_size > 1 else device


def best_or_none(study: optuna.Study) -> FrozenTrial | None:
    """The study's best complete trial, or None before the first one completed. With several
    objectives: the trial of the Pareto set with the lowest validation loss."""
    if len(study.directions) > 1:
        return min(pareto_trials(study), key=complete_val_loss, default=None)
    try:
        return study.best_trial
    except ValueError:
        return None


def state_counts(trials: Iterable[FrozenTrial]) -> dict[str, int]:
    """Trials by state name, every state present (zero where none), with ``PAUSED``
    (``hpo.search.schedulers.continuation``) apart from ``WAITING`` where a trial is paused."""
    from optuna.trial import TrialState

    counts = {s.name: 0 for s in TrialState}
    for t in trials:
        if is_paused(t):
            counts["PAUSED"] = counts.get("PAUSED", 0) + 1
        else:
            counts[t.state.name] += 1
    return counts


def format_value(v: Any) -> str:
    """A param or attr for a table: floats to 4 significant digits, the rest as they are."""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def safe_name(name: str) -> str:
    """A study's name as a file or folder name: anything but letters, digits and ``-_.``
    becomes ``_``."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def iso(t: dt.datetime | None) -> str | None:
    """A time as ISO 8601 to the second, or None."""
    return t.isoformat(timespec="seconds") if t else None


def reason(e: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


HISTORY_STEPS = 100
"""The most evaluations the ``metrics`` attr holds (``add_to_history``). A trial's attr is
one database value (MySQL's TEXT holds 64 KiB; a step takes up to ~450 bytes), so it must
not grow without bound."""


def add_to_history(
    history: dict[str, dict[str, Any]], step: int, metrics: dict[str, Any], stride: int = 1
) -> int:
    """Add an evaluation's ``metrics`` (less the lists: those per class) to ``history``
    (the ``metrics`` attr) under ``step``.

    The history keeps the first step, the latest, and the steps that are multiples of
    ``stride``; past ``HISTORY_STEPS`` entries the stride doubles (and the history is
    thinned to it): it spans the whole fit evenly, at a coarser grain the longer the fit.

    Returns:
        The stride, to pass with the next step.
    """
    keys = list(history)
    if len(keys) > 1 and int(keys[-1]) % stride:  # the latest is no longer the latest
        del history[keys[-1]]
    history[str(step)] = {k: v for k, v in metrics.items() if not isinstance(v, list)}
    while len(history) > HISTORY_STEPS:
        stride *= 2
        first = next(iter(history))
        for key in list(history):
            if key not in (first, str(step)) and int(key) % stride:
                del history[key]
    return stride
