"""Image datasets: scikit-learn's digits, torchvision datasets in a local root, image folders.

Loading (the slow part) is cached per worker by the dataset spec; splits and transforms are
cheap and made per trial. Downloads stay off: a torchvision dataset must already be on disk.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from hpo.job.data import (
    LabelledSubset,
    cache_key,
    dataset_size,
    heldout_about,
    heldout_test_indices,
    no_test_split,
    train_val_indices,
)
from hpo.job.digits import DIGITS_CLASSES, DIGITS_LEVELS, digits_arrays
from hpo.job.errors import JobSetupError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Handwriting: a horizontal flip makes another glyph, so augmentation is off by default.
HANDWRITING = ("digits", "MNIST", "EMNIST", "KMNIST", "QMNIST")
MIN_IMAGE_SIZE = 32
PIXEL_LEVELS = 255.0
"""Any other image (PIL, uint8): ``ToDtype(float32, scale=True)`` divides by this."""
RESIZE_INTERPOLATION = "bilinear"
"""``v2.Resize``'s interpolation where the weights name none (torchvision's default)."""


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


@dataclass(frozen=True)
class Preset:
    """How images are sized and normalized: the weights' preset, or ImageNet's statistics."""

    crop: int
    resize: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    weights: Any = None
    """The torchvision weights enum member whose ``transforms()`` evaluates, if any."""


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


def image_datasets(task, source: ImageSource, preset: Preset | None, cache: dict):
    """The train and val datasets of one trial: split, subsampled and transformed.

    Args:
        task: the ``TaskSpec`` (image_size, augment, max_samples, val_fraction, seed).
        source: the loaded images.
        preset: the weights' preset, or ``None`` for ImageNet statistics at
            ``task.image_size`` (default: the data's own size, at least 32).
        cache: the worker's cache; in-memory data (digits) keeps its resized,
            normalized tensors there.

    Returns:
        ``(train_set, val_set, ready)`` with ``(CHW float tensor, label)`` pairs; ``ready``
        says that no example needs work when loaded (in-memory data, transformed once).
    """
    train_tf, evaluate, augment, pairs = _transforms(task, source, preset, cache)
    train_idx, val_idx = train_val_indices(
        source.train_labels,
        source.val_labels,
        task.max_samples,
        task.val_fraction,
        task.seed,
        task.test_fraction,
    )
    val_base, val_labels = (
        (source.train, source.train_labels)
        if source.val is None
        else (source.val, source.val_labels)
    )
    assert val_labels is not None  # an ImageSource with a val split has its labels
    train_set = LabelledSubset(source.train, train_idx, source.train_labels, train_tf)
    val_set = LabelledSubset(val_base, val_idx, val_labels, evaluate)
    ready = False
    if pairs is not None:
        val_set = LabelledSubset(pairs, val_idx, val_labels)
        if not augment:
            train_set = LabelledSubset(pairs, train_idx, source.train_labels)
            ready = True
    return train_set, val_set, ready


def final_image_datasets(task, source: ImageSource, preset: Preset | None, cache: dict):
    """What ``hpo retrain`` fits and tests on: the trials' train and val examples as one
    training set, and the test split.

    Args:
        task, source, preset, cache: as for ``image_datasets``.

    Returns:
        ``(train_set, test_set, test_about, ready)``: ``test_set`` is ``None`` where there is no
        test split, and ``test_about`` says which it is or why there is none.

    Raises:
        JobSetupError: a test folder whose classes differ from the training ones.
    """
    train_tf, evaluate, augment, pairs = _transforms(task, source, preset, cache)
    train_idx, val_idx = train_val_indices(
        source.train_labels,
        source.val_labels,
        task.max_samples,
        task.val_fraction,
        task.seed,
        task.test_fraction,
    )
    ready = pairs is not None and not augment
    if source.val is None:
        both = np.sort(np.concatenate([train_idx, val_idx]))
        train_set: Dataset = (
            LabelledSubset(pairs, both, source.train_labels)
            if ready
            else LabelledSubset(source.train, both, source.train_labels, train_tf)
        )
    else:
        assert source.val_labels is not None  # an ImageSource with a val split has its labels
        train_set = ConcatDataset(
            [
                LabelledSubset(source.train, train_idx, source.train_labels, train_tf),
                LabelledSubset(source.val, val_idx, source.val_labels, train_tf),
            ]
        )
    if task.test_fraction is not None:
        _, test_idx = heldout_test_indices(source.train_labels, task.test_fraction, task.seed)
        test_set: LabelledSubset | None = (
            LabelledSubset(pairs, test_idx, source.train_labels)
            if pairs is not None
            else LabelledSubset(source.train, test_idx, source.train_labels, evaluate)
        )
        about = heldout_about(task.test_fraction)
        return train_set, test_set, about, ready
    test, test_labels, about = load_test_images(task.dataset, source, cache)
    test_set = None
    if test is not None:
        test_set = LabelledSubset(test, np.arange(len(test_labels)), test_labels, evaluate)
    return train_set, test_set, about, ready


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


def _sizes(task, source: ImageSource, preset: Preset | None) -> tuple[int, int, Preset]:
    """``(size, resize, preset)``: the crop side the model sees, the shorter side images are
    resized to first, and the preset (ImageNet's statistics where the weights give none)."""
    size = task.image_size or (preset.crop if preset else max(source.native_size, MIN_IMAGE_SIZE))
    if preset is None:
        preset = Preset(crop=size, resize=size)
    resize = max(size, round(size * preset.resize / preset.crop))
    return size, resize, preset


def _interpolation(preset: Preset) -> str:
    """The evaluation resize's interpolation: the weights' preset's, else torchvision's
    default."""
    if preset.weights is None:
        return RESIZE_INTERPOLATION
    return str(preset.weights.transforms().interpolation.value)


def preprocessing(task, source: ImageSource, preset: Preset | None) -> dict[str, Any]:
    """How a raw example becomes the model's input at evaluation, as ``hpo export`` records
    it: the numbers are the ones ``_transforms`` builds the evaluation transform from."""
    size, resize, preset = _sizes(task, source, preset)
    mean, std = [float(m) for m in preset.mean], [float(s) for s in preset.std]
    interpolation = _interpolation(preset)
    return {
        "kind": "image",
        "input": source.raw,
        "steps": [
            {"op": "scale", "divide_by": source.levels, "to": "float32 in [0, 1]"},
            {"op": "rgb", "how": "a grey image's one channel repeated 3 times; RGB kept"},
            {
                "op": "resize",
                "size": resize,
                "interpolation": interpolation,
                "antialias": True,
                "how": "the shorter side to size, the aspect ratio kept",
            },
            {"op": "center_crop", "size": size},
            {"op": "normalize", "mean": mean, "std": std, "how": "(x - mean) / std per channel"},
        ],
        "output": f"a float32 tensor (3, {size}, {size}) per image, batched as (N, 3, {size}, "
        f"{size}); the class is the argmax of the model's output",
        "torchvision": (
            "import torch; from torchvision.transforms import v2; preprocess = v2.Compose(["
            "v2.ToImage(), v2.RGB(), v2.ToDtype(torch.float32, scale=True)"
            # ToDtype scales uint8 by 1/255; other levels arrive as floats, divided here.
            + (
                f", v2.Lambda(lambda x: x / {source.levels})"
                if source.levels != PIXEL_LEVELS
                else ""
            )
            + f", v2.Resize({resize}, interpolation=v2.InterpolationMode.{interpolation.upper()}, "
            f"antialias=True), v2.CenterCrop({size}), v2.Normalize({mean}, {std})])"
        ),
    }


def _transforms(task, source: ImageSource, preset: Preset | None, cache: dict):
    """The task's training and evaluation transforms, whether it augments, and for in-memory
    data without a val split, ``(tensor, label)`` pairs evaluation-transformed once."""
    size, resize, preset = _sizes(task, source, preset)
    augment = task.augment if task.augment is not None else not source.handwriting
    evaluate = _eval_transform(preset, size, resize)
    pairs = None
    if source.in_memory and source.val is None:
        # Transform once per worker, not once per example per epoch (a tenth of an epoch).
        key = cache_key(
            "transformed",
            task.dataset,
            size=size,
            resize=resize,
            mean=preset.mean,
            std=preset.std,
            weights=str(preset.weights),
        )
        if key not in cache:
            train = source.train
            cache[key] = torch.stack([evaluate(train[i][0]) for i in range(dataset_size(train))])
        pairs = list(zip(cache[key], source.train_labels))
    return _train_transform(preset, size, resize, augment), evaluate, augment, pairs


def _train_transform(preset: Preset, size: int, resize: int, augment: bool):
    from torchvision.transforms import v2

    steps = [
        v2.ToImage(),
        v2.RGB(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Resize(resize, antialias=True),
    ]
    if augment:
        steps += [v2.RandomCrop(size, padding=size // 8), v2.RandomHorizontalFlip()]
    else:
        steps += [v2.CenterCrop(size)]
    return v2.Compose(steps + [v2.Normalize(preset.mean, preset.std)])


def _eval_transform(preset: Preset, size: int, resize: int):
    from torchvision.transforms import v2

    if preset.weights is not None:
        # The weights' own evaluation preset, at this task's size.
        evaluate = preset.weights.transforms(crop_size=size, resize_size=resize)
        return v2.Compose([v2.ToImage(), v2.RGB(), v2.ToDtype(torch.float32, scale=True), evaluate])
    return v2.Compose(
        [
            v2.ToImage(),
            v2.RGB(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Resize(
                resize, interpolation=v2.InterpolationMode(RESIZE_INTERPOLATION), antialias=True
            ),
            v2.CenterCrop(size),
            v2.Normalize(preset.mean, preset.std),
        ]
    )


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
