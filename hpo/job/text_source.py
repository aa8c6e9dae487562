"""Texts and their label ids as a text dataset's source loads them, before any split: what
every source (``text_data``'s files and lexicon, ``hf_data``'s Hugging Face datasets) returns,
and how labels become ids."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hpo.job.errors import JobSetupError


@dataclass
class TextSource:
    """Texts and label ids as loaded, before any split: what the worker caches."""

    train_texts: list[str]
    train_labels: np.ndarray
    val_texts: list[str] | None
    val_labels: np.ndarray | None
    label_names: list[str]
    found_val: str = ""
    """The val split the dataset brought without the spec naming it (an hf dataset's
    ``validation``), e.g. ``hf glue split 'validation'``; empty otherwise."""


def known_label_ids(values: Sequence[Any], names: list[str]) -> np.ndarray | None:
    """Test labels as the training label ids (by name, else an integer id in range); None
    if any is unknown (an unlabelled split's -1, a class the training data lacks)."""
    index = {name: i for i, name in enumerate(names)}
    ids = []
    for v in values:
        if str(v) in index:
            ids.append(index[str(v)])
            continue
        try:
            i = int(v)
        except (TypeError, ValueError):
            return None
        if float(v) != i or not 0 <= i < len(names):
            return None
        ids.append(i)
    return np.asarray(ids, dtype=np.int64)


def label_ids(
    train: Sequence[Any], val: Sequence[Any], names: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Label ids: integers 0..C-1 stay as they are; anything else is numbered in sorted order."""
    everything = list(train) + list(val)
    try:
        as_int = [int(v) for v in everything]
        integral = all(float(v) == i for v, i in zip(everything, as_int))
    except (TypeError, ValueError):
        integral = False
    if integral and min(as_int) >= 0:
        ids = np.asarray(as_int, dtype=np.int64)
        names = names or [str(i) for i in range(int(ids.max()) + 1)]
    else:
        names = sorted({str(v) for v in everything})
        index = {name: i for i, name in enumerate(names)}
        ids = np.asarray([index[str(v)] for v in everything], dtype=np.int64)
    if len(names) < 2:
        raise JobSetupError(f"the labels have a single class ({names[0]!r}); need two or more")
    return ids[: len(train)], ids[len(train) :], names
