"""The training loss: cross-entropy, label smoothing, the task's class weights, and the L1
penalty (param ``l1``).

``task.class_weights`` weights each example's loss by its class: a batch's loss is then the
weighted mean ``sum_i w[y_i] l_i / sum_i w[y_i]`` (``nn.CrossEntropyLoss(weight=w)``), over the
whole global batch however it is cut: into micro-batches after an out-of-memory error, and
into the parts of several ranks. A micro-batch's share of the batch is its weight sum over the
global batch's, not its count over the batch size (``ClassWeighted.shares``).

The param ``imbalance`` chooses the remedy for imbalanced classes (``Remedy``): the class
weights in the training loss, a balanced sampler (``hpo.job.data.EpochBalanced``), or none.
Set, it makes every trial's validation loss weighted by the class weights
(``task.class_weights``, else ``balanced``), whichever remedy trains: the trials of a study
that searches it then compare on the same objective.

The L1 penalty ``l1 * sum |w|`` over the trainable weights (matrices and kernels: not biases,
not normalization scales, the parameters weight decay leaves out too) is added once per
optimizer step, whatever the micro-batches, and on every rank alike: its gradient is the
same on each, so the ranks' average is it (``l1_penalty``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hpo.job.errors import JobSetupError
from hpo.job.ranks import Ranks


def class_weights(
    spec: Any, train_labels: np.ndarray, class_names: Sequence[str]
) -> dict[str, float] | None:
    """The weight of each class that ``task.class_weights`` names, by class name.

    Args:
        spec: ``None``, ``"balanced"``, a list (one weight per class, in class order) or a
            mapping class name -> weight (classes left out weigh 1).
        train_labels: the training split's label ids (what ``balanced`` counts).
        class_names: the names of the class ids, in id order.

    Returns:
        ``{class name: weight}`` in class order, or ``None`` for unweighted.

    Raises:
        JobSetupError: a list of the wrong length, an unknown class name, or (``balanced``)
            a class without training examples.
    """
    if spec is None:
        return None
    names = [str(n) for n in class_names]
    if spec == "balanced":  # scikit-learn's compute_class_weight("balanced")
        counts = np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=len(names))
        empty = [names[i] for i in np.flatnonzero(counts == 0)]
        if empty:
            raise JobSetupError(
                f"class_weights balanced: class {empty[0]!r} has no training "
                "examples (max_samples too small?); give weights by name"
            )
        weights = len(train_labels) / (len(names) * counts)
        return {name: float(w) for name, w in zip(names, weights)}
    if isinstance(spec, (list, tuple)):
        if len(spec) != len(names):
            raise JobSetupError(
                f"class_weights: {len(spec)} weights for {len(names)} classes ({', '.join(names)})"
            )
        return {name: float(w) for name, w in zip(names, spec)}
    unknown = [k for k in spec if k not in names]
    if unknown:
        raise JobSetupError(
            f"class_weights: no class {unknown[0]!r}; the classes are {', '.join(names)}"
        )
    return {name: float(spec.get(name, 1.0)) for name in names}


@dataclass(frozen=True)
class Remedy:
    """What a trial does about imbalanced classes (``remedy``)."""

    class_weights: Any
    """The class weights' spec (as ``task.class_weights``): of evaluation, and of training
    where ``weighted``."""
    weighted: bool
    """The training loss is weighted by the class weights."""
    sampler: bool
    """The train loader draws every class equally often (``hpo.job.data.EpochBalanced``)."""


def remedy(task_class_weights: Any, imbalance: str | None) -> Remedy:
    """The trial's remedy for imbalanced classes, from ``task.class_weights`` and the param
    ``imbalance`` (``None``: the task's class weights alone, in training and evaluation)."""
    if imbalance is None:
        return Remedy(task_class_weights, weighted=True, sampler=False)
    if imbalance not in ("none", "class_weights", "sampler"):
        raise ValueError(f"imbalance: expected none, class_weights or sampler, got {imbalance!r}")
    return Remedy(
        task_class_weights if task_class_weights is not None else "balanced",
        weighted=imbalance == "class_weights",
        sampler=imbalance == "sampler",
    )


@dataclass
class ClassWeighted:
    """Cross-entropy weighted by class, as the fit loop's criterion: called on a micro-batch
    it gives the weighted *sum* of its losses; ``shares`` turns those into the global batch's
    weighted mean."""

    weight: torch.Tensor
    """One weight per class, on the device."""
    label_smoothing: float = 0.0

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits,
            labels,
            weight=self.weight,
            reduction="sum",
            label_smoothing=self.label_smoothing,
        )

    def shares(
        self, labels: torch.Tensor, parts: Sequence[slice], ranks: Ranks = Ranks()
    ) -> list[torch.Tensor]:
        """What each micro-batch's weighted sum is multiplied by: one over the global batch's
        weight sum (over every rank: a collective, so every rank calls it each step), times the
        number of ranks, whose gradients are averaged."""
        total = self.weight[labels].sum()
        if ranks.many:
            total = ranks.sum(total)
        return [ranks.world / total] * len(parts)


def penalized(params: Sequence[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    """The weights the L1 penalty sums over: of ``params``, the matrices and kernels (two
    dimensions or more), as weight decay chooses them (``hpo.job.optim.make_optimizer``)."""
    return [p for p in params if p.ndim >= 2]


def l1_penalty(weights: Sequence[torch.Tensor], l1: float) -> torch.Tensor:
    """``l1`` times the sum of the absolute values of ``weights`` (float32, on their device)."""
    return l1 * torch.stack([w.float().abs().sum() for w in weights]).sum()
