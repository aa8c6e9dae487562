"""Data on the device: a dataset that fits in device memory lives there as tensors, and the fit
loop's batches are gathered from it by index, with no loader, collate or host copy per step.

Two datasets offer it (``resident``): a ``TensorSubset`` (images transformed once, rows of one
``Examples`` tensor that the worker caches) and ``hpo.job.text_data.TokenizedTexts`` (token ids,
padded once to the longest text). Their device copy is made once and kept by the object the
worker's cache holds, so the later trials of a warm worker start with their data in place.

``DeviceBatches`` takes the DataLoader's place. A training epoch's order is its sampler's
(``hpo.job.data.EpochShuffle`` or ``EpochBalanced``: the same seeded permutation the DataLoader
drew, so the same batches in the same order, and an attempt resumed inside an epoch skips
the same ones), moved to the device once an epoch; a batch is one ``index_select`` per tensor.
Token ids are cut to the batch's longest text, as ``PadBatch`` pads them, from lengths kept on
the host: nothing is read back from the device.

Anything else (images decoded and augmented per example, data larger than
``RESIDENT_SHARE`` of the free device memory) keeps the DataLoader and its processes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from hpo.job.data import EpochShuffle

RESIDENT_SHARE = 0.25
"""A dataset lives on a CUDA device when it takes at most this share of its free memory
(the rest is the model's, its activations' and the optimizer's)."""


@dataclass
class OnDevice:
    """Every example of a base, as tensors on one device."""

    inputs: torch.Tensor | dict[str, torch.Tensor]
    labels: torch.Tensor
    lengths: np.ndarray | None = None
    """Token ids: each example's length, on the host (the batch is cut to its longest)."""
    left: bool = False
    """Token ids: padded on the left (the tokenizer's ``padding_side``)."""


class Examples:
    """Examples ready as one host tensor (what the worker caches) and its device copies."""

    def __init__(self, inputs: torch.Tensor, labels: np.ndarray) -> None:
        self.inputs = inputs
        self.labels = np.asarray(labels, dtype=np.int64)
        self._copies: dict[str, OnDevice] = {}

    @property
    def nbytes(self) -> int:
        return self.inputs.numel() * self.inputs.element_size()

    def on(self, device: torch.device) -> OnDevice:
        """The copy on ``device``, made once (the CPU's is the host tensor itself)."""
        key = str(device)
        if key not in self._copies:
            self._copies[key] = OnDevice(
                self.inputs.to(device), torch.from_numpy(self.labels).to(device)
            )
        return self._copies[key]


class TensorSubset(Dataset):
    """Rows of an ``Examples``: ``(input tensor, label)`` pairs, as the DataLoader reads them
    where the data does not live on the device (several loader processes, ``Subset``)."""

    def __init__(self, base: Examples, indices) -> None:
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = base.labels[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.base.inputs[self.indices[i]], int(self.labels[i])


def resident(
    dataset: Dataset, device: torch.device, collate: Callable | None = None
) -> tuple[OnDevice, np.ndarray] | None:
    """``dataset`` on ``device`` and the rows of it that are its examples, or None where it
    stays with the DataLoader: not a dataset that offers it, or too large for the device."""
    if isinstance(dataset, TensorSubset):
        if not _fits(dataset.base.nbytes, device):
            return None
        return dataset.base.on(device), dataset.indices
    on_device = getattr(dataset, "on_device", None)
    if on_device is None or collate is None:
        return None
    return on_device(device, collate, _fits), np.arange(len(dataset))  # type: ignore[arg-type]


def _fits(nbytes: int, device: torch.device) -> bool:
    if device.type != "cuda":
        return True  # host memory: the data is there already
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= RESIDENT_SHARE * free


class DeviceBatches:
    """The batches of a dataset that lives on the device, as a DataLoader would give them.

    With ``order`` (training): each epoch the sampler's order, whole batches only, less the
    ``order.skip`` examples an attempt resumed inside the epoch trained; ``part`` takes this
    rank's slice of each global batch. Without (evaluation): the rows in order, the last batch
    short.
    """

    def __init__(
        self,
        data: OnDevice,
        rows: np.ndarray,
        batch_size: int,
        *,
        order: EpochShuffle | None = None,
        part: slice | None = None,
    ) -> None:
        self.data = data
        self.host_rows = np.asarray(rows, dtype=np.int64)
        self.device = data.labels.device
        self.rows = torch.from_numpy(self.host_rows).to(self.device)
        self.batch_size = batch_size
        self.order = order
        self.part = part

    def __len__(self) -> int:
        if self.order is not None:
            return len(self.host_rows) // self.batch_size
        return math.ceil(len(self.host_rows) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Any, torch.Tensor]]:
        b, host, rows = self.batch_size, self.host_rows, self.rows
        if self.order is not None:
            drawn = self.order.indices()[: len(host) // b * b][self.order.skip :]
            if self.device.type == "cuda":  # a copy from pageable memory would sync
                drawn = drawn.pin_memory()
            rows = rows[drawn.to(self.device, non_blocking=True)]  # once an epoch
            if self.data.lengths is not None:  # the order is drawn on the CPU: no device read
                host = host[drawn.numpy()]
        count = len(rows)  # a shape: no read
        part = self.part or slice(0, b)
        for start in range(0, count, b):
            end = min(start + b, count)
            pick = slice(start + part.start, min(start + part.stop, end))
            yield self._gather(rows[pick], host[pick])

    def _gather(self, rows: torch.Tensor, host: np.ndarray) -> tuple[Any, torch.Tensor]:
        data = self.data
        labels = data.labels.index_select(0, rows)
        if not isinstance(data.inputs, dict):
            return data.inputs.index_select(0, rows), labels
        inputs = {k: v.index_select(0, rows) for k, v in data.inputs.items()}
        if data.lengths is not None:  # cut to the batch's longest text, as PadBatch pads
            longest = int(data.lengths[host].max())
            cut = slice(-longest, None) if data.left else slice(0, longest)
            inputs = {k: v[:, cut] for k, v in inputs.items()}
        return inputs, labels
