"""The report's results by class: the per-class table and the confusion matrix of the best
trial on validation (its best evaluation: ``best_metrics``), and after ``hpo retrain`` the
same of the retrained model on the test split (the study's ``hpo.results.retrain`` attr).

Where the trials searched the imbalance remedy, a table of each class's validation recall under
each remedy's best trial comes first (``study_numbers``'s ``by_remedy``).

``study_numbers`` gives them as plain data (``best.per_class``, ``best.confusion``,
``retrain.test_per_class``, ``retrain.test_confusion``); ``class_figures`` draws the
matrices as heatmaps and ``class_sections`` puts each table beside its heatmap. A heatmap's
colour is the share of the true class's examples (the row: the recall on the diagonal), so a
thinned class shows as plainly as a large one; its text is the count.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from hpo.records import format_value

if TYPE_CHECKING:
    import plotly.graph_objects as go

CONFUSION_TITLES = {
    "confusion": "Confusion matrix of the best trial (validation, at its best evaluation)",
    "test_confusion": "Confusion matrix of the retrained model (test split, hpo retrain)",
}
"""Figure key -> title of the heatmaps (``hpo.results.figures.FIGURE_TITLES`` holds them)."""
TABLE_TITLES = {
    "confusion": "Best trial by class (validation, at its best evaluation)",
    "test_confusion": "Retrained model by class (test split, hpo retrain)",
}
TEXT_CLASSES = 20
"""Up to this many classes a heatmap writes each cell's count in it."""


def _sources(numbers: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Figure key -> (per-class lists, confusion matrix) from ``study_numbers``."""
    best, retrain = numbers.get("best") or {}, numbers.get("retrain") or {}
    return {
        "confusion": (best.get("per_class"), best.get("confusion")),
        "test_confusion": (retrain.get("test_per_class"), retrain.get("test_confusion")),
    }


def confusion_keys(numbers: dict[str, Any]) -> list[str]:
    """The keys (``CONFUSION_TITLES``) of the confusion matrices the study recorded."""
    return [k for k, (_, m) in _sources(numbers).items() if isinstance(m, list) and m]


def class_figures(numbers: dict[str, Any]) -> dict[str, go.Figure]:
    """The heatmaps of the confusion matrices the study recorded, by key
    (``CONFUSION_TITLES``): none where it recorded none."""
    figures = {}
    for key in confusion_keys(numbers):
        per, matrix = _sources(numbers)[key]
        classes = (per or {}).get("classes") or [str(i) for i in range(len(matrix))]
        figures[key] = confusion_figure(matrix, classes, CONFUSION_TITLES[key])
    return figures


def confusion_figure(matrix: list[list[int]], classes: list[str], title: str) -> go.Figure:
    """A confusion matrix (``matrix[true][predicted]``) as a heatmap: true classes down,
    predicted across, each cell coloured by its share of the row and labelled by its count."""
    import plotly.graph_objects as go

    names = [str(c) for c in classes]
    shares = [[n / sum(row) if sum(row) else 0.0 for n in row] for row in matrix]
    heat = go.Heatmap(
        z=shares,
        x=names,
        y=names,
        text=matrix,
        zmin=0,
        zmax=1,
        colorscale="Blues",
        colorbar={"title": {"text": "share of<br>true class"}},
        hovertemplate="true %{y}, predicted %{x}: %{text} (%{z:.0%} of the true class)"
        "<extra></extra>",
    )
    if len(names) <= TEXT_CLASSES:
        heat.texttemplate = "%{text}"
    fig = go.Figure(heat)
    side = min(900, 240 + 28 * len(names))
    fig.update_layout(
        title={"text": title},
        width=side + 80,
        height=side,
        xaxis={"title": {"text": "predicted"}, "type": "category", "side": "bottom"},
        yaxis={"title": {"text": "true"}, "type": "category", "autorange": "reversed"},
    )
    return fig


def per_class_table(per: dict[str, Any] | None, table_id: str = "per-class") -> str:
    """Precision, recall and F1 (and the examples, where known) of each class as an HTML
    table; ``""`` without them."""
    if not per:
        return ""
    cols = [c for c in ("precision", "recall", "f1", "examples") if c in per]
    rows = "".join(
        f"<tr><td>{html.escape(str(name))}</td>"
        + "".join(f"<td>{format_value(per[c][i]) if i < len(per[c]) else '-'}</td>" for c in cols)
        + "</tr>"
        for i, name in enumerate(per["classes"])
    )
    return (
        f'<table id="{table_id}"><tr><th>class</th>'
        + "".join(f"<th>{c}</th>" for c in cols)
        + f"</tr>{rows}</table>"
    )


def class_sections(numbers: dict[str, Any], divs: dict[str, str]) -> str:
    """The HTML of the results by class: for validation and (after a retrain) the test
    split, the per-class table with its heatmap beside it (``divs``: figure key -> the
    figure's HTML), each where recorded."""
    parts = []
    remedies = remedy_table(numbers.get("by_remedy") or {})
    if remedies:
        parts.append(
            '<section id="by-remedy"><h2>Recall by class for each imbalance remedy '
            "(validation, each remedy's best trial)</h2>" + remedies + "</section>"
        )
    for key, (per, _) in _sources(numbers).items():
        table = per_class_table(per, "per-class" if key == "confusion" else "test-per-class")
        if not table and key not in divs:
            continue
        parts.append(
            f'<section id="{key}"><h2>{html.escape(TABLE_TITLES[key])}</h2>'
            f'<div class="by-class">{table}{divs.get(key, "")}</div></section>'
        )
    return "".join(parts)


def remedy_table(by_remedy: dict[str, Any]) -> str:
    """The validation recall of each class under each imbalance remedy (``study_numbers``'s
    ``by_remedy``: each remedy's best trial) as an HTML table, a column a remedy; ``""``
    without them."""
    if not by_remedy:
        return ""
    remedies = list(by_remedy)
    classes = max((r["classes"] for r in by_remedy.values()), key=len)
    head = "".join(f"<th>{html.escape(m)} (#{by_remedy[m]['trial']})</th>" for m in remedies)
    rows = "".join(
        f"<tr><td>{html.escape(str(name))}</td>"
        + "".join(
            f"<td>{format_value(r[i]) if i < len(r) else '-'}</td>"
            for r in (by_remedy[m]["recall"] for m in remedies)
        )
        + "</tr>"
        for i, name in enumerate(classes)
    )
    return f'<table id="remedy-recall"><tr><th>class</th>{head}</tr>{rows}</table>'
