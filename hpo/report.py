"""Report: a study's numbers and figures -> one self-contained HTML file and optuna-dashboard.

``hpo report STUDY`` writes ``dashboards/STUDY.html`` (plotly.js inlined once, so it opens with
no network) and saves the same figures and a markdown summary note into the study, where
optuna-dashboard shows them. The numbers come first (``study_numbers``: plain data that the
header, the note and the tests read), the figures second, the HTML last.

Pruning savings compare what the finished (complete + pruned) trials ran with what training
each of them to its planned epochs would have cost: a trial's planned seconds are its own
seconds per epoch times its planned epochs. Complete trials that stopped early (early stopping)
count too, so the savings are those of every early stop, the pruner's and the job's.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from hpo import __version__
from hpo.figures import FIGURE_TITLES, comparison_figure, study_figures
from hpo.records import best_or_none, devices, format_value, safe_name, state_counts, val_loss
from hpo.summary import format_params, pareto_records

if TYPE_CHECKING:
    import optuna
    import plotly.graph_objects as go
    from optuna.trial import FrozenTrial

DEFAULT_DIR = "dashboards"


# --------------------------------------------------------------------------------------------
# Numbers.


def trial_cost(trial: "FrozenTrial") -> dict[str, float]:
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
    epochs_run = float(attrs.get("epochs_run", math.ceil(max(steps)) if steps else 0))
    epochs_planned = float(attrs.get("epochs_planned", trial.params.get("epochs", epochs_run)))
    epochs_planned = max(epochs_planned, epochs_run)
    seconds = attrs.get("train_seconds")
    if not isinstance(seconds, (int, float)):
        start, end = trial.datetime_start, trial.datetime_complete
        seconds = (end - start).total_seconds() if start and end else 0.0
    seconds = float(seconds) * max(1, int(attrs.get("world_size", 1)))
    planned = seconds * epochs_planned / epochs_run if epochs_run > 0 else seconds
    return {"epochs_run": epochs_run, "epochs_planned": epochs_planned,
            "seconds_run": seconds, "seconds_planned": planned}


def savings(trials: "Sequence[FrozenTrial]") -> dict[str, Any]:
    """Epochs and device-hours the finished trials ran vs. running each to its planned epochs.

    Args:
        trials: any trials; only complete and pruned ones count.

    Returns:
        ``trials`` (how many counted), ``epochs_run``, ``epochs_planned``,
        ``device_hours_run``, ``device_hours_planned``, ``saved_fraction`` (of device-hours)
        and ``epochs_saved_by_pruning`` / ``epochs_saved_by_early_stopping``.
    """
    total = {"epochs_run": 0.0, "epochs_planned": 0.0, "seconds_run": 0.0,
             "seconds_planned": 0.0}
    by_pruning = by_stopping = 0.0
    counted = 0
    for t in trials:
        if t.state.name not in ("COMPLETE", "PRUNED"):
            continue
        counted += 1
        cost = trial_cost(t)
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


def study_numbers(study: "optuna.Study") -> dict[str, Any]:
    """The numbers a report shows: counts by state, the best trial, why trials stopped, savings.

    Returns:
        Plain JSON-ready data: ``study``, ``counts`` (every state), ``best`` (None before the
        first complete trial, else ``number``, ``value``, ``params``, ``val_accuracy``),
        ``reasons`` (``PRUNED`` / ``FAIL`` -> reason -> count), ``savings`` and ``anytime``
        (the best value against wall time and epochs, see ``anytime``); with several
        objectives ``pareto`` too, the Pareto set (``number``, ``objectives``, ``params``),
        and ``best`` is its trial of the lowest validation loss.
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
    best = None if best_trial is None else {
        "number": best_trial.number,
        "value": val_loss(best_trial),
        "params": dict(best_trial.params),
        "val_accuracy": best_trial.user_attrs.get("val_accuracy"),
        "device": best_trial.user_attrs.get("device"),
        "world_size": best_trial.user_attrs.get("world_size", 1),
    }
    numbers = {"study": study.study_name, "counts": counts, "best": best, "reasons": reasons,
               "savings": savings(trials), "anytime": anytime(study)}
    if len(study.directions) > 1:
        numbers["pareto"] = [{k: r[k] for k in ("number", "objectives", "params")}
                             for r in pareto_records(study)]
    return numbers


def progress(study: "optuna.Study") -> dict[str, list[float]]:
    """The best loss so far after each finished trial, and the device-hours spent by then.

    Returns:
        ``trials`` (finished trials so far), ``device_hours`` and ``best``: one entry per
        finished (complete or pruned) trial, from the first complete one on.
    """
    out: dict[str, list[float]] = {"trials": [], "device_hours": [], "best": []}
    n, hours, best = 0, 0.0, math.inf
    for t in study.get_trials(deepcopy=False):
        if t.state.name not in ("COMPLETE", "PRUNED"):
            continue
        n += 1
        hours += trial_cost(t)["seconds_run"] / 3600
        if t.state.name == "COMPLETE" and t.values:
            best = min(best, val_loss(t))
        if math.isfinite(best):
            out["trials"].append(n)
            out["device_hours"].append(hours)
            out["best"].append(best)
    return out


def anytime(study: "optuna.Study") -> dict[str, list[float]]:
    """The best value so far against wall time and against epochs trained (the anytime curve).

    One point per finished (complete or pruned) trial, in the order they finished, from the
    first complete one on: ``seconds`` since the study's first trial started, ``epochs`` the
    finished trials had trained by then (``trial_cost``'s ``epochs_run``), ``best`` value of
    the complete trials by then (the study's direction), and ``trial`` (its number).
    """
    out: dict[str, list[float]] = {"seconds": [], "epochs": [], "best": [], "trial": []}
    trials = [t for t in study.get_trials(deepcopy=False)
              if t.state.name in ("COMPLETE", "PRUNED") and t.datetime_complete is not None]
    starts = [t.datetime_start for t in study.get_trials(deepcopy=False) if t.datetime_start]
    if not starts:
        return out
    first = min(starts)
    better = max if study.direction.name == "MAXIMIZE" else min
    epochs, best = 0.0, None
    for t in sorted(trials, key=lambda t: (t.datetime_complete, t.number)):
        epochs += trial_cost(t)["epochs_run"]
        if t.state.name == "COMPLETE" and t.value is not None:
            best = t.value if best is None else better(best, t.value)
        if best is not None:
            out["seconds"].append((t.datetime_complete - first).total_seconds())
            out["epochs"].append(epochs)
            out["best"].append(best)
            out["trial"].append(t.number)
    return out


# --------------------------------------------------------------------------------------------
# Outputs.


def default_path(study_name: str) -> Path:
    """``dashboards/STUDY.html`` relative to the working directory."""
    return Path(DEFAULT_DIR) / f"{safe_name(study_name)}.html"


def render_html(
    numbers: dict[str, Any],
    figures: "dict[str, go.Figure]",
    *,
    others: Sequence[dict[str, Any]] = (),
    storage: str = "",
) -> str:
    """The whole report as one HTML page with plotly.js inlined once.

    Args:
        numbers: ``study_numbers`` of the study.
        figures: key -> figure, in the order to show.
        others: ``study_numbers`` of the studies compared with it.
        storage: the storage URL to show (already redacted).
    """
    name = html.escape(numbers["study"])
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>hpo report: {name}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Study {name}</h1>",
        f'<p class="meta">{html.escape(_generated(storage))}</p>',
        _numbers_table([numbers, *others]),
        _best_table(numbers),
        _pareto_table(numbers),
        _reasons(numbers),
        # Machine-readable numbers; "<\/" keeps a study name from closing the script early.
        '<script type="application/json" id="hpo-numbers">'
        + json.dumps([numbers, *others]).replace("</", "<\\/") + "</script>",
    ]
    for i, (key, fig) in enumerate(figures.items()):
        title = html.escape(FIGURE_TITLES.get(key, key))
        div = fig.to_html(full_html=False, include_plotlyjs=i == 0, div_id=f"hpo-{key}",
                          config={"displaylogo": False})
        parts.append(f'<section id="{key}"><h2>{title}</h2>{div}</section>')
    parts.append("</body></html>")
    return "\n".join(parts)


def note_markdown(numbers: dict[str, Any], report_path: str | None = None) -> str:
    """The markdown summary note saved into optuna-dashboard."""
    counts = ", ".join(f"{k.lower()} {n}" for k, n in numbers["counts"].items() if n)
    lines = [f"## hpo report: {numbers['study']}", "", f"- trials: {counts or 'none'}"]
    best = numbers["best"]
    if best:
        params = ", ".join(f"{k}={format_value(v)}" for k, v in best["params"].items())
        acc = best["val_accuracy"]
        lines.append(f"- best: trial {best['number']}, val loss {best['value']:.6f}"
                     + (f", val accuracy {acc:.4f}" if isinstance(acc, (int, float)) else ""))
        lines.append(f"- best params: {params}")
    for state, label in (("PRUNED", "pruned"), ("FAIL", "failed")):
        if numbers["reasons"][state]:
            why = ", ".join(f"{r} {n}" for r, n in numbers["reasons"][state].items())
            lines.append(f"- {label} because: {why}")
    s = numbers["savings"]
    if s["trials"]:
        lines.append(f"- ran {s['epochs_run']:g} of {s['epochs_planned']:g} planned epochs, "
                     f"{s['device_hours_run']:.3f} of {s['device_hours_planned']:.3f} "
                     f"device-hours ({s['saved_fraction']:.0%} saved)")
    figures = ", ".join(t for k, t in FIGURE_TITLES.items()
                        if k != "comparison" and (k != "pareto" or "pareto" in numbers))
    lines.append(f"- figures on the study's page: {figures}")
    if report_path:
        lines.append(f"- HTML report: `{report_path}`")
    lines.append(f"- {_generated('')}")
    return "\n".join(lines) + "\n"


def save_to_dashboard(study: "optuna.Study", figures: "dict[str, go.Figure]", note: str) -> None:
    """Save the figures (``hpo-KEY``, replaced on each run) and the note into the study."""
    from optuna_dashboard import save_note, save_plotly_graph_object

    for key, fig in figures.items():
        save_plotly_graph_object(study, fig, graph_object_id=f"hpo-{key}")
    save_note(study, note)


def write_pngs(figures: "dict[str, go.Figure]", directory: Path) -> list[Path] | str:
    """Static PNGs through kaleido.

    Returns:
        The files written, or why none were (kaleido missing or unable to render).
    """
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return "kaleido is not installed (pip install kaleido; it needs Chrome)"
    import plotly.io as pio

    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{key}.png" for key in figures]
    try:  # one browser for all figures: write_image would start one per figure
        pio.write_images(list(figures.values()), paths, width=1100,
                         height=[fig.layout.height or 500 for fig in figures.values()])
    except Exception as e:  # kaleido without a working Chrome, among others
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return f"kaleido could not render: {first}"
    return paths


def write_report(
    study: "optuna.Study",
    out: Path | None = None,
    *,
    compare: Sequence["optuna.Study"] = (),
    dashboard: bool = True,
    storage: str = "",
) -> tuple[Path, dict[str, Any], "dict[str, go.Figure]"]:
    """Write the HTML report of ``study`` and (by default) save its figures into the study.

    Args:
        study: the study to report.
        out: the HTML file; default ``dashboards/STUDY.html``.
        compare: other studies to compare it with (their numbers and a comparison figure).
        dashboard: also save the figures and a summary note for optuna-dashboard.
        storage: the storage URL to show in the report (already redacted).

    Returns:
        The HTML path, the study's numbers and its figures.
    """
    out = Path(out) if out is not None else default_path(study.study_name)
    numbers = study_numbers(study)
    figures = study_figures(study, numbers["savings"], numbers["anytime"])
    shown = dict(figures)
    if compare:
        shown["comparison"] = comparison_figure(
            {s.study_name: progress(s) for s in (study, *compare)})
    page = render_html(numbers, shown, others=[study_numbers(s) for s in compare],
                       storage=storage)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    if dashboard:
        save_to_dashboard(study, figures, note_markdown(numbers, str(out)))
    return out, numbers, figures


# --------------------------------------------------------------------------------------------
# HTML pieces.

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.meta { color: #666; }
section { margin-top: 2em; }
"""


def _generated(storage: str) -> str:
    when = dt.datetime.now().isoformat(timespec="seconds")
    where = f" from {storage}" if storage else ""
    return f"generated {when} by hpo {__version__}{where}"


def _numbers_table(all_numbers: Sequence[dict[str, Any]]) -> str:
    head = ("study", "best val loss", "best trial", "complete", "pruned", "failed", "running",
            "waiting", "epochs run / planned", "device-hours run / planned", "saved")
    rows = []
    for n in all_numbers:
        c, s, best = n["counts"], n["savings"], n["best"]
        cells = [
            html.escape(n["study"]),
            f"{best['value']:.6f}" if best else "-",
            f"#{best['number']}" if best else "-",
            *(str(c[k]) for k in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")),
            f"{s['epochs_run']:g} / {s['epochs_planned']:g}",
            f"{s['device_hours_run']:.3f} / {s['device_hours_planned']:.3f}",
            f"{s['saved_fraction']:.0%}",
        ]
        rows.append("<tr>" + "".join(f"<td>{x}</td>" for x in cells) + "</tr>")
    return ('<table id="numbers"><tr>' + "".join(f"<th>{h}</th>" for h in head) + "</tr>"
            + "".join(rows) + "</table>")


def _best_table(numbers: dict[str, Any]) -> str:
    best = numbers["best"]
    if not best:
        return "<p>No complete trial yet.</p>"
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(format_value(v))}</td></tr>"
                   for k, v in best["params"].items())
    acc = best["val_accuracy"]
    acc_s = f", val accuracy {acc:.4f}" if isinstance(acc, (int, float)) else ""
    if best.get("device"):
        acc_s += f", on {html.escape(devices(best['device'], best.get('world_size')))}"
    what = "Lowest val loss of the Pareto set: trial" if "pareto" in numbers else "Best trial"
    return (f"<h2>{what} #{best['number']}: val loss {best['value']:.6f}{acc_s}</h2>"
            f'<table id="best-params"><tr><th>param</th><th>value</th></tr>{rows}</table>')


def _pareto_table(numbers: dict[str, Any]) -> str:
    front = numbers.get("pareto")
    if not front:
        return ""
    names = list(front[0]["objectives"])
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ("trial", *names, "hyperparameters"))
    rows = "".join(
        f"<tr><td>#{r['number']}</td>"
        + "".join(f"<td>{format_value(v)}</td>" for v in r["objectives"].values())
        + f"<td>{html.escape(format_params(r['params']))}</td></tr>" for r in front)
    return (f"<h2>Pareto set: {len(front)} trials no other beats on every objective</h2>"
            f'<table id="pareto-set"><tr>{head}</tr>{rows}</table>')


def _reasons(numbers: dict[str, Any]) -> str:
    items = []
    for state, label in (("PRUNED", "pruned"), ("FAIL", "failed")):
        for reason, n in numbers["reasons"][state].items():
            items.append(f"<li>{label}: {html.escape(reason)} &times; {n}</li>")
    return f'<ul id="reasons">{"".join(items)}</ul>' if items else ""
