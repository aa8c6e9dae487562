"""What a trial measures besides its validation loss, once its fit is over: the model's
parameter counts (every trial) and its inference latency (where ``latency_ms`` is an
objective). They are user attrs of the trial; the worker makes the study's objectives of them.

Latency is measured the same way every time: on the trial's device, the fitted model in eval
mode under ``torch.inference_mode`` and the autocast the trial evaluated with, on the first
validation examples (batch 1, then ``study.latency.batch_size``), ``warmup`` untimed forward
passes, then the median of ``repeats`` timed ones, CUDA synchronized around each.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from hpo.job.adapter import parameter_counts
from hpo.job.data import dataset_size
from hpo.job.device import Device
from hpo.job.step import logits, to_device

PARAMS_ATTR, TRAINABLE_PARAMS_ATTR = "params", "trainable_params"
LATENCY_ATTR, LATENCY_BATCH_ATTR = "latency_ms", "latency_ms_batch"


def count_parameters(model: nn.Module) -> dict[str, int]:
    """``params`` (all of the model's parameters) and ``trainable_params`` (those the freeze
    policy, or a LoRA adapter, leaves trainable), as ``hpo.job.adapter.parameter_counts``
    counts them."""
    trainable, total = parameter_counts(model)
    return {PARAMS_ATTR: total, TRAINABLE_PARAMS_ATTR: trainable}


def measure_latency(
    model: nn.Module,
    examples: Dataset,
    collate: Any,
    dev: Device,
    channels_last: bool,
    latency: Any,
) -> dict[str, Any]:
    """The model's forward latency at batch 1 and at ``latency.batch_size``.

    Args:
        model: the fitted model (left in eval mode).
        examples: where the inputs come from (the validation set); repeated if shorter than
            the batch.
        collate: the task's collate function (None: torch's default).
        dev: the trial's device.
        channels_last: whether the trial fed images in channels_last format.
        latency: ``hpo.spec.LatencySpec``: ``batch_size``, ``warmup``, ``repeats``.

    Returns:
        ``latency_ms`` (batch 1), ``latency_ms_batch`` (the whole batch, in ms) and
        ``latency_batch_size``, rounded to microseconds.
    """
    model.eval()
    out: dict[str, Any] = {}
    for size, key in ((1, LATENCY_ATTR), (latency.batch_size, LATENCY_BATCH_ATTR)):
        batch = (collate or default_collate)(
            [examples[i % dataset_size(examples)] for i in range(size)]
        )
        inputs = to_device(batch[0], dev, channels_last)
        out[key] = round(_median_ms(model, inputs, dev, latency.warmup, latency.repeats), 3)
    out["latency_batch_size"] = latency.batch_size
    return out


def _median_ms(model: nn.Module, inputs: Any, dev: Device, warmup: int, repeats: int) -> float:
    times = []
    with torch.inference_mode(), dev.autocast():
        for i in range(warmup + repeats):
            if dev.cuda:  # kernels run asynchronously: time them, not their launch
                torch.cuda.synchronize(dev.device)
            start = time.perf_counter()
            logits(model, inputs)
            if dev.cuda:
                torch.cuda.synchronize(dev.device)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)
