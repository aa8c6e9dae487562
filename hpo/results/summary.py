"""Summaries of studies and trials for the terminal: status, best trial, study list, progress.

Plain data first (dicts a script can read with ``--json``), text formatting second.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from hpo.records import (
    BEST_METRICS_ATTR,
    FIRST_GUESSES_ATTR,
    RESUMED_FROM_ATTR,
    RETRAIN_ATTR,
    SEED_SPREAD_ATTR,
    STOPPED_ATTR,
    best_or_none,
    devices,
    format_value,
    iso,
    maximizes,
    metric,
    objectives,
    pareto_trials,
    state_counts,
    trial_record,
    val_loss,
)

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial


OVERFIT_GAP = 0.1
"""``hpo best --overfit-gap``'s default: a training score (accuracy, or the objective's
training counterpart) above the validation one by more than this is flagged."""


def overfitting(
    best_metrics: dict[str, Any], metric: str = "val_loss", gap: float = OVERFIT_GAP
) -> dict[str, Any] | None:
    """The train vs validation gap of a trial's best evaluation (``best_metrics``).

    Compared: ``accuracy``, ``loss`` and the objective's training counterpart (``f1`` for
    ``val_f1``), each where both ``train_`` and ``val_`` are recorded. A gap is how much
    better training does: ``train - val`` for a score, ``val - train`` for a loss. Training's
    numbers are of the batches it trained since the evaluation before (dropout and
    augmentation on), as the fit loop counts them.

    Args:
        best_metrics: the trial's ``best_metrics`` attr.
        metric: the study's objective (``study.metric``).
        gap: the threshold: a score's gap above it flags the trial (a loss's gap is shown,
            never flagged: its scale is the task's).

    Returns:
        ``{"threshold", "flagged", "over": [names past it], "gaps": {name: {"train",
        "val", "gap"}}}``, or None where no pair was recorded (a custom job, a script that
        reports no ``train_`` metric).
    """
    names = ["accuracy", "loss"]
    bare = metric.removeprefix("val_")
    if metric.startswith("val_") and bare not in names:
        names.append(bare)
    gaps: dict[str, dict[str, float]] = {}
    for name in names:
        train, val = best_metrics.get(f"train_{name}"), best_metrics.get(f"val_{name}")
        if isinstance(train, (int, float)) and isinstance(val, (int, float)):
            diff = val - train if name == "loss" else train - val
            gaps[name] = {"train": train, "val": val, "gap": round(diff, 6)}
    if not gaps:
        return None
    over = [n for n, g in gaps.items() if n != "loss" and g["gap"] > gap]
    return {"threshold": gap, "flagged": bool(over), "over": over, "gaps": gaps}


def best_record(
    study: optuna.Study, attrs: dict[str, Any] | None = None, overfit_gap: float = OVERFIT_GAP
) -> dict[str, Any] | None:
    """The best complete trial of the study (by its direction) with the study's name, its
    objective's name (``metric``) and ``direction``, or None if none completed; with
    ``seed_spread`` (``hpo.search.convergence``) where the study measured it.

    With the metrics of its best evaluation (``best_metrics``, ``{}`` where the job
    recorded none) and their train vs validation gap (``overfitting``, flagged past
    ``overfit_gap``; None without training metrics).

    ``attrs``: the study's user attrs where the caller read them already.
    """
    best = best_or_none(study)
    if best is None:
        return None
    name = metric(study)
    best_metrics = best.user_attrs.get(BEST_METRICS_ATTR) or {}
    record = {
        "study": study.study_name,
        "metric": name,
        "direction": "maximize" if maximizes(study) else "minimize",
        **trial_record(best),
        "best_metrics": best_metrics,
        "overfitting": overfitting(best_metrics, name, overfit_gap),
    }
    spread = (study.user_attrs if attrs is None else attrs).get(SEED_SPREAD_ATTR)
    if spread:
        record["seed_spread"] = spread
    return record


def pareto_records(study: optuna.Study) -> list[dict[str, Any]]:
    """The Pareto set of a study of several objectives, by trial number: each trial's record
    (``hpo.records.trial_record``) with ``objectives``, objective name -> its value."""
    names = objectives(study)
    return [
        {"study": study.study_name, **trial_record(t), "objectives": dict(zip(names, t.values))}
        for t in pareto_trials(study)
    ]


def best_text(study: optuna.Study, overfit_gap: float = OVERFIT_GAP) -> str | None:
    """What ``hpo best`` prints: the best trial (its train vs validation gap flagged past
    ``overfit_gap``), or the Pareto set of a study of several objectives; None before a
    trial completed."""
    if len(study.directions) > 1:
        records = pareto_records(study)
        return format_pareto(records) if records else None
    record = best_record(study, overfit_gap=overfit_gap)
    return None if record is None else format_best(record)


def status_record(study: optuna.Study) -> dict[str, Any]:
    """Counts by state, the best value and the running trials with their latest epoch."""
    from optuna.trial import TrialState

    counts = state_counts(study.get_trials(deepcopy=False))
    now = dt.datetime.now()
    running = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        step, value = max(t.intermediate_values.items(), default=(None, None))
        running.append(
            {
                "number": t.number,
                "step": step,
                # The epoch it trains (a step is a fraction of one with evals_per_epoch).
                "epoch": t.user_attrs.get("epochs_run", step),
                "value": value,  # the objective's latest report (``metric``)
                "val_loss": value,  # its older name, kept for scripts that read it
                "epochs_planned": t.params.get("epochs", t.user_attrs.get("epochs_planned")),
                "worker": t.user_attrs.get("worker"),
                "device": t.user_attrs.get("device"),
                "world_size": t.user_attrs.get("world_size", 1),
                "seconds": (now - t.datetime_start).total_seconds() if t.datetime_start else None,
            }
        )
    attrs = study.user_attrs
    best = best_record(study, attrs)
    record = {
        "study": study.study_name,
        "counts": counts,
        "metric": metric(study),
        "best": None if best is None else {"number": best["number"], "value": best["value"]},
        "running": running,
        "retrain": attrs.get(RETRAIN_ATTR),
    }
    # Only where the study has them: a study without warm start or convergence reads as before.
    for key, attr in (
        ("seed_spread", SEED_SPREAD_ATTR),
        ("stopped", STOPPED_ATTR),
        ("first_guesses", FIRST_GUESSES_ATTR),
    ):
        if attrs.get(attr):
            record[key] = attrs[attr]
    return record


def studies_records(storage: optuna.storages.BaseStorage) -> list[dict[str, Any]]:
    """Every study in the storage with its trial counts and best value."""
    import optuna

    out = []
    for s in optuna.get_all_study_summaries(storage, include_best_trial=True):
        study = optuna.load_study(study_name=s.study_name, storage=storage)
        counts = state_counts(study.get_trials(deepcopy=False))
        # Optuna summarizes no best trial of a study of several objectives.
        best = s.best_trial if s.directions is None else best_or_none(study)
        out.append(
            {
                "study": s.study_name,
                "counts": {k: n for k, n in counts.items() if n},
                "best_value": val_loss(best) if best else None,
                "created": iso(s.datetime_start),
            }
        )
    return out


# --------------------------------------------------------------------------------------------
# Text.


def format_params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={format_value(v)}" for k, v in params.items())


def format_counts(counts: dict[str, int]) -> str:
    return "  ".join(f"{k.lower()} {n}" for k, n in counts.items() if n) or "no trials"


def format_status(record: dict[str, Any], gpus: dict[str, str | None] | None = None) -> str:
    """The status as text; ``gpus`` maps worker names to the GPU each is pinned to."""
    lines = [f"study {record['study']}", f"  trials   {format_counts(record['counts'])}"]
    best, name = record["best"], record.get("metric", "val_loss")
    lines.append(
        f"  best     #{best['number']} {name} {best['value']:.4f}"
        f"{format_spread(record.get('seed_spread'), short=True)}"
        if best
        else "  best     none yet (no complete trial)"
    )
    if record.get("stopped"):
        lines.append(f"  stopped  {record['stopped']}")
    if record.get("first_guesses"):
        lines.append(f"  first    {'; '.join(record['first_guesses'])}")
    if record["running"]:
        lines.append("  running")
        for r in record["running"]:
            epoch = f"epoch {r.get('epoch', r['step']) or 0}/{r['epochs_planned'] or '?'}"
            loss = f"{name} {r['val_loss']:.4f}" if r["val_loss"] is not None else "starting"
            secs = f"{r['seconds']:.0f}s" if r["seconds"] is not None else ""
            gpu = (gpus or {}).get(r["worker"])
            where = f"{r['worker'] or ''}" + (f" gpu {gpu}" if gpu is not None else "")
            if gpu is None and r.get("device"):  # as the trial recorded it (a first report)
                where += f" {devices(r['device'], r.get('world_size'))}"
            lines.append(f"    #{r['number']:<4} {epoch:<11} {loss:<17} {where} {secs}")
    retrain = record.get("retrain")
    if retrain:
        tested = (
            f"test_loss {retrain['test_loss']:.4f} acc {retrain['test_accuracy']:.3f} on "
            f"{retrain['test_examples']}"
            if retrain.get("test_loss") is not None
            else "no test split"
        )
        lines.append(
            f"  retrain  #{retrain['trial']} for {retrain['epochs']} epochs: {tested}"
            f" -> {retrain['out']}"
        )
    return "\n".join(lines)


def format_best(record: dict[str, Any]) -> str:
    attrs, name = record["user_attrs"], record.get("metric", "val_loss")
    lines = [
        f"best trial of {record['study']}: #{record['number']}",
        f"  {name:<13} {record['value']:.6f}"
        + ("  (maximized)" if record.get("direction") == "maximize" else ""),
    ]
    if record.get("seed_spread"):
        lines.append(f"  {'seed spread':<13} {format_spread(record['seed_spread'])}")
    for key in (
        "val_accuracy",
        "best_epoch",
        "epochs_run",
        "epochs_planned",
        "train_seconds",
        "samples_per_second",
        "device",
        "world_size",
        "checkpoint",
    ):
        if key in attrs:
            lines.append(f"  {key:<13} {format_value(attrs[key])}")
    lines += format_overfitting(record.get("overfitting"))
    lines.append("  params")
    lines += [f"    {k:<14} {format_value(v)}" for k, v in record["params"].items()]
    curve = " ".join(f"{float(v):.4f}" for v in record["intermediate_values"].values())
    lines.append(f"  {name} by epoch  {curve}")
    return "\n".join(lines)


def format_overfitting(over: dict[str, Any] | None) -> list[str]:
    """The train vs validation lines of ``hpo best`` (``overfitting``): one per metric, and
    the flag where a gap is past the threshold."""
    if not over:
        return []
    lines = ["  train vs val (best evaluation)"]
    for name, g in over["gaps"].items():
        better = "val - train" if name == "loss" else "train - val"
        lines.append(
            f"    {name:<14} train {g['train']:.4f}  val {g['val']:.4f}  "
            f"gap {g['gap']:+.4f} ({better})"
        )
    if over["flagged"]:
        lines.append(
            f"  OVERFITTING: training beats validation by more than {over['threshold']:g} in "
            + ", ".join(over["over"])
            + " (--overfit-gap)"
        )
    return lines


def format_pareto(records: list[dict[str, Any]]) -> str:
    """The Pareto set as a table: trial, each objective, the hyperparameters."""
    names = list(records[0]["objectives"])
    head = ["trial", *names, "hyperparameters"]  # "params" may be an objective
    rows = [
        [
            f"#{r['number']}",
            *(format_value(v) for v in r["objectives"].values()),
            format_params(r["params"]),
        ]
        for r in records
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    lines = [
        f"Pareto set of {records[0]['study']}: {len(records)} trials "
        f"(none is beaten on every objective: {', '.join(names)})"
    ]
    for row in (head, *rows):
        lines.append(
            "  " + "  ".join(f"{x:<{w}}" for x, w in zip(row[:-1], widths)) + "  " + row[-1]
        )
    return "\n".join(lines)


def format_spread(spread: dict[str, Any] | None, short: bool = False) -> str:
    """The seed spread (``hpo.search.convergence``) as shown beside the best value."""
    if not spread:
        return ""
    n, std = len(spread["values"]), spread["std"]
    if short:
        return f"  (seed spread ±{std:.4f} over {n} seeds of #{spread['trial']})"
    return (
        f"std {std:.4f}, {spread['min']:.4f}..{spread['max']:.4f} over {n} seeds "
        f"({', '.join(map(str, spread['seeds']))}) of #{spread['trial']}"
    )


def format_studies(records: list[dict[str, Any]]) -> str:
    if not records:
        return "no studies"
    width = max(len(r["study"]) for r in records)
    lines = []
    for r in records:
        best = f"best {r['best_value']:.4f}" if r["best_value"] is not None else "best -"
        lines.append(f"{r['study']:<{width}}  {best:<12}  {format_counts(r['counts'])}")
    return "\n".join(lines)


def format_trial(
    trial: FrozenTrial,
    done: int,
    n_trials: int | None,
    best: float | None,
    new_best: bool = False,
    metric: str = "val_loss",
) -> str:
    """One progress line for a finished trial; ``new_best``: it is the study's best now;
    ``metric``: the objective's name (``study.metric``)."""
    total = f"/{n_trials}" if n_trials else ""
    attrs = trial.user_attrs
    run = attrs.get("epochs_trained", attrs.get("epochs_run", len(trial.intermediate_values)))
    epochs = f"{run:g}/{attrs.get('epochs_planned', trial.params.get('epochs', '?'))}"
    if trial.state.name == "COMPLETE":
        what = f"{metric} {val_loss(trial):.4f}"
        if metric != "val_accuracy":
            what += f"  acc {attrs.get('val_accuracy', float('nan')):.3f}"
    elif trial.state.name == "PRUNED":
        reason = attrs.get("prune_reason", "pruned")
        what = f"pruned at step {max(trial.intermediate_values, default=0)}" + (
            f": {reason}" if reason != "pruned" else ""
        )
    else:
        what = f"failed: {attrs.get('fail_reason', 'unknown error')}"
    if RESUMED_FROM_ATTR in attrs:
        what += f" (resumes #{attrs[RESUMED_FROM_ATTR]})"
    best_s = f"best {best:.4f}" if best is not None else "best -"
    if new_best:
        best_s = "new " + best_s
    secs = attrs.get("train_seconds")
    secs_s = f"{secs:6.1f}s" if isinstance(secs, (int, float)) else "       "
    return (
        f"[{done:>3}{total}] trial {trial.number:<4} {trial.state.name:<8} epochs {epochs:<6}"
        f"{secs_s}  {what:<34} {best_s}  {format_params(trial.params)}"
    )
