"""A trial on several devices: what the fit loop does differently on each of its ranks.

The gang's process group is set up by whoever starts the ranks (``hpo.run.worker``); the job only
asks ``Ranks.current()`` which rank it is. With one rank every method here is a no-op, so the
one fit loop serves both.

What keeps the ranks in step (no rank may wait forever on another):

- **Decisions are made on reduced numbers.** The training loss of a step and the validation
  loss are reduced over all ranks before the loop looks at them, so a NaN, a divergence, an
  early stop happen on every rank at the same step; a pruning decision is rank 0's, broadcast.
- **Gradients are averaged only once every rank's step fitted in memory.** The micro-batches
  run under DDP's ``no_sync``; the ranks then agree on one flag ("did any rank run out of
  memory?") and either all halve the micro-batch and redo the step, or all average their
  gradients in one coalesced all-reduce. DDP's own all-reduce inside the backward would leave
  the other ranks waiting there when one rank's backward ran out of memory.
- **Only rank 0 talks to the trial**: reports, attrs and checkpoints are rank 0's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import Sampler

from hpo.job.trial import Trial


@dataclass(frozen=True)
class Ranks:
    """This process's rank in its trial's gang."""

    rank: int = 0
    world: int = 1

    @staticmethod
    def current() -> Ranks:
        """From ``torch.distributed``'s process group, if this process is in one."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return Ranks(dist.get_rank(), dist.get_world_size())
        return Ranks()

    @property
    def many(self) -> bool:
        return self.world > 1

    @property
    def lead(self) -> bool:
        """Rank 0: the one that talks to the trial and writes checkpoints."""
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's part of ``n`` examples: near-equal contiguous slices."""
        bounds = [round(k * n / self.world) for k in range(self.world + 1)]
        return slice(bounds[self.rank], bounds[self.rank + 1])

    def loss_weight(self, batch_size: int) -> float:
        """What this rank's mean loss is multiplied by so that the average of the ranks'
        gradients is the gradient of the global batch's mean loss (shards may differ by one
        example when the batch does not split evenly)."""
        part = self.shard(batch_size)
        return self.world * (part.stop - part.start) / batch_size

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over the ranks (a new tensor)."""
        if not self.many:
            return values
        import torch.distributed as dist

        out = values.clone()
        dist.all_reduce(out)
        return out

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """Every rank's 1-D ``values`` (of any lengths) concatenated in rank order (a
        collective: every rank must call it)."""
        if not self.many:
            return values
        import torch.distributed as dist

        size = torch.tensor([len(values)], device=values.device)
        sizes = [torch.zeros_like(size) for _ in range(self.world)]
        dist.all_gather(sizes, size)
        longest = int(max(s.item() for s in sizes))
        padded = torch.zeros(longest, dtype=values.dtype, device=values.device)
        padded[: len(values)] = values
        parts = [torch.zeros_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether ``flag`` is true on any rank (every rank must ask)."""
        if not self.many:
            return flag
        return bool(self.sum(torch.tensor([int(flag)], device=device)).item())

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (a picklable object)."""
        if not self.many:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def average_gradients(self, params: list[nn.Parameter], bucket: int = 2**24) -> None:
        """Average the gradients over the ranks, in coalesced all-reduces of at most
        ``bucket`` elements."""
        if not self.many:
            return
        import torch.distributed as dist
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

        grads = [p.grad for p in params if p.grad is not None]
        start = 0
        while start < len(grads):
            group: list[torch.Tensor] = []
            size = 0
            while start < len(grads) and (not group or size + grads[start].numel() <= bucket):
                group.append(grads[start])
                size += grads[start].numel()
                start += 1
            flat = _flatten_dense_tensors(group)
            dist.all_reduce(flat)
            flat /= self.world
            for g, synced in zip(group, _unflatten_dense_tensors(flat, group)):
                g.copy_(synced)

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``model`` in DistributedDataParallel (rank 0's weights on every rank from here),
        or ``model`` itself with one rank. Buffers are not broadcast in the forward pass: a
        collective there would leave ranks waiting when one ran out of memory mid-step."""
        if not self.many:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = (
            [device.index if device.index is not None else torch.cuda.current_device()]
            if device.type == "cuda"
            else None
        )
        import inspect

        # torch 2.14 renamed broadcast_buffers (deprecated there) to forward_sync_buffers.
        known = inspect.signature(DistributedDataParallel).parameters
        no_sync = "forward_sync_buffers" if "forward_sync_buffers" in known else "broadcast_buffers"
        off: dict[str, Any] = {no_sync: False}
        return DistributedDataParallel(model, device_ids=ids, **off)

    @contextlib.contextmanager
    def local_gradients(self, net: nn.Module) -> Iterator[None]:
        """Backward passes inside keep their gradients on this rank (``average_gradients``
        shares them)."""
        ddp = _ddp_of(net)
        with ddp.no_sync() if ddp is not None else contextlib.nullcontext():
            yield


def _ddp_of(net: nn.Module) -> Any:
    from torch.nn.parallel import DistributedDataParallel

    inner = getattr(net, "_orig_mod", net)  # torch.compile's wrapper
    return inner if isinstance(inner, DistributedDataParallel) else None


class RankBatches(Sampler[list[int]]):
    """This rank's part of each global batch of an epoch's order (a batch sampler).

    The global batches are those one rank would draw from ``order`` (``drop_last``); rank r
    takes slice r of each. Together the ranks see exactly the examples, in the same batches,
    as a single rank with the same seed and epoch.
    """

    def __init__(self, order: Sampler[int], batch_size: int, ranks: Ranks) -> None:
        self.order = order
        self.batch_size = batch_size
        self.part = ranks.shard(batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        indices = list(self.order)
        for start in range(0, len(indices) - self.batch_size + 1, self.batch_size):
            batch = indices[start : start + self.batch_size]
            yield batch[self.part]

    def __len__(self) -> int:
        return len(self.order) // self.batch_size  # type: ignore[arg-type]


class RankTrial:
    """The job's trial as each rank sees it: rank 0's reports and attrs go to the trial, the
    others' nowhere; every rank gets rank 0's pruning decision."""

    def __init__(self, trial: Trial, ranks: Ranks) -> None:
        self._trial = trial
        self._ranks = ranks
        self.number = trial.number

    def report(self, value: float, step: int) -> None:
        if self._ranks.lead:
            self._trial.report(value, step)

    def should_prune(self) -> bool:
        decision = self._trial.should_prune() if self._ranks.lead else None
        return bool(self._ranks.broadcast(decision))

    def set_attrs(self, attrs: dict[str, Any]) -> None:
        if self._ranks.lead:
            self._trial.set_attrs(attrs)
