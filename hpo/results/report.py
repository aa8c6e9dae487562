"""Report: a study's numbers and figures -> one self-contained HTML file and optuna-dashboard.

``hpo report STUDY`` writes ``dashboards/STUDY.html`` (plotly.js inlined once, so it opens with
no network) and saves the same figures and a markdown summary note into the study, where
optuna-dashboard shows them. The numbers come first
(``hpo.results.numbers.study_numbers``: plain data that the header, the note and the tests
read), the figures second, the HTML last.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpo import __version__
from hpo.records import devices, format_value, safe_name
from hpo.results.classes import (
    CONFUSION_TITLES,
    class_figures,
    class_sections,
    confusion_keys,
)
from hpo.results.figures import FIGURE_TITLES, comparison_figure, study_figures
from hpo.results.numbers import progress, study_numbers
from hpo.results.summary import format_params

if TYPE_CHECKING:
    import optuna
    import plotly.graph_objects as go

DEFAULT_DIR = "dashboards"


# --------------------------------------------------------------------------------------------
# Outputs.


def default_path(study_name: str) -> Path:
    """``dashboards/STUDY.html`` relative to the working directory."""
    return Path(DEFAULT_DIR) / f"{safe_name(study_name)}.html"


def render_html(
    numbers: dict[str, Any],
    figures: dict[str, go.Figure],
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
    # Each figure's HTML; plotly.js goes into the first one the page shows: the heatmaps by
    # class come before the others.
    order = sorted(figures, key=lambda k: k not in CONFUSION_TITLES)
    divs = {
        key: figures[key].to_html(
            full_html=False,
            include_plotlyjs=i == 0,
            div_id=f"hpo-{key}",
            config={"displaylogo": False},
        )
        for i, key in enumerate(order)
    }
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>hpo report: {name}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Study {name}</h1>",
        f'<p class="meta">{html.escape(_generated(storage))}</p>',
        _numbers_table([numbers, *others]),
        _best_table(numbers),
        class_sections(numbers, divs),
        _pareto_table(numbers),
        _population_table(numbers),
        _reasons(numbers),
        # Machine-readable numbers; "<\/" keeps a study name from closing the script early.
        '<script type="application/json" id="hpo-numbers">'
        + json.dumps([numbers, *others]).replace("</", "<\\/")
        + "</script>",
    ]
    for key in figures:
        if key not in CONFUSION_TITLES:  # those are beside their tables, above
            title = html.escape(FIGURE_TITLES.get(key, key))
            parts.append(f'<section id="{key}"><h2>{title}</h2>{divs[key]}</section>')
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
        lines.append(
            f"- best: trial {best['number']}, {numbers.get('metric', 'val_loss')} "
            f"{best['value']:.6f}"
            + (f", val accuracy {acc:.4f}" if isinstance(acc, (int, float)) else "")
        )
        lines.append(f"- best params: {params}")
    for state, label in (("PRUNED", "pruned"), ("FAIL", "failed")):
        if numbers["reasons"][state]:
            why = ", ".join(f"{r} {n}" for r, n in numbers["reasons"][state].items())
            lines.append(f"- {label} because: {why}")
    s = numbers["savings"]
    if s["trials"]:
        lines.append(
            f"- ran {s['epochs_run']:g} of {s['epochs_planned']:g} planned epochs, "
            f"{s['device_hours_run']:.3f} of {s['device_hours_planned']:.3f} "
            f"device-hours ({s['saved_fraction']:.0%} saved)"
        )
    shown = {"pareto": "pareto" in numbers, "comparison": False}
    shown.update({k: k in confusion_keys(numbers) for k in CONFUSION_TITLES})
    figures = ", ".join(t for k, t in FIGURE_TITLES.items() if shown.get(k, True))
    lines.append(f"- figures on the study's page: {figures}")
    if report_path:
        lines.append(f"- HTML report: `{report_path}`")
    lines.append(f"- {_generated('')}")
    return "\n".join(lines) + "\n"


def save_to_dashboard(study: optuna.Study, figures: dict[str, go.Figure], note: str) -> None:
    """Save the figures (``hpo-KEY``, replaced on each run) and the note into the study."""
    from optuna_dashboard import save_note, save_plotly_graph_object

    for key, fig in figures.items():
        save_plotly_graph_object(study, fig, graph_object_id=f"hpo-{key}")
    save_note(study, note)


def write_pngs(figures: dict[str, go.Figure], directory: Path) -> list[Path] | str:
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
        pio.write_images(
            list(figures.values()),
            paths,
            width=1100,
            height=[fig.layout.height or 500 for fig in figures.values()],
        )
    except Exception as e:  # kaleido without a working Chrome, among others
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return f"kaleido could not render: {first}"
    return paths


def write_report(
    study: optuna.Study,
    out: Path | None = None,
    *,
    compare: Sequence[optuna.Study] = (),
    dashboard: bool = True,
    storage: str = "",
) -> tuple[Path, dict[str, Any], dict[str, go.Figure]]:
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
    figures = {
        **class_figures(numbers),
        **study_figures(study, numbers["savings"], numbers["anytime"]),
    }
    shown = dict(figures)
    if compare:
        shown["comparison"] = comparison_figure(
            {s.study_name: progress(s) for s in (study, *compare)}
        )
    page = render_html(numbers, shown, others=[study_numbers(s) for s in compare], storage=storage)
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
.by-class { display: flex; flex-wrap: wrap; gap: 2em; align-items: flex-start; }
"""


def _generated(storage: str) -> str:
    when = dt.datetime.now().isoformat(timespec="seconds")
    where = f" from {storage}" if storage else ""
    return f"generated {when} by hpo {__version__}{where}"


def _numbers_table(all_numbers: Sequence[dict[str, Any]]) -> str:
    head = (
        "study",
        "best value",
        "metric",
        "best trial",
        "complete",
        "pruned",
        "failed",
        "running",
        "waiting",
        "epochs run / planned",
        "device-hours run / planned",
        "saved",
    )
    rows = []
    for n in all_numbers:
        c, s, best = n["counts"], n["savings"], n["best"]
        cells = [
            html.escape(n["study"]),
            f"{best['value']:.6f}" if best else "-",
            html.escape(n.get("metric", "val_loss")),
            f"#{best['number']}" if best else "-",
            *(str(c[k]) for k in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")),
            f"{s['epochs_run']:g} / {s['epochs_planned']:g}",
            f"{s['device_hours_run']:.3f} / {s['device_hours_planned']:.3f}",
            f"{s['saved_fraction']:.0%}",
        ]
        rows.append("<tr>" + "".join(f"<td>{x}</td>" for x in cells) + "</tr>")
    return (
        '<table id="numbers"><tr>'
        + "".join(f"<th>{h}</th>" for h in head)
        + "</tr>"
        + "".join(rows)
        + "</table>"
    )


def _best_table(numbers: dict[str, Any]) -> str:
    best = numbers["best"]
    if not best:
        return "<p>No complete trial yet.</p>"
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(format_value(v))}</td></tr>"
        for k, v in best["params"].items()
    )
    acc = best["val_accuracy"]
    acc_s = f", val accuracy {acc:.4f}" if isinstance(acc, (int, float)) else ""
    if best.get("device"):
        acc_s += f", on {html.escape(devices(best['device'], best.get('world_size')))}"
    what = "Lowest val loss of the Pareto set: trial" if "pareto" in numbers else "Best trial"
    name = html.escape(numbers.get("metric", "val_loss").replace("_", " "))
    return (
        f"<h2>{what} #{best['number']}: {name} {best['value']:.6f}{acc_s}</h2>"
        f'<table id="best-params"><tr><th>param</th><th>value</th></tr>{rows}</table>'
    )


def _pareto_table(numbers: dict[str, Any]) -> str:
    front = numbers.get("pareto")
    if not front:
        return ""
    names = list(front[0]["objectives"])
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ("trial", *names, "hyperparameters"))
    rows = "".join(
        f"<tr><td>#{r['number']}</td>"
        + "".join(f"<td>{format_value(v)}</td>" for v in r["objectives"].values())
        + f"<td>{html.escape(format_params(r['params']))}</td></tr>"
        for r in front
    )
    return (
        f"<h2>Pareto set: {len(front)} trials no other beats on every objective</h2>"
        f'<table id="pareto-set"><tr>{head}</tr>{rows}</table>'
    )


def _population_table(numbers: dict[str, Any]) -> str:
    """A ``pbt`` study's members: each one's final value and its params over time."""
    members = numbers.get("population")
    if not members:
        return ""

    def steps(member: dict[str, Any]) -> str:
        return "<br>".join(
            html.escape(
                f"step {s['step']}"
                + (f", from #{s['parent']}" if s["parent"] is not None else "")
                + f": {format_params(s['params'])}"
            )
            for s in member["schedule"]
        )

    rows = "".join(
        f"<tr><td>#{m['member']}</td><td>{format_value(m['value'])}</td><td>{steps(m)}</td></tr>"
        for m in members
    )
    return (
        f"<h2>Population: {len(members)} members, their params over time</h2>"
        '<table id="population"><tr><th>member</th>'
        f"<th>{html.escape(numbers.get('metric', 'val_loss').replace('_', ' '))}</th>"
        f"<th>schedule (exploits: the member copied)</th></tr>{rows}</table>"
    )


def _reasons(numbers: dict[str, Any]) -> str:
    items = []
    for state, label in (("PRUNED", "pruned"), ("FAIL", "failed")):
        for reason, n in numbers["reasons"][state].items():
            items.append(f"<li>{label}: {html.escape(reason)} &times; {n}</li>")
    return f'<ul id="reasons">{"".join(items)}</ul>' if items else ""
