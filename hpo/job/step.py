"""The mechanics of one step of the fit loop: a batch's optimizer step in micro-batches, an
evaluation, and the moves of a batch to the device. Nothing here reads the loop's state."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hpo.job.device import Device, free_memory
from hpo.job.loss import ClassWeighted, l1_penalty, penalized
from hpo.job.metrics import Tally
from hpo.job.ranks import Ranks
from hpo.job.trial import Trial

log = logging.getLogger(__name__)


def train_step(
    model: nn.Module,
    inputs,
    labels: torch.Tensor,
    micro_batch: int,
    criterion,
    dev: Device,
    scaler,
    optimizer,
    scheduler,
    trainable: list[nn.Parameter],
    grad_clip: float,
    ranks: Ranks = Ranks(),
    tally: Tally | None = None,
    l1: float = 0.0,
) -> torch.Tensor:
    """One optimizer step over a batch, in micro-batches of at most ``micro_batch``, with no
    read of the device on one rank: the loop looks at the losses at evaluation points alone
    (``LossWatch``).

    On several ranks, ``inputs`` are this rank's part of the global batch; the step is taken
    on every rank or on none (``hpo.job.ranks``). A ``ClassWeighted`` criterion gives each
    micro-batch its share of the global batch's weight sum, not of its count. ``tally``
    counts the step's predictions and loss once it is taken (not those of a try that ran out
    of memory), on the device. ``l1`` > 0 adds ``l1 * sum |w|`` over the trainable weights
    (``hpo.job.loss.l1_penalty``) once, after the micro-batches, on every rank alike.

    Returns:
        The batch's mean training loss (the global batch's, over all ranks) plus the L1
        penalty, detached, on the device. The optimizer steps whatever it is: a NaN or inf
        loss prunes the trial at the next evaluation point (with fp16's loss scaling, the
        scaler skips the step on its own).

    Raises:
        torch.OutOfMemoryError: the micro-batches do not fit (on any rank; finding out
            whether another rank ran out is a read of the device, on several ranks alone).
    """
    n = len(labels)
    total: torch.Tensor | None = None
    oom = None
    parts = micro_batches(n, micro_batch)
    seen: list[tuple[torch.Tensor, torch.Tensor]] | None = [] if tally is not None else None
    shares = (
        criterion.shares(labels, parts, ranks)
        if isinstance(criterion, ClassWeighted)
        else [(part.stop - part.start) / n for part in parts]
    )
    # One rank has no gradients to keep local (and skips the context's cost each step).
    with ranks.local_gradients(model) if ranks.many else contextlib.nullcontext():
        try:
            for part, share in zip(parts, shares):
                loss = forward_backward(
                    model,
                    take(inputs, part),
                    take(labels, part),
                    criterion,
                    dev,
                    scaler,
                    weight=share,
                    seen=seen,
                )
                total = loss if total is None else total + loss
            if l1 > 0:  # once per step: the same whatever the micro-batches and ranks
                penalty = l1_penalty(penalized(trainable), l1)
                scaler.scale(penalty).backward()
                total = penalty.detach() if total is None else total + penalty.detach()
        except torch.OutOfMemoryError as e:
            if not ranks.many:
                raise
            oom = str(e).splitlines()[0] if str(e) else "out of memory"
    if ranks.many:  # every rank learns whether any ran out of memory: all retry, or none
        if ranks.any(oom is not None, labels.device):
            raise torch.OutOfMemoryError(oom or "out of memory on another rank of the trial")
        ranks.average_gradients(trainable)
        assert total is not None  # no rank ran out of memory: every micro-batch added its loss
        total = ranks.sum(total) / ranks.world
    assert total is not None  # one micro-batch at least
    if tally is not None and seen is not None:  # the batch's predictions, on this rank
        for out, y in seen:
            tally.add(out, y)
        # Every rank adds the global loss, a share of it each.
        tally.add_loss(total / ranks.world if ranks.many else total, 1 / ranks.world)
    # No total.item() here: a read is a CPU-GPU sync, which would leave the device idle
    # while the host queues the next step.
    optimizer_step(optimizer, scheduler, scaler, trainable, grad_clip)
    return total


def optimizer_step(
    optimizer, scheduler, scaler, trainable: list[nn.Parameter], grad_clip: float
) -> None:
    """The step the gradients ask for: clipped to ``grad_clip`` (> 0), taken by the scaler
    (which skips it where fp16's loss scaling found an inf), the schedule advanced, the
    gradients freed."""
    if grad_clip > 0:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(trainable, grad_clip)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)  # frees the gradients' memory until next backward


class LossWatch:
    """The training losses of a fit's steps, kept on the device and looked at (``look``) at
    evaluation points alone: the epoch's sum, and the largest loss (``fmax``: a NaN does not
    hide it) to tell a diverged trial from one whose loss went NaN or inf.

    ``first``: the fit's first training loss, from a checkpoint; else the first one added.
    """

    def __init__(self, device: torch.device, first: float | None) -> None:
        self.total = torch.zeros((), device=device)
        self.worst = torch.full((), -math.inf, device=device)
        self.first = first
        self._first: torch.Tensor | None = None

    def add(self, loss: torch.Tensor) -> None:
        """A step's loss (a 0-dim tensor on the device); nothing is read."""
        self.total += loss
        torch.fmax(self.worst, loss, out=self.worst)
        if self.first is None and self._first is None:
            self._first = loss

    def look(self, limit: float) -> tuple[str | None, float]:
        """One read of the device: what went wrong (``diverged``: a finite loss above
        ``limit`` times the first one, floored at 1e-3; ``nan``: a loss that was NaN or inf),
        or None, and the sum of the losses since ``restart``."""
        first = self._first if self._first is not None else torch.zeros_like(self.total)
        total, worst, first_loss = torch.stack([self.total, self.worst, first]).tolist()
        if self.first is None and self._first is not None:
            self.first = first_loss
        floor = max(self.first, 1e-3) if self.first is not None else math.inf
        if math.isfinite(worst) and worst > limit * floor:
            return "diverged", total
        if not math.isfinite(total):
            return "nan", total
        return None, total

    def restart(self) -> None:
        """A new epoch: its sum starts at 0."""
        self.total.zero_()


def forward_backward(
    model: nn.Module,
    inputs,
    labels: torch.Tensor,
    criterion,
    dev: Device,
    scaler,
    weight: float | torch.Tensor,
    seen: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> torch.Tensor:
    """Forward and backward one micro-batch, its criterion times ``weight``: its share of
    the batch. ``seen`` gets its logits (detached) and labels.

    Returns:
        Its share of the batch's loss, detached.
    """
    with dev.autocast():
        out = logits(model, inputs).float()
        loss = criterion(out, labels)
        if not isinstance(weight, float) or weight != 1.0:  # a whole batch: no multiply
            loss = loss * weight
    if seen is not None:
        seen.append((out.detach(), labels))
    scaler.scale(loss).backward()
    return loss.detach()


def evaluate_or_fail(
    trial: Trial,
    record: Callable[..., None],
    model: nn.Module,
    loader: Iterable,
    dev: Device,
    micro_batch: int,
    channels_last: bool,
    ranks: Ranks = Ranks(),
    *,
    num_classes: int,
    weight: torch.Tensor | None = None,
) -> tuple[dict[str, Any], int]:
    """``evaluate``, its micro-batch halved on out-of-memory until it fits.

    Args:
        trial: gets ``eval_micro_batch_size`` at each halving.
        record: writes the trial's attrs with the extra ones it is given (one write).
        num_classes, weight: as for ``evaluate``.

    Returns:
        ``evaluate``'s metrics, and the micro-batch that fitted (later evaluations start
        from it).

    Raises:
        torch.OutOfMemoryError: even one example per forward pass does not fit
            (``record`` writes ``fail_reason`` = ``oom`` with the trial's attrs first).
    """
    while True:
        try:
            metrics = evaluate(
                model,
                loader,
                dev,
                micro_batch,
                channels_last,
                ranks,
                num_classes=num_classes,
                weight=weight,
            )
            return metrics, micro_batch
        except torch.OutOfMemoryError as e:
            oom = str(e).splitlines()[0] if str(e) else "out of memory"
        # Out of the except block, the traceback holding the activations is gone.
        free_memory(dev)
        if micro_batch == 1:
            record(fail_reason="oom")
            raise torch.OutOfMemoryError(f"evaluation: a micro-batch of 1 does not fit: {oom}")
        micro_batch //= 2
        trial.set_attrs({"eval_micro_batch_size": micro_batch})
        log.warning(
            "trial %d: out of memory in evaluation (%s); evaluating in micro-batches of %d",
            trial.number,
            oom,
            micro_batch,
        )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    dev: Device,
    micro_batch: int,
    channels_last: bool,
    ranks: Ranks = Ranks(),
    *,
    num_classes: int,
    weight: torch.Tensor | None = None,
) -> dict[str, Any]:
    """The metrics of a validation or test set (over every rank's part of it): its
    cross-entropy ``loss`` and the classification metrics of ``hpo.job.metrics``.

    The cross-entropy is the mean, or with class ``weight`` the weighted mean
    ``sum w[y] l / sum w[y]``: the loss training minimizes, without label smoothing.
    Everything is counted on the device and read once at the end.
    """
    model.eval()
    tally = Tally(num_classes, dev.device)
    for inputs, labels in loader:
        inputs = to_device(inputs, dev, channels_last)
        labels = labels.to(dev.device, non_blocking=True)
        for part in micro_batches(len(labels), micro_batch):
            with dev.autocast():
                out = logits(model, take(inputs, part)).float()
            count(tally, out, labels[part], weight)
    return tally.read(ranks)


def count(tally: Tally, out: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None) -> None:
    """An evaluated batch's cross-entropy (summed: ``evaluate``'s mean divides by the count,
    or the weight sum) and predictions, into ``tally``."""
    tally.add_loss(
        F.cross_entropy(out, y, weight=weight, reduction="sum"),
        len(y) if weight is None else weight[y].sum(),
    )
    tally.add(out, y)


def logits(model: nn.Module, inputs) -> torch.Tensor:
    """The model's class scores, whether it returns a tensor, a tuple or a transformers output."""
    out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, tuple):  # inception / googlenet: (logits, aux logits)
        return out[0]
    return out


@functools.lru_cache(maxsize=64)  # the same few (n, size) every step
def micro_batches(n: int, size: int) -> tuple[slice, ...]:
    """``n`` examples cut into near-equal slices of at most ``size`` (none of just one
    example unless ``size`` is 1: batch norm cannot train on one)."""
    count = math.ceil(n / size)
    bounds = [round(k * n / count) for k in range(count + 1)]
    return tuple(slice(a, b) for a, b in zip(bounds, bounds[1:]))


def take(inputs, part: slice):
    """A slice of a batch's inputs or labels: a tensor, or a dict of tensors; the batch
    itself where the slice is all of it."""
    n = len(next(iter(inputs.values()))) if isinstance(inputs, dict) else len(inputs)
    if part.start == 0 and part.stop == n:
        return inputs
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
