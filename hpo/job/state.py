"""What a fit carries from step to step: the progress a checkpoint saves, and the ``FitState``
that ``start_fit`` builds from it and the task builder's setup (``hpo.job.setup``).

``start_fit`` builds everything in one fixed order (model, optimizer, loaders, a resume,
compile): the global RNG's draws, and so every trial's numbers, depend on it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import optuna
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from hpo.job.checkpoint import restore_checkpoint
from hpo.job.data import EpochShuffle, dataset_labels, dataset_size
from hpo.job.device import Device, peak_memory_mb, pick_device, reset_peak_memory
from hpo.job.loaders import make_loaders, subset_loader
from hpo.job.loss import ClassWeighted, class_weights, remedy
from hpo.job.metrics import Tally
from hpo.job.optim import freeze, make_optimizer, make_scheduler
from hpo.job.ranks import Ranks
from hpo.job.resident import DeviceBatches
from hpo.job.setup import TrainingSetup
from hpo.job.step import LossWatch
from hpo.job.trial import Trial
from hpo.job.vision import read_batch_norm_counts
from hpo.records import BEST_METRICS_ATTR, METRICS_ATTR, THREADS_ATTR

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """What the loop knows so far; a checkpoint saves it, a resumed attempt starts from it."""

    best_loss: float = math.inf
    """The validation loss of the best evaluation (the best by the objective)."""
    best_value: float | None = None
    """The objective (``JobContext.metric``) at the best evaluation; None before one (or
    in a checkpoint from before it existed, whose objective was ``best_loss``)."""
    best_accuracy: float = 0.0
    best_balanced_accuracy: float = 0.0
    best_epoch: int = 0
    best_step: int = 0
    evals_since_best: int = 0
    stopped_early: bool = False
    first_loss: float | None = None
    micro_batch: int = 0
    eval_micro_batch: int = 0
    """Examples per forward pass in evaluation; 0 until an evaluation ran out of memory
    (then it halves apart from training's, which needs more memory)."""
    epochs_run: int = 0
    epoch_batches: int = 0
    """Batches of epoch ``epochs_run`` trained when a checkpoint inside that epoch was saved
    (a pause at a rung inside it); 0 after a whole epoch. A resumed attempt skips them."""
    samples: int = 0
    train_seconds: float = 0.0
    """Time in training steps (data loading included, evaluation not)."""
    seconds: float = 0.0
    """Wall time of the whole fit, earlier attempts included."""
    history: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Report step (as a string) -> the train and val metrics of that evaluation, one number
    each (attr ``metrics``)."""
    history_stride: int = 1
    """``history`` keeps the steps that are multiples of it (``add_to_history``)."""
    best_metrics: dict[str, Any] = field(default_factory=dict)
    """The train and val metrics of the best evaluation, per class included (attr
    ``best_metrics``)."""


@dataclass
class FitState:
    """One fit's moving parts, shared by the steps of ``hpo.job.fit``."""

    setup: TrainingSetup
    task: Any
    """The ``TaskSpec``."""
    dev: Device
    channels_last: bool
    """Image batches go to the device in channels_last memory format."""
    model: nn.Module
    net: nn.Module
    """``model``, compiled when the task says so: what runs forward."""
    frozen: list[nn.Module]
    """Submodules that stay in eval mode while the model trains."""
    trainable: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    criterion: Callable[..., torch.Tensor]
    """The training loss (label smoothing and class weights included)."""
    class_weights: dict[str, float] | None
    """``task.class_weights`` as weights by class name (attr ``class_weights``), or None."""
    weight: torch.Tensor | None
    """The class weights on the device: evaluation weighs its loss by them too."""
    grad_clip: float
    l1: float
    """The L1 penalty's factor (param ``l1``); 0 adds none."""
    train_loader: DataLoader | DeviceBatches
    """Batches gathered on the device where the data lives there (``hpo.job.resident``)."""
    train_tally: Tally
    """Training's predictions and losses since the last evaluation, on the device."""
    watch: LossWatch
    """The training losses, on the device, looked at (NaN, divergence) at evaluation points."""
    val_loader: DataLoader | DeviceBatches | None
    """``None`` for a final fit."""
    subset_loader: DataLoader | DeviceBatches | None
    """Of the evaluations inside an epoch (``task.val_subset``), else None."""
    order: EpochShuffle
    """The train loader's sampler: ``set_epoch`` before each epoch."""
    batch_size: int
    """The global batch: over all ranks of the trial."""
    rank_batch: int
    """The largest part of a batch one rank trains on (the batch itself with one rank): the
    micro-batch starts there."""
    ranks: Ranks
    steps_per_epoch: int
    epochs: int
    evals: int
    """Evaluations per epoch."""
    eval_after: dict[int, int]
    """Batch index -> the evaluation of the epoch (1 to ``evals``) that runs after it."""
    checkpoint: Path | None
    pauses: bool
    stop_asked: Any
    """``JobContext.stop_asked``: where it says so (the worker's SIGTERM), the fit loop stops
    after the step in flight, with a checkpoint there (``JobPreempted``); None: never asked."""
    """A pruning at an epoch end is a pause: checkpoint the epoch first (``JobContext``)."""
    progress: Progress
    metric: str
    """The objective (``JobContext.metric``): its name in the val metrics, ``val_`` less."""
    maximize: bool
    start_epoch: int
    """The last epoch an earlier attempt finished (a resume), else 0."""
    started: float
    """``time.perf_counter()`` at the start, less the earlier attempts' seconds."""

    def eval_loader(self, batches: int) -> DataLoader | DeviceBatches:
        """The loader an evaluation after ``batches`` of an epoch reads (0: at its end):
        inside an epoch the val subset where there is one (its loss goes to the pruner
        alone)."""
        loader = self.subset_loader if batches and self.subset_loader else self.val_loader
        assert loader is not None  # only a fit with a val set evaluates
        return loader


def start_fit(trial: Trial, setup: TrainingSetup, params: dict, task, context) -> FitState:
    """The model on its device, frozen by policy; the optimizer, schedule, loss and loaders;
    the progress of an earlier attempt when ``context.resume_path`` is a checkpoint.

    On several ranks (``hpo.job.ranks``) each trains on its part of every global batch of
    ``batch_size``, the model in DistributedDataParallel, its loss weighted so that the averaged
    gradients are the global batch's."""
    ranks = Ranks.current()
    dev = pick_device(task.amp)
    reset_peak_memory(dev)
    channels_last = uses_channels_last(setup, task, dev)
    model = setup.model.to(dev.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    frozen = freeze(model, setup.head, setup.blocks, params["freeze"], params["freeze_k"])
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = setup.optimizer = make_optimizer(model, setup.head, params)

    epochs = params["epochs"]
    batch_size = min(params["batch_size"], dataset_size(setup.train_set))
    if batch_size < ranks.world:
        raise ValueError(f"a batch of {batch_size} does not split over {ranks.world} ranks")
    rank_batch = math.ceil(batch_size / ranks.world)
    # drop_last: a last batch of one example breaks batch norm, and every step is then a
    # full batch, so the schedule and the effective batch size never change mid-epoch.
    steps_per_epoch = dataset_size(setup.train_set) // batch_size
    scheduler = make_scheduler(optimizer, steps_per_epoch * epochs, params)
    # fp16 overflows without loss scaling; bf16 has fp32's range and needs none.
    scaler = torch.amp.GradScaler(dev.device.type, enabled=dev.amp_dtype == torch.float16)
    if dev.cuda:
        # TF32 tensor cores for the float32 matmuls and convolutions left (amp off, or ops
        # autocast keeps in float32). cudnn.benchmark stays off: its timing of every new shape
        # cost 2-11 s per trial and a 10x peak-memory spike on H100, more than short trials win.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    cure = remedy(task.class_weights, params.get("imbalance"))
    train_loader, val_loader, order = make_loaders(
        setup, task, dev, batch_size, ranks, balanced=cure.sampler
    )
    # Training smooths labels; validation (evaluate) is plain cross-entropy, so that trials
    # with different label smoothing compare. Class weights weigh both (training only with
    # the remedy that weighs the loss): the same weights (of the same training split) in
    # every trial and on every rank.
    by_class = class_weights(
        cure.class_weights,
        dataset_labels(setup.train_set),
        setup.class_names or [str(i) for i in range(setup.num_classes)],
    )
    weight = None
    if by_class is not None:
        weight = torch.tensor(list(by_class.values()), dtype=torch.float32, device=dev.device)
    if weight is not None and cure.weighted:
        criterion: Any = ClassWeighted(weight, params["label_smoothing"])
    else:
        criterion = partial(F.cross_entropy, label_smoothing=params["label_smoothing"])
        if ranks.many:
            criterion = partial(_weighted, criterion, ranks.loss_weight(batch_size))

    progress = Progress(micro_batch=rank_batch)
    start_epoch = 0
    if context.resume_path is not None and Path(context.resume_path).is_file():
        start_epoch, saved = restore_checkpoint(
            Path(context.resume_path),
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            epochs=epochs,
        )
        progress = Progress(**saved)
        if progress.best_value is None and progress.best_step:  # saved before best_value
            progress.best_value = progress.best_loss
        log.info(
            "trial %d: resumed from %s after epoch %d%s",
            trial.number,
            context.resume_path,
            start_epoch,
            f" and {progress.epoch_batches} batches" if progress.epoch_batches else "",
        )
    read_batch_norm_counts(model)  # here, not in the first training step
    net = ranks.wrap(model, dev.device)
    # torch.compile of a Module returns a Module (OptimizedModule); its overloads say Callable.
    net = torch.compile(net) if task.compile else net  # type: ignore[assignment]
    evals = task.evals_per_epoch
    # Batch index after which evaluation j of the epoch runs: fractions of the data, so a
    # step means the same for every batch size.
    eval_after = {max(1, round(j * steps_per_epoch / evals)): j for j in range(1, evals + 1)}
    return FitState(
        setup=setup,
        task=task,
        dev=dev,
        channels_last=channels_last,
        model=model,
        net=net,
        frozen=frozen,
        trainable=trainable,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        criterion=criterion,
        class_weights=by_class,
        weight=weight,
        grad_clip=params["grad_clip"],
        l1=params["l1"],
        train_loader=train_loader,
        train_tally=Tally(setup.num_classes, dev.device, confusion=False),
        watch=LossWatch(dev.device, progress.first_loss),
        val_loader=val_loader,
        subset_loader=subset_loader(setup, task, dev, batch_size, ranks),
        order=order,
        batch_size=batch_size,
        rank_batch=rank_batch,
        ranks=ranks,
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        evals=evals,
        eval_after=eval_after,
        checkpoint=Path(context.checkpoint_path) if context.checkpoint_path else None,
        pauses=context.pauses,
        stop_asked=context.stop_asked if context.hold_stops is not None else None,
        progress=progress,
        metric=getattr(context, "metric", "val_loss").removeprefix("val_"),
        maximize=getattr(context, "maximize", False),
        start_epoch=start_epoch,
        started=time.perf_counter() - progress.seconds,
    )


def uses_channels_last(setup: TrainingSetup, task, dev: Device) -> bool:
    """Whether image batches go to the device in channels_last format (CNNs; by default on
    CUDA)."""
    return setup.convolutional and (
        task.channels_last if task.channels_last is not None else dev.cuda
    )


def _weighted(
    criterion: Callable[..., torch.Tensor], weight: float, *args: Any, **kwargs: Any
) -> torch.Tensor:
    return criterion(*args, **kwargs) * weight


def record(state: FitState, trial: Trial, **extra: Any) -> None:
    """Write the trial's attrs (again), and ``extra``, in one write: they must be there even
    if it is pruned or fails."""
    progress = state.progress
    progress.seconds = time.perf_counter() - state.started
    attrs: dict[str, Any] = {
        "epochs_run": progress.epochs_run,
        # Epochs of data trained (a fraction where a pause or a prune fell inside an epoch).
        "epochs_trained": round(
            progress.samples / max(state.steps_per_epoch * state.batch_size, 1), 4
        ),
        "epochs_planned": state.epochs,
        "train_seconds": round(progress.seconds, 3),
        "samples_per_second": round(progress.samples / max(progress.train_seconds, 1e-9), 1),
        "device": state.dev.name,
        THREADS_ATTR: torch.get_num_threads(),
        "world_size": state.ranks.world,
        "peak_memory_mb": round(peak_memory_mb(state.dev), 1),
    }
    if state.class_weights is not None:
        attrs["class_weights"] = state.class_weights
    if state.subset_loader is not None:  # the values inside an epoch are the subset's
        attrs["val_subset"] = state.task.val_subset
    if progress.best_step:
        attrs.update(val_accuracy=progress.best_accuracy, best_epoch=progress.best_epoch)
        if state.class_weights is not None:
            attrs["val_balanced_accuracy"] = progress.best_balanced_accuracy
        attrs[BEST_METRICS_ATTR] = progress.best_metrics
    if progress.history:
        attrs[METRICS_ATTR] = progress.history
    trial.set_attrs({**attrs, **extra})


def prune(state: FitState, trial: Trial, reason: str, step: int) -> None:
    """Record why and where, then stop the trial as pruned."""
    record(state, trial, prune_reason=reason, pruned_at_step=step)
    raise optuna.TrialPruned(f"{reason} at step {step}")
