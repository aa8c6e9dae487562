"""Image sources: scikit-learn's digits, torchvision datasets in a local root, image folders,
loaded into an ``ImageSource`` before any split or transform (``image_data`` splits and
transforms them). Loading (the slow part) is cached per worker by the dataset spec. Downloads
stay off: a torchvision dataset must already be on disk.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from hpo.job.data import (
    cache_key,
    no_test_split,
)
from hpo.job.digits import DIGITS_CLASSES, DIGITS_LEVELS, digits_arrays
from hpo.job.errors import JobSetupError

# Handwriting: a horizontal flip makes another glyph, so augmentation is off by default.
HANDWRITING = ("digits", "MNIST", "EMNIST", "KMNIST", "QMNIST")
PIXEL_LEVELS = 255.0
"""Any other image (PIL, uint8): ``ToDtype(float32, scale=True)`` divides by this."""


@dataclass
class ImageSource:
    """Images as loaded, before any split or transform: what the worker caches.

    ``train[i]`` and ``val[i]`` are ``(image, label)`` with a PIL image or a CHW float tensor
    in [0, 1].
    """

    train: Sequence | Dataset
    train_labels: np.ndarray
    val: Sequence | Dataset | None
    val_labels: np.ndarray | None
    num_classes: int
    handwriting: bool
    native_size: int
    in_memory: bool = False
    """Small and already in memory: deterministic transforms are applied once, cached."""
    class_names: list[str] = field(default_factory=list)
    """The names of the label ids, in id order (a folder's class directories)."""
    levels: float = PIXEL_LEVELS
    """The raw images' top level: what they are divided by to reach [0, 1]."""
    raw: str = "an image (PIL, or an HxWxC uint8 array), pixel levels 0..255"
    """What a raw example is, for the export's preprocessing record."""


def load_images(dataset: Mapping[str, Any], cache: dict) -> ImageSource:
    """Load (or take from ``cache``) the images of a dataset spec.

    Args:
        dataset: ``{name: digits}``, ``{name: CIFAR10, root: DIR}`` or
            ``{image_folder: DIR}`` (with ``DIR/train`` and ``DIR/val`` if present; the
            ``train`` / ``val`` keys rename them).
        cache: the worker's cache.

    Raises:
        JobSetupError: the files are not there.
    """
    key = cache_key("images", dataset)
    if key not in cache:
        if dataset.get("name") == "digits":
            cache[key] = _digits()
        elif "name" in dataset:
            cache[key] = _torchvision(dataset["name"], dataset["root"])
        else:
            cache[key] = _image_folder(dataset)
    return cache[key]


def load_test_images(dataset: Mapping[str, Any], source: ImageSource, cache: dict):
    """The dataset's own test split, loaded (and cached) only when asked for.

    torchvision datasets: ``train=False`` or ``split="test"``; image folders: ``DIR/test``
    (the ``test`` key renames it). digits has none.

    Returns:
        ``(images, labels, about)``, or ``(None, None, why there is none)``.

    Raises:
        JobSetupError: a named test folder that is missing, or whose classes differ.
    """
    key = cache_key("test-images", dataset)
    if key not in cache:
        if dataset.get("name") == "digits":
            cache[key] = (None, None, no_test_split("digits"))
        elif "name" in dataset:
            cache[key] = _torchvision_test(dataset["name"], dataset["root"], source)
        else:
            cache[key] = _image_folder_test(dataset, source)
    return cache[key]


def _digits() -> ImageSource:
    grey, target = digits_arrays()
    # 8x8 grey levels 0..16 -> [0, 1]; one channel, made RGB by the transform.
    images = torch.tensor(grey, dtype=torch.float32).unsqueeze(1) / DIGITS_LEVELS
    labels = target
    pairs = torch.utils.data.TensorDataset(images, torch.from_numpy(labels))
    return ImageSource(
        pairs,
        labels,
        None,
        None,
        10,
        handwriting=True,
        native_size=8,
        in_memory=True,
        class_names=list(DIGITS_CLASSES),
        levels=DIGITS_LEVELS,
        raw="sklearn.datasets.load_digits().images[i]: an 8x8 array of grey levels 0..16",
    )


def _torchvision(name: str, root: str) -> ImageSource:
    import torchvision.datasets

    cls = getattr(torchvision.datasets, name, None)
    if cls is None:
        raise JobSetupError(f"no torchvision dataset named {name!r}")
    path = Path(root).expanduser()
    accepts = inspect.signature(cls).parameters
    kwargs: dict[str, Any] = {}
    if "train" in accepts:
        kwargs["train"] = True
    elif "split" in accepts:
        kwargs["split"] = "train"
    if "download" in accepts:
        kwargs["download"] = False
    try:
        train = cls(str(path), **kwargs)
    except (RuntimeError, OSError) as e:
        raise JobSetupError(
            f"dataset {name}: not found under {path} ({e}); hpo never downloads: "
            f"fetch it once with torchvision.datasets.{name}({str(path)!r}, download=True)"
        ) from None
    labels = _labels(train)
    classes = getattr(train, "classes", None)
    num_classes = len(classes) if classes else int(labels.max()) + 1
    names = [str(c) for c in classes] if classes else [str(i) for i in range(num_classes)]
    return ImageSource(
        train,
        labels,
        None,
        None,
        num_classes,
        handwriting=name in HANDWRITING,
        native_size=_side(train[0][0]),
        class_names=names,
    )


def _torchvision_test(name: str, root: str, source: ImageSource):
    import torchvision.datasets

    cls = getattr(torchvision.datasets, name)
    path = Path(root).expanduser()
    accepts = inspect.signature(cls).parameters
    if "train" in accepts:
        kwargs: dict[str, Any] = {"train": False}
    elif "split" in accepts:
        kwargs = {"split": "test"}
    else:
        return None, None, f"torchvision's {name} has no test split (no train or split option)"
    if "download" in accepts:
        kwargs["download"] = False
    try:
        test = cls(str(path), **kwargs)
    except (RuntimeError, OSError, ValueError) as e:
        return (
            None,
            None,
            (
                f"{name}'s test split is not under {path} "
                f"({str(e).splitlines()[0] if str(e) else type(e).__name__})"
            ),
        )
    what = ", ".join(f"{k}={v}" for k, v in kwargs.items() if k != "download")
    return test, _labels(test), f"{name} {what}"


def _image_folder_test(dataset: Mapping[str, Any], source: ImageSource):
    from torchvision.datasets import ImageFolder

    root = Path(dataset["image_folder"]).expanduser()
    test_dir = root / dataset.get("test", "test")
    if not test_dir.is_dir() or not (root / dataset.get("train", "train")).is_dir():
        if "test" in dataset:
            raise JobSetupError(f"image_folder: no test directory at {test_dir}")
        return (
            None,
            None,
            (
                f"image_folder {root} has no test/ directory beside train/ "
                "(or give task.test_fraction in a new study)"
            ),
        )
    try:
        test = ImageFolder(str(test_dir))
    except (FileNotFoundError, OSError) as e:
        raise JobSetupError(f"image_folder: {e}") from None
    train_classes = getattr(source.train, "classes", None)
    if train_classes is not None and test.classes != train_classes:
        raise JobSetupError(
            f"image_folder: {test_dir} has classes {test.classes}, the "
            f"training folder has {train_classes}; they must match"
        )
    return test, np.asarray(test.targets), f"image folder {test_dir}"


def _image_folder(dataset: Mapping[str, Any]) -> ImageSource:
    from torchvision.datasets import ImageFolder

    root = Path(dataset["image_folder"]).expanduser()
    if not root.is_dir():
        raise JobSetupError(f"image_folder: no directory at {root}")
    train_dir = root / dataset.get("train", "train")
    val_dir = root / dataset.get("val", "val")
    if not train_dir.is_dir():
        if "train" in dataset or "val" in dataset:
            raise JobSetupError(f"image_folder: no directory at {train_dir}")
        train_dir, val_dir = root, None
    try:
        train = ImageFolder(str(train_dir))
        val = ImageFolder(str(val_dir)) if val_dir is not None and val_dir.is_dir() else None
    except (FileNotFoundError, OSError) as e:
        raise JobSetupError(f"image_folder: {e}") from None
    if val is not None and val.classes != train.classes:
        raise JobSetupError(
            f"image_folder: {val_dir} has classes {val.classes}, "
            f"{train_dir} has {train.classes}; they must match"
        )
    return ImageSource(
        train,
        np.asarray(train.targets),
        val,
        None if val is None else np.asarray(val.targets),
        len(train.classes),
        handwriting=False,
        native_size=_side(train[0][0]),
        class_names=list(train.classes),
    )


def _labels(dataset) -> np.ndarray:
    """Every label of a torchvision dataset, without decoding images where it says them."""
    for attr in ("targets", "labels", "_labels", "_targets"):
        labels = getattr(dataset, attr, None)
        if labels is not None and len(labels) == len(dataset):
            return np.asarray(labels, dtype=np.int64)
    return np.asarray([int(dataset[i][1]) for i in range(len(dataset))], dtype=np.int64)


def _side(image) -> int:
    """The shorter side of a PIL image or CHW tensor."""
    if isinstance(image, torch.Tensor):
        return int(min(image.shape[-2:]))
    return int(min(image.size))
