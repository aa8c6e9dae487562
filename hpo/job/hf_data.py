"""Hugging Face datasets as text sources: a hub name from the local cache, or a local path
(a ``save_to_disk`` directory, or data files that ``load_dataset`` reads).

``hpo.job.text_data.load_texts`` and ``load_test_texts`` come here for an ``hf`` dataset; the
``datasets`` package is imported only then.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hpo.job.errors import JobSetupError
from hpo.job.hub import offline_loads
from hpo.job.text_source import TextSource, known_label_ids, label_ids


def hf_texts(dataset: Mapping[str, Any]) -> TextSource:
    """The train split and the val split (``val_split``, else a ``validation`` split the
    dataset has) of an ``hf`` dataset, as ``load_texts`` returns them.

    Raises:
        JobSetupError: no ``datasets`` package, a missing split or column.
    """
    try:
        import datasets  # noqa: F401 - only to say what is missing
    except ImportError:
        raise JobSetupError(
            "dataset hf: needs the `datasets` package: pip install datasets"
        ) from None
    name = dataset["hf"]
    splits = hf_splits(dataset)
    train_split = dataset.get("train_split", "train")
    val_split = dataset.get("val_split") or ("validation" if "validation" in splits else None)
    for split in (train_split, val_split, dataset.get("test_split")):
        if split is not None and split not in splits:
            raise JobSetupError(
                f"dataset hf {name}: no split {split!r}; it has {', '.join(splits)}"
            )
    train = splits[train_split]
    label = dataset.get("label", "label")
    text = dataset.get("text") or _text_column(train, label, name)
    for column in (text, label):
        if column not in train.column_names:
            raise JobSetupError(
                f"dataset hf {name}: no column {column!r}; it has {', '.join(train.column_names)}"
            )
    feature = train.features[label]
    names = list(feature.names) if hasattr(feature, "names") else None
    val = splits[val_split] if val_split else None
    train_ids, val_ids, names = label_ids(train[label], val[label] if val else [], names)
    found = f"hf {name} split {val_split!r}" if val and "val_split" not in dataset else ""
    return TextSource(
        [str(t) for t in train[text]],
        train_ids,
        [str(t) for t in val[text]] if val else None,
        val_ids if val else None,
        names,
        found_val=found,
    )


def hf_test_texts(dataset: Mapping[str, Any], source: TextSource):
    """``load_test_texts`` of an ``hf`` dataset: ``test_split``, else a labelled ``test``."""
    name = dataset["hf"]
    splits = hf_splits(dataset)  # loaded (and so cached) by hf_texts already
    split = dataset.get("test_split")
    if split is None:
        if "test" not in splits:
            return (
                None,
                None,
                (
                    f"hf {name} has no test split ({', '.join(splits)}); name one "
                    "with test_split, or give task.test_fraction"
                ),
            )
        split = "test"
    test = splits[split]
    label = dataset.get("label", "label")
    text = dataset.get("text") or _text_column(test, label, name)
    for column in (text, label):
        if column not in test.column_names:
            raise JobSetupError(f"dataset hf {name}: split {split!r} has no column {column!r}")
    ids = known_label_ids(test[label], source.label_names)
    if ids is None:
        if "test_split" in dataset:
            raise JobSetupError(
                f"dataset hf {name}: test_split {split!r} has labels the "
                "training split lacks (an unlabelled split has -1)"
            )
        return (
            None,
            None,
            (
                f"hf {name}'s test split is unlabelled (labels outside "
                f"{', '.join(source.label_names)}); name a labelled one with "
                "test_split"
            ),
        )
    return [str(t) for t in test[text]], ids, f"hf {name} split {split!r}"


def hf_splits(dataset: Mapping[str, Any]):
    """The splits of an ``hf`` dataset: a hub name (``config`` its configuration) from the
    local cache, or a local path: a directory ``save_to_disk`` wrote (a ``DatasetDict``, or one
    ``Dataset``, which is the train split), else a directory or file of data files that
    ``load_dataset`` reads (csv, json, parquet, ...; files named ``train``, ``validation`` /
    ``val`` / ``dev``, ``test`` are those splits)."""
    import datasets

    name, config = dataset["hf"], dataset.get("config")
    path = Path(name).expanduser()
    local = name.startswith(("/", "./", "../", "~")) or path.exists()
    if local and not path.exists():
        raise JobSetupError(f"dataset hf: nothing at {path}")
    try:
        if local and path.is_dir() and any((path / f).is_file() for f in _SAVED_MARKERS):
            splits = datasets.load_from_disk(str(path))
            if isinstance(splits, datasets.Dataset):
                splits = datasets.DatasetDict(train=splits)
            return splits
        with offline_loads():  # a hub name: from the local cache (HF_HUB_OFFLINE=0: the hub)
            return datasets.load_dataset(str(path) if local else name, config)
    except Exception as e:  # noqa: BLE001 - offline, unknown name, bad config: all bad input
        first = (str(e).strip().splitlines() or [""])[0]
        if local:
            raise JobSetupError(
                f"dataset hf: cannot load {path} ({type(e).__name__}: {first})"
            ) from None
        raise JobSetupError(
            f"dataset hf {name} {config or ''}: cannot load it ({first}); hpo "
            "runs offline: it must be cached (HF_HUB_OFFLINE=0 where there is internet)"
        ) from None


_SAVED_MARKERS = ("dataset_dict.json", "state.json")
"""What ``save_to_disk`` writes: of a ``DatasetDict``, of a ``Dataset``."""


def _text_column(split, label: str, name: str) -> str:
    """The one string column besides the label (``sentence`` in glue/sst2, say)."""
    if "text" in split.column_names:
        return "text"
    strings = [
        c
        for c, f in split.features.items()
        if c != label and getattr(f, "dtype", None) in ("string", "large_string")
    ]
    if len(strings) != 1:
        raise JobSetupError(
            f"dataset hf {name}: say which column is the text (text: COL); "
            f"its columns are {', '.join(split.column_names)}"
        )
    return strings[0]
