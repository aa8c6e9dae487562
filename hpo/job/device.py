"""Where the job runs: the device, mixed precision, and the memory it used and gave back."""

from __future__ import annotations

import contextlib
import gc
import resource
import sys
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Device:
    """The device of this process and how to compute on it."""

    device: torch.device
    name: str
    """For the ``device`` user attr: ``cpu`` or ``cuda:<GPU name>``."""
    amp_dtype: torch.dtype | None
    """Autocast dtype, or ``None`` for full precision."""

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self):
        """A fresh autocast context (or a no-op one without mixed precision)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


def pick_device(amp: bool | None) -> Device:
    """CUDA if this process sees a GPU (the launcher pins one per process), else the CPU.

    Args:
        amp: the task's ``amp``: ``None`` or ``True`` turns mixed precision on with CUDA
            (bf16 where supported, else fp16 with a loss scaler); ``False`` turns it off.
    """
    if not torch.cuda.is_available():
        return Device(torch.device("cpu"), "cpu", None)
    device = torch.device("cuda")
    dtype = None
    if amp is not False:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return Device(device, f"cuda:{torch.cuda.get_device_name(device)}", dtype)


def reset_peak_memory(dev: Device) -> None:
    if dev.cuda:
        torch.cuda.reset_peak_memory_stats(dev.device)


def peak_memory_mb(dev: Device) -> float:
    """CUDA's peak allocated memory since ``reset_peak_memory``, or the process's peak RSS."""
    if dev.cuda:
        return torch.cuda.max_memory_allocated(dev.device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes vs KiB


def free_memory(dev: Device) -> None:
    """Collect garbage and hand cached CUDA blocks back to the driver."""
    gc.collect()
    if dev.cuda:
        torch.cuda.empty_cache()
