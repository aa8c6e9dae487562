"""Torchvision classifiers: any model by name, its weights, a new head, its blocks."""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch
from torch import nn

from hpo.job.checkpoint import load_weights_file
from hpo.job.errors import JobSetupError
from hpo.job.image_data import Preset, final_image_datasets, image_datasets, preprocessing
from hpo.job.image_source import load_images
from hpo.job.setup import TrainingSetup

log = logging.getLogger(__name__)


def build_vision(task, params: dict, cache: dict, *, final: bool = False) -> TrainingSetup:
    """The model and data of one image-classification trial.

    Args:
        task: the ``TaskSpec``.
        params: the trial's hyperparameters (``dropout``, ``augment`` and
            ``augment_magnitude`` are used here).
        cache: the worker's cache (loaded images).
        final: train on train + val and test on the test split (``hpo retrain``).

    Raises:
        JobSetupError: unknown model, weights that cannot be loaded, missing data.
    """
    source = load_images(task.dataset, cache)
    model, preset = pretrained_model(task.model, task.weights)
    if task.weights is None and not task.compile:
        average_first_batch_norm_stats(model)
    blocks = _blocks(model)
    head = replace_head(model, source.num_classes, params["dropout"])
    val_set = test_set = None
    test_about = ""
    if final:
        train_set, test_set, test_about, ready = final_image_datasets(
            task, source, preset, cache, params
        )
    else:
        train_set, val_set, ready = image_datasets(task, source, preset, cache, params)
    return TrainingSetup(
        model=model,
        head=list(head.parameters()),
        blocks=blocks,
        train_set=train_set,
        val_set=val_set,
        num_classes=source.num_classes,
        convolutional=any(isinstance(m, nn.Conv2d) for m in model.modules()),
        in_memory=ready,
        test_set=test_set,
        test_about=test_about,
        class_names=source.class_names,
    )


def pretrained_model(name: str, weights: str | None) -> tuple[nn.Module, Preset | None]:
    """A torchvision model with its weights, and the weights' preprocessing preset.

    Args:
        name: a torchvision classification model, e.g. ``resnet18``.
        weights: ``None`` (random init), ``DEFAULT`` or an enum member name such as
            ``IMAGENET1K_V1`` (downloaded once into the torch hub cache), or the path of a
            local checkpoint: a state_dict, or a dict holding one under ``state_dict`` /
            ``model``.

    Returns:
        ``(model, preset)``; the preset is ``None`` unless the weights are an enum member.
    """
    import torchvision.models

    try:
        enum = torchvision.models.get_model_weights(name)
    except ValueError:
        raise JobSetupError(f"unknown torchvision model {name!r}") from None
    if weights is None:
        return torchvision.models.get_model(name, weights=None), None
    member = enum.__members__.get(weights)
    if member is None:
        path = _existing_file(weights)
        if path is None:
            raise JobSetupError(
                f"weights {weights!r}: neither a weights name of {name} "
                f"({', '.join(['DEFAULT', *enum.__members__][:8])}) nor an existing file"
            )
        model = torchvision.models.get_model(name, weights=None)
        load_weights_file(model, path)
        return model, None
    try:
        model = torchvision.models.get_model(name, weights=member)
    except OSError as e:  # URLError, socket and HTTP errors are all OSErrors
        cached = torch.hub.get_dir() + "/checkpoints/" + member.url.rsplit("/", 1)[-1]
        raise JobSetupError(
            f"weights {name} {weights}: download from {member.url} failed ({e}); without "
            f"internet, put that file at {cached} or give weights a local checkpoint path"
        ) from None
    return model, _preset(member)


def _preset(member) -> Preset:
    """The preprocessing preset of a torchvision weights enum member."""
    transforms = member.transforms()
    return Preset(
        crop=transforms.crop_size[0],
        resize=transforms.resize_size[0],
        mean=tuple(transforms.mean),
        std=tuple(transforms.std),
        weights=member,
    )


def image_preprocessing(task, cache: dict | None = None) -> dict:
    """How the task's model takes a raw image (``hpo export``'s record): the same sizes,
    statistics and steps as the trials' evaluation transform, without building the model
    (so no weights are downloaded).

    Raises:
        JobSetupError: unknown model, or the data cannot be loaded here.
    """
    import torchvision.models

    try:
        enum = torchvision.models.get_model_weights(task.model)
    except ValueError:
        raise JobSetupError(f"unknown torchvision model {task.model!r}") from None
    member = enum.__members__.get(task.weights) if task.weights is not None else None
    source = load_images(task.dataset, {} if cache is None else cache)
    return preprocessing(task, source, None if member is None else _preset(member))


def average_first_batch_norm_stats(model: nn.Module) -> None:
    """Untrained BatchNorm layers keep as running statistics the plain average of the batches
    they have seen, until that spans the layer's usual window (1 / momentum batches); then
    the usual exponential average takes over and the hooks go.

    PyTorch's average starts from made-up statistics (mean 0, variance 1): after k batches
    (1 - momentum)^k of them remain, 43% after 8 batches. An evaluation in a from-scratch
    model's first epoch then measures them, not the model: on digits (resnet18), val loss 2.17
    at train loss 0.86 half an epoch in, so pruners compare noise and stopped the trials that
    would have been best. The count starts from the layer's ``num_batches_tracked``, so a
    resumed trial goes on exactly as an uninterrupted one.
    """
    for module in model.modules():
        if (
            isinstance(module, nn.modules.batchnorm._BatchNorm)
            and module.track_running_stats
            and module.momentum
        ):
            # A plain attribute: torch types a Module's attributes as Tensor | Module.
            module._hpo_average = module.register_forward_pre_hook(  # type: ignore[assignment]
                functools.partial(_average_batch_norm, base=module.momentum)
            )


def read_batch_norm_counts(model: nn.Module) -> None:
    """Read the batch count of each BatchNorm that ``average_first_batch_norm_stats`` watches
    now (a resumed model's is its checkpoint's), before training: in a training step it would
    be a read of the device."""
    layer: Any  # a _BatchNorm with hpo's plain attributes (see _average_batch_norm)
    for layer in model.modules():
        if hasattr(layer, "_hpo_average") and not hasattr(layer, "_hpo_batches"):
            layer._hpo_batches = int(layer.num_batches_tracked)


# layer: a _BatchNorm with hpo's plain attributes _hpo_batches and _hpo_average, which torch's
# typing of a Module's attributes (Tensor | Module) cannot express.
def _average_batch_norm(layer: Any, inputs: object, base: float) -> None:
    """Before a training forward: the momentum that makes the running statistics the plain
    average of the batches so far (see ``average_first_batch_norm_stats``)."""
    if not layer.training:
        return
    if not hasattr(layer, "_hpo_batches"):  # a model trained outside start_fit
        layer._hpo_batches = int(layer.num_batches_tracked)
    layer._hpo_batches += 1
    layer.momentum = max(base, 1.0 / layer._hpo_batches)
    if layer.momentum == base:
        layer._hpo_average.remove()


def replace_head(model: nn.Module, num_classes: int, dropout: float) -> nn.Module:
    """Swap the model's classifier for ``Sequential(Dropout(dropout), new layer)``.

    The classifier is the model's last ``nn.Linear`` (or, for squeezenet, its last 1x1
    ``nn.Conv2d``). A dropout right before it in the same ``Sequential`` becomes an
    ``Identity``, so that ``dropout`` is the one dropout in front of the head.

    Returns:
        The new head, already in the model.
    """
    name, old = _classifier(model)
    if isinstance(old, nn.Linear):
        new_layer: nn.Module = nn.Linear(old.in_features, num_classes)
    else:
        new_layer = nn.Conv2d(old.in_channels, num_classes, kernel_size=1)
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    head = nn.Sequential(nn.Dropout(dropout), new_layer)
    setattr(parent, child, head)
    if isinstance(parent, nn.Sequential):
        keys = list(parent._modules)
        at = keys.index(child)
        if at > 0 and isinstance(parent._modules[keys[at - 1]], nn.Dropout):
            setattr(parent, keys[at - 1], nn.Identity())
    return head


def _blocks(model: nn.Module) -> list[list[nn.Parameter]]:
    """The backbone's blocks from the input side, for ``freeze: first_k``.

    The blocks are the model's top-level children that hold parameters (resnet: conv1, bn1,
    layer1, ..., layer4), leaving out the child that holds the classifier. A backbone that is
    one container (``features`` of mobilenet, efficientnet, vgg, convnext) is opened into its
    children. Parameters of the model itself (a ViT's class token) join the first block.
    Call it before ``replace_head``: the classifier is the last ``nn.Linear``.
    """
    head_child = _classifier(model)[0].split(".")[0]
    children = [
        m
        for n, m in model.named_children()
        if n != head_child and any(True for _ in m.parameters())
    ]
    if len(children) == 1 and isinstance(children[0], (nn.Sequential, nn.ModuleList)):
        children = [m for m in children[0].children() if any(True for _ in m.parameters())]
    blocks = [list(m.parameters()) for m in children]
    own = list(model.parameters(recurse=False))
    if own and blocks:
        blocks[0] = own + blocks[0]
    return blocks


def _classifier(model: nn.Module) -> tuple[str, nn.Linear | nn.Conv2d]:
    """The model's classifier: its last ``nn.Linear``, else its last 1x1 ``nn.Conv2d``."""
    linear = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    conv = [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)
    ]
    if not linear and not conv:
        raise JobSetupError(
            f"{type(model).__name__}: no Linear or 1x1 Conv2d classifier to replace"
        )
    return (linear or conv)[-1]


def _existing_file(weights: str):
    from pathlib import Path

    path = Path(weights).expanduser()
    return path if path.is_file() else None
