"""How trials go on: the scheduler interface, and the scheduler a spec's ``pruner`` names.

A scheduler answers two questions:

- at each report of a trial (``decide``): continue, pause (stop now with the checkpoint; the
  configuration waits as a paused continuation) or stop for good, with a reason;
- when a worker is free (``next_work``): which queued continuations to run before any new
  configuration, each as it was paused or from another configuration's checkpoint with other
  params (a ``Resume``).

Optuna's pruners are schedulers that only stop (``StopOnly``). hpo's own are the modules of
this package, one each, named as the spec names them: ``promotion`` (asynchronous successive
halving that pauses and promotes) and ``pbt`` (population-based training). Such a module
exports its ``Scheduler`` subclass as ``SCHEDULER``, built by ``SCHEDULER.from_spec(spec)``;
its options and their checks are the spec's (``hpo.spec``'s pruner table). A new scheduler is
that module, its spec entry and its test.

The worker does the rest the same way for every scheduler (``hpo.run.worker``): a pause is queued
as a continuation before its trial is told PRUNED (``hpo.search.schedulers.continuation``), a
continuation takes none of the budget, and a ``Resume`` with params is claimed, replaced by a
continuation with those params, and told PRUNED with its reason.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import optuna

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from hpo.spec import Spec

CONTINUE, PAUSE, STOP = "continue", "pause", "stop"

OPTUNA_PRUNERS = (
    "none",
    "median",
    "percentile",
    "successive_halving",
    "hyperband",
    "threshold",
    "patient",
)
"""The spec's pruner names that are Optuna's pruners (``StopOnly`` schedulers)."""


@dataclass(frozen=True)
class Decision:
    """A scheduler's answer at a report."""

    action: str = CONTINUE
    """``continue``, ``pause`` or ``stop``."""
    reason: str = ""
    """The stopped trial's ``prune_reason``: ``pruned``, ``paused``."""
    step: int | None = None
    """The report step it was taken at (a pause's ``paused_at``)."""

    @property
    def stops(self) -> bool:
        """Whether the trial stops here (paused or for good)."""
        return self.action != CONTINUE


GO_ON = Decision()


@dataclass(frozen=True)
class Resume:
    """A queued continuation to run next (``Scheduler.next_work``)."""

    trial: FrozenTrial
    """The continuation, as queued (WAITING)."""
    params: dict[str, Any] | None = None
    """None: run it as queued. Else it is claimed and replaced by a continuation with these
    params (``hpo.search.schedulers.continuation.replace``), which runs next."""
    attrs: dict[str, Any] = field(default_factory=dict)
    """The replacement's user attrs over the continuation's: another checkpoint, a lineage."""
    intermediate_values: dict[int, float] | None = None
    """The replacement's curve (None: the continuation's)."""
    distributions: dict[str, Any] | None = None
    """The distributions of ``params`` (None: the continuation's). Params copied from another
    configuration need its distributions: conditional params differ (``momentum`` with
    ``sgd`` alone)."""
    reason: str = ""
    """The replaced continuation's ``prune_reason`` (``exploited``)."""


class Scheduler(optuna.pruners.BasePruner):
    """How a study's trials go on. An Optuna pruner as well (``prune``), so that a job asking
    Optuna's ``trial.should_prune`` is answered by the same rule."""

    pauses: ClassVar[bool] = False
    """Whether a stop may be a pause: the job then checkpoints the evaluation it stops at."""

    def decide(self, study: optuna.Study, trial: FrozenTrial) -> Decision:
        """What ``trial`` does after its last report (``trial.last_step``)."""
        raise NotImplementedError

    def next_work(
        self, study: optuna.Study, trials: list[FrozenTrial], finishing: bool = False
    ) -> list[Resume]:
        """The continuations to run before any new configuration, first first (``trials``:
        the study as read a moment ago). ``finishing``: the budget is spent and nothing runs,
        so no configuration will report again unless one of these runs."""
        return []

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return self.decide(study, trial).stops


class StopOnly(Scheduler):
    """An Optuna pruner as a scheduler: it stops a trial (``pruned``) when the pruner prunes."""

    def __init__(self, pruner: optuna.pruners.BasePruner) -> None:
        self.pruner = pruner

    def decide(self, study: optuna.Study, trial: FrozenTrial) -> Decision:
        if self.pruner.prune(study, trial):
            return Decision(STOP, "pruned", trial.last_step)
        return GO_ON


def scheduler_of(study: optuna.Study) -> Scheduler:
    """The study's scheduler: its pruner if that is one, else the pruner as ``StopOnly``."""
    pruner = study.pruner
    return pruner if isinstance(pruner, Scheduler) else StopOnly(pruner)


def make_pruner(spec: Spec, options: dict[str, Any] | None = None) -> optuna.pruners.BasePruner:
    """What the study's ``pruner`` is: the Optuna pruner the spec names (kept as Optuna's own
    class, which its samplers look for: hyperband's brackets), else hpo's scheduler of that
    name. Hyperband's ``max_resource`` defaults to the largest epochs.

    Args:
        spec: the study spec.
        options: a pruner mapping (``name`` + options) to build instead of ``spec.pruner``;
            used for the pruner that ``patient`` wraps.
    """
    from hpo.spec import max_epochs

    if options is None:
        options = {"name": spec.pruner.name, **spec.pruner.options}
    options = dict(options)
    name = options.pop("name")
    if name not in OPTUNA_PRUNERS:
        module = importlib.import_module(f"{__name__}.{name}")
        scheduler: Scheduler = module.SCHEDULER.from_spec(spec)
        return scheduler
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(**options)
    if name == "percentile":
        return optuna.pruners.PercentilePruner(**options)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(**options)
    if name == "hyperband":
        if options.get("max_resource", "auto") == "auto":
            options["max_resource"] = max_epochs(spec) * spec.task.evals_per_epoch
        return optuna.pruners.HyperbandPruner(**options)
    if name == "threshold":
        return optuna.pruners.ThresholdPruner(**options)
    wrapped = options.pop("wrapped", None)  # patient
    inner = make_pruner(spec, wrapped) if wrapped else None
    return optuna.pruners.PatientPruner(inner, **options)
