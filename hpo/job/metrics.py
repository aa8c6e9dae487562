"""Classification metrics, counted on the device and read at evaluation points alone.

A ``Tally`` adds each batch's predictions to a confusion matrix on the device (one
``index_add_``), its loss to a sum there, and for two classes keeps the positive class's
scores (for AUROC); nothing goes back to the CPU until ``Tally.read`` at an evaluation point.
The evaluation pass and the training steps count the same way: training's tally sees the
batches as they train (the model in train mode, its dropout on), with no second pass.

Every metric but AUROC derives from the confusion matrix, as scikit-learn's do
(``sklearn.metrics`` with its defaults): ``accuracy``; ``balanced_accuracy``, the mean recall
of the classes the labels hold; ``precision``, ``recall`` and ``f1``, macro averages over the
classes that the labels or the predictions hold, a class without predictions (or without
examples) counting 0 where its value is undefined; the same per class (``*_per_class``,
every class in class order); ``auroc`` (two classes only), the area under the ROC curve of
the positive class's score, ties counted half (``None`` where the labels hold one class);
``confusion``, the confusion matrix itself (``confusion[true][predicted]``, counts), where
the tally keeps it and the task has at most ``CONFUSION_CLASSES`` classes.
"""

from __future__ import annotations

from typing import Any

import torch

from hpo.job.ranks import Ranks

SCALARS = ("loss", "accuracy", "balanced_accuracy", "precision", "recall", "f1", "auroc")
"""The metrics of one evaluation that are one number each (``auroc`` with two classes)."""
PER_CLASS = ("precision_per_class", "recall_per_class", "f1_per_class")
"""The metrics of one evaluation that are a list, one number per class."""
CONFUSION_CLASSES = 50
"""The most classes whose confusion matrix an evaluation records (``confusion``): beyond,
its classes squared would outgrow a trial attr (and a readable heatmap)."""


class Tally:
    """A confusion matrix, a loss sum and (two classes) scores, on the device."""

    def __init__(
        self, num_classes: int, device: torch.device | str, confusion: bool = True
    ) -> None:
        self.num_classes = num_classes
        self.device = torch.device(device)
        self.keeps_confusion = confusion and num_classes <= CONFUSION_CLASSES
        """``read`` returns the matrix itself too (``confusion``)."""
        self.reset()

    def reset(self) -> None:
        """Start counting afresh (after a read)."""
        c = self.num_classes
        self.confusion = torch.zeros(c * c, dtype=torch.int64, device=self.device)
        """Row ``true``, column ``predicted``, flattened: ``true * num_classes + predicted``."""
        self.loss = torch.zeros((), dtype=torch.float64, device=self.device)
        self.weight = torch.zeros((), dtype=torch.float64, device=self.device)
        self.scores: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Count a batch's predictions (the argmax of ``logits``) against its ``labels``."""
        logits = logits.detach()
        c = self.num_classes
        # index_add_, not bincount: CUDA's bincount reads the largest value back to size its
        # output, a sync in every training step.
        pairs = logits.argmax(dim=1).add_(labels.to(torch.int64), alpha=c)
        self.confusion.index_add_(0, pairs, torch.ones_like(pairs))
        if c == 2:  # the log-odds of the positive class: softmax's order, without softmax
            self.scores.append((logits[:, 1] - logits[:, 0]).float())
            self.labels.append(labels)

    def add_loss(self, total: torch.Tensor | float, weight: torch.Tensor | float) -> None:
        """Add ``total`` to the loss sum and ``weight`` to what it is divided by."""
        self.loss += total
        self.weight += weight

    def read(self, ranks: Ranks = Ranks()) -> dict[str, Any]:
        """The metrics of what was counted (over every rank: a collective, so every rank
        reads), then ``reset``. One CPU-GPU sync, two with AUROC.

        Returns:
            ``SCALARS`` and ``PER_CLASS`` by name, and ``confusion`` where the tally keeps it;
            ``loss`` is the loss sum over its weight, ``None`` where nothing was added to it.
        """
        sums = torch.cat([torch.stack([self.loss, self.weight]), self.confusion.double()])
        if ranks.many:
            sums = ranks.sum(sums)
        values = sums.tolist()  # the sync
        c = self.num_classes
        flat = values[2:]
        matrix = [flat[i * c : (i + 1) * c] for i in range(c)]
        out: dict[str, Any] = {"loss": values[0] / values[1] if values[1] else None}
        out.update(from_confusion(matrix))
        if c == 2:
            out["auroc"] = self._auroc(ranks)
        if self.keeps_confusion:
            out["confusion"] = [[int(n) for n in row] for row in matrix]
        self.reset()
        return out

    def _auroc(self, ranks: Ranks) -> float | None:
        device = self.device
        scores = torch.cat(self.scores) if self.scores else torch.zeros(0, device=device)
        labels = (
            torch.cat(self.labels).to(torch.int64)
            if self.labels
            else torch.zeros(0, dtype=torch.int64, device=device)
        )
        if ranks.many:
            scores, labels = ranks.gather(scores), ranks.gather(labels)
        value = auroc(scores, labels)
        return None if value is None else float(value)


def from_confusion(matrix: list[list[float]]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, and macro and per-class precision, recall and F1 of a
    confusion matrix (``matrix[true][predicted]``), as scikit-learn computes them; ``None``
    where it counts nothing (an evaluation right after a resume that trained no batch)."""
    c = len(matrix)
    tp = [matrix[i][i] for i in range(c)]
    support = [sum(row) for row in matrix]
    predicted = [sum(matrix[i][j] for i in range(c)) for j in range(c)]
    total = sum(support)
    precision = [t / p if p else 0.0 for t, p in zip(tp, predicted)]
    recall = [t / s if s else 0.0 for t, s in zip(tp, support)]
    f1 = [2 * t / (s + p) if s + p else 0.0 for t, s, p in zip(tp, support, predicted)]
    seen = [i for i in range(c) if support[i] or predicted[i]]
    held = [i for i in range(c) if support[i]]

    def macro(values: list[float], over: list[int]) -> float | None:
        return sum(values[i] for i in over) / len(over) if over else None

    return {
        "accuracy": sum(tp) / total if total else None,
        "balanced_accuracy": macro(recall, held),
        "precision": macro(precision, seen),
        "recall": macro(recall, seen),
        "f1": macro(f1, seen),
        "precision_per_class": precision,
        "recall_per_class": recall,
        "f1_per_class": f1,
    }


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
    """The area under the ROC curve of ``scores`` for ``labels`` 1 against 0: the
    Mann-Whitney statistic, tied scores given their mean rank (scikit-learn's
    ``roc_auc_score``). ``None`` where the labels hold one class alone (it is undefined)."""
    positives = int(labels.sum())  # a sync, at an evaluation point
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return None
    ordered, order = torch.sort(scores.double())
    _, inverse, counts = torch.unique_consecutive(ordered, return_inverse=True, return_counts=True)
    # Ranks 1..n; a run of ties shares the mean of the ranks it spans.
    ends = torch.cumsum(counts, 0).double()
    mean_rank = (ends - (counts.double() - 1) / 2)[inverse]
    rank_sum = mean_rank[labels[order] == 1].sum()
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def prefixed(split: str, metrics: dict[str, Any], digits: int = 6) -> dict[str, Any]:
    """``metrics`` under ``{split}_{name}``, floats rounded to ``digits`` significant digits
    (what the trial records)."""
    return {f"{split}_{name}": _round(value, digits) for name, value in metrics.items()}


def _round(value: Any, digits: int) -> Any:
    if isinstance(value, list):
        return [_round(v, digits) for v in value]
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    return value
