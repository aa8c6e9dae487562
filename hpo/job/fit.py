"""The fit loop, one for vision and text: train, evaluate, report, prune, checkpoint.

``fit`` reads top to bottom; the functions under it are the steps it names, over one
``FitState`` (``hpo.job.state``). The mechanics of a step are in ``hpo.job.step``. Batches
are ``(inputs, labels)`` where inputs are an image tensor or a dict of token tensors.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import partial

import torch

from hpo.job.checkpoint import save_checkpoint
from hpo.job.device import free_memory
from hpo.job.errors import JobPreempted
from hpo.job.final import final_test
from hpo.job.metrics import prefixed
from hpo.job.optim import train_mode
from hpo.job.ranks import Ranks, RankTrial
from hpo.job.setup import TrainingSetup
from hpo.job.state import FitState, prune, record, start_fit
from hpo.job.step import evaluate_or_fail, to_device, train_step
from hpo.job.trial import Trial
from hpo.records import (
    CHECKPOINT_ATTR,
    PAUSED_REASON,
    add_to_history,
    better,
)

log = logging.getLogger(__name__)

DIVERGENCE = 1e4
"""A training loss this many times the trial's first one has diverged: prune."""


def fit(
    trial: Trial,
    setup: TrainingSetup,
    params: dict,
    task,
    context,
    measure: Callable[[], None] | None = None,
) -> float:
    """Fine-tune ``setup.model`` with ``params``; report each evaluation to ``trial``.

    Args:
        trial: what the loop sees of its trial: reports, pruning and attrs go to it.
        setup: model, head, blocks and datasets from the task builder.
        params: every hyperparameter of ``hpo.spec.HYPERPARAMETERS``.
        task: the ``TaskSpec``.
        context: the ``JobContext`` (checkpoint and resume paths).
        measure: measures the objectives (``hpo.job.run.measure``); called before the first
            epoch with ``context.measure_first``.

    Without a validation set (a final fit, ``hpo retrain``), it trains for ``epochs`` with no
    evaluation, report or pruning, saves the model alone (``save_model``) to the checkpoint
    path after the last epoch, then evaluates ``setup.test_set`` once; ``trial`` (a
    ``hpo.job.trial.FixedTrial``) gets the attrs ``train_examples``, ``train_loss`` (mean of
    the last epoch), ``test_split`` and, with a test set, ``test_loss``, ``test_accuracy``
    and ``test_examples`` (and ``test_balanced_accuracy`` with class weights, and every
    metric of ``hpo.job.metrics`` in ``test_metrics``). After each epoch it gets the attrs of
    ``record`` with that epoch's ``train_loss``: the progress a caller may show (``epochs_run``
    of ``epochs_planned``, ``train_seconds``, ``samples_per_second``), and in ``metrics`` the
    epoch's training metrics.

    With a validation set, each evaluation adds the training and validation metrics of
    ``hpo.job.metrics`` to the attr ``metrics`` (by report step), and the best one's, per
    class included, are the attr ``best_metrics``.

    The objective is ``context.metric`` (``val_loss`` by default; ``val_f1``, ...), in its
    direction (``context.maximize``): each evaluation reports it, and the best evaluation,
    early stopping and the returned value follow it.

    Returns:
        The best value of the objective (``inf`` without a validation set; ``-inf`` where
        it is maximized).

    Raises:
        optuna.TrialPruned: the pruner said so, or the loss or the objective went NaN, or
            the training loss diverged.
        ValueError: the objective is not recorded for this task (``val_auroc`` of more than
            two classes).
        torch.OutOfMemoryError: even a micro-batch of one example does not fit.
        JobPreempted: the worker's SIGTERM, taken after the step in flight, checkpointed
            there (``context.hold_stops``).
    """
    ranks = Ranks.current()
    if ranks.many:  # one of the trial's several ranks: rank 0 alone talks to the trial
        trial = RankTrial(trial, ranks)
    state = start_fit(trial, setup, params, task, context)
    progress = state.progress
    if context.measure_first and measure is not None:
        measure()
    train_loss = 0.0
    with context.hold_stops() if context.hold_stops is not None else contextlib.nullcontext():
        train_loss = train_epochs(state, trial)
    record(state, trial)
    if state.val_loader is None:  # a final fit (hpo retrain)
        final_test(state, trial, train_loss)
    if progress.best_value is None:
        return -math.inf if state.maximize else math.inf
    return progress.best_value


def train_epochs(state: FitState, trial: Trial) -> float:
    """The epochs left, each trained and checkpointed (or, in a final fit, recorded).

    Returns:
        The last epoch's mean training loss.
    """
    progress, train_loss = state.progress, 0.0
    for epoch in range(state.start_epoch + 1, state.epochs + 1):
        if progress.stopped_early:
            break
        mean = train_epoch(state, trial, epoch)  # evaluates at the epoch's eval points
        if mean is None:  # a fit with a val set: resumable (a final fit has nothing to resume)
            save_epoch(state, trial, epoch)
        else:  # nor a report: its epoch's attrs, with the epoch's train loss, are its progress
            train_loss = mean
            train = prefixed("train", state.train_tally.read(state.ranks))
            progress.history_stride = add_to_history(
                progress.history, epoch, train, progress.history_stride
            )
            record(state, trial, train_loss=train_loss)
    return train_loss


def train_epoch(state: FitState, trial: Trial, epoch: int) -> float | None:
    """One epoch of optimizer steps, and the evaluations that fall in it.

    Returns:
        In a final fit, the epoch's mean training loss (its ``train_loss``); else None.

    Raises:
        optuna.TrialPruned: the loss went NaN or diverged (found at the next evaluation
            point, or a final fit's epoch end), or an evaluation pruned.
        torch.OutOfMemoryError: even a micro-batch of one example does not fit.
    """
    progress, evals, steps = state.progress, state.evals, state.steps_per_epoch
    skip = begin_epoch(state, epoch)
    clock = time.perf_counter()
    # Nothing in a step reads the device (a sync would idle it while the host waits): the
    # losses stay there, and the loop looks at them (NaN, divergence) where it evaluates.
    for i, (inputs, labels) in enumerate(state.train_loader, skip + 1):
        inputs = to_device(inputs, state.dev, state.channels_last)
        labels = labels.to(state.dev.device, non_blocking=True)

        # One optimizer step; on out-of-memory, halve the micro-batch and retry the step
        # with gradient accumulation, so the effective batch stays batch_size.
        while True:
            try:
                loss = train_step(
                    state.net,
                    inputs,
                    labels,
                    progress.micro_batch,
                    state.criterion,
                    state.dev,
                    state.scaler,
                    state.optimizer,
                    state.scheduler,
                    state.trainable,
                    state.grad_clip,
                    state.ranks,
                    tally=state.train_tally,
                    l1=state.l1,
                )
                break
            except torch.OutOfMemoryError as e:
                oom = str(e).splitlines()[0] if str(e) else "out of memory"
            # Out of the except block, the traceback holding the activations is gone.
            state.optimizer.zero_grad(set_to_none=True)
            free_memory(state.dev)
            if progress.micro_batch == 1:
                record(state, trial, fail_reason="oom")
                raise torch.OutOfMemoryError(f"a micro-batch of 1 does not fit: {oom}")
            progress.micro_batch //= 2
            accumulation = math.ceil(state.rank_batch / progress.micro_batch)
            trial.set_attrs(
                {"micro_batch_size": progress.micro_batch, "grad_accumulation": accumulation}
            )
            log.warning(
                "trial %d: out of memory (%s); now %d micro-batches of %d",
                trial.number,
                oom,
                accumulation,
                progress.micro_batch,
            )
        stopped, restarted = after_step(state, trial, epoch, i, loss, clock)
        if stopped:
            return None  # stopped early
        clock = restarted if restarted is not None else clock
    progress.train_seconds += time.perf_counter() - clock
    if state.val_loader is None:  # a final fit: no evaluation point, the epoch's end is one
        return look(state, trial, epoch * evals) / max(steps, 1)
    return None


def begin_epoch(state: FitState, epoch: int) -> int:
    """``epoch`` starts: its sampler's order, the model in training mode, the loss sum at 0.

    Returns:
        The batches of it that an attempt resumed inside it (paused at a rung there) trained
        already, and skips.
    """
    progress = state.progress
    progress.epochs_run = epoch
    skip, progress.epoch_batches = progress.epoch_batches, 0
    state.order.set_epoch(epoch, skip * state.batch_size)
    train_mode(state.model, state.frozen)
    state.watch.restart()
    return skip


def after_step(
    state: FitState,
    trial: Trial,
    epoch: int,
    i: int,
    loss: torch.Tensor,
    clock: float | None,
    val=None,
) -> tuple[bool, float | None]:
    """What follows batch ``i``'s optimizer step of ``epoch``: its samples and loss counted,
    a held stop taken, and the evaluation that falls after it. ``clock``: when this stretch
    of training began (the time to the evaluation is ``train_seconds``); None where the
    caller counts it (fused trials, ``hpo.job.fused``), as ``val`` gives the evaluation's
    metrics where the caller has them (``evaluate_and_report``).

    Returns:
        Whether the trial stopped early, and the clock restarted after an evaluation.

    Raises:
        optuna.TrialPruned: the loss went NaN or diverged, or the evaluation pruned.
        JobPreempted: the worker's SIGTERM, checkpointed after this step.
    """
    progress, evals, steps = state.progress, state.evals, state.steps_per_epoch
    progress.samples += state.batch_size  # over all ranks
    state.watch.add(loss)
    # The report step this batch counts towards (epoch, or a fraction of the data).
    step = epoch if evals == 1 else (epoch - 1) * evals + math.ceil(i * evals / steps)
    if state.stop_asked is not None and state.stop_asked() and state.val_loader is not None:
        # The worker's SIGTERM, held until this step ended: checkpoint here, stop.
        if clock is not None:
            progress.train_seconds += time.perf_counter() - clock
        look(state, trial, step)  # a NaN model is pruned, not checkpointed
        save_epoch(state, trial, epoch, i)
        log.info("trial %d: stopped after batch %d of epoch %d", trial.number, i, epoch)
        raise JobPreempted(f"stopped after batch {i} of epoch {epoch}")

    if state.val_loader is not None and i in state.eval_after:
        if clock is not None:
            progress.train_seconds += time.perf_counter() - clock
        step = epoch if evals == 1 else (epoch - 1) * evals + state.eval_after[i]
        look(state, trial, step)
        if evaluate_and_report(state, trial, epoch, step, i % steps, val):
            return True, clock
        train_mode(state.model, state.frozen)
        clock = None if clock is None else time.perf_counter()
    return False, clock


def look(state: FitState, trial: Trial, step: int) -> float:
    """Read the losses since the last look (one sync): prune a trial whose loss went NaN or
    inf (``nan``) or diverged (``diverged``: ``DIVERGENCE`` times its first) at ``step``,
    the report step of the evaluation point.

    Returns:
        The sum of the epoch's training losses so far.
    """
    trouble, total = state.watch.look(DIVERGENCE)
    state.progress.first_loss = state.watch.first
    if trouble is not None:
        prune(state, trial, trouble, step)
    return total


def evaluate_and_report(
    state: FitState, trial: Trial, epoch: int, step: int, batches: int = 0, val=None
) -> bool:
    """Evaluate on the val set, report the objective at ``step``, prune or stop early,
    record.

    ``batches``: of ``epoch``, trained so far; 0 at its end. A pause saves the checkpoint
    here, inside the epoch or at its end. ``val``: the metrics of ``state.eval_loader``,
    where the caller evaluated already (fused trials, all members at once).

    Returns:
        Whether to stop early: no better objective in ``early_stopping_patience``
        evaluations.

    Raises:
        optuna.TrialPruned: the val loss or the objective is NaN, or the pruner said so.
        ValueError: the objective is not recorded (``val_auroc`` of more than two classes).
    """
    progress = state.progress
    # Inside an epoch, the val subset where there is one: its loss goes to the pruner alone.
    on_subset = bool(batches) and state.subset_loader is not None
    if val is None:
        val, progress.eval_micro_batch = evaluate_or_fail(
            trial,
            partial(record, state, trial),
            state.net,
            state.eval_loader(batches),
            state.dev,
            progress.eval_micro_batch or progress.micro_batch,
            state.channels_last,
            state.ranks,
            num_classes=state.setup.num_classes,
            weight=state.weight,
        )
    # Training's numbers: the batches trained since the last evaluation, as they trained.
    train = state.train_tally.read(state.ranks)
    val_loss, accuracy = val["loss"], val["accuracy"]
    numbers = {**prefixed("train", train), **prefixed("val", val)}
    progress.history_stride = add_to_history(
        progress.history, step, numbers, progress.history_stride
    )
    log.info(
        "trial %d epoch %d step %d: train loss %.4f, val loss %.4f, val accuracy %.3f%s",
        trial.number,
        epoch,
        step,
        math.nan if train["loss"] is None else train["loss"],  # since the last evaluation
        val_loss,
        accuracy,
        f" (val subset of {state.task.val_subset})" if on_subset else "",
    )
    value = val.get(state.metric)
    if value is None:
        raise ValueError(
            f"study.metric val_{state.metric} is not recorded for this task"
            + (" (AUROC is of two classes)" if state.metric == "auroc" else "")
        )
    if not math.isfinite(val_loss) or not math.isfinite(value):
        prune(state, trial, "nan", step)
    if not on_subset:  # the trial's value, best epoch and early stopping: whole val sets
        if better(value, progress.best_value, state.maximize):
            progress.best_value = value
            progress.best_loss, progress.best_accuracy = val_loss, accuracy
            progress.best_balanced_accuracy = val["balanced_accuracy"]
            progress.best_metrics = numbers
            progress.best_epoch, progress.best_step = epoch, step
            progress.evals_since_best = 0
        else:
            progress.evals_since_best += 1
    trial.report(value, step)
    # The last report cannot prune: the trial has run all its epochs, and stopping it now
    # saves nothing while it throws a finished result away.
    if step < state.epochs * state.evals and trial.should_prune():
        if state.pauses:  # resumable from here: the checkpoint after this evaluation
            save_epoch(state, trial, epoch, batches)
            prune(state, trial, PAUSED_REASON, step)
        prune(state, trial, "pruned", step)
    patience = state.task.early_stopping_patience
    if patience is not None and progress.evals_since_best >= patience:
        log.info(
            "trial %d: no better val_%s in %d evaluations, stopping early",
            trial.number,
            state.metric,
            patience,
        )
        progress.stopped_early = True
        record(state, trial, stopped_early_at_step=step)
        return True
    record(state, trial)
    return False


def save_epoch(state: FitState, trial: Trial, epoch: int, batches: int = 0) -> None:
    """The checkpoint after ``epoch``, or after its first ``batches`` (a pause inside it),
    which a resumed attempt starts from (if the trial has a checkpoint path)."""
    if state.checkpoint is None:
        return
    progress = state.progress
    progress.seconds = time.perf_counter() - state.started
    progress.epoch_batches = batches
    # After the last epoch the optimizer state is dead weight (twice the model's with Adam):
    # the final checkpoint keeps the model and the progress, enough for a resume (a retry
    # after the worker died before the tell) to return at once. Inside an epoch (a pause),
    # the checkpoint's epoch is the last whole one.
    save_checkpoint(
        state.checkpoint,
        model=state.model,
        optimizer=state.optimizer,
        scheduler=state.scheduler,
        scaler=state.scaler,
        epoch=epoch - 1 if batches else epoch,
        progress=asdict(progress),
        final=not batches and (epoch == state.epochs or progress.stopped_early),
    )
    trial.set_attrs({CHECKPOINT_ATTR: str(state.checkpoint)})
