"""Slots: which worker process gets which GPU(s), and the environment that pins it there.

``assign_slots`` is the one place that maps GPUs to workers (pure, unit-tested); a ``Slot``'s
``env`` sets ``CUDA_VISIBLE_DEVICES``, ``HPO_WORKER_INDEX``, the CPU thread counts (the
worker's share of the cores) and OpenMP's short spin before the worker imports torch. GPUs
are found without importing torch (``visible_gpus``), and a ``--gpus`` list is checked against
the devices that exist (``check_gpus``, ``gpu_count``: NVIDIA's management library, asked
through ``ctypes`` in a few milliseconds). ``--per-gpu auto``'s arithmetic is ``hpo.run.memory``'s.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import re
import subprocess
from collections.abc import Iterator, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpo.errors import HpoError

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
"""The math libraries' thread counts a worker gets (torch reads both)."""
WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
"""OpenMP's wait settings: a user who sets either keeps both as they are."""
SPIN_COUNT = "3000"
"""OpenMP threads (torch's libgomp) that wait spin this many rounds, a few microseconds, then
sleep. OpenMP's default spins about a hundred times longer: on cores shared with other
workers (or other people's work) a spinning thread burns the time slice the thread it waits
for needs, and a digits training beside a CPU hog took 2x the wall time of this one. Sleeping
at once (``OMP_WAIT_POLICY=PASSIVE``) costs an idle machine 4-10% in every step's wake-ups,
which the short spin keeps (``benchmarks/threads.py``, "Threads on a shared machine")."""


def wait_briefly(env: MutableMapping[str, str]) -> None:
    """Give ``env`` (a child's environment, or ``os.environ`` before torch loads) the short
    OpenMP spin (``SPIN_COUNT``), unless it sets a wait policy or spin count of its own."""
    if not any(var in env for var in WAIT_VARS):
        env["GOMP_SPINCOUNT"] = SPIN_COUNT


@dataclass(frozen=True)
class Slot:
    """One worker process: its index (sampler seed offset) and the GPU(s) it sees, if any."""

    index: int
    gpu: str | None = None
    """A GPU, or a trial's gang of them (``"0,1"``): ``CUDA_VISIBLE_DEVICES``."""
    threads: int | None = None
    """CPU threads of the worker's math libraries: its share of this machine's cores."""

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
        wait_briefly(env)  # unless the user chose a policy
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


def gpu_count() -> int | None:
    """The NVIDIA GPUs of this machine (all of them, as ``nvidia-smi`` numbers them), asked
    of the driver's management library (NVML) without importing torch; ``None`` where there is
    no NVIDIA driver. Where ``CUDA_VISIBLE_DEVICES`` is unset, this is what
    ``torch.cuda.device_count()`` says in a worker."""
    with _nvml() as nvml:
        count = ctypes.c_uint(0)
        if nvml is None or nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
            return None
        return count.value


@contextlib.contextmanager
def _nvml() -> Iterator[Any]:
    """The NVIDIA driver's management library, initialized (shut down after); None where
    there is no driver."""
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        yield None
        return
    if nvml.nvmlInit_v2() != 0:
        yield None
        return
    try:
        yield nvml
    finally:
        nvml.nvmlShutdown()


def torch_has_cuda() -> bool | None:
    """Whether the torch that workers import is built with CUDA, from its files (importing it
    takes seconds); ``None`` where torch is not installed."""
    found = importlib.util.find_spec("torch")
    if found is None or found.origin is None:
        return None
    lib = Path(found.origin).parent / "lib"
    return any(lib.glob("libc10_cuda.*")) or any(lib.glob("c10_cuda.*"))


def check_gpus(
    gpus: Sequence[str],
    count: int | None,
    cuda_torch: bool | None = True,
    visible: str | None = None,
) -> None:
    """Refuse a ``--gpus`` list that names a device this machine does not have.

    Args:
        gpus: from ``parse_gpus``: indices or UUIDs.
        count: ``gpu_count()``: the machine's NVIDIA GPUs, ``None`` without a driver.
        cuda_torch: ``torch_has_cuda()``: a CPU-only torch cannot use any GPU.
        visible: ``$CUDA_VISIBLE_DEVICES`` of the launcher, if set: the indices given must be
            among it (a worker is pinned to the index as given, so one outside it would run
            on a GPU this process was not given).

    Raises:
        HpoError: one line: which GPU does not exist, and what there is.
    """
    listed = ",".join(gpus)
    if not count:
        why = "no NVIDIA driver" if count is None else "the driver lists no GPU"
        raise HpoError(
            f"--gpus {listed}: this machine has no CUDA GPU ({why}); "
            "use --workers N for CPU workers"
        )
    if cuda_torch is False:
        raise HpoError(
            f"--gpus {listed}: the torch installed here is built without CUDA; install a "
            "CUDA build, or use --workers N for CPU workers"
        )
    indices = [g for g in gpus if g.isdigit()]
    beyond = [g for g in indices if int(g) >= count]
    if beyond:
        have = "GPU 0" if count == 1 else f"GPUs 0-{count - 1}"
        raise HpoError(
            f"--gpus {listed}: GPU {','.join(beyond)} does not exist; this machine has "
            f"{count} ({have})"
        )
    if visible is not None:
        allowed = [v.strip() for v in visible.split(",") if v.strip()]
        outside = [g for g in gpus if g not in allowed]
        if outside:
            raise HpoError(
                f"--gpus {listed}: GPU {','.join(outside)} is not among "
                f"CUDA_VISIBLE_DEVICES={visible} (the GPUs this process was given)"
            )


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
        cpus: CPU cores to share among the workers (default: ``usable_cores()``).
        devices_per_trial: the spec's ``resources.devices_per_trial``: each worker's trials
            run on a gang of this many GPUs (or CPU processes).

    Returns:
        One slot per worker, GPUs filled round-robin so that with ``per_gpu > 1`` the first
        workers spread over all GPUs: ``[0, 1, 0, 1]`` for two GPUs, two workers each. With
        ``devices_per_trial`` N > 1, consecutive GPUs make gangs of N, one worker each
        (``0,1 | 2,3`` ...); GPUs that do not fill a gang are left out (``idle_gpus``). CPU
        workers split the cores among all their ranks; workers of one GPU each split them
        among themselves (for their data loading and CPU-side work).

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
    cores = cpus or usable_cores()
    if gpus:
        count = len(gpus) * per_gpu
        threads = max(1, cores // count)
        return [Slot(i, gpus[i % len(gpus)], threads) for i in range(count)]
    count = workers if workers is not None else 1
    if count < 1:
        raise HpoError(f"--workers: expected an integer >= 1, got {count}")
    threads = max(1, cores // (count * n))
    return [Slot(i, threads=threads) for i in range(count)]


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: a Slurm or container allotment),
    not every core of the machine."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def idle_gpus(gpus: Sequence[str] | None, slots: Sequence[Slot]) -> list[str]:
    """The GPUs of ``gpus`` that no slot uses (the remainder of the gangs)."""
    used = {g for s in slots if s.gpu is not None for g in s.gpu.split(",")}
    return [g for g in gpus or () if g not in used]


def gpu_memory_mb(gpu: str) -> float | None:
    """The total memory of GPU ``gpu`` (an index or UUID as ``--gpus`` takes it), asked of
    NVML; None where the driver cannot say."""
    with _nvml() as nvml:
        if nvml is None:
            return None
        handle = ctypes.c_void_p()
        if gpu.isdigit():
            found = nvml.nvmlDeviceGetHandleByIndex_v2(int(gpu), ctypes.byref(handle))
        else:
            found = nvml.nvmlDeviceGetHandleByUUID(gpu.encode(), ctypes.byref(handle))
        if found != 0:
            return None

        class _Memory(ctypes.Structure):
            _fields_ = [
                ("total", ctypes.c_ulonglong),
                ("free", ctypes.c_ulonglong),
                ("used", ctypes.c_ulonglong),
            ]

        memory = _Memory()
        if nvml.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(memory)) != 0:
            return None
        return memory.total / 2**20
