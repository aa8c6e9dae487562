"""``--per-gpu auto``: how many trials a GPU's memory holds (``trials_per_gpu``, ``Packing``:
as many as fit in 85% of it, one fewer after an out-of-memory there) and the launcher's view
of the study's memory (``MemoryWatch``), which tells ``Packing`` how many workers each GPU runs
(``hpo.run.launch.Supervisor.rebalance``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hpo.run.slots import Slot, gpu_memory_mb
from hpo.run.worker import launched_worker_name

PACK_FRACTION = 0.85
"""The share of a GPU's memory that ``--per-gpu auto`` fills with trials."""
CONTEXT_MB = 600.0
"""Memory each worker process holds on its GPU beyond its trial's peak allocation: the CUDA
context and the caching allocator's slack, which ``torch.cuda.max_memory_allocated`` (a
trial's ``peak_memory_mb``) does not count (about 500 MiB on an H100 with torch 2.x)."""
MAX_PER_GPU = 8
"""No more workers than this on one GPU: their CPU-side work and the GPU's time slices are
shared too, so more would only queue."""


def trials_per_gpu(
    peak_mb: float,
    total_mb: float,
    *,
    fraction: float = PACK_FRACTION,
    overhead_mb: float = CONTEXT_MB,
    most: int = MAX_PER_GPU,
) -> int:
    """How many trials of a measured (or estimated) peak fit on one GPU.

    Args:
        peak_mb: a trial's peak GPU memory (its ``peak_memory_mb``).
        total_mb: the GPU's memory.
        fraction: the share of ``total_mb`` to fill.
        overhead_mb: each worker process's memory beyond its trial's peak.
        most: the cap.

    Returns:
        ``floor(fraction * total_mb / (peak_mb + overhead_mb))``, at least 1 (a trial too
        big to fit still gets its GPU alone: its fit loop shrinks its micro-batches) and at
        most ``most``.
    """
    if peak_mb < 0 or total_mb <= 0:
        raise ValueError(f"peak {peak_mb} MB of a GPU of {total_mb} MB")
    fit = int(fraction * total_mb // (peak_mb + overhead_mb))
    return max(1, min(most, fit))


MemoryProbe = Callable[[str], "tuple[float | None, float]"]
"""``probe(gpu)`` -> (the peak MB of the trials measured on it so far, or None before the
first; the GPU's total MB). The launcher's reads the study and NVML; a test's returns
numbers."""


@dataclass
class Packing:
    """``--per-gpu auto``: how many workers each GPU runs, from measured memory.

    Each GPU starts with one worker. Once a trial's peak memory is known (``measure``, from
    the probe), its GPU runs ``trials_per_gpu`` of them; an out-of-memory on a GPU that runs
    several (``out_of_memory``) lowers its count by one for good (its ceiling) and the trial
    is retried. A GPU's count never rises past its ceiling again, whatever later peaks say.
    """

    gpus: list[str]
    fraction: float = PACK_FRACTION
    overhead_mb: float = CONTEXT_MB
    most: int = MAX_PER_GPU
    counts: dict[str, int] = field(default_factory=dict)
    ceilings: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for gpu in self.gpus:
            self.counts.setdefault(gpu, 1)

    def measure(self, probe: MemoryProbe) -> dict[str, int]:
        """The counts after a look at each GPU's measured peak; returns them."""
        for gpu in self.gpus:
            peak, total = probe(gpu)
            if peak is None:
                continue  # no trial measured there yet: one worker finds out
            fit = trials_per_gpu(
                peak, total, fraction=self.fraction, overhead_mb=self.overhead_mb, most=self.most
            )
            self.counts[gpu] = min(fit, self.ceilings.get(gpu, self.most))
        return dict(self.counts)

    def out_of_memory(self, gpu: str) -> bool:
        """A trial on ``gpu`` ran out of memory. Returns whether that lowered its count (False
        where it ran alone there: the trial does not fit, packed or not)."""
        now = self.counts.get(gpu, 1)
        if now <= 1:
            return False
        self.counts[gpu] = self.ceilings[gpu] = now - 1
        return True


def is_out_of_memory(reason: object) -> bool:
    """Whether a trial's ``fail_reason`` says it ran out of GPU memory: the built-in job's
    ``oom``, or a custom job's ``torch.OutOfMemoryError``."""
    text = str(reason or "")
    return text == "oom" or text.startswith(("OutOfMemoryError", "torch.OutOfMemoryError"))


class MemoryWatch:
    """``Supervisor.rebalance`` for ``--per-gpu auto``: reads the study, tells ``packing``.

    Each call reads the study once: the largest ``peak_memory_mb`` of the finished trials
    that ran on a GPU (any worker's: a peak is the params', not the device's) is measured
    against each GPU's total memory (``total_mb``, NVML); a trial of this machine that failed
    out of memory since the launch lowers the count of its worker's GPU, and is retried as a
    dead worker's trial is (``hpo reap``'s retry, bounded the same way: from its last
    checkpoint where that is still kept, else from the start).

    Args:
        study: the study the workers run.
        packing: the counts it keeps.
        host: this machine's name (the trials' ``host`` attr).
        total_mb: a GPU's memory in MB, or None where unknown (default ``gpu_memory_mb``).
        say: where a lowered count is said.
    """

    def __init__(
        self,
        study: Any,
        packing: Packing,
        host: str,
        *,
        total_mb: Callable[[str], float | None] = gpu_memory_mb,
        say: Callable[[str], None] = print,
    ) -> None:
        self.study = study
        self.packing = packing
        self.host = host
        self.total_mb = total_mb
        self.say = say
        self._totals: dict[str, float | None] = {}
        # Failures of an earlier launch were another packing's.
        self._seen = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}

    def __call__(self, slots: list[Slot]) -> dict[str, int]:
        from optuna.trial import TrialState

        from hpo.records import FAIL_REASON_ATTR

        gpu_of = {launched_worker_name(s.index): s.gpu for s in slots}
        trials = self.study.get_trials(deepcopy=False)
        for t in trials:
            if t.number in self._seen or t.state == TrialState.RUNNING:
                continue
            if t.state == TrialState.WAITING:
                continue
            self._seen.add(t.number)
            if t.state != TrialState.FAIL or t.user_attrs.get("host") != self.host:
                continue
            gpu = gpu_of.get(t.user_attrs.get("worker", ""))
            if gpu is None or not is_out_of_memory(t.user_attrs.get(FAIL_REASON_ATTR)):
                continue
            if self.packing.out_of_memory(gpu):
                retried = self._retry(t)
                self.say(
                    f"hpo: trial {t.number} ran out of memory on GPU {gpu} beside others: "
                    f"{self.packing.counts[gpu]} worker(s) there from now on"
                    + ("; the trial is retried" if retried else "")
                )
        peaks = [
            float(t.user_attrs["peak_memory_mb"])
            for t in trials
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            and str(t.user_attrs.get("device", "")).startswith("cuda")
            and isinstance(t.user_attrs.get("peak_memory_mb"), (int, float))
        ]
        peak = max(peaks) if peaks else None

        def probe(gpu: str) -> tuple[float | None, float]:
            if gpu not in self._totals:
                self._totals[gpu] = self.total_mb(gpu)
            total = self._totals[gpu]
            return (peak, total) if total else (None, 0.0)

        return self.packing.measure(probe)

    def _retry(self, trial: Any) -> bool:
        """Queue the retry of a failed trial as the stale-trial search does."""
        from hpo.store import _optuna

        return _optuna.queue_retry(self.study, trial)
