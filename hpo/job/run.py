"""The job: one trial's fine-tuning, from the task and the trial's params to its objective."""

from __future__ import annotations

import contextlib

import torch

from hpo.job.context import JobContext
from hpo.job.device import free_memory, pick_device
from hpo.job.fit import fit
from hpo.job.objectives import count_parameters, measure_latency
from hpo.job.ranks import Ranks
from hpo.job.setup import TrainingSetup
from hpo.job.state import uses_channels_last
from hpo.job.trial import Trial


def run_job(trial: Trial, task, params: dict, context: JobContext) -> float:
    """Fine-tune once; return the best value of the objective (``context.metric``, by
    default the validation loss).

    Args:
        trial: the job's trial (``hpo.job.trial``): reports, pruning and attrs go to it.
        task: the study's ``hpo.spec.TaskSpec``.
        params: every key of ``hpo.spec.HYPERPARAMETERS``.
        context: the worker's cache and this trial's checkpoint / resume paths.

    Every trial gets the attrs ``params`` and ``trainable_params`` (``hpo.job.objectives``),
    pruned or not; with ``context.latency`` set, a complete trial gets ``latency_ms`` too
    (measured before training with ``context.measure_first``, after it otherwise).

    Returns:
        The best value of the trial's objective (``inf`` for a final fit, which has no
        validation; its test results are attrs).

    Raises:
        optuna.TrialPruned: pruned, or its loss went NaN or diverged (attr
            ``prune_reason``).
        torch.OutOfMemoryError: not even one example per micro-batch fits
            (``fail_reason`` = ``oom``).
        hpo.job.errors.JobSetupError: the model, weights or data cannot be loaded here.
    """
    # The same initial head and data order for every trial: trials differ by their params.
    torch.manual_seed(task.seed)
    setup = build(task, params, context.cache, final=context.final)
    lead = Ranks.current().lead  # rank 0 alone talks to the trial

    def measure_now() -> None:
        if lead:
            trial.set_attrs(measure(setup, task, context.latency))

    try:
        try:
            value = fit(trial, setup, params, task, context, measure_now)
        except BaseException:
            if lead and not context.measure_first:  # a pruned or failed trial's counts too
                with contextlib.suppress(Exception):  # its own error matters more
                    trial.set_attrs(count_parameters(setup.model))
            raise
        if not context.measure_first:
            measure_now()
        return value
    finally:
        release(setup)


def measure(setup: TrainingSetup, task, latency) -> dict:
    """The fitted model's parameter counts and, given ``latency`` (``hpo.spec.LatencySpec``)
    and a validation set to draw inputs from, its latency (``hpo.job.objectives``)."""
    attrs: dict = count_parameters(setup.model)
    if latency is not None and setup.val_set is not None:
        dev = pick_device(task.amp)
        attrs.update(
            measure_latency(
                setup.model,
                setup.val_set,
                setup.collate,
                dev,
                uses_channels_last(setup, task, dev),
                latency,
            )
        )
    return attrs


def build(task, params: dict, cache: dict, *, final: bool = False) -> TrainingSetup:
    """The model and data of a trial, by the task's kind (imported only when needed).

    ``final``: train on train + val, no val set, and the test split (``hpo retrain``).
    """
    if task.kind == "image_classification":
        from hpo.job.vision import build_vision

        return build_vision(task, params, cache, final=final)
    if task.kind == "text_classification":
        from hpo.job.text import build_text

        return build_text(task, params, cache, final=final)
    raise ValueError(
        f"task.kind: expected image_classification or text_classification, got {task.kind!r}"
    )


def release(setup: TrainingSetup, collect: bool = True) -> None:
    """Free the trial's model, gradients and optimizer state, even while references remain.

    A pruned or failed trial's exception keeps the fit loop's frames, and so the model and the
    optimizer, alive for as long as someone holds the traceback. Emptying the tensors in place
    frees their memory regardless; the cache (datasets) stays. ``collect``: then collect the
    garbage (0.1-0.25 s with torch loaded; a fused group collects once, after its last).
    """
    with torch.no_grad():
        for p in setup.model.parameters():
            p.grad = None
            p.data = torch.empty(0, dtype=p.dtype, device=p.device)
        for b in setup.model.buffers():
            b.data = torch.empty(0, dtype=b.dtype, device=b.device)
    if setup.optimizer is not None:
        setup.optimizer.state.clear()
    setup.head.clear()
    setup.blocks.clear()
    if collect:
        free_memory(pick_device(amp=False))
