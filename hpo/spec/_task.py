"""The ``task`` section: the kind, the model and its weights, the dataset, the training
options; or a ``custom`` task's entrypoint."""

from __future__ import annotations

import os
import re
import shlex
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hpo.spec._adapter import ADAPTER_KINDS, LORA_PRESETS, AdapterSpec
from hpo.spec._catalog import torchvision_catalog
from hpo.spec._checks import (
    _STR,
    _bool,
    _fraction,
    _is_int,
    _non_negative_int,
    _one_of,
    _positive,
    _positive_int,
)
from hpo.spec._hyperparameters import FREEZE_POLICIES
from hpo.spec._keypath import _At, _show
from hpo.spec._task_spec import _TASK_DEFAULTS, TASK_KINDS, TaskSpec

_DATASET_KEYS = {
    "image_classification": ("name", "root", "image_folder", "train", "val", "test"),
    "text_classification": (
        "name",
        "hf",
        "config",
        "csv",
        "jsonl",
        "text",
        "label",
        "val",
        "test",
        "train_split",
        "val_split",
        "test_split",
    ),
}
"""The keys of ``task.dataset`` for each task kind (exactly one source key: ``name``,
``image_folder``, ``hf``, ``csv`` or ``jsonl``). Every value is a string:

- ``name``: a built-in dataset: ``digits`` (scikit-learn's, offline) or a torchvision dataset
  such as ``CIFAR10`` (with ``root``) for images; ``vader`` (the VADER lexicon, offline) for
  text.
- ``root``: the directory of a torchvision dataset (required with a torchvision ``name``).
- ``image_folder``: a directory of images with one sub-directory per class, or with ``train/``
  (and ``val/``, ``test/``) sub-directories that each hold the class directories.
- ``train``: the name of an image folder's training sub-directory (default ``train``).
- ``val``: images: the name of the validation sub-directory (default ``val``); text: a file
  of the validation examples beside ``csv`` / ``jsonl``, with the same columns (then no
  ``val_fraction``).
- ``test``: images: the name of the test sub-directory (default ``test``); text: a file of
  test examples beside ``csv`` / ``jsonl``, which ``hpo retrain`` evaluates on.
- ``hf``: a Hugging Face dataset: a hub name (read from the local cache: no hub is reached),
  a directory that ``save_to_disk`` wrote, or a folder of data files (``train.csv``,
  ``validation.csv``, ``test.csv``, or ``.jsonl`` / ``.parquet``).
- ``config``: the configuration of an ``hf`` hub dataset (``sst2`` of ``glue``).
- ``csv``: a CSV file of training examples (with ``text`` and ``label``).
- ``jsonl``: a JSON-lines file of training examples (with ``text`` and ``label``).
- ``text``: the column of the text (required with ``csv`` / ``jsonl``; for ``hf`` default:
  the one string column).
- ``label``: the column of the label (required with ``csv`` / ``jsonl``; for ``hf`` default
  ``label``).
- ``train_split``: the ``hf`` split the trials train on (default ``train``).
- ``val_split``: the ``hf`` split that validates (default ``validation``, if there is one).
- ``test_split``: the ``hf`` split ``hpo retrain`` tests on (default ``test``, if labelled).
"""
_DATASET_TEST = {
    "image_classification": ("test", "image_folder"),
    "text_classification": ("test", "csv or jsonl"),
}
"""The dataset key naming a test split of its own, and the sources it goes with."""
_DATASET_SOURCES = {
    "image_classification": ("name", "image_folder"),
    "text_classification": ("name", "hf", "csv", "jsonl"),
}
BUILTIN_DATASETS = {"image_classification": ("digits",), "text_classification": ("vader",)}


def _parse_task(raw: Any, at: _At, check_environment: bool, check_files: bool) -> TaskSpec:
    d = at.mapping(raw, tuple(_TASK_DEFAULTS))
    at.require(d, ("kind",), "every task needs it")
    kind = d["kind"]
    if kind not in TASK_KINDS:
        raise (at / "kind").error(f"expected one of {', '.join(TASK_KINDS)}, got {_show(kind)}")
    if kind == "custom":
        return _parse_custom_task(d, at, check_files)
    if kind == "script":
        return _parse_script_task(d, at, check_files)
    at.require(d, ("model", "dataset"), "every task needs it")
    for key, kind_of in (("entrypoint", "custom"), ("command", "script")):
        if key in d:
            raise (at / key).error(f"used by a {kind_of} task only, not by {kind}")
    model = (at / "model").typed(d["model"], _STR)
    dataset = _parse_dataset(d["dataset"], at / "dataset", kind, check_environment)

    out: dict[str, Any] = {"kind": kind, "model": model, "dataset": dataset}
    # What each option takes; null is allowed where the default is null.
    checks: dict[str, Callable[[Any], str | None]] = {
        "val_fraction": _fraction,
        "freeze": _one_of(FREEZE_POLICIES),
        "freeze_k": _non_negative_int,
        "max_length": _positive_int,
        "evals_per_epoch": _positive_int,
        "val_subset": _positive_int,
        "seed": _non_negative_int,
        "weights": lambda v: None if isinstance(v, str) and v else "a name or a path, or null",
        "test_fraction": _fraction,
        "image_size": _positive_int,
        "max_samples": lambda v: None if _is_int(v) and v >= 10 else "an integer >= 10",
        "augment": _bool,
        "early_stopping_patience": _positive_int,
        "amp": _bool,
        "channels_last": _bool,
        "num_workers": _non_negative_int,
        "compile": _bool,
        "thin_seed": _non_negative_int,
    }
    for key, check in checks.items():
        if key not in d:
            continue
        value = d[key]
        if value is None and _TASK_DEFAULTS[key] is None:
            out[key] = None
            continue
        (at / key).checked(value, check)
        out[key] = float(value) if key in ("val_fraction", "test_fraction") else value
    if "class_weights" in d:
        out["class_weights"] = _parse_class_weights(d["class_weights"], at / "class_weights")
    if "thin_classes" in d:
        out["thin_classes"] = _parse_thin_classes(d["thin_classes"], at / "thin_classes")
    if "adapter" in d:
        if kind != "text_classification":
            raise (at / "adapter").error(
                "an adapter (LoRA) is for text_classification (transformers) models; a "
                "torchvision model trains in part with freeze instead"
            )
        out["adapter"] = _parse_adapter(d["adapter"], at / "adapter")
        if out.get("freeze", "none") != "none":
            raise (at / "freeze").error(
                "with an adapter the pretrained model is frozen and "
                "the adapter trains; expected none (or no freeze)"
            )
    task = TaskSpec(**out)
    if task.val_subset is not None and task.evals_per_epoch == 1:
        raise (at / "val_subset").error(
            "only evaluations inside an epoch use the subset; with it, set evals_per_epoch above 1"
        )
    if task.freeze == "first_k" and "freeze_k" not in d:
        raise (at / "freeze_k").error("missing; freeze: first_k needs freeze_k")
    own_val = [
        k
        for k in ("val", "val_split")
        if k in dataset and not (k == "val" and kind == "image_classification")
    ]
    if "val_fraction" in d and own_val:
        raise (at / "val_fraction").error(
            f"the dataset names its own validation split (dataset.{own_val[0]}), so nothing is "
            "split off for validation; give one or the other"
        )
    own_test = [k for k in ("test", "test_split") if k in dataset]
    if task.test_fraction is not None and own_test:
        raise (at / "test_fraction").error(
            f"the dataset names its own test split (dataset.{own_test[0]}); give one or the other"
        )
    if check_environment:
        _check_model(task, at, check_files)
    return task


def _parse_class_weights(value: Any, at: _At) -> Any:
    """``none`` / null -> None, ``balanced``, a list of weights (one per class, in class
    order) or a mapping class name -> weight; every weight > 0. Whether the length and the
    names fit the data is known once it is loaded (preflight, the job)."""
    if value is None or value == "none":
        return None
    if value == "balanced":
        return value
    if isinstance(value, list):
        if len(value) < 2:
            raise at.error(f"a list has one weight per class (2 or more), got {len(value)}")
        return [float(at.checked(w, _positive)) for w in value]
    if isinstance(value, Mapping) and value:
        for name, w in value.items():
            if not isinstance(name, (str, int)) or isinstance(name, bool):
                raise at.error(f"class names must be strings, got {_show(name)}")
            (at / name).checked(w, _positive)
        return {str(name): float(w) for name, w in value.items()}
    raise at.error(
        "expected none, balanced, a list of weights > 0 (one per class) or a "
        f"mapping class name -> weight > 0, got {_show(value)}"
    )


def _parse_thin_classes(value: Any, at: _At) -> dict[str, float] | None:
    """null -> None, else a mapping class name -> the share kept, in (0, 1]. Whether the
    names are the data's is known once it is loaded (the job)."""
    if value is None:
        return None
    if not isinstance(value, Mapping) or not value:
        raise at.error(f"expected a mapping class name -> share kept in (0, 1], got {_show(value)}")
    for name, share in value.items():
        if not isinstance(name, (str, int)) or isinstance(name, bool):
            raise at.error(f"class names must be strings, got {_show(name)}")
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
            raise (at / name).error(f"expected a share kept in (0, 1], got {_show(share)}")
    return {str(name): float(share) for name, share in value.items()}


def _parse_custom_task(d: dict[str, Any], at: _At, check_files: bool) -> TaskSpec:
    """A ``custom`` task: the user's own job function, found by its entrypoint."""
    entrypoint = (at / "entrypoint").typed(d.get("entrypoint"), _STR)
    if not re.fullmatch(r"[\w.]+:\w+", entrypoint):
        raise (at / "entrypoint").error(f"expected package.module:function, got {entrypoint!r}")
    extra = sorted(set(d) - {"kind", "entrypoint", "seed"})
    if extra:
        raise (at / extra[0]).error("not used by a custom task (only entrypoint and seed)")
    if check_files:
        try:
            load_entrypoint(entrypoint)
        except (ImportError, AttributeError) as e:
            raise (at / "entrypoint").error(f"cannot import {entrypoint}: {e}") from None
    seed = (at / "seed").checked(d.get("seed", 0), _non_negative_int)
    return TaskSpec(kind="custom", entrypoint=entrypoint, seed=seed)


def _parse_script_task(d: dict[str, Any], at: _At, check_files: bool) -> TaskSpec:
    """A ``script`` task: the user's own program, one process per trial (``hpo.session``)."""
    raw = d.get("command")
    if isinstance(raw, str):
        raw = shlex.split(raw)
    if not isinstance(raw, list) or not raw or not all(isinstance(a, str) and a for a in raw):
        raise (at / "command").error(
            f"expected the program and its arguments, e.g. [python, train.py], got {_show(raw)}"
        )
    extra = sorted(set(d) - {"kind", "command", "seed"})
    if extra:
        raise (at / extra[0]).error("not used by a script task (only command and seed)")
    if check_files:
        if raw[0] not in ("python", "python3") and shutil.which(raw[0]) is None:
            raise (at / "command" / 0).error(f"no such program: {raw[0]}")
        for i, arg in enumerate(raw[1:], 1):
            if arg.endswith(".py") and not Path(arg).is_file():
                raise (at / "command" / i).error(f"no such file: {arg}")
    seed = (at / "seed").checked(d.get("seed", 0), _non_negative_int)
    return TaskSpec(kind="script", command=tuple(raw), seed=seed)


def _parse_adapter(raw: Any, at: _At) -> AdapterSpec:
    """``task.adapter``: ``{kind: lora, target_modules: PRESET or [module names]}``."""
    d = at.mapping(raw, ("kind", "target_modules"))
    at.require(d, ("kind",), "an adapter names its kind (lora)")
    if d["kind"] not in ADAPTER_KINDS:
        raise (at / "kind").error(
            f"expected one of {', '.join(ADAPTER_KINDS)}, got {_show(d['kind'])}"
        )
    targets = d.get("target_modules", AdapterSpec.target_modules)
    expected = f"a preset ({', '.join(LORA_PRESETS)}) or a list of module names"
    if isinstance(targets, str):
        if targets not in LORA_PRESETS:
            raise (at / "target_modules").error(f"expected {expected}, got {_show(targets)}")
    elif isinstance(targets, list) and targets:
        for i, name in enumerate(targets):
            (at / "target_modules" / i).typed(name, _STR)
        targets = tuple(targets)
    else:
        got = "an empty list" if targets == [] else _show(targets)
        raise (at / "target_modules").error(f"expected {expected}, got {got}")
    return AdapterSpec(kind=d["kind"], target_modules=targets)


def load_entrypoint(entrypoint: str) -> Callable[..., float]:
    """``package.module:function`` -> the function."""
    import importlib

    module, _, name = entrypoint.partition(":")
    return getattr(importlib.import_module(module), name)


def _parse_dataset(raw: Any, at: _At, kind: str, check_environment: bool) -> dict[str, Any]:
    d = at.mapping(raw, _DATASET_KEYS[kind])
    sources = [k for k in _DATASET_SOURCES[kind] if k in d]
    if len(sources) != 1:
        raise at.error("expected exactly one of " + ", ".join(_DATASET_SOURCES[kind]))
    for key, value in d.items():
        (at / key).typed(value, _STR)
    if "name" in d:
        name = d["name"]
        builtin = BUILTIN_DATASETS[kind]
        if kind == "text_classification" and name not in builtin:
            raise (at / "name").error(
                f"unknown built-in text dataset {name!r}; expected one of {', '.join(builtin)}"
                " (or use hf, csv or jsonl)"
            )
        if kind == "image_classification" and name not in builtin and check_environment:
            if name not in torchvision_catalog()["datasets"]:
                raise (at / "name").error(
                    f"unknown dataset {name!r}; expected digits or a torchvision dataset "
                    "such as CIFAR10, CIFAR100, FashionMNIST, MNIST (or use image_folder)"
                )
            if "root" not in d:
                raise (at / "root").error(f"missing; dataset {name} needs a root directory")
    key, sources_of_test = _DATASET_TEST[kind]
    if key in d and not any(s in d for s in sources_of_test.split(" or ")):
        raise (at / key).error(
            f"a test {'folder' if kind == 'image_classification' else 'file'}"
            f" goes with {sources_of_test}" + ("; for hf name a test_split" if "hf" in d else "")
        )
    if kind == "text_classification" and "val" in d and not ("csv" in d or "jsonl" in d):
        raise (at / "val").error(
            "a val file goes with csv or jsonl" + ("; for hf name a val_split" if "hf" in d else "")
        )
    for key in ("csv", "jsonl"):
        if key in d:
            for col in ("text", "label"):
                if col not in d:
                    raise (at / col).error(f"missing; a {key} dataset names its {col} column")
    return d


def _check_model(task: TaskSpec, at: _At, check_files: bool) -> None:
    """Check the model (and weights) name against what the library offers, and with
    ``check_files`` that a local model directory and checkpoint file are there."""
    weights = task.weights
    if task.kind == "image_classification":
        models = torchvision_catalog()["models"]
        names = list(models)
        if task.model not in models:
            close = [n for n in names if n.startswith(task.model[:4])][:6]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise (at / "model").error(
                f"unknown torchvision classification model {task.model!r}{hint}"
            )
        if weights is not None and weights != "DEFAULT" and not _looks_like_path(weights):
            known = models[task.model]
            if weights not in known:
                raise (at / "weights").error(
                    f"unknown weights {weights!r} for {task.model}; expected DEFAULT, "
                    f"{', '.join(known)}, null, or a local checkpoint path"
                )
    else:
        if check_files:
            try:
                where = resolve_model(task.model)
            except ModuleNotFoundError as e:
                raise (at / "model").error(f"{task.model}: {e}") from None
            if (_looks_like_path(where) or where != task.model) and not Path(
                where
            ).expanduser().is_dir():
                raise (at / "model").error(f"no model directory at {where}")
        if weights not in (None, "DEFAULT") and not _looks_like_path(weights):
            raise (at / "weights").error(
                f"expected null or DEFAULT (the model's own weights) or a local checkpoint "
                f"path for a text model, got {weights!r}"
            )
    if weights is not None and _looks_like_path(weights) and check_files:
        if not Path(weights).expanduser().is_file():
            raise (at / "weights").error(f"no checkpoint file at {weights}")


def _looks_like_path(s: str) -> bool:
    return s.startswith(("/", "./", "../", "~")) or s.endswith(
        (".pt", ".pth", ".bin", ".safetensors")
    )


def resolve_model(model: str | os.PathLike[str]) -> str:
    """Where a model name points: ``pkg:PACKAGE/DIR`` becomes that directory of the installed
    package (found without importing it); anything else is returned as it is.

    Raises:
        ModuleNotFoundError: the package is not installed.
    """
    model = os.fspath(model)
    if not model.startswith("pkg:"):
        return model
    import importlib.util

    package, _, sub = model[4:].partition("/")
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise ModuleNotFoundError(f"no installed package {package!r}")
    return str(Path(list(found.submodule_search_locations)[0]) / sub)
