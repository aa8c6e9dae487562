"""Faults inside a trial's ranks, for tests/test_gang.py: spawned ranks import this module
(``hpo.run.worker._gang._rank_main`` is replaced by a function here) and inject the fault there."""

from __future__ import annotations

import os

import torch

OOM_RANK_VAR = "GANGFAULTS_OOM_RANK"
"""This rank runs out of memory in any micro-batch larger than ``GANGFAULTS_OOM_ABOVE``."""
OOM_ABOVE_VAR = "GANGFAULTS_OOM_ABOVE"


def oom_rank_main(rank: int, *args) -> None:
    """``_rank_main``, with a memory limit on one rank: a micro-batch above the limit raises
    the out-of-memory error a GPU would."""
    from hpo.job import step
    from hpo.run.worker import _gang

    if rank == int(os.environ[OOM_RANK_VAR]):
        limit = int(os.environ[OOM_ABOVE_VAR])
        real = step.forward_backward

        def small_memory(model, inputs, labels, *rest, **kwargs):
            if len(labels) > limit:
                raise torch.OutOfMemoryError(f"out of memory on rank {rank} (injected)")
            return real(model, inputs, labels, *rest, **kwargs)

        step.forward_backward = small_memory
    _gang._rank_main(rank, *args)
