"""The trials' curves: each trial's objective by report step (``learning_curves_figure``),
and training against validation for the best trials (``train_val_figure``); with the pieces
every figure of ``hpo.results.figures`` shares (state colors, the placeholder, the complete
trials, the objective's name). Plotly is imported inside each function."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna
    import plotly.graph_objects as go
    from optuna.trial import FrozenTrial

STATE_COLORS = {
    "COMPLETE": "#1f77b4",
    "PRUNED": "#ff7f0e",
    "FAIL": "#d62728",
    "RUNNING": "#7f7f7f",
    "WAITING": "#bcbd22",
}


def placeholder_figure(text: str) -> go.Figure:
    """An empty figure that says why it is empty."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_annotation(
        text=text, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper", font={"size": 16}
    )
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(height=250)
    return fig


def complete_trials(study: optuna.Study) -> list[FrozenTrial]:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def objective_name(study: optuna.Study) -> str:
    """The objective as the figures name it: ``val loss``, ``val f1`` (``study.metric``)."""
    from hpo.records import metric

    return metric(study).replace("_", " ")


def learning_curves_figure(study: optuna.Study) -> go.Figure:
    """The objective (``study.metric``, by default the validation loss) by epoch of every
    trial, one color per state."""
    import plotly.graph_objects as go

    fig = go.Figure()
    shown: set[str] = set()
    values: list[float] = []
    name = objective_name(study)
    for t in study.get_trials(deepcopy=False):
        if not t.intermediate_values:
            continue
        steps = sorted(t.intermediate_values)
        ys = [t.intermediate_values[s] for s in steps]
        values += [y for y in ys if math.isfinite(y)]
        state = t.state.name
        fig.add_trace(
            go.Scatter(
                x=steps,
                y=ys,
                mode="lines+markers",
                name=state.lower(),
                legendgroup=state,
                showlegend=state not in shown,
                line={"color": STATE_COLORS.get(state, "#333")},
                marker={"size": 4},
                opacity=0.8,
                hovertemplate=f"trial {t.number} ({state.lower()})<br>epoch %{{x}}<br>"
                f"{name} %{{y:.4f}}<extra></extra>",
            )
        )
        shown.add(state)
    if not fig.data:
        return placeholder_figure(f"no trial reported its {name} yet")
    positive = [v for v in values if v > 0]
    # Diverged trials reach losses 100x the others': a log axis keeps the good ones readable.
    log = bool(positive) and len(positive) == len(values) and max(values) / min(positive) > 100
    fig.update_xaxes(title_text="epoch")
    title = "validation loss" if name == "val loss" else name
    fig.update_yaxes(title_text=title, type="log" if log else "linear")
    return fig


OVERFIT_TRIALS = 3
"""The best trials ``train_val_figure`` shows, one panel each."""


def train_val_figure(study: optuna.Study, top: int = OVERFIT_TRIALS) -> go.Figure:
    """The best ``top`` complete trials (by the study's direction), one panel each: the
    objective's training and validation values at each evaluation (the ``metrics`` attr;
    ``loss`` where the objective has no training counterpart), the gap between the two
    shaded. A gap that widens as training goes on is overfitting."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from hpo.records import METRICS_ATTR, maximizes, metric, rank_key

    name = metric(study).removeprefix("val_")
    ranked = sorted(complete_trials(study), key=rank_key(maximizes(study)))
    shown = []
    for t in ranked:
        history = t.user_attrs.get(METRICS_ATTR) or {}
        key = name if any(f"train_{name}" in m for m in history.values()) else "loss"
        points = [
            (int(step), m[f"train_{key}"], m[f"val_{key}"])
            for step, m in history.items()
            if isinstance(m.get(f"train_{key}"), (int, float))
            and isinstance(m.get(f"val_{key}"), (int, float))
        ]
        if points:
            shown.append((t, key, sorted(points)))
        if len(shown) == top:
            break
    if not shown:
        return placeholder_figure("no complete trial recorded training and validation metrics")
    fig = make_subplots(
        rows=1,
        cols=len(shown),
        subplot_titles=[f"trial #{t.number}: {key}" for t, key, _ in shown],
        shared_yaxes=False,
    )
    for col, (t, key, points) in enumerate(shown, start=1):
        steps = [p[0] for p in points]
        first = col == 1
        # Training, then validation filled to it ("tonexty"): the gap shaded.
        for index, side, label, color, fill in (
            (1, "train", "training", "#1f77b4", None),
            (2, "val", "validation (gap shaded)", "#d62728", "rgba(214, 39, 40, 0.15)"),
        ):
            fig.add_trace(
                go.Scatter(
                    x=steps,
                    y=[p[index] for p in points],
                    name=label,
                    legendgroup=side,
                    showlegend=first,
                    mode="lines+markers",
                    line={"color": color},
                    fill="tonexty" if fill else None,
                    fillcolor=fill,
                    hovertemplate=f"trial {t.number}<br>step %{{x}}<br>{side} {key} "
                    "%{y:.4f}<extra></extra>",
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text="report step", row=1, col=col)
    return fig
