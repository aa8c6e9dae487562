"""Fused trials: several configurations of one model trained as one batched model.

The members of a group share the task, the batch size and every param that shapes the model
or the data (``fusion_key``); each has its own of the params in ``PER_MEMBER``: learning
rate, weight decay, optimizer and momentum, schedule, epochs, dropout, label smoothing, L1,
gradient clipping. Each member keeps what it would have alone (``start_fit``): its model,
whose parameters are the ones trained, its optimizer, schedule, loss and ``FitState``.

A training step stacks the members' trainable parameters (``torch.stack``: the gradient of
each slice lands on its member's own parameters), runs the forward once for all of them with
``torch.vmap`` over ``torch.func.functional_call`` on the same batch, sums the members' losses
for one backward, and steps each member's own optimizer (``hpo.job.step.optimizer_step``).
Evaluation is batched the same way (``evaluate_fused``), each member's metrics counted apart.
The rest is the fit loop's, per member (``hpo.job.fit.after_step``): reports, pruning, pauses
with their checkpoints of the member's own model and optimizer, early stopping. A member
leaves the group when it is pruned, paused, stopped early or done; the others go on
unchanged.

Dropout: each ``nn.Dropout`` becomes a ``MemberDropout`` in the batched forward, its
probability a per-member buffer, and vmap draws each member's mask apart
(``randomness="different"``): a member with dropout trains as it would alone in
distribution, not draw for draw. Without dropout, a member's numbers are those of it
trained alone up to float rounding (the batched kernels sum in another order).

Parameters that no member trains (``freeze``) are shared, not stacked, where the members'
are equal. What cannot be fused raises ``CannotFuse`` before any step is taken (batch norm
in training mode, whose statistics are of the batch, not of the member; several ranks per
trial); the caller then runs the members one at a time.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hpo.job.fit import after_step, begin_epoch, save_epoch
from hpo.job.loss import ClassWeighted, l1_penalty, penalized
from hpo.job.metrics import Tally
from hpo.job.optim import train_mode
from hpo.job.ranks import Ranks
from hpo.job.run import build, measure, release
from hpo.job.setup import TrainingSetup
from hpo.job.state import FitState, record, start_fit
from hpo.job.step import count, logits, optimizer_step, to_device
from hpo.job.trial import Trial

log = logging.getLogger(__name__)

PER_MEMBER = frozenset(
    {
        "lr",
        "weight_decay",
        "optimizer",
        "momentum",
        "epochs",
        "dropout",
        "backbone_lr_mult",
        "warmup_fraction",
        "schedule",
        "grad_clip",
        "l1",
        "label_smoothing",
    }
)
"""The params the members of a fused group may differ in; every other param is shared."""

FUSED_WITH_ATTR = "fused_with"
"""Trial attr: the numbers of the trials of its fused group, itself included."""


class CannotFuse(ValueError):
    """These configurations cannot train as one; ``why`` says what stands in the way."""

    def __init__(self, why: str) -> None:
        super().__init__(f"cannot fuse: {why}")
        self.why = why


def fusion_key(params: dict[str, Any]) -> tuple:
    """What members of one fused group share: every param outside ``PER_MEMBER``."""
    return tuple(sorted((k, repr(v)) for k, v in params.items() if k not in PER_MEMBER))


@dataclass
class Member:
    """One trial of a fused group."""

    trial: Trial
    params: dict[str, Any]
    context: Any
    """Its ``JobContext``: checkpoint path, pauses, the objective."""
    setup: TrainingSetup | None = None
    state: FitState | None = None
    outcome: float | BaseException | None = None
    """The best value of its objective, or the exception that ended it (``TrialPruned``,
    ``JobPreempted``, an error); None while it trains."""


class MemberDropout(nn.Module):
    """Dropout whose probability ``p`` is a buffer: one per member in the batched forward."""

    p: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("p", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = torch.rand_like(x) >= self.p  # each member's own draw under vmap
        return x * keep / (1 - self.p)


class _Bound:
    """A module called with the given parameters and buffers (``functional_call``), as
    ``hpo.job.step.logits`` calls a model."""

    def __init__(self, module: nn.Module, tensors: tuple[dict[str, torch.Tensor], ...]) -> None:
        self.module, self.tensors = module, tensors

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return torch.func.functional_call(self.module, self.tensors, args, kwargs)


class FusedModel:
    """The members' models as one: the model's structure (``template``, on the meta device,
    its dropouts ``MemberDropout``), each member's tensors by name, and the tensors shared.

    Raises:
        CannotFuse: batch norm in training mode.
    """

    def __init__(self, states: list[FitState]) -> None:
        first = states[0].model
        frozen = {id(m) for m in states[0].frozen}
        frozen_paths = [n for n, m in first.named_modules() if id(m) in frozen]
        self.template = copy.deepcopy(first).to("meta")
        dropouts = [n for n, m in self.template.named_modules() if type(m) is nn.Dropout]
        for path in dropouts:
            parent, _, child = path.rpartition(".")
            setattr(self.template.get_submodule(parent), child, MemberDropout())
        self.frozen = [self.template.get_submodule(n) for n in frozen_paths]
        train_mode(self.template, self.frozen)
        training_norms = [
            n
            for n, m in self.template.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
        ]
        if training_norms:
            raise CannotFuse(
                f"batch norm in training mode ({training_norms[0]}): its statistics are "
                "the batch's, not one member's"
            )
        models = [s.model for s in states]
        fixed = dict(first.named_buffers()) | {
            n: p for n, p in first.named_parameters() if not p.requires_grad
        }
        # What no member trains is shared where it is equal (the same weights and seed).
        self.shared = {
            n: t.detach()
            for n, t in fixed.items()
            if all(torch.equal(t, _tensor(m, n)) for m in models[1:])
        }
        own = [n for n, _ in first.named_parameters() if n not in self.shared]
        own += [n for n, _ in first.named_buffers() if n not in self.shared]
        device = states[0].dev.device
        self.tensors = {
            id(s): {n: _tensor(s.model, n) for n in own}
            | {
                f"{d}.p": torch.tensor(_dropout_p(s.model.get_submodule(d)), device=device)
                for d in dropouts
            }
            for s in states
        }

    def logits(self, states: list[FitState], inputs) -> torch.Tensor:
        """The class scores of every member on ``inputs``: ``[members, batch, classes]``."""
        each = [self.tensors[id(s)] for s in states]
        stacked = {n: torch.stack([t[n] for t in each]) for n in each[0]}

        def one(tensors: dict[str, torch.Tensor], x) -> torch.Tensor:
            return logits(_Bound(self.template, (tensors, self.shared)), x)  # type: ignore[arg-type]

        return torch.vmap(one, in_dims=(0, None), randomness="different")(stacked, inputs)


def _dropout_p(module: nn.Module) -> float:
    assert isinstance(module, nn.Dropout)  # at the path of the template's MemberDropout
    return module.p


def _tensor(model: nn.Module, name: str) -> torch.Tensor:
    module, _, leaf = name.rpartition(".")
    return getattr(model.get_submodule(module), leaf)


def run_fused(members: list[Member], task) -> None:
    """Fine-tune the members' configurations as one; each ends with its ``outcome``.

    Each member's trial gets what ``hpo.job.run.run_job`` gives it (reports, attrs, a
    checkpoint where its context has a path), and ``fused_with``. Its ``samples_per_second``
    is its own: the group's is the sum.

    Raises:
        CannotFuse: before any step: the members must train one at a time.
    """
    if Ranks.current().many:
        raise CannotFuse("a trial of several ranks")
    numbers = [m.trial.number for m in members]
    try:
        for m in members:  # each member's model and data as it would have them alone
            torch.manual_seed(task.seed)
            m.setup = build(task, m.params, m.context.cache)
            m.state = start_fit(m.trial, m.setup, m.params, task, m.context)
        fused = FusedModel([_state(m) for m in members])
        for m in members:
            m.trial.set_attrs({FUSED_WITH_ATTR: numbers})
            if m.context.measure_first:
                m.trial.set_attrs(measure(_setup(m), task, m.context.latency))
        log.info("trials %s train fused", ", ".join(map(str, numbers)))
        # The worker's SIGTERM waits for the step in flight (JobContext.hold_stops).
        hold = members[0].context.hold_stops
        with hold() if hold is not None else contextlib.nullcontext():
            _train(fused, members)
        for m in members:
            state = _state(m)
            if m.outcome is None:
                record(state, m.trial)
                best = state.progress.best_value
                m.outcome = best if best is not None else -math.inf if state.maximize else math.inf
            if not m.context.measure_first:
                m.trial.set_attrs(measure(_setup(m), task, m.context.latency))
    finally:
        built = [m.setup for m in members if m.setup is not None]
        for i, setup in enumerate(built):
            release(setup, collect=i == len(built) - 1)


def _train(fused: FusedModel, members: list[Member]) -> None:
    """The epochs of every member, its steps fused with those of the others still there."""
    live = list(members)
    for epoch in range(1, max(_state(m).epochs for m in members) + 1):
        live = [m for m in live if epoch <= _state(m).epochs]
        if not live:
            return
        for m in live:
            begin_epoch(_state(m), epoch)
        lead = _state(live[0])  # every member's loader gives the same batches
        clock = time.perf_counter()
        for i, (inputs, labels) in enumerate(lead.train_loader, 1):
            inputs = to_device(inputs, lead.dev, lead.channels_last)
            labels = labels.to(lead.dev.device, non_blocking=True)
            try:
                losses = fused_step(fused, [_state(m) for m in live], inputs, labels)
            except Exception as e:  # of the group: every member ends with it
                for m in live:
                    m.outcome = e
                    record(_state(m), m.trial)
                return
            spent = time.perf_counter() - clock
            vals: list[dict | None] = [None] * len(live)
            if lead.val_loader is not None and i in lead.eval_after:  # every member's, at once
                states = [_state(m) for m in live]
                vals = list(
                    evaluate_fused(fused, states, lead.eval_loader(i % lead.steps_per_epoch))
                )
            for m, loss, val in zip(list(live), losses, vals):
                state = _state(m)
                state.progress.train_seconds += spent
                try:
                    stopped, _ = after_step(state, m.trial, epoch, i, loss, None, val)
                except Exception as e:  # pruned, paused, preempted, failed: it leaves
                    m.outcome = e
                    live.remove(m)
                    continue
                if stopped:  # stopped early: its checkpoint, as the fit loop saves it
                    save_epoch(state, m.trial, epoch)
                    live.remove(m)
            if not live:
                return
            clock = time.perf_counter()
        for m in live:
            save_epoch(_state(m), m.trial, epoch)


def fused_step(
    fused: FusedModel, states: list[FitState], inputs, labels: torch.Tensor
) -> list[torch.Tensor]:
    """One optimizer step of every member in ``states`` on the same batch, as
    ``hpo.job.step.train_step`` takes it for one (one micro-batch: the whole batch).

    Returns:
        Each member's training loss (plus its L1 penalty), detached, on the device.
    """
    dev = states[0].dev
    total: torch.Tensor | None = None
    losses = []
    with dev.autocast():
        out = fused.logits(states, inputs).float()
        for k, state in enumerate(states):
            loss = state.criterion(out[k], labels)
            if isinstance(state.criterion, ClassWeighted):  # its weighted mean
                loss = loss * state.criterion.shares(labels, [slice(0, len(labels))])[0]
            scaled = state.scaler.scale(loss)
            state.train_tally.add(out[k].detach(), labels)
            if state.l1 > 0:
                penalty = l1_penalty(penalized(state.trainable), state.l1)
                scaled = scaled + state.scaler.scale(penalty)
                loss = loss + penalty
            state.train_tally.add_loss(loss.detach(), 1.0)
            losses.append(loss.detach())
            total = scaled if total is None else total + scaled
    assert total is not None  # one member at least
    total.backward()  # each member's gradient is of its own loss: the others' do not reach it
    for state in states:
        optimizer_step(
            state.optimizer, state.scheduler, state.scaler, state.trainable, state.grad_clip
        )
    return losses


@torch.no_grad()
def evaluate_fused(fused: FusedModel, states: list[FitState], loader) -> list[dict[str, Any]]:
    """``hpo.job.step.evaluate`` of every member in ``states`` at once: one batched forward
    a batch, each member's loss and predictions counted apart.

    Raises:
        torch.OutOfMemoryError: the members' batched forward does not fit.
    """
    first = states[0]
    tallies = [Tally(first.setup.num_classes, first.dev.device) for _ in states]
    fused.template.eval()
    try:
        for inputs, labels in loader:
            inputs = to_device(inputs, first.dev, first.channels_last)
            labels = labels.to(first.dev.device, non_blocking=True)
            with first.dev.autocast():
                out = fused.logits(states, inputs).float()
            for tally, scores, state in zip(tallies, out, states):
                count(tally, scores, labels, state.weight)
    finally:
        train_mode(fused.template, fused.frozen)
    return [tally.read(first.ranks) for tally in tallies]


def _state(m: Member) -> FitState:
    assert m.state is not None  # run_fused starts every member's fit first
    return m.state


def _setup(m: Member) -> TrainingSetup:
    assert m.setup is not None  # run_fused builds every member first
    return m.setup
