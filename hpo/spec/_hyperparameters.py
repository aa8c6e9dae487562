"""The hyperparameters the job understands (name -> default, domain check, doc), and a
``search_space`` entry over one of them (``ParamSpec``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hpo.spec._adapter import LORA_PRESETS
from hpo.spec._checks import (
    _non_negative,
    _non_negative_int,
    _one_of,
    _positive,
    _positive_int,
    _unit_interval,
)

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULES = ("constant", "cosine", "linear")
FREEZE_POLICIES = ("none", "head_only", "first_k")
AUGMENTATIONS = ("none", "flip_crop", "trivialaugment", "randaugment")
"""The kinds of augmentation of an image task's training split (the param ``augment``)."""
IMBALANCE_REMEDIES = ("none", "class_weights", "sampler")
"""What a trial does about imbalanced classes (the param ``imbalance``)."""
IMAGE_PARAMS = ("augment", "augment_magnitude")
"""Hyperparameters of image tasks alone."""


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
    "l1": Hyperparameter(
        0.0,
        _non_negative,
        "L1 penalty: the loss gets l1 x the sum of |w| of the trainable weights (not biases "
        "or normalization parameters), once per step; 0 turns it off",
    ),
    # Images only (IMAGE_PARAMS); hpo.job.image_data says what each kind does.
    "augment": Hyperparameter(
        None,
        _one_of(AUGMENTATIONS),
        "augmentation of the training split: none | flip_crop (random flip and padded crop) | "
        "trivialaugment (flip_crop, then TrivialAugment Wide) | randaugment (flip_crop, then "
        "RandAugment, 2 ops); default: task.augment (true is flip_crop)",
    ),
    "augment_magnitude": Hyperparameter(
        0.3,
        _unit_interval,
        "strength of augment in [0, 1): flip_crop pads magnitude x 5/12 of the side (an "
        "eighth at 0.3), randaugment's magnitude is round(magnitude x 30) of 31 (9 at 0.3); "
        "trivialaugment draws its own",
    ),
    "imbalance": Hyperparameter(
        None,
        _one_of(IMBALANCE_REMEDIES),
        "remedy for imbalanced classes: none | class_weights (the loss weighted by "
        "task.class_weights, else balanced) | sampler (batches drawn with replacement, every "
        "class equally often); set, the val loss of every remedy is weighted by the class "
        "weights, so trials compare; default: task.class_weights alone decides",
    ),
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


@dataclass(frozen=True)
class ParamSpec:
    """One entry of ``search_space``: a distribution, or a fixed value.

    Attributes:
        name: the hyperparameter (a key of ``HYPERPARAMETERS``, or your own code's own name).
        type: ``float``, ``int``, ``categorical`` or ``fixed``.
        low, high, log, step: the range of ``float`` / ``int``.
        choices: the options of ``categorical``.
        value: the value of ``fixed``.
        when: sampled only when each named parameter took one of the listed values,
            e.g. ``{"optimizer": ["sgd", "rmsprop"]}`` for momentum. The named parameters come
            before this one in ``Spec.search_space``, whatever the file's key order.
    """

    name: str
    """The entry's key in ``search_space``: a hyperparameter of the built-in job (its domain
    checked, e.g. ``lr`` > 0), or, for your own code (``task.kind: script`` or ``custom``),
    also a name of your own (letters, digits and ``_``: ``alpha``, ``warmup_ratio``), any
    range; a built-in task refuses a name it does not know."""
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
