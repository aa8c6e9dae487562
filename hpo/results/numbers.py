"""A study's numbers, as plain data that the report, its figures and the tests read: what each
trial cost, the pruning savings, the progress of the best value, the anytime curve, and the
summary of all of them (``study_numbers``).

Pruning savings compare what the finished (complete + pruned) trials ran with what training
each of them to its planned epochs would have cost: a trial's planned seconds are its own
seconds per epoch times its planned epochs. Complete trials that stopped early (early stopping)
count too, so the savings are those of every early stop, the pruner's and the job's.

A configuration that the ``promotion`` pruner paused and resumed is one trial that paused and
its continuations, each resumed from the last one's checkpoint with the job's attrs counting
from the configuration's start: the savings count it once, as its last finished attempt; the
anytime curve counts each attempt's own part.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hpo.records import (
    BEST_METRICS_ATTR,
    RETRAIN_ATTR,
    best_or_none,
    complete_val_loss,
    maximizes,
    metric,
    rank_key,
    state_counts,
    val_loss,
)
from hpo.results.summary import pareto_records

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial


def trial_cost(trial: FrozenTrial) -> dict[str, float]:
    """What a finished trial ran and what running it to its planned epochs would have cost.

    Reads the user attrs ``epochs_run``, ``epochs_planned`` and ``train_seconds``; where they
    are missing, the reported epochs, the ``epochs`` param and the trial's wall time stand in.

    A trial on N devices (``world_size``) counts N device-seconds a second.

    Returns:
        ``epochs_run``, ``epochs_planned``, ``seconds_run``, ``seconds_planned`` (device
        seconds).
    """
    attrs = trial.user_attrs
    steps = trial.intermediate_values
    epochs_run = float(
        attrs.get("epochs_trained", attrs.get("epochs_run", math.ceil(max(steps)) if steps else 0))
    )
    epochs_planned = float(attrs.get("epochs_planned", trial.params.get("epochs", epochs_run)))
    epochs_planned = max(epochs_planned, epochs_run)
    seconds = attrs.get("train_seconds")
    if not isinstance(seconds, (int, float)):
        start, end = trial.datetime_start, trial.datetime_complete
        seconds = (end - start).total_seconds() if start and end else 0.0
    seconds = float(seconds) * max(1, int(attrs.get("world_size", 1)))
    planned = seconds * epochs_planned / epochs_run if epochs_run > 0 else seconds
    return {
        "epochs_run": epochs_run,
        "epochs_planned": epochs_planned,
        "seconds_run": seconds,
        "seconds_planned": planned,
    }


def savings(trials: Sequence[FrozenTrial]) -> dict[str, Any]:
    """Epochs and device-hours the finished trials ran vs. running each to its planned epochs.

    Args:
        trials: any trials; only complete and pruned ones count.

    Returns:
        ``trials`` (how many counted), ``epochs_run``, ``epochs_planned``,
        ``device_hours_run``, ``device_hours_planned``, ``saved_fraction`` (of device-hours)
        and ``epochs_saved_by_pruning`` / ``epochs_saved_by_early_stopping``.
    """
    total = {"epochs_run": 0.0, "epochs_planned": 0.0, "seconds_run": 0.0, "seconds_planned": 0.0}
    by_pruning = by_stopping = 0.0
    counted = 0
    for t, cost in _configurations(trials):
        counted += 1
        for k in total:
            total[k] += cost[k]
        saved = cost["epochs_planned"] - cost["epochs_run"]
        if t.state.name == "PRUNED":
            by_pruning += saved
        else:
            by_stopping += saved
    planned = total["seconds_planned"]
    return {
        "trials": counted,
        "epochs_run": total["epochs_run"],
        "epochs_planned": total["epochs_planned"],
        "device_hours_run": total["seconds_run"] / 3600,
        "device_hours_planned": planned / 3600,
        "saved_fraction": 1 - total["seconds_run"] / planned if planned > 0 else 0.0,
        "epochs_saved_by_pruning": by_pruning,
        "epochs_saved_by_early_stopping": by_stopping,
    }


def _chain(trial: FrozenTrial) -> int | None:
    """The configuration of a trial that paused or resumed a paused one, else None."""
    from hpo.records import is_continuation, was_paused
    from hpo.search.schedulers.continuation import configuration

    return configuration(trial) if was_paused(trial) or is_continuation(trial) else None


def _configurations(trials: Sequence[FrozenTrial]) -> list[tuple[FrozenTrial, dict]]:
    """The finished (complete, pruned) trials with their ``trial_cost``, a paused and
    resumed configuration once: its last finished attempt, whose attrs hold all of it."""
    last: dict[Any, tuple[FrozenTrial, dict]] = {}
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    for i, t in sorted(enumerate(finished), key=lambda it: it[1].number):
        chain = _chain(t)
        last[("chain", chain) if chain is not None else ("trial", i)] = (t, trial_cost(t))
    return list(last.values())


def study_numbers(study: optuna.Study) -> dict[str, Any]:
    """The numbers a report shows: counts by state, the best trial, why trials stopped, savings.

    Returns:
        Plain JSON-ready data: ``study``, ``counts`` (every state), ``best`` (None before the
        first complete trial, else ``number``, ``value``, ``params``, ``val_accuracy``,
        ``per_class`` and ``confusion``, the validation confusion matrix, where recorded),
        ``reasons`` (``PRUNED`` / ``FAIL`` -> reason -> count), ``savings`` and ``anytime``
        (the best value against wall time and epochs, see ``anytime``); with several
        objectives ``pareto`` too, the Pareto set (``number``, ``objectives``, ``params``),
        and ``best`` is its trial of the lowest validation loss; with the ``pbt`` scheduler
        ``population`` too (``population``); after ``hpo retrain``, ``retrain`` (its
        ``trial``, ``test_accuracy``, ``test_f1``, ``test_per_class``, ``test_confusion``);
        where the trials searched ``imbalance``, ``by_remedy`` (``by_remedy``).
    """
    trials = study.get_trials(deepcopy=False)
    counts = state_counts(trials)
    reasons: dict[str, dict[str, int]] = {"PRUNED": {}, "FAIL": {}}
    for t in trials:
        if t.state.name in reasons:
            key = "prune_reason" if t.state.name == "PRUNED" else "fail_reason"
            reason = str(t.user_attrs.get(key, "unknown"))
            reasons[t.state.name][reason] = reasons[t.state.name].get(reason, 0) + 1
    best_trial = best_or_none(study)
    best = (
        None
        if best_trial is None
        else {
            "number": best_trial.number,
            "value": val_loss(best_trial),
            "params": dict(best_trial.params),
            "val_accuracy": best_trial.user_attrs.get("val_accuracy"),
            "per_class": per_class(best_trial),
            "confusion": (best_trial.user_attrs.get(BEST_METRICS_ATTR) or {}).get("val_confusion"),
            "device": best_trial.user_attrs.get("device"),
            "world_size": best_trial.user_attrs.get("world_size", 1),
        }
    )
    numbers: dict[str, Any] = {
        "study": study.study_name,
        "metric": metric(study),
        "direction": "maximize" if maximizes(study) else "minimize",
        "counts": counts,
        "best": best,
        "reasons": reasons,
        "savings": savings(trials),
        "anytime": anytime(study),
    }
    retrain = study.user_attrs.get(RETRAIN_ATTR)
    if retrain:  # the test split's results by class (hpo.results.classes)
        numbers["retrain"] = {
            k: retrain.get(k)
            for k in ("trial", "test_accuracy", "test_f1", "test_per_class", "test_confusion")
        }
    remedies = by_remedy(study, trials)
    if remedies:
        numbers["by_remedy"] = remedies
    members = population(study)
    if members is not None:
        numbers["population"] = members
    if len(study.directions) > 1:
        numbers["pareto"] = [
            {k: r[k] for k in ("number", "objectives", "params")} for r in pareto_records(study)
        ]
    return numbers


def by_remedy(study: optuna.Study, trials: Sequence[FrozenTrial]) -> dict[str, Any]:
    """For a study that searched the imbalance remedy (the ``imbalance`` param): each
    remedy's best complete trial (the study's direction) and its validation recall by class
    at its best evaluation (``per_class``), remedy -> ``{"trial", "value", "classes",
    "recall"}``; ``{}`` where the trials did not search it or recorded no recall by class."""
    if len(study.directions) > 1:
        return {}
    key = rank_key(maximizes(study))
    out: dict[str, Any] = {}
    complete = [t for t in trials if t.state.name == "COMPLETE" and "imbalance" in t.params]
    for t in sorted(complete, key=key):
        remedy = str(t.params["imbalance"])
        per = per_class(t)
        if remedy in out or not per or "recall" not in per:
            continue
        out[remedy] = {
            "trial": t.number,
            "value": val_loss(t),
            "classes": per["classes"],
            "recall": per["recall"],
        }
    return out


def per_class(trial: FrozenTrial) -> dict[str, list[Any]] | None:
    """The validation precision, recall and F1 of each class at the trial's best evaluation
    (from ``best_metrics``), lists in class order, with ``classes`` (the class names where the
    trial recorded them, in ``class_weights``, else the indexes), and ``examples`` (each
    class's validation examples) where it recorded the confusion matrix; None where it has
    none."""
    best = trial.user_attrs.get(BEST_METRICS_ATTR) or {}
    lists = {
        name: best[f"val_{name}_per_class"]
        for name in ("precision", "recall", "f1")
        if isinstance(best.get(f"val_{name}_per_class"), list)
    }
    if not lists:
        return None
    n = max(len(v) for v in lists.values())
    names = list(trial.user_attrs.get("class_weights") or {})
    out = {"classes": names if len(names) == n else [str(i) for i in range(n)], **lists}
    confusion = best.get("val_confusion")
    if isinstance(confusion, list) and len(confusion) == n:
        out["examples"] = [sum(row) for row in confusion]
    return out


def progress(study: optuna.Study) -> dict[str, list[float]]:
    """The best value so far (the study's direction) after each finished trial, and the
    device-hours spent by then.

    Returns:
        ``trials`` (finished trials so far), ``device_hours`` and ``best``: one entry per
        finished (complete or pruned) trial, from the first complete one on.
    """
    out: dict[str, list[float]] = {"trials": [], "device_hours": [], "best": []}
    sign = -1 if maximizes(study) else 1
    n, hours, best = 0, 0.0, math.inf  # the best, times sign: lower is better
    for t in study.get_trials(deepcopy=False):
        if t.state.name not in ("COMPLETE", "PRUNED"):
            continue
        n += 1
        hours += trial_cost(t)["seconds_run"] / 3600
        if t.state.name == "COMPLETE":
            best = min(best, sign * complete_val_loss(t))
        if math.isfinite(best):
            out["trials"].append(n)
            out["device_hours"].append(hours)
            out["best"].append(sign * best)
    return out


def anytime(study: optuna.Study) -> dict[str, list[float]]:
    """The best value so far against wall time and against epochs trained (the anytime curve).

        One point per finished (complete or pruned) trial, in the order they finished, from the
        first complete one on: ``seconds`` since the study's first trial started, ``epochs`` the
        finished trials had trained by then (``trial_cost``'s ``epochs_run``), ``best`` value of
        the complete trials by then (the study's direction; with several objectives, the lowest
    validation loss), and ``trial`` (its number).
    """
    out: dict[str, list[float]] = {"seconds": [], "epochs": [], "best": [], "trial": []}
    trials = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state.name in ("COMPLETE", "PRUNED") and t.datetime_complete is not None
    ]
    starts = [t.datetime_start for t in study.get_trials(deepcopy=False) if t.datetime_start]
    if not starts:
        return out
    first = min(starts)
    # Several objectives: the curve of the validation loss (the first objective, minimized).
    single = len(study.directions) == 1
    better = max if single and study.direction.name == "MAXIMIZE" else min
    epochs, best = 0.0, None
    so_far: dict[int, float] = {}  # of a paused configuration, its attempts' epochs by now
    for t in sorted(trials, key=lambda t: (t.datetime_complete, t.number)):
        run, chain = trial_cost(t)["epochs_run"], _chain(t)
        if chain is not None:  # the attempt's own part: its attrs count from the start
            run, so_far[chain] = run - so_far.get(chain, 0.0), run
        epochs += run
        value = val_loss(t) if t.state.name == "COMPLETE" else None
        if value is not None:
            best = value if best is None else better(best, value)
        if best is not None:
            assert t.datetime_complete is not None  # trials without one are left out above
            out["seconds"].append((t.datetime_complete - first).total_seconds())
            out["epochs"].append(epochs)
            out["best"].append(best)
            out["trial"].append(t.number)
    return out


def population(study: optuna.Study) -> list[dict[str, Any]] | None:
    """The members of a ``pbt`` study (``hpo.search.schedulers.pbt``), by number: each one's final
    validation loss (None before it completed) and its schedule of params, ``[{step, parent,
    params}]``: its own from step 0, then at each exploit the parent it copied and the params
    it went on with. None for a study of another scheduler."""
    from optuna.trial import TrialState

    from hpo.search.schedulers.continuation import configuration
    from hpo.search.schedulers.pbt import LINEAGE_ATTR, is_pbt, schedule

    if not is_pbt(study):
        return None
    members: dict[int, list[FrozenTrial]] = {}
    for t in study.get_trials(deepcopy=False):
        members.setdefault(configuration(t), []).append(t)
    found = []
    for member, chain in sorted(members.items()):
        done = [t for t in chain if t.state == TrialState.COMPLETE]
        latest = max(chain, key=lambda t: len(t.user_attrs.get(LINEAGE_ATTR, ())))
        parents = [None] + [e["parent"] for e in latest.user_attrs.get(LINEAGE_ATTR, ())]
        steps = schedule(chain)
        found.append(
            {
                "member": member,
                "value": val_loss(done[-1]) if done else None,
                "schedule": [
                    {"step": step, "parent": parent, "params": params}
                    for (step, params), parent in zip(steps, parents)
                ],
            }
        )
    return found
