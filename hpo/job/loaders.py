"""The fit loop's data loaders: the train loader in a seeded order per epoch, and the val and
test loaders in order."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from hpo.job.data import EpochBalanced, EpochSeeded, EpochShuffle, dataset_labels, dataset_size
from hpo.job.device import Device
from hpo.job.ranks import RankBatches, Ranks
from hpo.job.resident import DeviceBatches, resident
from hpo.job.setup import TrainingSetup


def make_loaders(
    setup: TrainingSetup,
    task,
    dev: Device,
    batch_size: int,
    ranks: Ranks = Ranks(),
    *,
    balanced: bool = False,
) -> tuple[DataLoader | DeviceBatches, DataLoader | DeviceBatches | None, EpochShuffle]:
    """The train and val loaders, and the train loader's sampler (``set_epoch`` each epoch).

    Data that lives on the device (``hpo.job.resident``: in-memory images transformed once,
    tokenized texts) is batched there by index, in the sampler's order; the rest by a
    DataLoader.

    The data order depends on (seed, epoch) alone, so a resumed attempt sees the same one.
    Loader processes: ``task.num_workers``, by default 4 with CUDA for data that needs work
    per example (decoding, augmentation), else none. No val set: the val loader is ``None``.
    ``balanced`` (param ``imbalance: sampler``): the train loader draws with replacement,
    every class equally often on average (``EpochBalanced``).
    """
    loading = _loading(setup, task, dev)
    on_device = resident(setup.train_set, dev.device, setup.collate)
    # In this process the RNG that augments is the global one, which checkpoints save and
    # restore; loader processes have their own, so there each example seeds its own.
    processes = loading["num_workers"] > 0 and on_device is None
    order = (
        EpochBalanced(dataset_labels(setup.train_set), task.seed, keyed=processes)
        if balanced
        else EpochShuffle(dataset_size(setup.train_set), task.seed, keyed=processes)
    )
    val_loader = (
        None
        if setup.val_set is None
        else eval_loader(setup, setup.val_set, task, dev, batch_size, ranks)
    )
    if on_device is not None:  # the same batches as the DataLoader's, gathered on the device
        part = ranks.shard(batch_size) if ranks.many else None
        batches = DeviceBatches(*on_device, batch_size, order=order, part=part)
        return batches, val_loader, order
    train_set = EpochSeeded(setup.train_set, task.seed) if processes else setup.train_set
    # Loaders draw their workers' seeds from their own generators, never from the global RNG
    # (dropout's), whose state must not depend on when a loader happened to start.
    seeded = torch.Generator().manual_seed(task.seed)
    if ranks.many:  # this rank's part of each global batch
        train_loader = DataLoader(
            train_set,
            batch_sampler=RankBatches(order, batch_size, ranks),
            generator=seeded,
            **loading,
        )
    else:
        train_loader = DataLoader(
            train_set, batch_size, sampler=order, drop_last=True, generator=seeded, **loading
        )
    return train_loader, val_loader, order


def subset_loader(
    setup: TrainingSetup, task, dev: Device, batch_size: int, ranks: Ranks = Ranks()
) -> DataLoader | DeviceBatches | None:
    """The loader of the evaluations inside an epoch (``task.val_subset``): a fixed subset of
    the val set, drawn from the task's seed alone (so the same for every trial), in order.
    None where every evaluation reads the whole val set: no ``val_subset``, one evaluation
    an epoch, a final fit, or a val set no larger than the subset."""
    val = setup.val_set
    n = 0 if val is None else len(val)  # type: ignore[arg-type]
    if task.val_subset is None or task.evals_per_epoch == 1 or task.val_subset >= n:
        return None
    drawn = torch.randperm(n, generator=torch.Generator().manual_seed(task.seed))
    chosen = sorted(drawn[: task.val_subset].tolist())
    return eval_loader(setup, val, task, dev, batch_size, ranks, chosen)  # type: ignore[arg-type]


def eval_loader(
    setup: TrainingSetup,
    dataset: Dataset,
    task,
    dev: Device,
    batch_size: int,
    ranks: Ranks = Ranks(),
    chosen: list[int] | None = None,
) -> DataLoader | DeviceBatches:
    """A loader of ``dataset`` (val or test), or of its ``chosen`` examples, in order, as
    ``make_loaders`` loads (on the device where the data lives there); on several ranks, of
    this rank's contiguous part of it."""
    positions = np.arange(dataset_size(dataset)) if chosen is None else np.asarray(chosen)
    if ranks.many:
        positions = positions[ranks.shard(len(positions))]
        batch_size = math.ceil(batch_size / ranks.world)
    on_device = resident(dataset, dev.device, setup.collate)
    if on_device is not None:
        data, rows = on_device
        return DeviceBatches(data, rows[positions], batch_size)
    if chosen is not None or ranks.many:
        dataset = Subset(dataset, positions.tolist())
    return DataLoader(
        dataset,
        batch_size,
        generator=torch.Generator().manual_seed(task.seed),
        **_loading(setup, task, dev),
    )


def _loading(setup: TrainingSetup, task, dev: Device) -> dict[str, Any]:
    workers = task.num_workers
    if workers is None:
        workers = 4 if dev.cuda and not setup.in_memory else 0
    return dict(
        collate_fn=setup.collate,
        num_workers=workers,
        pin_memory=dev.cuda,
        persistent_workers=workers > 0,
    )
