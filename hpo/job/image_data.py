"""Image datasets: the loaded images (``image_source``) split, subsampled and transformed for
one trial, sized and normalized by the weights' preset; and the preprocessing record.

Loading (the slow part) is cached per worker by the dataset spec; splits and transforms are
cheap and made per trial.

Augmentation (training split only; params ``augment`` and ``augment_magnitude``, else
``task.augment``) is one of ``AUGMENTATIONS``:

- ``none``: the evaluation's resize and center crop;
- ``flip_crop``: a random horizontal flip and a random crop of the image padded by
  ``magnitude * 5/12`` of its side on each edge (an eighth at the default 0.3);
- ``trivialaugment``: flip and crop as ``flip_crop`` at the default magnitude, then
  TrivialAugment Wide (one random op per image at a random strength: it draws its own
  magnitude, by design, so ``augment_magnitude`` does not change it);
- ``randaugment``: flip and crop the same, then RandAugment (2 random ops per image at
  magnitude ``round(magnitude * 30)`` of 31 bins: 9, torchvision's default, at 0.3).

Every random draw is torch's, seeded by the task's seed (per example in loader processes,
``hpo.job.data.EpochSeeded``): a seed gives the same augmented images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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
    thinning,
    train_val_indices,
)
from hpo.job.image_source import PIXEL_LEVELS, ImageSource, load_test_images
from hpo.job.resident import Examples, TensorSubset
from hpo.spec import AUGMENTATIONS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MIN_IMAGE_SIZE = 32
RESIZE_INTERPOLATION = "bilinear"
"""``v2.Resize``'s interpolation where the weights name none (torchvision's default)."""
DEFAULT_MAGNITUDE = 0.3
"""``augment_magnitude``'s default: flip_crop pads an eighth of the side, RandAugment's
magnitude is 9 (torchvision's defaults)."""
RANDAUGMENT_BINS = 31


@dataclass(frozen=True)
class Augmentation:
    """How a trial augments its training images."""

    kind: str = "none"
    """One of ``AUGMENTATIONS``."""
    magnitude: float = DEFAULT_MAGNITUDE
    """Its strength in [0, 1) (``augment_magnitude``)."""

    @property
    def on(self) -> bool:
        return self.kind != "none"


def augmentation(task, params: dict | None, source: ImageSource) -> Augmentation:
    """A trial's augmentation: the param ``augment`` where set, else ``task.augment``
    (``true`` is ``flip_crop``; unset: ``flip_crop`` for natural images, ``none`` for
    handwriting, where a flip makes another glyph), at ``augment_magnitude``."""
    params = params or {}
    kind = params.get("augment")
    if kind is None:
        on = task.augment if task.augment is not None else not source.handwriting
        kind = "flip_crop" if on else "none"
    magnitude = params.get("augment_magnitude")
    return Augmentation(kind, DEFAULT_MAGNITUDE if magnitude is None else float(magnitude))


@dataclass(frozen=True)
class Preset:
    """How images are sized and normalized: the weights' preset, or ImageNet's statistics."""

    crop: int
    resize: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    weights: Any = None
    """The torchvision weights enum member whose ``transforms()`` evaluates, if any."""


def image_datasets(
    task, source: ImageSource, preset: Preset | None, cache: dict, params: dict | None = None
):
    """The train and val datasets of one trial: split, subsampled and transformed.

    Args:
        task: the ``TaskSpec`` (image_size, augment, max_samples, val_fraction, seed).
        source: the loaded images.
        preset: the weights' preset, or ``None`` for ImageNet statistics at
            ``task.image_size`` (default: the data's own size, at least 32).
        cache: the worker's cache; in-memory data (digits) keeps its resized,
            normalized tensors there.
        params: the trial's hyperparameters (``augment``, ``augment_magnitude``).

    Returns:
        ``(train_set, val_set, ready)`` with ``(CHW float tensor, label)`` pairs; ``ready``
        says that no example needs work when loaded (in-memory data, transformed once).
    """
    train_tf, evaluate, augment, examples = _transforms(task, source, preset, cache, params)
    train_idx, val_idx = train_val_indices(
        source.train_labels,
        source.val_labels,
        task.max_samples,
        task.val_fraction,
        task.seed,
        task.test_fraction,
        thinning(task, source.class_names, source.num_classes),
        task.thin_seed,
    )
    val_base, val_labels = (
        (source.train, source.train_labels)
        if source.val is None
        else (source.val, source.val_labels)
    )
    assert val_labels is not None  # an ImageSource with a val split has its labels
    train_set: Dataset = LabelledSubset(source.train, train_idx, source.train_labels, train_tf)
    val_set: Dataset = LabelledSubset(val_base, val_idx, val_labels, evaluate)
    ready = False
    if examples is not None:
        val_set = TensorSubset(examples, val_idx)
        if not augment:
            train_set = TensorSubset(examples, train_idx)
            ready = True
    return train_set, val_set, ready


def final_image_datasets(
    task, source: ImageSource, preset: Preset | None, cache: dict, params: dict | None = None
):
    """What ``hpo retrain`` fits and tests on: the trials' train and val examples as one
    training set, and the test split.

    Args:
        task, source, preset, cache, params: as for ``image_datasets``.

    Returns:
        ``(train_set, test_set, test_about, ready)``: ``test_set`` is ``None`` where there is no
        test split, and ``test_about`` says which it is or why there is none.

    Raises:
        JobSetupError: a test folder whose classes differ from the training ones.
    """
    train_tf, evaluate, augment, examples = _transforms(task, source, preset, cache, params)
    train_idx, val_idx = train_val_indices(
        source.train_labels,
        source.val_labels,
        task.max_samples,
        task.val_fraction,
        task.seed,
        task.test_fraction,
        thinning(task, source.class_names, source.num_classes),
        task.thin_seed,
    )
    ready = examples is not None and not augment
    if source.val is None:
        both = np.sort(np.concatenate([train_idx, val_idx]))
        train_set: Dataset = (
            TensorSubset(examples, both)
            if examples is not None and ready
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
        test_set: Dataset | None = (
            TensorSubset(examples, test_idx)
            if examples is not None
            else LabelledSubset(source.train, test_idx, source.train_labels, evaluate)
        )
        about = heldout_about(task.test_fraction)
        return train_set, test_set, about, ready
    test, test_labels, about = load_test_images(task.dataset, source, cache)
    test_set = None
    if test is not None:
        test_set = LabelledSubset(test, np.arange(len(test_labels)), test_labels, evaluate)
    return train_set, test_set, about, ready


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


def _transforms(
    task, source: ImageSource, preset: Preset | None, cache: dict, params: dict | None = None
):
    """The task's training and evaluation transforms, whether it augments, and for in-memory
    data without a val split, its images evaluation-transformed once (``Examples``, which the
    worker's cache keeps with their copy on the device)."""
    size, resize, preset = _sizes(task, source, preset)
    augment = augmentation(task, params, source)
    evaluate = _eval_transform(preset, size, resize)
    examples = None
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
            stacked = torch.stack([evaluate(train[i][0]) for i in range(dataset_size(train))])
            cache[key] = Examples(stacked, source.train_labels)
        examples = cache[key]
    return train_transform(preset, size, resize, augment), evaluate, augment.on, examples


def train_transform(preset: Preset, size: int, resize: int, augment: Augmentation):
    """The training split's transform: resize, then the augmentation (``AUGMENTATIONS``) or
    a center crop, then normalize."""
    from torchvision.transforms import v2

    steps = [
        v2.ToImage(),
        v2.RGB(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Resize(resize, antialias=True),
    ]
    if augment.kind == "none":
        steps += [v2.CenterCrop(size)]
    else:
        magnitude = augment.magnitude if augment.kind == "flip_crop" else DEFAULT_MAGNITUDE
        # floor: size // 8 at the default, as before the magnitude was a parameter.
        padding = math.floor(size * magnitude * 5 / 12 + 1e-9)
        steps += [v2.RandomCrop(size, padding=padding), v2.RandomHorizontalFlip()]
    if augment.kind == "trivialaugment":
        steps += [v2.TrivialAugmentWide()]
    elif augment.kind == "randaugment":
        level = round(augment.magnitude * (RANDAUGMENT_BINS - 1))
        steps += [v2.RandAugment(num_ops=2, magnitude=level, num_magnitude_bins=RANDAUGMENT_BINS)]
    elif augment.kind not in ("none", "flip_crop"):
        raise ValueError(
            f"augment: expected one of {', '.join(AUGMENTATIONS)}, got {augment.kind!r}"
        )
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
