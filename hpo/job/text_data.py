"""Text datasets: the VADER lexicon, CSV and JSON-lines files, Hugging Face datasets.

Loading is cached per worker by the dataset spec, and tokenizing by the dataset, tokenizer and
``max_length``: tokenized once per worker, padded per batch to the batch's longest text.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from hpo.job.data import (
    cache_key,
    heldout_about,
    heldout_test_indices,
    no_test_split,
    thinning,
    train_val_indices,
)
from hpo.job.errors import JobSetupError
from hpo.job.resident import OnDevice
from hpo.job.text_source import TextSource, known_label_ids, label_ids

log = logging.getLogger(__name__)


def unused_val_fraction(task, source: TextSource) -> str | None:
    """What to warn of when ``task.val_fraction`` is set (not the default) but the dataset's
    own validation split, found without the spec naming it, validates instead.

    The spec refuses ``val_fraction`` beside a val file or ``val_split`` it names; a split the
    dataset brings is known only once it is loaded (preflight, or the worker).
    """
    from hpo.spec import TaskSpec

    if not source.found_val or task.val_fraction == TaskSpec.val_fraction:
        return None
    share = (
        f"; it only shares max_samples {task.max_samples} between the two splits"
        if task.max_samples is not None
        else ""
    )
    return (
        f"task.val_fraction {task.val_fraction:g} splits nothing off the training split: "
        f"{source.found_val} validates as it is{share} (leave val_fraction out to say so)"
    )


def load_texts(dataset: Mapping[str, Any], cache: dict) -> TextSource:
    """Load (or take from ``cache``) the texts of a dataset spec.

    Args:
        dataset: ``{name: vader}``; ``{csv: FILE, text: COL, label: COL, val: FILE,
            test: FILE}``; ``{jsonl: FILE, text: KEY, label: KEY, val: FILE, test: FILE}``;
            ``{hf: NAME or PATH, config: CFG, text: COL, label: COL, train_split, val_split,
            test_split}`` (needs the ``datasets`` package; a path is a ``save_to_disk``
            directory or local data files, see ``hpo.job.hf_data``). A val file or split is the
            validation set as it is; the test split is never trained or validated on.
        cache: the worker's cache.

    Raises:
        JobSetupError: missing file, column or package.
    """
    key = cache_key("texts", dataset)
    if key not in cache:
        if dataset.get("name") == "vader":
            cache[key] = _vader()
        elif "name" in dataset:
            raise JobSetupError(
                f"unknown built-in text dataset {dataset['name']!r}; "
                "expected vader (or use hf, csv or jsonl)"
            )
        elif "hf" in dataset:
            from hpo.job.hf_data import hf_texts

            cache[key] = hf_texts(dataset)
        else:
            cache[key] = _files(dataset)
    return cache[key]


def _files(dataset: Mapping[str, Any]) -> TextSource:
    """A csv / jsonl training file, and its ``val`` file if the spec names one (then the val
    file is the validation set and nothing is split off the training file)."""
    kind = "csv" if "csv" in dataset else "jsonl"
    texts, labels = _table(
        Path(dataset[kind]).expanduser(), kind, dataset["text"], dataset["label"]
    )
    ids, _, names = label_ids(labels, [])
    if "val" not in dataset:
        return TextSource(texts, ids, None, None, names)
    path = Path(dataset["val"]).expanduser()
    val_texts, val_labels = _table(path, kind, dataset["text"], dataset["label"], "val file")
    val_ids = known_label_ids(val_labels, names)
    if val_ids is None:
        raise JobSetupError(
            f"dataset {kind}: the val file {path} has labels that the "
            f"training file lacks; it has {', '.join(names)}"
        )
    return TextSource(texts, ids, val_texts, val_ids, names)


class TokenizedTexts(Dataset):
    """``(token features, label)`` pairs; the features are unpadded lists of ids."""

    def __init__(self, features: list[dict[str, list[int]]], labels: np.ndarray) -> None:
        self.features = features
        self.labels = np.asarray(labels)
        self._copies: dict[str, OnDevice] = {}

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int):
        return self.features[i], int(self.labels[i])

    def on_device(
        self, device: torch.device, collate: Callable, fits: Callable[[int, torch.device], bool]
    ) -> OnDevice | None:
        """Every text padded once by ``collate`` (``PadBatch``) into tensors on ``device``,
        kept for the later trials of the worker (the cache holds this object); None where
        they would not fit (``fits`` of their bytes) or there are none."""
        key = str(device)
        if key not in self._copies:
            lengths = np.asarray([len(f["input_ids"]) for f in self.features], dtype=np.int64)
            if not len(self) or not fits(
                8 * len(self.features[0]) * len(self) * lengths.max(), device
            ):
                return None
            inputs, labels = collate([self[i] for i in range(len(self))])
            left = getattr(getattr(collate, "tokenizer", None), "padding_side", "") == "left"
            self._copies[key] = OnDevice(
                {k: v.to(device) for k, v in inputs.items()}, labels.to(device), lengths, left
            )
        return self._copies[key]


PADDING = "longest"
"""``PadBatch``: ``tokenizer.pad``'s default, each batch padded to its longest text."""


class PadBatch:
    """Collate ``(features, label)`` pairs into ``(padded inputs dict, labels)``.

    Dynamic padding: each batch is padded to its own longest text, not to ``max_length``.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, items: Sequence[tuple[dict, int]]):
        inputs = self.tokenizer.pad(
            [features for features, _ in items], padding=PADDING, return_tensors="pt"
        )
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
    key = cache_key(
        "tokens",
        task.dataset,
        model=task.model,
        max_length=task.max_length,
        max_samples=task.max_samples,
        val_fraction=task.val_fraction,
        test_fraction=task.test_fraction,
        seed=task.seed,
        thin=(task.thin_classes, task.thin_seed),
    )
    if key not in cache:
        unused = unused_val_fraction(task, source)
        if unused:  # once per worker: the tokenized splits are cached
            log.warning(unused)
        train_idx, val_idx = train_val_indices(
            source.train_labels,
            source.val_labels,
            task.max_samples,
            task.val_fraction,
            task.seed,
            task.test_fraction,
            thinning(task, source.label_names),
            task.thin_seed,
        )
        val_texts, val_labels = (
            (source.train_texts, source.train_labels)
            if source.val_texts is None
            else (source.val_texts, source.val_labels)
        )
        assert val_labels is not None  # a TextSource with val texts has their labels
        cache[key] = (
            _tokenize(tokenizer, task, source.train_texts, source.train_labels, train_idx),
            _tokenize(tokenizer, task, val_texts, val_labels, val_idx),
        )
    return cache[key]


def final_tokenized_datasets(task, tokenizer, source: TextSource, cache: dict):
    """What ``hpo retrain`` fits and tests on: the trials' train and val texts as one
    training set, and the test split, tokenized.

    Returns:
        ``(train_set, test_set, test_about)``: ``test_set`` is ``None`` where there is no test
        split, and ``test_about`` says which it is or why there is none.

    Raises:
        JobSetupError: a named test file or split that is missing or has unknown labels.
    """
    # The trials' own tokenized sets (cached), one after the other: no transform differs.
    train_set: ConcatDataset[Any] = ConcatDataset(
        tokenized_datasets(task, tokenizer, source, cache)
    )
    if task.test_fraction is not None:
        _, test_idx = heldout_test_indices(source.train_labels, task.test_fraction, task.seed)
        return (
            train_set,
            _tokenize(tokenizer, task, source.train_texts, source.train_labels, test_idx),
            heldout_about(task.test_fraction),
        )
    test_texts, test_labels, about = load_test_texts(task.dataset, source, cache)
    test_set = None
    if test_texts is not None:
        test_set = _tokenize(tokenizer, task, test_texts, test_labels, np.arange(len(test_texts)))
    return train_set, test_set, about


def load_test_texts(dataset: Mapping[str, Any], source: TextSource, cache: dict):
    """The dataset's own labelled test split, loaded (and cached) only when asked for.

    csv / jsonl: the ``test`` file; hf: ``test_split``, else a ``test`` split whose labels are
    all known (GLUE's test splits are unlabelled: -1). VADER has none.

    Returns:
        ``(texts, label ids, about)``, or ``(None, None, why there is none)``.

    Raises:
        JobSetupError: a named test file or split that is missing or has unknown labels.
    """
    key = cache_key("test-texts", dataset)
    if key not in cache:
        if dataset.get("name") == "vader":
            cache[key] = (None, None, no_test_split("vader"))
        elif "hf" in dataset:
            from hpo.job.hf_data import hf_test_texts

            cache[key] = hf_test_texts(dataset, source)
        elif "test" in dataset:
            kind = "csv" if "csv" in dataset else "jsonl"
            path = Path(dataset["test"]).expanduser()
            texts, labels = _table(path, kind, dataset["text"], dataset["label"])
            ids = known_label_ids(labels, source.label_names)
            if ids is None:
                raise JobSetupError(
                    f"dataset {kind}: the test file {path} has labels that "
                    f"the training file lacks; it has "
                    f"{', '.join(source.label_names)}"
                )
            cache[key] = (texts, ids, f"test file {path}")
        else:
            kind = "csv" if "csv" in dataset else "jsonl"
            cache[key] = (
                None,
                None,
                f"the {kind} dataset names no test file (dataset.test: "
                "FILE), nor task.test_fraction",
            )
    return cache[key]


def tokenize_options(task) -> dict[str, Any]:
    """The tokenizer call's options for the task's texts (each text truncated to
    ``max_length`` tokens, the special tokens included)."""
    return {"truncation": True, "max_length": task.max_length}


def preprocessing(task, tokenizer_path: str) -> dict[str, Any]:
    """How a raw text becomes the model's input, as ``hpo export`` records it: the options
    ``_tokenize`` and ``PadBatch`` use."""
    options = tokenize_options(task)
    call = ", ".join(f"{k}={v!r}" for k, v in {**options, "padding": PADDING}.items())
    return {
        "kind": "text",
        "input": "a string per example (any casing: the tokenizer normalizes as it was trained)",
        "tokenizer": tokenizer_path,
        **options,
        "padding": PADDING,
        "how": (
            "each text tokenized with the special tokens, truncated to max_length tokens; "
            "a batch padded to its longest text, with an attention_mask of 0 on the padding"
        ),
        "output": "input_ids, attention_mask (and token_type_ids where the tokenizer makes "
        "them); the class is the argmax of the model's logits (config.id2label names it)",
        "transformers": (
            f"from transformers import AutoTokenizer; tokenizer = AutoTokenizer.from_pretrained("
            f"{tokenizer_path!r}); inputs = tokenizer(texts, {call}, return_tensors='pt')"
        ),
    }


def _tokenize(
    tokenizer, task, texts: Sequence[str], labels: np.ndarray, idx: np.ndarray
) -> TokenizedTexts:
    encoded = tokenizer([texts[i] for i in idx], **tokenize_options(task))
    features = [{k: encoded[k][j] for k in encoded} for j in range(len(idx))]
    return TokenizedTexts(features, np.asarray(labels)[idx])


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
    return TextSource(
        texts, np.asarray(labels, dtype=np.int64), None, None, ["negative", "positive"]
    )


def _table(
    path: Path, kind: str, text: str, label: str, role: str = ""
) -> tuple[list[str], list[Any]]:
    if not path.is_file():
        raise JobSetupError(f"dataset {kind}: no {role or 'file'} at {path}")
    with path.open(encoding="utf-8", newline="") as f:
        if kind == "csv":
            rows = list(csv.DictReader(f))
        else:
            rows = [json.loads(line) for line in f if line.strip()]
    if not rows:
        raise JobSetupError(f"dataset {kind}: {path} has no rows")
    for column in (text, label):
        if column not in rows[0]:
            raise JobSetupError(
                f"dataset {kind}: {path} has no column {column!r}; it has "
                f"{', '.join(map(str, rows[0]))}"
            )
    return [str(r[text]) for r in rows], [r[label] for r in rows]
