"""The ``study`` section: the study's name, its objectives and their directions, and how
latency is measured (``_parse`` checks that the sampler, the pruner and the task can serve
several objectives).

One objective (the default) is the trial's best validation loss; ``study.metric`` names
another recorded metric (``val_f1``, ...), minimized or maximized (``study.direction``,
by default the metric's natural one: ``METRICS``). Several make a
multi-objective study: Optuna keeps the Pareto set; Optuna's pruners cannot prune such trials,
so the pruner is ``none`` (its default there) or ``promotion``, which ranks on all of them.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from hpo.spec._checks import _STR, _non_negative_int, _positive_int
from hpo.spec._keypath import _At, _show

DIRECTIONS = ("minimize", "maximize")
METRICS: dict[str, str] = {
    "val_loss": "minimize",
    "val_accuracy": "maximize",
    "val_balanced_accuracy": "maximize",
    "val_precision": "maximize",
    "val_recall": "maximize",
    "val_f1": "maximize",
    "val_auroc": "maximize",
}
"""The validation metrics the built-in jobs record (``hpo.job.metrics``), each with its
natural direction: what ``study.metric`` may name for them."""
OBJECTIVES: dict[str, str] = {
    "val_loss": "the trial's best validation loss (what the fit loop reports)",
    "latency_ms": "median milliseconds of a forward pass of one example, after warm-up",
    "params": "the model's parameters, in all",
    "trainable_params": "the parameters the freeze policy leaves trainable",
}
"""Objective name -> what it is. Every one is minimized: its natural direction."""
SINGLE_OBJECTIVE_SAMPLERS = ("cmaes",)
MULTI_OBJECTIVE_PRUNERS = ("none", "promotion")
"""Pruners a study of several objectives may have: none, or the ``promotion`` scheduler, which
ranks a rung by non-dominated sorting and crowding (Optuna refuses its pruners there)."""
"""Samplers that raise on a study of several objectives (Optuna 5's ``CmaEsSampler``)."""


@dataclass(frozen=True)
class LatencySpec:
    """How ``latency_ms`` is measured: ``study.latency``."""

    batch_size: int = 32
    """A second batch size measured besides 1 (attr ``latency_ms_batch``)."""
    warmup: int = 5
    """Forward passes run and thrown away before timing (allocator, cuDNN autotune)."""
    repeats: int = 20
    """Timed forward passes; the median is the measure."""


@dataclass(frozen=True)
class StudySection:
    """The ``study`` section."""

    name: str
    """Study name in the storage; default: the spec file's stem."""
    direction: str = "minimize"
    """The one objective's direction, ``minimize`` or ``maximize``: by default the metric's
    natural one (``natural_direction``); a known metric's other one is an error."""
    objectives: tuple[str, ...] = ("val_loss",)
    """What each trial returns, first ``val_loss``; more than one makes the study
    multi-objective (Pareto set; pruner ``none`` or ``promotion``)."""
    latency: LatencySpec | None = None
    """How ``latency_ms`` is measured; set when it is an objective."""
    metric: str = "val_loss"
    """The recorded metric that is the objective: for the built-in jobs ``val_loss`` or a
    validation metric they record (``val_accuracy``, ``val_balanced_accuracy``,
    ``val_precision``, ``val_recall``, ``val_f1``, ``val_auroc`` with two classes); a
    ``script`` task names any metric it reports (``eval_loss`` from a Hugging Face
    ``Trainer``, say); a ``custom`` job's is ``val_loss``. The trial's value, its best
    evaluation, early stopping, pruning and pausing follow it, in ``direction``."""

    @property
    def maximize(self) -> bool:
        """Whether the (one) objective is maximized."""
        return self.direction == "maximize"

    @property
    def multi(self) -> bool:
        """Whether the study has several objectives."""
        return len(self.objectives) > 1

    @property
    def directions(self) -> tuple[str, ...]:
        """One direction per objective (each objective's natural one: minimize). In YAML,
        ``study.directions`` lists them, one per objective of ``study.objectives``; it and
        ``direction`` are exclusive, and every one must be ``minimize``."""
        return (self.direction,) * len(self.objectives)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "direction": self.direction}
        # Only when set: a study stored before these keys existed reads back the same.
        if self.multi:
            d = {
                "name": self.name,
                "directions": list(self.directions),
                "objectives": list(self.objectives),
            }
        if self.latency is not None:
            d["latency"] = asdict(self.latency)
        if self.metric != "val_loss":
            d["metric"] = self.metric
        return d


def _parse_study(raw: Any, at: _At, default_name: str | None) -> StudySection:
    d = at.mapping(raw, ("name", "direction", "directions", "objectives", "latency", "metric"))
    name = d.get("name", default_name)
    if name is None:
        raise (at / "name").error("missing; name the study")
    name = (at / "name").typed(name, _STR)
    if "direction" in d and "directions" in d:
        raise (at / "directions").error(
            "give direction (one objective) or directions (one per objective), not both"
        )
    metric = (at / "metric").typed(d.get("metric", "val_loss"), _STR)
    if not re.fullmatch(r"[A-Za-z_][\w./-]*", metric):
        raise (at / "metric").error(f"expected a metric's name, got {_show(metric)}")
    natural = natural_direction(metric)
    direction = d.get("direction", natural)
    if direction not in DIRECTIONS:
        raise (at / "direction").error(f"expected minimize or maximize, got {_show(direction)}")
    if direction != natural and known_direction(metric):
        raise (at / "direction").error(
            f"{metric} is better {'higher' if natural == 'maximize' else 'lower'}: expected "
            f"{natural} (study.metric's natural direction), got {direction}"
        )
    objectives = _parse_objectives(d, at)
    _parse_directions(d, at, objectives)
    latency = None
    if "latency_ms" in objectives:
        latency = _parse_latency(d.get("latency") or {}, at / "latency")
    elif "latency" in d:
        raise (at / "latency").error(
            "measures latency_ms; set it only with latency_ms among study.objectives"
        )
    if len(objectives) > 1 and (metric != "val_loss" or direction != "minimize"):
        raise (at / "metric" if metric != "val_loss" else at / "direction").error(
            "several study.objectives rank on val_loss, minimized; "
            f"study.metric {metric} ({direction}) is for a study of one objective"
        )
    return StudySection(
        name=name, direction=direction, objectives=objectives, latency=latency, metric=metric
    )


_HIGHER = ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "auroc")
_LOWER = ("loss",)


def known_direction(metric: str) -> str | None:
    """The natural direction of a metric hpo knows by name (``METRICS``, their ``train_``
    counterparts, and the same names bare or after ``eval_`` / ``test_``); None for another
    name (a script's own)."""
    if metric in METRICS:
        return METRICS[metric]
    bare = re.sub(r"^(val|train|eval|test)_", "", metric)
    if bare in _HIGHER:
        return "maximize"
    if bare in _LOWER:
        return "minimize"
    return None


def natural_direction(metric: str) -> str:
    """A metric's natural direction: ``known_direction``, else ``minimize``."""
    return known_direction(metric) or "minimize"


def _parse_objectives(d: dict[str, Any], at: _At) -> tuple[str, ...]:
    raw = d.get("objectives", ["val_loss"])
    if not isinstance(raw, list) or not raw:
        raise (at / "objectives").error(f"expected a list of objectives, got {_show(raw)}")
    for i, name in enumerate(raw):
        if not isinstance(name, str) or name not in OBJECTIVES:
            raise (at / "objectives" / i).error(
                f"unknown objective {_show(name)}; expected one of " + ", ".join(OBJECTIVES)
            )
        if name in raw[:i]:
            raise (at / "objectives" / i).error(f"{name} is listed twice")
    if raw[0] != "val_loss":
        raise (at / "objectives" / 0).error(
            f"expected val_loss first (the loss the fit loop reports), got {_show(raw[0])}"
        )
    return tuple(raw)


def _parse_directions(d: dict[str, Any], at: _At, objectives: tuple[str, ...]) -> None:
    if "directions" not in d:
        return  # each objective's natural direction
    raw = d["directions"]
    if not isinstance(raw, list) or len(raw) != len(objectives):
        got = f"a list of {len(raw)}" if isinstance(raw, list) else _show(raw)
        raise (at / "directions").error(
            f"expected a list of {len(objectives)}, one per objective of study.objectives "
            f"({', '.join(objectives)}); got {got}"
        )
    for i, (direction, objective) in enumerate(zip(raw, objectives)):
        if direction != "minimize":
            raise (at / "directions" / i).error(
                f"{objective} is minimized; expected minimize, got {_show(direction)}"
            )


def _parse_latency(raw: Any, at: _At) -> LatencySpec:
    d = at.mapping(raw, ("batch_size", "warmup", "repeats"))
    default = LatencySpec()
    return LatencySpec(
        batch_size=(at / "batch_size").checked(
            d.get("batch_size", default.batch_size), _positive_int
        ),
        warmup=(at / "warmup").checked(d.get("warmup", default.warmup), _non_negative_int),
        repeats=(at / "repeats").checked(d.get("repeats", default.repeats), _positive_int),
    )
