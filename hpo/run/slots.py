"""Slots: which worker process gets which GPU(s), and the environment that pins it there.

``assign_slots`` is the one place that maps GPUs to workers (pure, unit-tested); a ``Slot``'s
``env`` sets ``CUDA_VISIBLE_DEVICES``, ``HPO_WORKER_INDEX`` and the CPU thread counts before the
worker imports torch. GPUs are found without importing torch (``visible_gpus``).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from hpo.errors import HpoError

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
"""The math libraries' thread counts a CPU worker gets (torch reads both)."""


@dataclass(frozen=True)
class Slot:
    """One worker process: its index (sampler seed offset) and the GPU(s) it sees, if any."""

    index: int
    gpu: str | None = None
    """A GPU, or a trial's gang of them (``"0,1"``): ``CUDA_VISIBLE_DEVICES``."""
    threads: int | None = None
    """CPU threads of the worker's math libraries (CPU workers share the cores)."""

    @property
    def label(self) -> str:
        return f"w{self.index}" + (f"/gpu{self.gpu}" if self.gpu is not None else "")

    def env(self, base: dict[str, str]) -> dict[str, str]:
        """The child's environment: pinned to its GPU before torch loads."""
        env = dict(base)
        env["HPO_WORKER_INDEX"] = str(self.index)
        if self.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.gpu
        if self.threads is not None:
            # Oversubscribed cores make every worker several times slower: split them. One
            # count for both libraries: torch takes the larger of the two, so a user's
            # OMP_NUM_THREADS=1 beside a MKL_NUM_THREADS of ours would still run 2 threads
            # (measured: 9x the CPU time of a trial on a loaded 2-core machine).
            given = [int(env[v]) for v in THREAD_VARS if env.get(v, "").isdigit()]
            count = str(min(given)) if given else str(self.threads)
            for var in THREAD_VARS:
                env.setdefault(var, count)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env


def parse_gpus(text: str | None) -> list[str] | None:
    """``"0,1,3"`` -> ``["0", "1", "3"]``; ``"all"`` -> every visible GPU; None -> None.

    Raises:
        HpoError: a malformed list, or ``all`` on a machine without GPUs.
    """
    if text is None:
        return None
    if text == "all":
        gpus = visible_gpus()
        if not gpus:
            raise HpoError(
                "--gpus all: no GPU is visible on this machine (nvidia-smi finds "
                "none); use --workers N for CPU workers"
            )
        return gpus
    items = [t.strip() for t in text.split(",")]
    for item in items:
        if not re.fullmatch(r"\d+|GPU-[0-9a-fA-F-]+|MIG-[0-9a-zA-Z/-]+", item):
            raise HpoError(
                f"--gpus: {item!r} is not a GPU index or UUID; expected e.g. 0,1,2 or all"
            )
    if len(set(items)) != len(items):
        raise HpoError(
            f"--gpus: {text!r} names a GPU twice; use --per-gpu K for several workers on one GPU"
        )
    return items


def visible_gpus() -> list[str]:
    """GPUs this process may use, without importing torch: ``CUDA_VISIBLE_DEVICES`` if set,
    else what ``nvidia-smi`` lists."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def assign_slots(
    gpus: Sequence[str] | None,
    per_gpu: int = 1,
    workers: int | None = None,
    cpus: int | None = None,
    devices_per_trial: int = 1,
) -> list[Slot]:
    """Which worker gets which GPU(s).

    Args:
        gpus: GPU indices/UUIDs to use, or None for CPU workers.
        per_gpu: workers sharing each GPU.
        workers: number of workers without GPUs (ignored when ``gpus`` is given).
        cpus: CPU cores to share among CPU workers (default: this machine's).
        devices_per_trial: the spec's ``resources.devices_per_trial``: each worker's trials
            run on a gang of this many GPUs (or CPU processes).

    Returns:
        One slot per worker, GPUs filled round-robin so that with ``per_gpu > 1`` the first
        workers spread over all GPUs: ``[0, 1, 0, 1]`` for two GPUs, two workers each. With
        ``devices_per_trial`` N > 1, consecutive GPUs make gangs of N, one worker each
        (``0,1 | 2,3`` ...); GPUs that do not fill a gang are left out (``idle_gpus``). CPU
        workers split the cores among all their ranks.

    Raises:
        HpoError: fewer GPUs than one gang, or ``per_gpu`` > 1 with gangs.
    """
    if per_gpu < 1:
        raise HpoError(f"--per-gpu: expected an integer >= 1, got {per_gpu}")
    n = devices_per_trial
    if gpus and n > 1:
        if per_gpu > 1:
            raise HpoError(
                f"--per-gpu {per_gpu}: each trial has {n} GPUs to itself "
                f"(resources.devices_per_trial: {n}); use --per-gpu 1"
            )
        if len(gpus) < n:
            raise HpoError(
                f"--gpus: {len(gpus)} GPU(s) cannot hold a trial on {n} "
                f"(resources.devices_per_trial: {n}); give at least {n}"
            )
        return [Slot(i, ",".join(gpus[i * n : (i + 1) * n])) for i in range(len(gpus) // n)]
    if gpus:
        return [Slot(i, gpus[i % len(gpus)]) for i in range(len(gpus) * per_gpu)]
    count = workers if workers is not None else 1
    if count < 1:
        raise HpoError(f"--workers: expected an integer >= 1, got {count}")
    threads = max(1, (cpus or os.cpu_count() or 1) // (count * n))
    return [Slot(i, threads=threads) for i in range(count)]


def idle_gpus(gpus: Sequence[str] | None, slots: Sequence[Slot]) -> list[str]:
    """The GPUs of ``gpus`` that no slot uses (the remainder of the gangs)."""
    used = {g for s in slots if s.gpu is not None for g in s.gpu.split(",")}
    return [g for g in gpus or () if g not in used]
