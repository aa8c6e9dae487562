"""Text datasets: the VADER lexicon, CSV and JSON-lines files, Hugging Face datasets.

Loading is cached per worker by the dataset spec, and tokenizing by the dataset, tokenizer and
``max_length``: tokenized once per worker, padded per batch to the batch's longest text.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from hpo.job.data import cache_key, train_val_indices
from hpo.job.errors import JobSetupError


@dataclass
class TextSource:
    """Texts and label ids as loaded, before any split: what the worker caches."""

    train_texts: list[str]
    train_labels: np.ndarray
    val_texts: list[str] | None
    val_labels: np.ndarray | None
    label_names: list[str]


def load_texts(dataset: Mapping[str, Any], cache: dict) -> TextSource:
    """Load (or take from ``cache``) the texts of a dataset spec.

    Args:
        dataset: ``{name: vader}``; ``{csv: FILE, text: COL, label: COL}``; ``{jsonl: FILE,
            text: KEY, label: KEY}``; ``{hf: NAME, config: CFG, text: COL, label: COL,
            train_split, val_split, test_split}`` (needs the ``datasets`` package; the test
            split is never trained or validated on).
        cache: the worker's cache.

    Raises:
        JobSetupError: missing file, column or package.
    """
    key = cache_key("texts", dataset)
    if key not in cache:
        if dataset.get("name") == "vader":
            cache[key] = _vader()
        elif "name" in dataset:
            raise JobSetupError(f"unknown built-in text dataset {dataset['name']!r}; "
                                "expected vader (or use hf, csv or jsonl)")
        elif "hf" in dataset:
            cache[key] = _hf(dataset)
        else:
            kind = "csv" if "csv" in dataset else "jsonl"
            texts, labels = _table(Path(dataset[kind]).expanduser(), kind,
                                   dataset["text"], dataset["label"])
            ids, _, names = _label_ids(labels, [])
            cache[key] = TextSource(texts, ids, None, None, names)
    return cache[key]


class TokenizedTexts(Dataset):
    """``(token features, label)`` pairs; the features are unpadded lists of ids."""

    def __init__(self, features: list[dict[str, list[int]]], labels: np.ndarray) -> None:
        self.features = features
        self.labels = np.asarray(labels)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int):
        return self.features[i], int(self.labels[i])


class PadBatch:
    """Collate ``(features, label)`` pairs into ``(padded inputs dict, labels)``.

    Dynamic padding: each batch is padded to its own longest text, not to ``max_length``.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, items: Sequence[tuple[dict, int]]):
        inputs = self.tokenizer.pad([features for features, _ in items], return_tensors="pt")
        return dict(inputs), torch.tensor([label for _, label in items])


def tokenized_datasets(task, tokenizer, source: TextSource, cache: dict):
    """The train and val datasets of a trial, tokenized once per worker.

    Args:
        task: the ``TaskSpec`` (model, max_length, max_samples, val_fraction, seed).
        tokenizer: the model's tokenizer.
        source: the loaded texts.
        cache: the worker's cache.

    Returns:
        ``(train_set, val_set)`` of ``TokenizedTexts``.
    """
    key = cache_key("tokens", task.dataset, model=task.model, max_length=task.max_length,
                    max_samples=task.max_samples, val_fraction=task.val_fraction,
                    seed=task.seed)
    if key not in cache:
        train_idx, val_idx = train_val_indices(source.train_labels, source.val_labels,
                                               task.max_samples, task.val_fraction, task.seed)
        val_texts, val_labels = ((source.train_texts, source.train_labels)
                                 if source.val_texts is None
                                 else (source.val_texts, source.val_labels))

        def tokenize(texts: list[str], labels: np.ndarray, idx: np.ndarray) -> TokenizedTexts:
            encoded = tokenizer([texts[i] for i in idx], truncation=True,
                                max_length=task.max_length)
            features = [{k: encoded[k][j] for k in encoded} for j in range(len(idx))]
            return TokenizedTexts(features, labels[idx])

        cache[key] = (tokenize(source.train_texts, source.train_labels, train_idx),
                      tokenize(val_texts, val_labels, val_idx))
    return cache[key]


def _vader() -> TextSource:
    """The VADER lexicon: each token labelled by the sign of its mean human rating."""
    import vaderSentiment

    path = Path(vaderSentiment.__file__).parent / "vader_lexicon.txt"
    texts, labels = [], []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        fields = line.split("\t")
        if len(fields) < 2:
            continue
        mean = float(fields[1])
        if mean != 0:  # neutral tokens are neither class
            texts.append(fields[0])
            labels.append(int(mean > 0))
    return TextSource(texts, np.asarray(labels, dtype=np.int64), None, None,
                      ["negative", "positive"])


def _table(path: Path, kind: str, text: str, label: str) -> tuple[list[str], list[Any]]:
    if not path.is_file():
        raise JobSetupError(f"dataset {kind}: no file at {path}")
    with path.open(encoding="utf-8", newline="") as f:
        if kind == "csv":
            rows = list(csv.DictReader(f))
        else:
            rows = [json.loads(line) for line in f if line.strip()]
    if not rows:
        raise JobSetupError(f"dataset {kind}: {path} has no rows")
    for column in (text, label):
        if column not in rows[0]:
            raise JobSetupError(f"dataset {kind}: {path} has no column {column!r}; it has "
                                f"{', '.join(map(str, rows[0]))}")
    return [str(r[text]) for r in rows], [r[label] for r in rows]


def _label_ids(train: Sequence[Any], val: Sequence[Any],
               names: list[str] | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
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
    return ids[: len(train)], ids[len(train):], names


def _hf(dataset: Mapping[str, Any]) -> TextSource:
    try:
        import datasets
    except ImportError:
        raise JobSetupError("dataset hf: needs the `datasets` package: pip install datasets"
                            ) from None
    name, config = dataset["hf"], dataset.get("config")
    try:
        splits = datasets.load_dataset(name, config)
    except Exception as e:  # noqa: BLE001 - offline, unknown name, bad config: all bad input
        raise JobSetupError(f"dataset hf {name} {config or ''}: cannot load it ({e}); hpo "
                            "runs offline (HF_DATASETS_OFFLINE=1): it must be cached") from None
    train_split = dataset.get("train_split", "train")
    val_split = dataset.get("val_split") or ("validation" if "validation" in splits else None)
    for split in (train_split, val_split, dataset.get("test_split")):
        if split is not None and split not in splits:
            raise JobSetupError(f"dataset hf {name}: no split {split!r}; it has "
                                f"{', '.join(splits)}")
    train = splits[train_split]
    label = dataset.get("label", "label")
    text = dataset.get("text") or _text_column(train, label, name)
    for column in (text, label):
        if column not in train.column_names:
            raise JobSetupError(f"dataset hf {name}: no column {column!r}; it has "
                                f"{', '.join(train.column_names)}")
    feature = train.features[label]
    names = list(feature.names) if hasattr(feature, "names") else None
    val = splits[val_split] if val_split else None
    train_ids, val_ids, names = _label_ids(train[label], val[label] if val else [], names)
    return TextSource([str(t) for t in train[text]], train_ids,
                      [str(t) for t in val[text]] if val else None,
                      val_ids if val else None, names)


def _text_column(split, label: str, name: str) -> str:
    """The one string column besides the label (``sentence`` in glue/sst2, say)."""
    if "text" in split.column_names:
        return "text"
    strings = [c for c, f in split.features.items()
               if c != label and getattr(f, "dtype", None) == "string"]
    if len(strings) != 1:
        raise JobSetupError(f"dataset hf {name}: say which column is the text (text: COL); "
                            f"its columns are {', '.join(split.column_names)}")
    return strings[0]
