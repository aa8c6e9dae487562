"""A trial on several devices: training samples/s of one trial on 2 ranks
(``resources.devices_per_trial: 2``) against the same trial on 1, same global batch, data and
seed.

Both run hpo's job as a worker does (``hpo.run.worker.run_on_devices``): the 1-rank trial in this
process, the 2-rank trial as a gang of rank processes (gloo on the CPU, NCCL on 2 GPUs).
Samples/s is the job's ``samples_per_second`` attr: the global batch's examples per second of
training steps (evaluation and the ranks' start-up left out; the trial's wall time, start-up
included, is in the note). The arms take turns, the first round is a discarded warm-up, and
the table shows medians.

On a CPU machine the ranks share the same cores, so the row only informs: it shows what the
gang's coordination costs there (its gradient all-reduce per step), not a speed-up. With
CUDA and at least 2 GPUs the same comparison runs on ``cuda:0`` against ``cuda:0,1``.
"""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.table import Row, median

BATCH = 64
TASK = dict(kind="image_classification", model="resnet18", dataset={"name": "digits"},
            image_size=16)


def run(smoke: bool, workdir: Path, say) -> list[Row]:
    import torch

    cuda = torch.cuda.is_available()
    gpu_case, cpu_case = "2 GPU ranks (NCCL) vs 1", "2 CPU ranks (gloo) vs 1"
    if cuda and torch.cuda.device_count() < 2:
        return [Row("ranks", gpu_case, "samples/s", skipped="one GPU here: a 2-rank trial "
                                                            "needs 2")]
    row = _measure(smoke, say)
    if cuda:
        row.case = gpu_case
        return [row]
    row.case, row.note = cpu_case, row.note + "; the ranks share this machine's cores: informative"
    return [row, Row("ranks", gpu_case, "samples/s", skipped="no CUDA device here")]


def _measure(smoke: bool, say) -> Row:
    from hpo.spec import TaskSpec

    task = TaskSpec(**TASK, max_samples=200 if smoke else None)
    params = _params(epochs=1 if smoke else 2)
    rounds = 1 if smoke else 4
    speeds: dict[int, list[float]] = {1: [], 2: []}
    walls: dict[int, list[float]] = {1: [], 2: []}
    for i in range(rounds):
        for devices in (1, 2):
            say(f"ranks: {devices} rank(s), round {i + 1}/{rounds}")
            speed, wall = _trial(task, params, devices)
            if i > 0 or smoke:
                speeds[devices].append(speed)
                walls[devices].append(wall)
    spread = (f"{min(speeds[2]):.0f}-{max(speeds[2]):.0f} vs "
              f"{min(speeds[1]):.0f}-{max(speeds[1]):.0f}")
    note = (f"{len(speeds[1])} round(s)" + ("" if smoke else " after a warm-up")
            + f", resnet18 digits, global batch {BATCH}, {params['epochs']} epoch(s); range "
            f"{spread}; trial wall time incl. start-up {median(walls[2]):.1f} s vs "
            f"{median(walls[1]):.1f} s")
    return Row("ranks", "", "samples/s", hpo=median(speeds[2]), baseline=median(speeds[1]),
               baseline_name="1 rank", ratio=median(speeds[2]) / median(speeds[1]), note=note)


def _params(epochs: int) -> dict:
    from hpo.spec import HYPERPARAMETERS

    params = {name: hp.default for name, hp in HYPERPARAMETERS.items()}
    params.update(batch_size=BATCH, lr=1e-3, epochs=epochs, optimizer="adamw", dropout=0.0,
                  weight_decay=0.0)
    return params


def _trial(task, params: dict, devices: int) -> tuple[float, float]:
    from hpo.job import FixedTrial, JobContext
    from hpo.run.worker import run_on_devices

    trial = FixedTrial()
    start = time.perf_counter()
    run_on_devices(trial, task, params, JobContext(), devices)
    return float(trial.attrs["samples_per_second"]), time.perf_counter() - start
