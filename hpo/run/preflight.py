"""Preflight: before ``hpo run`` or ``hpo create`` writes a study, check on this machine what
every trial of it will load, so that a missing data folder is one line and exit 2, not a study
whose trials all fail.

``load_spec`` has already checked the names (torchvision models, weights and datasets) and the
files the spec names for the model (a local model directory or ``pkg:`` package, a checkpoint
file). This adds what the job reads first: the data (an image folder, a torchvision dataset's
root, a CSV or JSON-lines file with its val and test files and their columns, a local Hugging
Face dataset and its splits, a named test split), ``class_weights`` against the data's
classes, and, for a text task with a local model directory, its tokenizer. Each check is the
job's own loading code, run once here with a throwaway cache. A Hugging Face hub name (model
or dataset) is left to the workers: offline it cannot be resolved here.

``--no-preflight`` skips all of it (and ``load_spec``'s file checks) where the data lives only
on the workers. torch, torchvision and transformers are imported only when a check needs them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

from hpo.errors import SpecError
from hpo.spec import Spec, resolve_model

log = logging.getLogger(__name__)

SKIP_HINT = "--no-preflight skips this check, for files only the workers have"


class PreflightError(SpecError):
    """What a spec names is not there on this machine. The message names the spec file and the
    key path."""


def load_checked_spec(path: str, *, preflight: bool = True) -> Spec:
    """``load_spec``, then (with ``preflight``) ``check_machine``: what ``hpo run`` and
    ``hpo create`` do before they write the study.

    Raises:
        SpecError: the spec does not validate, or (``PreflightError``) names what this machine
            does not have.
    """
    from hpo.spec import load_spec

    spec = load_spec(path, check_files=preflight)
    if preflight:
        check_machine(spec, str(path))
    return spec


def check_machine(spec: Spec, source: str) -> None:
    """Check that this machine holds what the spec's trials load.

    Args:
        spec: the spec, as ``load_spec`` gave it.
        source: the spec file, named in the error.

    Raises:
        PreflightError: one line: ``SOURCE: task.KEY: what is wrong``.
    """
    task = spec.task

    def fail(key: str, what: str) -> NoReturn:
        raise PreflightError(f"{source}: task.{key}: {what} ({SKIP_HINT})")

    classes = None  # (training labels, class names) where the data is here
    if task.kind == "image_classification" and task.dataset.get("name") == "digits":
        # Shipped with scikit-learn: read as plain arrays, without importing torch.
        from hpo.job.digits import DIGITS_CLASSES, digits_arrays

        classes = digits_arrays()[1], DIGITS_CLASSES
    elif task.kind == "image_classification":
        images = _check_images(task.dataset, fail)
        classes = images.train_labels, images.class_names
    elif task.kind == "text_classification":
        texts = _check_texts(task, source, fail)
        _check_tokenizer(task.model, fail)
        classes = None if texts is None else (texts.train_labels, texts.label_names)
    if classes is not None and task.class_weights is not None:
        from hpo.job.loss import class_weights

        # The list's length and the mapping's names against the data's classes.
        _load(
            lambda: class_weights(task.class_weights, *classes),
            "class_weights",
            ("class_weights: ",),
            fail,
        )


def _check_images(dataset: Mapping[str, Any], fail: Callable[[str, str], NoReturn]) -> Any:
    from hpo.job.image_source import load_images, load_test_images

    cache: dict = {}
    key = "dataset.root" if "name" in dataset else "dataset.image_folder"
    prefixes = ("image_folder: ",)
    source = _load(lambda: load_images(dataset, cache), key, prefixes, fail)
    if "test" in dataset:  # a test folder the spec names (absent, it is optional)
        _load(lambda: load_test_images(dataset, source, cache), "dataset.test", prefixes, fail)
    return source


def _check_texts(task: Any, source_file: str, fail: Callable[[str, str], NoReturn]) -> Any:
    """The texts as the workers load them (``None`` for a hub dataset, left to them)."""
    from hpo.job.text_data import load_test_texts, load_texts, unused_val_fraction

    dataset = task.dataset
    if "hf" in dataset:
        # A hub dataset cannot be resolved offline; a local one (a path) must be there, and
        # loads as the workers load it.
        name = dataset["hf"]
        if _looks_like_path(name) and not Path(name).expanduser().exists():
            fail("dataset.hf", f"nothing at {name}")
        if not Path(name).expanduser().exists():
            return None
    cache: dict = {}
    kind = next((k for k in ("csv", "jsonl", "hf") if k in dataset), "name")
    prefixes = (f"dataset {kind}: ", f"dataset hf {dataset.get('hf')}: ")
    val = str(Path(dataset["val"]).expanduser()) if "val" in dataset else None

    def key_of(message: str, default: str) -> str:
        for column in ("text", "label"):  # a missing column is the key that names it
            if column in dataset and f"no column {dataset[column]!r}" in message:
                return f"dataset.{column}"
        if "split " in message:
            for key in ("train_split", "val_split", "test_split"):
                if key in dataset and f"split {dataset[key]!r}" in message:
                    return f"dataset.{key}"
        if val is not None and val in message:  # the val file's own trouble
            return "dataset.val"
        return default

    source = _load(lambda: load_texts(dataset, cache), f"dataset.{kind}", prefixes, fail, key_of)
    unused = unused_val_fraction(task, source)
    if unused:
        log.warning("%s: %s", source_file, unused)
    if "test" in dataset or "test_split" in dataset:
        key = "dataset.test" if "test" in dataset else "dataset.test_split"
        _load(lambda: load_test_texts(dataset, source, cache), key, prefixes, fail, key_of)
    return source


def _check_tokenizer(model: str, fail: Callable[[str, str], NoReturn]) -> None:
    """A local model directory's tokenizer loads (a hub name is left to the workers)."""
    try:
        where = Path(resolve_model(model)).expanduser()
    except ModuleNotFoundError as e:
        fail("model", f"{model}: {e}")
    if not where.is_dir():
        if _looks_like_path(model):
            fail("model", f"no model directory at {where}")
        return
    from hpo.job.text import load_tokenizer

    _load(lambda: load_tokenizer(model, {}), "model", (), fail)


def _load(
    load: Callable[[], Any],
    key: str,
    prefixes: tuple[str, ...],
    fail: Callable[[str, str], NoReturn],
    key_of: Callable[[str, str], str] | None = None,
) -> Any:
    """``load()``, its error turned into ``fail(key, message)``.

    The job's errors say which part they are about (``image_folder: ...``); the key path says
    it here, so that prefix goes. Any other error of loading (an unreadable image or file) is
    the same bad input.
    """
    from hpo.job.errors import JobSetupError

    try:
        return load()
    except JobSetupError as e:
        message = str(e)
    except (OSError, ValueError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [""])[0]
        message = f"cannot load it: {type(e).__name__}: {first}"
    for prefix in prefixes:
        if message.startswith(prefix):
            message = message[len(prefix) :]
    fail(key_of(message, key) if key_of else key, message)


def _looks_like_path(s: str) -> bool:
    return s.startswith(("/", "./", "../", "~"))
