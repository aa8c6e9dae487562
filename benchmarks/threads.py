"""Threads on a shared machine: a CPU worker's training alone and beside a CPU hog, with the
environment the launcher gave a worker before issue #30 and the one it gives now.

A short digits training (hpo's own job: resnet18 at 16 px, the shipped digits spec's task, one
epoch of batch 64, ``run_job`` with a fixed trial) runs in a fresh process with each arm's
environment, alone and beside a hog (one busy-loop process per core, started before the
training and stopped after it). Arms, conditions and repeats are interleaved (repeat by repeat,
every condition and arm, after one warm-up run that is not counted), so that the other work
on the machine falls on all of them alike.
Each run reports its wall time from the training's start to its end, and the CPU time the
training process used (user + system): a thread that spins while it waits for the others
burns CPU a neighbour could have had, without training faster.

Arms:

- ``before``: ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` = the worker's share of the cores,
  OpenMP's default wait policy (its threads spin a while before they sleep);
- ``after``: ``hpo.run.slots.Slot.env`` as the launcher now builds it (the same thread count,
  and OpenMP's short spin, ``GOMP_SPINCOUNT=3000``: a waiting thread spins a few
  microseconds, then yields its core; until 2026-12-07 ``OMP_WAIT_POLICY=PASSIVE``, which
  yields at once).

    .venv/bin/python -m benchmarks.threads                       # prints the table
    .venv/bin/python -m benchmarks.threads --out benchmarks/RESULTS.md   # and writes its section
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SECTION = "Threads on a shared machine (issue #30)"
ROOT = Path(__file__).resolve().parents[1]


def probe(epochs: int, batches: int) -> dict:
    """The training, in this process: wall and CPU seconds of ``run_job`` on digits."""
    import resource

    import torch

    from benchmarks.throughput import _params
    from hpo.job import FixedTrial, JobContext, run_job
    from hpo.spec import TaskSpec

    task = TaskSpec(kind="image_classification", model="resnet18", dataset={"name": "digits"},
                    image_size=16, max_samples=batches * 64)
    params = _params(batch_size=64, lr=1e-3)
    params["epochs"] = epochs
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    trial = FixedTrial()
    run_job(trial, task, params, JobContext())
    wall = time.perf_counter() - start
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {"wall": wall, "cpu": cpu, "threads": torch.get_num_threads(),
            "samples_per_second": trial.attrs.get("samples_per_second")}


def arm_env(arm: str, cores: int, base: dict[str, str]) -> dict[str, str]:
    """The training process's environment in ``arm``: one worker with all ``cores``."""
    from hpo.run.slots import THREAD_VARS, WAIT_VARS, Slot

    clean = {k: v for k, v in base.items() if k not in (*THREAD_VARS, *WAIT_VARS)}
    if arm == "before":  # Slot.env before issue #30: the thread counts only
        return {**clean, **{var: str(cores) for var in THREAD_VARS}}
    return Slot(0, threads=cores).env(clean)


def _hog(cores: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]


def _run_one(arm: str, cores: int, epochs: int, batches: int) -> dict:
    env = arm_env(arm, cores, dict(os.environ))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    out = subprocess.run([sys.executable, "-m", "benchmarks.threads", "--probe",
                          "--epochs", str(epochs), "--batches", str(batches)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"the {arm} training failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(repeats: int, epochs: int, batches: int, cores: int, say=print) -> list[dict]:
    say("threads: a warm-up run (the page cache, the first import), not counted")
    _run_one("after", cores, epochs, batches)
    runs = []
    for r in range(repeats):
        for condition in ("alone", "beside a hog"):
            for arm in (("before", "after") if r % 2 == 0 else ("after", "before")):
                hog = _hog(cores) if condition != "alone" else []
                try:
                    time.sleep(0.5 if hog else 0)  # the hog is spinning before training starts
                    result = _run_one(arm, cores, epochs, batches)
                finally:
                    for p in hog:
                        p.kill()
                        p.wait()
                result.update(repeat=r, condition=condition, arm=arm)
                say(f"threads: repeat {r + 1}/{repeats}, {condition}, {arm}: "
                    f"{result['wall']:.1f} s wall, {result['cpu']:.1f} s CPU")
                runs.append(result)
    return runs


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def table(runs: list[dict]) -> str:
    lines = ["| condition | arm | wall s: median (min-max) | CPU s: median (min-max) | "
             "wall: after / before |", "|---|---|---:|---:|---:|"]
    for condition in ("alone", "beside a hog"):
        walls = {}
        for arm in ("before", "after"):
            mine = [x for x in runs if x["condition"] == condition and x["arm"] == arm]
            walls[arm] = statistics.median(x["wall"] for x in mine)
            ratio = f"{walls['after'] / walls['before']:.2f}" if arm == "after" else ""
            lines.append(f"| {condition} | {arm} | {_spread([x['wall'] for x in mine])} | "
                         f"{_spread([x['cpu'] for x in mine])} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the section into this results file")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batches", type=int, default=12, help="training batches of 64")
    parser.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(probe(args.epochs, args.batches)))
        return
    started = time.monotonic()
    runs = run(args.repeats, args.epochs, args.batches, args.cores)
    text = table(runs)
    print(text)
    if args.out:
        from benchmarks.table import revision, write_section

        load = os.getloadavg()
        write_section(args.out, SECTION, f"## {SECTION}\n\n`python -m benchmarks.threads` at "
                      f"{revision()}, {time.strftime('%Y-%m-%d')}: {args.cores} cores, "
                      f"{args.repeats} repeats interleaved, {time.monotonic() - started:.0f} s "
                      f"in all; load average {load[0]:.1f} at the end (other work was running "
                      f"on the machine).\n\n{text}\n")


if __name__ == "__main__":
    main()
