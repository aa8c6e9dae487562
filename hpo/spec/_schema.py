"""The spec's schema: the whole spec (``Spec``), made of its sections' dataclasses, each in
the module of its section (``_task_spec``, ``_hyperparameters``, ``_components``, ``_budget``,
``_study``, ``_warm_start``, ``_tracking``), and what one trial runs on (``ResourcesSpec``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from hpo.spec._budget import BudgetSpec
from hpo.spec._components import ComponentSpec
from hpo.spec._hyperparameters import HYPERPARAMETERS, ParamSpec
from hpo.spec._study import StudySection
from hpo.spec._task_spec import _TASK_DEFAULTS, TaskSpec
from hpo.spec._tracking import TrackingSpec
from hpo.spec._warm_start import WarmStartSpec


@dataclass(frozen=True)
class ResourcesSpec:
    """What one trial runs on."""

    devices_per_trial: int = 1
    """A trial's gang: N GPUs (one rank each, NCCL) with CUDA, else N CPU processes (gloo).
    The launcher groups its GPU slots into gangs of N."""
    fuse: int = 1
    """Fused trials: a worker claims up to this many new trials at once and trains those
    that share everything but their ``lr``, ``weight_decay``, ``optimizer``, ``momentum``,
    ``epochs``, ``dropout``, ``backbone_lr_mult``, ``warmup_fraction``, ``schedule``,
    ``grad_clip``, ``l1`` and ``label_smoothing`` as one batched model (``torch.vmap``), each
    reporting to its own trial; the others, and models that cannot fuse (batch norm that
    trains), run one at a time, with a log line that says why. A member leaves its group
    when it is pruned, paused or done; a paused one resumes alone. 1 (the default): off.
    The built-in job on one device only."""


@dataclass(frozen=True)
class Spec:
    """A whole study spec."""

    study: StudySection
    """The study's name and objectives (``StudySection``); may be left out: the name is then
    the spec file's stem."""
    task: TaskSpec
    """What every trial fine-tunes (``TaskSpec``); required."""
    search_space: tuple[ParamSpec, ...]
    """Hyperparameter name -> a distribution or a fixed value (``ParamSpec``); required, and at
    least one entry must be searched. What is not listed keeps its default (a script's: its
    own, ``hpo.session.params(defaults)``). A script or custom task may name parameters of
    its own."""
    sampler: ComponentSpec
    """What to try next: ``{name: tpe, seed: 0, ...}`` (default ``{name: tpe}``)."""
    pruner: ComponentSpec
    """The scheduler: when to stop or pause a trial early, and what resumes
    (``{name: median, ...}``, ``promotion``, ``pbt``; see Schedulers). Named none, it is the
    one measured best for the budget, written into the stored spec: ``promotion`` with an
    early first rung (4 evaluations an epoch, the first after a quarter epoch, for up to 4
    epochs; 2 and half an epoch for 5-9), ``median`` for a custom job, ``none`` for fewer
    than 4 trials or several objectives."""
    budget: BudgetSpec
    """When the study ends, across every worker and machine (default ``{n_trials: 20}``)."""
    resources: ResourcesSpec = ResourcesSpec()
    """What one trial runs on (``ResourcesSpec``)."""
    warm_start: WarmStartSpec | None = None
    """The first trials: the model family's known-good defaults, an earlier study's best
    (``WarmStartSpec``); default: none, the sampler proposes them all."""
    tracking: TrackingSpec | None = None
    """Where trials are recorded besides the study: an MLflow tracking server, TensorBoard
    event files (``TrackingSpec``); default: none."""

    def param(self, name: str) -> ParamSpec | None:
        for p in self.search_space:
            if p.name == name:
                return p
        return None

    def to_dict(self) -> dict[str, Any]:
        """A plain dict that ``parse_spec`` turns back into an equal ``Spec``."""
        task = {
            k: v for k, v in asdict(self.task).items() if k == "kind" or v != _TASK_DEFAULTS.get(k)
        }
        if self.task.dataset:
            task["dataset"] = dict(self.task.dataset)
        if self.task.adapter:
            task["adapter"] = self.task.adapter.to_dict()
        return {
            "study": self.study.to_dict(),
            "task": task,
            "search_space": {p.name: p.to_dict() for p in self.search_space},
            "sampler": {"name": self.sampler.name, **self.sampler.options},
            "pruner": {"name": self.pruner.name, **_plain(self.pruner.options)},
            "budget": self.budget.to_dict(),
            # Only when set: a study stored before the key existed reads back the same.
            # Only the keys set: a study stored before a key existed reads back the same.
            **(
                {"resources": _set_keys(self.resources)}
                if self.resources != ResourcesSpec()
                else {}
            ),
            **({"warm_start": self.warm_start.to_dict()} if self.warm_start else {}),
            **({"tracking": self.tracking.to_dict()} if self.tracking else {}),
        }

    def with_budget(self, n_trials: int | None = None, timeout: float | None = None) -> Spec:
        """The same spec with the budget's fields replaced where given."""
        from dataclasses import replace

        given: dict[str, Any] = {"n_trials": n_trials, "timeout": timeout}
        budget = replace(self.budget, **{k: v for k, v in given.items() if v is not None})
        return replace(self, budget=budget)


def _plain(options: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (_plain(v) if isinstance(v, Mapping) else v) for k, v in options.items()}


def max_epochs(spec: Spec) -> int:
    """The largest number of epochs a trial of this spec can run."""
    p = spec.param("epochs")
    return int(p.upper()) if p else HYPERPARAMETERS["epochs"].default


def _set_keys(resources: ResourcesSpec) -> dict[str, Any]:
    default = asdict(ResourcesSpec())
    return {k: v for k, v in asdict(resources).items() if v != default[k]}
