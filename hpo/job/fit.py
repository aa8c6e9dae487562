"""The fit loop, one for vision and text: train, evaluate, report, prune, checkpoint.

``fit`` reads top to bottom; the small functions under it are the steps it names. Batches are
``(inputs, labels)`` where inputs are an image tensor or a dict of token tensors.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import optuna
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from hpo.job.checkpoint import restore_checkpoint, save_checkpoint, save_model
from hpo.job.data import EpochSeeded, EpochShuffle
from hpo.job.device import Device, free_memory, peak_memory_mb, pick_device, reset_peak_memory
from hpo.job.optim import freeze, make_optimizer, make_scheduler, train_mode
from hpo.job.trial import Trial

log = logging.getLogger(__name__)

DIVERGENCE = 1e4
"""A training loss this many times the trial's first one has diverged: prune."""


@dataclass
class TrainingSetup:
    """What a task builder hands the fit loop."""

    model: nn.Module
    head: list[nn.Parameter]
    """The new head: trains at ``lr`` under every freeze policy."""
    blocks: list[list[nn.Parameter]]
    """The backbone from the input side, for ``freeze: first_k``."""
    train_set: Dataset
    val_set: Dataset | None
    """``None`` for a final fit (``hpo retrain``): no validation, reports or pruning."""
    num_classes: int
    collate: Callable | None = None
    convolutional: bool = False
    """channels_last speeds up convolutions only."""
    in_memory: bool = False
    """Examples are ready in memory (tensors, token ids): loader processes would add only
    their start-up time, so by default there are none."""
    optimizer: torch.optim.Optimizer | None = None
    """Set by ``fit``, so that ``run.release`` can free its state after the trial."""
    test_set: Dataset | None = None
    """A final fit's test split, evaluated once after the last epoch; never a trial's."""
    test_about: str = ""
    """Which test split ``test_set`` is, or why there is none."""


@dataclass
class Progress:
    """What the loop knows so far; a checkpoint saves it, a resumed attempt starts from it."""

    best_loss: float = math.inf
    best_accuracy: float = 0.0
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
    samples: int = 0
    train_seconds: float = 0.0
    """Time in training steps (data loading included, evaluation not)."""
    seconds: float = 0.0
    """Wall time of the whole fit, earlier attempts included."""


def fit(trial: Trial, setup: TrainingSetup, params: dict, task, context) -> float:
    """Fine-tune ``setup.model`` with ``params``; report each evaluation to ``trial``.

    Args:
        trial: what the loop sees of its trial: reports, pruning and attrs go to it.
        setup: model, head, blocks and datasets from the task builder.
        params: every hyperparameter of ``hpo.spec.HYPERPARAMETERS``.
        task: the ``TaskSpec``.
        context: the ``JobContext`` (checkpoint and resume paths).

    Without a validation set (a final fit, ``hpo retrain``), it trains for ``epochs`` with no
    evaluation, report or pruning, saves the model alone (``save_model``) to the checkpoint
    path after the last epoch, then evaluates ``setup.test_set`` once; ``trial`` (a
    ``hpo.job.trial.FixedTrial``) gets the attrs ``train_examples``, ``train_loss`` (mean of
    the last epoch), ``test_split`` and, with a test set, ``test_loss``, ``test_accuracy``
    and ``test_examples``.

    Returns:
        The best validation loss (``inf`` without a validation set).

    Raises:
        optuna.TrialPruned: the pruner said so, or the loss went NaN / diverged.
        torch.OutOfMemoryError: even a micro-batch of one example does not fit.
    """
    dev = pick_device(task.amp)
    reset_peak_memory(dev)
    channels_last = setup.convolutional and (
        task.channels_last if task.channels_last is not None else dev.cuda)
    model = setup.model.to(dev.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    frozen = freeze(model, setup.head, setup.blocks, params["freeze"], params["freeze_k"])
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = setup.optimizer = make_optimizer(model, setup.head, params)

    epochs = params["epochs"]
    batch_size = min(params["batch_size"], len(setup.train_set))
    # drop_last: a last batch of one example breaks batch norm, and every step is then a
    # full batch, so the schedule and the effective batch size never change mid-epoch.
    steps_per_epoch = len(setup.train_set) // batch_size
    scheduler = make_scheduler(optimizer, steps_per_epoch * epochs, params)
    # fp16 overflows without loss scaling; bf16 has fp32's range and needs none.
    scaler = torch.amp.GradScaler(dev.device.type, enabled=dev.amp_dtype == torch.float16)
    if dev.cuda:
        # TF32 tensor cores for the float32 matmuls and convolutions left (amp off, or ops
        # autocast keeps in float32). cudnn.benchmark stays off: its timing of every new shape
        # cost 2-11 s per trial and a 10x peak-memory spike on H100, more than short trials win.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    train_loader, val_loader, order = make_loaders(setup, task, dev, batch_size)
    # Training smooths labels; validation (evaluate) is plain cross-entropy, so that trials
    # with different label smoothing compare.
    criterion = partial(F.cross_entropy, label_smoothing=params["label_smoothing"])

    progress = Progress(micro_batch=batch_size)
    start_epoch = 0
    if context.resume_path is not None and Path(context.resume_path).is_file():
        start_epoch, saved = restore_checkpoint(
            Path(context.resume_path), model=model, optimizer=optimizer, scheduler=scheduler,
            scaler=scaler, epochs=epochs)
        progress = Progress(**saved)
        log.info("trial %d: resumed from %s after epoch %d", trial.number,
                 context.resume_path, start_epoch)
    checkpoint = Path(context.checkpoint_path) if context.checkpoint_path else None
    net = torch.compile(model) if task.compile else model
    evals = task.evals_per_epoch
    # Batch index after which evaluation j of the epoch runs: fractions of the data, so a
    # step means the same for every batch size.
    eval_after = {max(1, round(j * steps_per_epoch / evals)): j for j in range(1, evals + 1)}
    started = time.perf_counter() - progress.seconds

    def record() -> None:
        """Write the trial's attrs (again): they must be there even if it is pruned."""
        progress.seconds = time.perf_counter() - started
        attrs: dict[str, Any] = {
            "epochs_run": progress.epochs_run,
            "epochs_planned": epochs,
            "train_seconds": round(progress.seconds, 3),
            "samples_per_second": round(progress.samples / max(progress.train_seconds, 1e-9),
                                        1),
            "device": dev.name,
            "peak_memory_mb": round(peak_memory_mb(dev), 1),
        }
        if progress.best_step:
            attrs.update(val_accuracy=progress.best_accuracy, best_epoch=progress.best_epoch)
        trial.set_attrs(attrs)

    def prune(reason: str, step: int) -> None:
        trial.set_attrs({"prune_reason": reason, "pruned_at_step": step})
        record()
        raise optuna.TrialPruned(f"{reason} at step {step}")

    epoch_loss = 0.0
    for epoch in range(start_epoch + 1, epochs + 1):
        if progress.stopped_early:
            break
        progress.epochs_run = epoch
        order.set_epoch(epoch)
        train_mode(model, frozen)
        clock = time.perf_counter()
        epoch_loss = 0.0
        for i, (inputs, labels) in enumerate(train_loader, 1):
            # The report step this batch counts towards (epoch, or a fraction of the data).
            step = epoch if evals == 1 else (epoch - 1) * evals + math.ceil(
                i * evals / steps_per_epoch)
            inputs = to_device(inputs, dev, channels_last)
            labels = labels.to(dev.device, non_blocking=True)

            # One optimizer step; on out-of-memory, halve the micro-batch and retry the step
            # with gradient accumulation, so the effective batch stays batch_size.
            while True:
                try:
                    loss = train_step(net, inputs, labels, progress.micro_batch, criterion, dev,
                                      scaler, optimizer, scheduler, trainable,
                                      params["grad_clip"])
                    break
                except torch.OutOfMemoryError as e:
                    oom = str(e).splitlines()[0] if str(e) else "out of memory"
                # Out of the except block, the traceback holding the activations is gone.
                optimizer.zero_grad(set_to_none=True)
                free_memory(dev)
                if progress.micro_batch == 1:
                    trial.set_attrs({"fail_reason": "oom"})
                    record()
                    raise torch.OutOfMemoryError(f"a micro-batch of 1 does not fit: {oom}")
                progress.micro_batch //= 2
                accumulation = math.ceil(batch_size / progress.micro_batch)
                trial.set_attrs({"micro_batch_size": progress.micro_batch,
                                 "grad_accumulation": accumulation})
                log.warning("trial %d: out of memory (%s); now %d micro-batches of %d",
                            trial.number, oom, accumulation, progress.micro_batch)
            progress.samples += len(labels)
            epoch_loss += loss

            if not math.isfinite(loss):
                prune("nan", step)
            if progress.first_loss is None:
                progress.first_loss = loss
            if loss > DIVERGENCE * max(progress.first_loss, 1e-3):
                prune("diverged", step)

            if val_loader is not None and i in eval_after:
                progress.train_seconds += time.perf_counter() - clock
                step = epoch if evals == 1 else (epoch - 1) * evals + eval_after[i]
                val_loss, accuracy, progress.eval_micro_batch = evaluate_or_fail(
                    trial, record, net, val_loader, dev,
                    progress.eval_micro_batch or progress.micro_batch, channels_last)
                log.info("trial %d epoch %d step %d: train loss %.4f, val loss %.4f, "
                         "val accuracy %.3f", trial.number, epoch, step, loss, val_loss,
                         accuracy)
                if not math.isfinite(val_loss):
                    prune("nan", step)
                if val_loss < progress.best_loss:
                    progress.best_loss, progress.best_accuracy = val_loss, accuracy
                    progress.best_epoch, progress.best_step = epoch, step
                    progress.evals_since_best = 0
                else:
                    progress.evals_since_best += 1
                trial.report(val_loss, step)
                # The last report cannot prune: the trial has run all its epochs, and stopping
                # it now saves nothing while it throws a finished result away.
                if step < epochs * evals and trial.should_prune():
                    prune("pruned", step)
                record()
                patience = task.early_stopping_patience
                if patience is not None and progress.evals_since_best >= patience:
                    log.info("trial %d: no better val loss in %d evaluations, stopping early",
                             trial.number, patience)
                    progress.stopped_early = True
                    trial.set_attrs({"stopped_early_at_step": step})
                    break
                train_mode(model, frozen)
                clock = time.perf_counter()
        else:
            progress.train_seconds += time.perf_counter() - clock

        if checkpoint is not None and val_loader is not None:
            progress.seconds = time.perf_counter() - started
            # After the last epoch the optimizer state is dead weight (twice the model's with
            # Adam): the final checkpoint keeps the model and the progress, enough for a
            # resume (a retry after the worker died before the tell) to return at once.
            save_checkpoint(checkpoint, model=model, optimizer=optimizer, scheduler=scheduler,
                            scaler=scaler, epoch=epoch, progress=asdict(progress),
                            final=epoch == epochs or progress.stopped_early)
            trial.set_attrs({"checkpoint": str(checkpoint)})
    record()
    if val_loader is None:
        if checkpoint is not None:  # nothing to resume: the model alone, after the last epoch
            save_model(checkpoint, model=model, epoch=progress.epochs_run)
            trial.set_attrs({"checkpoint": str(checkpoint)})
        final_test(trial, net, setup, task, dev, batch_size, progress.micro_batch,
                   channels_last, epoch_loss / max(steps_per_epoch, 1))
    return progress.best_loss


def final_test(trial: Trial, model: nn.Module, setup: TrainingSetup, task, dev: Device,
               batch_size: int, micro_batch: int, channels_last: bool,
               train_loss: float) -> None:
    """The end of a final fit: the test split's loss and accuracy, as attrs."""
    trial.set_attrs({"train_examples": len(setup.train_set), "train_loss": train_loss,
                     "test_split": setup.test_about})
    if setup.test_set is None or len(setup.test_set) == 0:
        return
    loader = eval_loader(setup, setup.test_set, task, dev, batch_size)
    test_loss, accuracy, _ = evaluate_or_fail(trial, lambda: None, model, loader, dev,
                                              micro_batch, channels_last)
    log.info("final fit: test loss %.4f, test accuracy %.3f on %d examples", test_loss,
             accuracy, len(setup.test_set))
    trial.set_attrs({"test_loss": test_loss, "test_accuracy": accuracy,
                     "test_examples": len(setup.test_set)})


def make_loaders(setup: TrainingSetup, task, dev: Device, batch_size: int):
    """The train and val loaders, and the train loader's sampler (``set_epoch`` each epoch).

    The data order depends on (seed, epoch) alone, so a resumed attempt sees the same one.
    Loader processes: ``task.num_workers``, by default 4 with CUDA for data that needs work
    per example (decoding, augmentation), else none. No val set: the val loader is ``None``.
    """
    loading = _loading(setup, task, dev)
    # In this process the RNG that augments is the global one, which checkpoints save and
    # restore; loader processes have their own, so there each example seeds its own.
    processes = loading["num_workers"] > 0
    order = EpochShuffle(len(setup.train_set), task.seed, keyed=processes)
    train_set = EpochSeeded(setup.train_set, task.seed) if processes else setup.train_set
    # Loaders draw their workers' seeds from their own generators, never from the global RNG
    # (dropout's), whose state must not depend on when a loader happened to start.
    train_loader = DataLoader(train_set, batch_size, sampler=order, drop_last=True,
                              generator=torch.Generator().manual_seed(task.seed), **loading)
    val_loader = (None if setup.val_set is None
                  else eval_loader(setup, setup.val_set, task, dev, batch_size))
    return train_loader, val_loader, order


def eval_loader(setup: TrainingSetup, dataset: Dataset, task, dev: Device,
                batch_size: int) -> DataLoader:
    """A loader of ``dataset`` (val or test) in order, as ``make_loaders`` loads."""
    return DataLoader(dataset, batch_size, generator=torch.Generator().manual_seed(task.seed),
                      **_loading(setup, task, dev))


def _loading(setup: TrainingSetup, task, dev: Device) -> dict[str, Any]:
    workers = task.num_workers
    if workers is None:
        workers = 4 if dev.cuda and not setup.in_memory else 0
    return dict(collate_fn=setup.collate, num_workers=workers, pin_memory=dev.cuda,
                persistent_workers=workers > 0)


def train_step(model: nn.Module, inputs, labels: torch.Tensor, micro_batch: int, criterion,
               dev: Device, scaler, optimizer, scheduler, trainable: list[nn.Parameter],
               grad_clip: float) -> float:
    """One optimizer step over a batch, in micro-batches of at most ``micro_batch``.

    Returns:
        The batch's mean training loss; the optimizer does not step when it is NaN or inf.
    """
    n = len(labels)
    total = torch.zeros((), device=labels.device)
    for part in micro_batches(n, micro_batch):
        total += forward_backward(model, take(inputs, part), labels[part], criterion, dev,
                                  scaler, weight=(part.stop - part.start) / n)
    loss = total.item()  # a CPU-GPU sync point: paid once per step, so a NaN prunes at once
    if math.isfinite(loss):
        if grad_clip > 0:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(trainable, grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)  # frees the gradients' memory until next backward
    return loss


def forward_backward(model: nn.Module, inputs, labels: torch.Tensor, criterion, dev: Device,
                     scaler, weight: float) -> torch.Tensor:
    """Forward and backward one micro-batch that is ``weight`` of its batch.

    Returns:
        Its share of the batch's loss, detached.
    """
    with dev.autocast():
        loss = criterion(logits(model, inputs).float(), labels) * weight
    scaler.scale(loss).backward()
    return loss.detach()


def evaluate_or_fail(trial: Trial, record: Callable[[], None], model: nn.Module, loader: DataLoader,
                     dev: Device, micro_batch: int, channels_last: bool
                     ) -> tuple[float, float, int]:
    """``evaluate``, its micro-batch halved on out-of-memory until it fits.

    Returns:
        Mean cross-entropy, accuracy, and the micro-batch that fitted (later evaluations
        start from it).

    Raises:
        torch.OutOfMemoryError: even one example per forward pass does not fit
            (``fail_reason`` = ``oom``; ``record`` writes the trial's attrs first).
    """
    while True:
        try:
            return (*evaluate(model, loader, dev, micro_batch, channels_last), micro_batch)
        except torch.OutOfMemoryError as e:
            oom = str(e).splitlines()[0] if str(e) else "out of memory"
        # Out of the except block, the traceback holding the activations is gone.
        free_memory(dev)
        if micro_batch == 1:
            trial.set_attrs({"fail_reason": "oom"})
            record()
            raise torch.OutOfMemoryError(f"evaluation: a micro-batch of 1 does not fit: {oom}")
        micro_batch //= 2
        trial.set_attrs({"eval_micro_batch_size": micro_batch})
        log.warning("trial %d: out of memory in evaluation (%s); evaluating in micro-batches "
                    "of %d", trial.number, oom, micro_batch)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, dev: Device, micro_batch: int,
             channels_last: bool) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a validation or test set."""
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=dev.device)
    correct = torch.zeros((), dtype=torch.int64, device=dev.device)
    n = 0
    for inputs, labels in loader:
        inputs = to_device(inputs, dev, channels_last)
        labels = labels.to(dev.device, non_blocking=True)
        for part in micro_batches(len(labels), micro_batch):
            with dev.autocast():
                out = logits(model, take(inputs, part)).float()
            total += F.cross_entropy(out, labels[part], reduction="sum")
            correct += (out.argmax(dim=1) == labels[part]).sum()
        n += len(labels)
    return total.item() / n, correct.item() / n  # one sync per evaluation


def logits(model: nn.Module, inputs) -> torch.Tensor:
    """The model's class scores, whether it returns a tensor, a tuple or a transformers output."""
    out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, tuple):  # inception / googlenet: (logits, aux logits)
        return out[0]
    return out


def micro_batches(n: int, size: int) -> list[slice]:
    """``n`` examples cut into near-equal slices of at most ``size`` (none of just one
    example unless ``size`` is 1: batch norm cannot train on one)."""
    count = math.ceil(n / size)
    bounds = [round(k * n / count) for k in range(count + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


def take(inputs, part: slice):
    """A slice of a batch's inputs: a tensor, or a dict of tensors."""
    if isinstance(inputs, dict):
        return {k: v[part] for k, v in inputs.items()}
    return inputs[part]


def to_device(inputs, dev: Device, channels_last: bool):
    """Move inputs to the device; pinned memory lets the copy overlap with compute."""
    if isinstance(inputs, dict):
        return {k: v.to(dev.device, non_blocking=True) for k, v in inputs.items()}
    if channels_last and inputs.ndim == 4:
        return inputs.to(dev.device, non_blocking=True, memory_format=torch.channels_last)
    return inputs.to(dev.device, non_blocking=True)
