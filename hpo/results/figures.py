"""Figures: a study's plotly figures, one function each.

The figures of Optuna's own plots (history, parallel coordinates, importances, slices) read
the study; learning curves and the timeline of workers read its trials' intermediate values and
user attrs; the savings and comparison figures draw numbers that ``hpo.results.report`` computes.
Plotly is imported inside each function, so importing this module is cheap.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from hpo.results.classes import CONFUSION_TITLES
from hpo.results.curves import (
    STATE_COLORS,
    complete_trials,
    learning_curves_figure,
    objective_name,
    placeholder_figure,
    train_val_figure,
)

if TYPE_CHECKING:
    import optuna
    import plotly.graph_objects as go
    from optuna.trial import FrozenTrial

FIGURE_TITLES = {
    "history": "Optimization history",
    "pareto": "Pareto front",
    "curves": "Learning curves",
    "overfit": "Training vs validation of the best trials (the gap shaded)",
    **CONFUSION_TITLES,
    "population": "Population (pbt): each member's curve, its exploits marked",
    "parallel": "Parallel coordinates",
    "importances": "Hyperparameter importances",
    "slice": "Slice plots",
    "timeline": "Timeline of workers",
    "savings": "Pruning savings",
    "anytime": "Best value against time and epochs",
    "comparison": "Comparison of studies",
}
"""Figure key -> title; the key names the figure in optuna-dashboard (``hpo-KEY``)."""


def study_figures(
    study: optuna.Study, savings: dict[str, Any], anytime: dict[str, list[float]]
) -> dict[str, go.Figure]:
    """Every figure of a study's report, by key (see ``FIGURE_TITLES``), titled.

    Figures that need complete trials show a note instead where there are too few. A study of
    several objectives has the Pareto front too; the others show its validation loss.

    Args:
        study: the study.
        savings: its pruning savings (``hpo.results.numbers.savings``).
        anytime: its anytime curve (``hpo.results.numbers.anytime``).
    """
    from hpo.search.schedulers.pbt import is_pbt

    figures = {
        "history": history_figure(study),
        **({"pareto": pareto_figure(study)} if len(study.directions) > 1 else {}),
        "curves": learning_curves_figure(study),
        "overfit": train_val_figure(study),
        **({"population": population_figure(study)} if is_pbt(study) else {}),
        "parallel": parallel_figure(study),
        "importances": importances_figure(study),
        "slice": slice_figure(study),
        "timeline": timeline_figure(study),
        "savings": savings_figure(savings),
        "anytime": anytime_figure(anytime),
    }
    for key, fig in figures.items():
        fig.update_layout(title={"text": FIGURE_TITLES[key]})
    return figures


def population_figure(study: optuna.Study) -> go.Figure:
    """Each member of a ``pbt`` study: its validation loss by report step over its attempts
    (after an exploit, its weights' history is the parent's), a marker where it exploited."""
    import plotly.graph_objects as go

    from hpo.search.schedulers.continuation import configurations
    from hpo.search.schedulers.pbt import LINEAGE_ATTR

    fig = go.Figure()
    for member, (latest, curve, _) in sorted(configurations(study.get_trials()).items()):
        steps = sorted(curve)
        fig.add_trace(go.Scatter(x=steps, y=[curve[s] for s in steps], name=f"#{member}"))
        exploits = [e for e in latest.user_attrs.get(LINEAGE_ATTR, ()) if e["step"] in curve]
        fig.add_trace(
            go.Scatter(
                x=[e["step"] for e in exploits],
                y=[curve[e["step"]] for e in exploits],
                mode="markers",
                marker={"symbol": "star", "size": 11},
                text=[f"#{member} from #{e['parent']}" for e in exploits],
                showlegend=False,
            )
        )
    fig.update_layout(xaxis_title="report step", yaxis_title=objective_name(study))
    return fig


def _val_loss(study: optuna.Study) -> Any:
    """Optuna's ``target`` for its plots: None (the value) with one objective, else the first
    of the values, the validation loss (Optuna's plots refuse several objectives without)."""
    return None if len(study.directions) == 1 else (lambda t: t.values[0])


def pareto_figure(study: optuna.Study) -> go.Figure:
    """The complete trials by their objectives, the Pareto set highlighted (Optuna's plot):
    one panel of two objectives, or three in 3D."""
    import optuna.visualization as vis

    from hpo.records import objectives

    if not complete_trials(study):
        return placeholder_figure("no complete trial yet")
    names = objectives(study)
    if len(names) > 3:  # Optuna draws 2 or 3 objectives: the loss against the first two more
        return vis.plot_pareto_front(study, targets=lambda t: t.values[:3], target_names=names[:3])
    return vis.plot_pareto_front(study, target_names=names)


def history_figure(study: optuna.Study) -> go.Figure:
    """Each complete trial's best objective (``study.metric``) and the best so far (in the
    study's direction), by trial number."""
    import optuna.visualization as vis

    if not complete_trials(study):
        return placeholder_figure("no complete trial yet")
    name = objective_name(study)
    fig = vis.plot_optimization_history(study, target=_val_loss(study), target_name=name)
    fig.update_yaxes(title_text=f"best {name} of the trial")
    return fig


def parallel_figure(study: optuna.Study) -> go.Figure:
    """Parallel coordinates of the complete trials' params and loss."""
    import optuna.visualization as vis

    if not complete_trials(study):
        return placeholder_figure("no complete trial yet")
    return vis.plot_parallel_coordinate(
        study, target=_val_loss(study), target_name=objective_name(study)
    )


def importances_figure(study: optuna.Study) -> go.Figure:
    """Hyperparameter importances (Optuna's default evaluator); needs 2+ complete trials."""
    import optuna.visualization as vis

    n = len(complete_trials(study))
    if n < 2:
        return placeholder_figure(
            f"importances need at least 2 complete trials; this study has {n}"
        )
    try:
        return vis.plot_param_importances(
            study, target=_val_loss(study), target_name=objective_name(study)
        )
    except (ValueError, RuntimeError) as e:  # e.g. no parameter shared by every trial
        return placeholder_figure(f"importances could not be computed: {e}")


def slice_figure(study: optuna.Study) -> go.Figure:
    """Loss against each param, one panel per param."""
    import optuna.visualization as vis

    if not complete_trials(study):
        return placeholder_figure("no complete trial yet")
    fig = vis.plot_slice(study, target=_val_loss(study), target_name=objective_name(study))
    fig.update_layout(width=None)  # Optuna sets 300 px per param: let the page decide
    return fig


def timeline_figure(study: optuna.Study) -> go.Figure:
    """One row per worker: when each of its trials ran, colored by state."""
    import plotly.graph_objects as go

    now = dt.datetime.now()
    rows: dict[str, list[FrozenTrial]] = {}
    for t in study.get_trials(deepcopy=False):
        if t.datetime_start is not None:
            rows.setdefault(str(t.user_attrs.get("worker", "unknown")), []).append(t)
    if not rows:
        return placeholder_figure("no trial has started yet")
    fig = go.Figure()
    for state, color in STATE_COLORS.items():
        ts = [t for trials in rows.values() for t in trials if t.state.name == state]
        if not ts:
            continue
        starts = [t.datetime_start for t in ts if t.datetime_start is not None]  # all of ts
        ends = [t.datetime_complete or now for t in ts]
        fig.add_trace(
            go.Bar(
                orientation="h",
                name=state.lower(),
                marker={"color": color},
                y=[str(t.user_attrs.get("worker", "unknown")) for t in ts],
                base=[s.isoformat() for s in starts],
                x=[(e - s).total_seconds() * 1000 for s, e in zip(starts, ends)],
                customdata=[
                    [t.number, (e - s).total_seconds()] for t, s, e in zip(ts, starts, ends)
                ],
                hovertemplate="trial %{customdata[0]}<br>%{customdata[1]:.1f} s<extra>"
                f"{state.lower()}</extra>",
            )
        )
    fig.update_xaxes(type="date", title_text="time")
    fig.update_yaxes(title_text="worker", categoryorder="category descending")
    fig.update_layout(barmode="overlay", height=max(250, 60 * len(rows) + 150))
    return fig


def savings_figure(s: dict[str, Any]) -> go.Figure:
    """Epochs and device-hours run vs. training every finished trial to its planned epochs.

    Args:
        s: the savings of a study (``hpo.results.numbers.savings``).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if not s["trials"]:
        return placeholder_figure("no finished trial yet")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("epochs", "device-hours"))
    labels = ["run", "planned"]
    colors = ["#2ca02c", "#c7c7c7"]
    fig.add_trace(
        go.Bar(
            x=labels,
            y=[s["epochs_run"], s["epochs_planned"]],
            marker={"color": colors},
            showlegend=False,
            text=[f"{s['epochs_run']:g}", f"{s['epochs_planned']:g}"],
        ),
        1,
        1,
    )
    fig.add_trace(
        go.Bar(
            x=labels,
            y=[s["device_hours_run"], s["device_hours_planned"]],
            marker={"color": colors},
            showlegend=False,
            text=[f"{s['device_hours_run']:.3g}", f"{s['device_hours_planned']:.3g}"],
        ),
        1,
        2,
    )
    fig.add_annotation(
        text=f"{s['saved_fraction']:.0%} of device-hours saved over {s['trials']} finished trials",
        showarrow=False,
        xref="paper",
        yref="paper",
        x=0.5,
        y=-0.18,
    )
    fig.update_layout(height=400, margin={"b": 90})
    return fig


def anytime_figure(curve: dict[str, list[float]]) -> go.Figure:
    """The best value so far against wall time and against epochs trained, a step each time
    a trial finishes (the anytime curve: how soon a good value was there).

    Args:
        curve: ``seconds``, ``epochs``, ``best`` and ``trial`` lists
            (``hpo.results.numbers.anytime``).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if not curve["best"]:
        return placeholder_figure("no complete trial yet")
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=(
            "by wall time since the first trial started",
            "by epochs trained (all trials)",
        ),
    )
    for col, (x, unit) in enumerate(((curve["seconds"], "s"), (curve["epochs"], "epochs")), 1):
        fig.add_trace(
            go.Scatter(
                x=x,
                y=curve["best"],
                mode="lines+markers",
                line={"shape": "hv"},
                name=f"best by {unit}",
                showlegend=False,
                customdata=curve["trial"],
                hovertemplate=f"%{{x:.4g}} {unit}<br>best %{{y:.4f}}<br>"
                "after trial %{customdata}<extra></extra>",
            ),
            1,
            col,
        )
    fig.update_xaxes(title_text="seconds", row=1, col=1)
    fig.update_xaxes(title_text="epochs", row=1, col=2)
    fig.update_yaxes(title_text="best value so far", row=1, col=1)
    fig.update_layout(height=400)
    return fig


def comparison_figure(progress: dict[str, dict[str, list[float]]]) -> go.Figure:
    """Best loss so far of each study, by finished trial and by device-hours spent.

    Args:
        progress: study name -> ``trials``, ``device_hours`` and ``best`` lists, one entry
            per finished trial from the first complete one on (``hpo.results.numbers.progress``).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("by finished trial", "by device-hours run"))
    for i, (name, p) in enumerate(progress.items()):
        color = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"][i % 4]
        for col, x in ((1, p["trials"]), (2, p["device_hours"])):
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=p["best"],
                    mode="lines",
                    name=name,
                    line={"shape": "hv", "color": color},
                    legendgroup=name,
                    showlegend=col == 1,
                ),
                1,
                col,
            )
    fig.update_yaxes(title_text="best validation loss so far", row=1, col=1)
    fig.update_layout(title={"text": FIGURE_TITLES["comparison"]})
    return fig
