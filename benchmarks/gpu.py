"""GPU (``--gpu``; skipped without CUDA): the speedup of mixed precision and channels_last on
resnet18 in hpo's fit loop, and the fraction of wall time the GPU is busy while ``hpo run``
works through a digits study for ``$HPO_BENCH_GPU_SECONDS`` seconds (default 600).

Speedups compare training samples/s (the trials' ``samples_per_second``) of the same one-epoch
job with ``amp`` / ``channels_last`` on and off, taking turns, medians of 3 rounds after a
warm-up. Busy fraction is the mean of ``nvidia-smi``'s utilization.gpu (the share of each
sample period in which a kernel ran), sampled every 200 ms over the whole ``hpo run``.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from benchmarks import studies
from benchmarks.table import Row, judged, median

BUSY_GOAL = 0.9
VARIANTS = {"fp32": (False, False), "AMP": (True, False), "channels_last": (False, True),
            "AMP + channels_last": (True, True)}


def run(smoke: bool, workdir: Path, say) -> list[Row]:
    import torch

    if not torch.cuda.is_available():
        why = "no CUDA device here"
        return [Row("gpu", f"resnet18 {v} vs fp32", "samples/s", skipped=why)
                for v in list(VARIANTS)[1:]] + [
            Row("gpu", "busy fraction, hpo run digits", "fraction", goal=f">= {BUSY_GOAL}",
                skipped=why)]
    rows = _speedups(smoke, workdir, say)
    rows.append(_busy_fraction(smoke, workdir, say))
    return rows


def _speedups(smoke: bool, workdir: Path, say) -> list[Row]:
    from benchmarks.throughput import _params
    from hpo.job import FixedTrial, JobContext, run_job
    from hpo.job.device import pick_device
    from hpo.spec import TaskSpec

    rounds = 2 if smoke else 4
    params = _params(batch_size=256, lr=1e-3)
    params["epochs"] = 1 if smoke else 3
    cache: dict = {}
    speeds: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for i in range(rounds):
        for variant, (amp, channels_last) in VARIANTS.items():
            say(f"gpu: resnet18 {variant}, round {i + 1}/{rounds}")
            task = TaskSpec(kind="image_classification", model="resnet18",
                            dataset={"name": "digits"}, image_size=64 if smoke else 128,
                            amp=amp, channels_last=channels_last)
            trial = FixedTrial()
            run_job(trial, task, params, JobContext(cache=cache))
            if i > 0:
                speeds[variant].append(float(trial.attrs["samples_per_second"]))
    fp32 = median(speeds["fp32"])
    device = pick_device(True).name
    return [Row("gpu", f"resnet18 {variant} vs fp32", "samples/s", hpo=median(speeds[variant]),
                baseline=fp32, baseline_name="fp32", ratio=median(speeds[variant]) / fp32,
                note=f"{device}; digits at {task.image_size}px, batch 256, "
                     f"{params['epochs']} epochs, {rounds - 1} rounds after a warm-up")
            for variant in list(VARIANTS)[1:]]


def _busy_fraction(smoke: bool, workdir: Path, say) -> Row:
    seconds = 20 if smoke else int(os.environ.get("HPO_BENCH_GPU_SECONDS", "600"))
    spec = studies.ROOT / "search_spaces" / "digits.yaml"
    url = f"sqlite:///{workdir / 'gpu.db'}"
    say(f"gpu: hpo run {spec.name} for {seconds} s, sampling nvidia-smi")
    samples = workdir / "utilization.csv"
    with open(samples, "w") as out:
        smi = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu",
                                "--format=csv,noheader,nounits", "-lms", "200", "-i", "0"],
                               stdout=out, stderr=subprocess.DEVNULL)
    try:
        start = time.perf_counter()
        studies.run_hpo(["run", str(spec), "--storage", url, "--n-trials", "100000",
                         "--timeout", str(seconds), "--gpus", "0"], cwd=workdir,
                        env=studies.environment(HPO_CHECKPOINT_DIR=str(workdir / "ckpt")),
                        log=workdir / "gpu-run.log", timeout=seconds + 900)
        wall = time.perf_counter() - start
    finally:
        smi.terminate()
        smi.wait()
    values = [float(v) for v in samples.read_text().split() if v.replace(".", "").isdigit()]
    busy = sum(values) / (100 * len(values)) if values else 0.0
    return judged(Row("gpu", "busy fraction, hpo run digits", "fraction", hpo=busy,
                      ratio=busy, goal=f">= {BUSY_GOAL}",
                      note=f"{len(values)} samples over {wall:.0f} s of hpo run (timeout "
                           f"{seconds} s), {spec.name} as shipped"), lambda r: r >= BUSY_GOAL)
