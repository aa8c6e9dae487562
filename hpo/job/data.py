"""Data pieces shared by images and text: seeded splits, subsamples, labelled subsets."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, Sampler, Subset

from hpo.job.errors import JobSetupError


def cache_key(kind: str, dataset: Mapping[str, Any], **extra: Any) -> str:
    """A key of ``JobContext.cache``: the dataset spec plus whatever else shapes the data.

    Args:
        kind: what is cached, e.g. ``"images"`` or ``"tokens"``.
        dataset: the task's dataset spec.
        **extra: other inputs of the cached value (tokenizer, max_length, ...).

    Returns:
        A string equal for equal inputs, in any key order.
    """
    return json.dumps([kind, dict(dataset), extra], sort_keys=True, default=str)


def subsample(labels: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """Indices of a seeded random subsample of at most ``n`` of ``len(labels)`` examples."""
    everything = np.arange(len(labels))
    if n is None or n >= len(labels):
        return everything
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(everything, size=n, replace=False))


def split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded, stratified train/val split of ``range(len(labels))``.

    Validation gets ``round(val_fraction * len(labels))`` examples, shared among the classes
    in proportion to their sizes (largest remainders first), so the class balance of both
    parts follows the whole; at least one example lands on each side.

    Returns:
        ``(train_indices, val_indices)``, each sorted.
    """
    if len(labels) < 2:
        raise ValueError(f"too few examples ({len(labels)}) to split into train and val")
    rng = np.random.default_rng(seed)
    classes, sizes = np.unique(labels, return_counts=True)
    n_val = min(max(1, int(round(val_fraction * len(labels)))), len(labels) - 1)
    quota = sizes * n_val / len(labels)
    take = np.floor(quota).astype(int)
    by_remainder = np.lexsort((rng.random(len(classes)), -(quota - take)))
    take[by_remainder[: n_val - take.sum()]] += 1
    train, val = [], []
    for label, k in zip(classes, take):
        members = rng.permutation(np.flatnonzero(labels == label))
        val.append(members[:k])
        train.append(members[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


class LabelledSubset(Dataset):
    """``base[i]`` for the chosen indices, the input passed through ``transform``.

    ``base[i]`` is an ``(input, label)`` pair; train and val views of one base dataset differ
    only in their indices and transform (augmentation for training, none for validation).
    """

    def __init__(
        self,
        base: Sequence | Dataset,
        indices: Iterable[int],
        labels: np.ndarray,
        transform: Callable | None = None,
    ) -> None:
        self.base = base
        self.indices = [int(i) for i in indices]
        self.labels = np.asarray(labels)[self.indices]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        x, _ = self.base[self.indices[i]]
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[i])


def dataset_size(dataset: Dataset | Sized) -> int:
    """``len(dataset)``: every dataset hpo builds or is given has one (map-style), though
    torch's ``Dataset`` type declares no ``__len__``."""
    return len(dataset)  # type: ignore[arg-type]  # torch's Dataset type declares no __len__


def dataset_labels(dataset: Dataset) -> np.ndarray:
    """Every label of a dataset of ``(input, label)`` pairs: its ``labels`` where it keeps
    them (``LabelledSubset``, tokenized texts), through ``Subset`` and ``ConcatDataset``;
    else read example by example."""
    if isinstance(dataset, ConcatDataset):
        return np.concatenate([dataset_labels(d) for d in dataset.datasets])
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    labels = getattr(dataset, "labels", None)
    if labels is not None and len(labels) == dataset_size(dataset):
        return np.asarray(labels, dtype=np.int64)
    return np.asarray([int(dataset[i][1]) for i in range(dataset_size(dataset))], dtype=np.int64)


TEST_SEED_OFFSET = 104_729
"""The test hold-out draws from ``seed + TEST_SEED_OFFSET``, apart from the val split's draws."""


def thin(labels: np.ndarray, keep: Mapping[int, float], seed: int) -> np.ndarray:
    """Indices of ``labels`` with each class ``c`` of ``keep`` thinned to
    ``max(1, round(keep[c] * count))`` of its examples (a seeded draw per class; the other
    classes whole): ``task.thin_classes``.

    Returns:
        The indices kept, sorted.
    """
    kept = [np.flatnonzero(~np.isin(labels, list(keep)))]
    for label, share in sorted(keep.items()):
        members = np.flatnonzero(labels == label)
        n = min(len(members), max(1, int(round(share * len(members)))))
        rng = np.random.default_rng([seed, label])
        kept.append(rng.choice(members, size=n, replace=False))
    return np.sort(np.concatenate(kept))


def thinning(
    task: Any, class_names: Sequence[str], num_classes: int = 0
) -> dict[int, float] | None:
    """``task.thin_classes`` by label id (``class_names`` in id order; without names the
    ids ``0`` to ``num_classes - 1`` as text), or None.

    Raises:
        JobSetupError: a class name the data does not have.
    """
    spec = getattr(task, "thin_classes", None)
    if not spec:
        return None
    names = [str(n) for n in class_names] or [str(i) for i in range(num_classes)]
    unknown = [k for k in spec if k not in names]
    if unknown:
        raise JobSetupError(
            f"thin_classes: no class {unknown[0]!r}; the classes are {', '.join(names)}"
        )
    return {names.index(name): share for name, share in spec.items()}


def heldout_test_indices(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The task's ``test_fraction`` hold-out: a seeded, stratified ``split`` of every example.

    Made before any subsample or train/val split, so trials (which get the rest) and
    ``hpo retrain`` (which tests on it) agree on it whatever ``max_samples`` is.

    Returns:
        ``(rest_indices, test_indices)``, each sorted.
    """
    return split(labels, test_fraction, seed + TEST_SEED_OFFSET)


def heldout_about(test_fraction: float) -> str:
    """What a final fit says of a ``test_fraction`` test split."""
    return f"test_fraction {test_fraction:g} of the data, held out of every trial"


def no_test_split(dataset_name: str) -> str:
    """Why a built-in dataset without a test split of its own has none, and the way out."""
    return (
        f"{dataset_name} has no test split; give task.test_fraction (e.g. 0.2) to hold "
        "one out in a new study"
    )


def train_val_indices(
    train_labels: np.ndarray,
    val_labels: np.ndarray | None,
    max_samples: int | None,
    val_fraction: float,
    seed: int,
    test_fraction: float | None = None,
    keep: Mapping[int, float] | None = None,
    thin_seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Which examples train and which validate, the same for every trial of a task.

    Without a val split of its own, a seeded subsample of ``max_samples`` examples is split
    stratified by ``val_fraction``. With one, each split is subsampled so that together they
    hold about ``max_samples`` examples in the ``val_fraction`` proportion. With a
    ``test_fraction``, its hold-out (``heldout_test_indices``) leaves the training split
    first; without one the result is as it always was. With ``keep``
    (``task.thin_classes`` by label id), the rest is thinned (``thin``, seeded by
    ``thin_seed``) before the subsample and the split, a val split of its own alike.

    Args:
        train_labels: labels of the training split.
        val_labels: labels of the dataset's val split, or ``None`` to split the training one.
        max_samples: the task's cap on examples, or ``None``.
        val_fraction: share held out for validation.
        seed: the task's seed.
        test_fraction: the task's test hold-out, or ``None``.
        keep: the share kept of each thinned class, by label id (``thinning``), or ``None``.
        thin_seed: the seed of the thinning draw.

    Returns:
        ``(train_indices, val_indices)``; val indices point into the val split when there is
        one, else into the training split.
    """
    if test_fraction is not None:
        rest, _ = heldout_test_indices(train_labels, test_fraction, seed)
        train, val = train_val_indices(
            train_labels[rest], val_labels, max_samples, val_fraction, seed, None, keep, thin_seed
        )
        return rest[train], (rest[val] if val_labels is None else val)
    if keep:
        kept = thin(train_labels, keep, thin_seed)
        kept_val = None if val_labels is None else thin(val_labels, keep, thin_seed + 1)
        train, val = train_val_indices(
            train_labels[kept],
            None if val_labels is None or kept_val is None else val_labels[kept_val],
            max_samples,
            val_fraction,
            seed,
        )
        return kept[train], (kept[val] if kept_val is None else kept_val[val])
    if val_labels is None:
        pool = subsample(train_labels, max_samples, seed)
        train, val = split(train_labels[pool], val_fraction, seed)
        return pool[train], pool[val]
    n_train = n_val = None
    if max_samples is not None:
        n_val = max(1, int(round(max_samples * val_fraction)))
        n_train = max(1, max_samples - n_val)
    return subsample(train_labels, n_train, seed), subsample(val_labels, n_val, seed + 1)


class EpochShuffle(Sampler[int]):
    """A fresh order of ``range(n)`` each epoch, drawn from ``(seed, epoch)`` alone.

    An attempt resumed at epoch ``e`` (or inside it, past its first examples) sees the same
    order as one that never stopped, whatever the data loader and its worker processes drew
    in between. Call ``set_epoch`` first.
    ``keyed``: yield ``epoch * n + index`` instead of ``index``, the keys ``EpochSeeded``
    reads.
    """

    def __init__(self, n: int, seed: int, keyed: bool = False) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 1
        self.skip = 0
        self.keyed = keyed

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """The epoch to draw the order of; ``skip``: leave out its first examples (an attempt
        resumed inside the epoch, after them)."""
        self.epoch = epoch
        self.skip = skip

    def indices(self) -> torch.Tensor:
        """The epoch's whole order (``skip`` not applied, no keys), on the CPU."""
        order = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=order)

    def __iter__(self):
        indices = self.indices()
        if self.keyed:
            indices += self.epoch * self.n
        return iter(indices[self.skip :].tolist())

    def __len__(self) -> int:
        return self.n


class EpochBalanced(EpochShuffle):
    """The weighted sampler of the param ``imbalance: sampler``: each epoch, ``n`` draws with
    replacement, each example with probability proportional to one over its class's count,
    so every class the labels hold comes up equally often on average; drawn from
    ``(seed, epoch)`` alone, as ``EpochShuffle`` (a resumed attempt draws the same).

    An example drawn twice in one epoch is the same key to ``EpochSeeded``, so it is augmented
    alike both times.
    """

    def __init__(self, labels: np.ndarray, seed: int, keyed: bool = False) -> None:
        super().__init__(len(labels), seed, keyed)
        labels = np.asarray(labels, dtype=np.int64)
        counts = np.bincount(labels)
        self.weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.float64)

    def indices(self) -> torch.Tensor:
        draws = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.multinomial(self.weights, self.n, replacement=True, generator=draws)


class EpochSeeded(Dataset):
    """A training set read by loader processes, its random transforms (augmentation) drawn
    from ``(seed, epoch, index)`` alone.

    Loader processes seed their RNGs once, when they start, so what they draw depends on
    every example they loaded before. Seeding each example from its key
    (``EpochShuffle(keyed=True)``) instead makes an attempt resumed at epoch ``e`` augment
    exactly as one that never stopped, whichever process loads which example.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return dataset_size(self.dataset)

    def __getitem__(self, key: int):
        epoch, index = divmod(key, dataset_size(self.dataset))
        seed = ((self.seed * 1_000_003 + epoch) * 1_000_003 + index) % 2**63
        torch.manual_seed(seed)  # torchvision's transforms draw from torch's RNG
        random.seed(seed)
        return self.dataset[index]
