"""``--per-gpu auto``: the launcher's view of the study's memory (``MemoryWatch``), which
tells ``hpo.run.slots.Packing`` how many workers each GPU runs
(``hpo.run.launch.Supervisor.rebalance``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hpo.run.slots import Packing, Slot, gpu_memory_mb
from hpo.run.worker import launched_worker_name


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
