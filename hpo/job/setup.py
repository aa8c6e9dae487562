"""What a task builder (``vision``, ``text``, a final fit's) hands the fit loop: the model, its
head and blocks, and the data sets with how to load them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import Dataset


@dataclass
class TrainingSetup:
    """What a task builder hands the fit loop."""

    model: nn.Module
    head: list[nn.Parameter]
    """The new head: trains at ``lr`` under every freeze policy."""
    blocks: list[list[nn.Parameter]]
    """The backbone from the input side, for ``freeze: first_k``."""
    train_set: Dataset
    val_set: Dataset | None
    """``None`` for a final fit (``hpo retrain``): no validation, reports or pruning."""
    num_classes: int
    collate: Callable | None = None
    convolutional: bool = False
    """channels_last speeds up convolutions only."""
    in_memory: bool = False
    """Examples are ready in memory (tensors, token ids): loader processes would add only
    their start-up time, so by default there are none."""
    optimizer: torch.optim.Optimizer | None = None
    """Set by ``start_fit``, so that ``run.release`` can free its state after the trial."""
    test_set: Dataset | None = None
    """A final fit's test split, evaluated once after the last epoch; never a trial's."""
    test_about: str = ""
    """Which test split ``test_set`` is, or why there is none."""
    class_names: list[str] = field(default_factory=list)
    """The names of the class ids, in id order (default: the ids)."""
