"""Fused trials (issue #30): K configurations trained as one batched model
(``hpo.job.fused.run_fused``) against the same K trained one after another
(``hpo.job.run_job`` each), on the CPU.

Two models on scikit-learn's digits, each member with its own learning rate, weight decay
and optimizer (AdamW and SGD with momentum, alternating), batch 32, one epoch with one
evaluation:

- ``squeezenet``: squeezenet1_1 at 24 px, every layer trained (no batch norm: it fuses); the
  batched forward is a grouped convolution;
- ``resnet18-head``: resnet18 at 16 px with ``freeze: head_only`` (its batch norms frozen in
  eval mode: it fuses); the frozen backbone is shared, not stacked, so vmap runs it once for
  every member, and only the heads are batched.

For K = 1, 2 and 4, the two arms train the same K configurations; arms and K are interleaved
within each repeat (the order rotated from one repeat to the next), so that other work on
the machine falls on all of them alike, in one process with its data loaded (a warm worker),
one thread (``torch.set_num_threads``; ``--threads`` to change it). Measured: the CPU time in
the optimizer steps alone (``fused_step`` for a group, ``train_step`` for one trial: forward,
backward, update), and around the whole of each arm (model builds, training, evaluations)
wall and CPU time; each as ms per member-step (the time over K x the steps of one member), and
configurations per hour (K over the whole arm's wall time). The table gives medians and (min-max) spreads, and the fused / sequential
ratios of wall and CPU time repeat by repeat. On a shared machine the CPU time is the
steadier of the two (the wall time counts the waits for a core).

    .venv/bin/python -m benchmarks.fused                         # prints the table
    .venv/bin/python -m benchmarks.fused --out benchmarks/RESULTS.md   # and writes its section
    .venv/bin/python -m benchmarks.fused --smoke                 # tiny, in seconds (tests)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

SECTION = "Fused trials on the CPU (issue #30)"
MODELS = {
    "squeezenet": dict(model="squeezenet1_1", image_size=24, freeze="none"),
    "resnet18-head": dict(model="resnet18", image_size=16, freeze="head_only"),
}
SIZES = (1, 2, 4)
ARMS = ("fused", "sequential")
BATCH = 32


def members(k: int, freeze: str) -> list[dict]:
    """K configurations: lr and weight decay spread, AdamW and SGD with momentum by turns."""
    from hpo.spec import HYPERPARAMETERS

    out = []
    for i in range(k):
        params = {name: hp.default for name, hp in HYPERPARAMETERS.items()}
        params.update(batch_size=BATCH, epochs=1, dropout=0.0, freeze=freeze,
                      lr=10 ** (-3.5 + 0.5 * i), weight_decay=10.0 ** (-4 + i % 3),
                      optimizer="adamw" if i % 2 == 0 else "sgd", momentum=0.9)
        out.append(params)
    return out


def task_of(name: str, samples: int):
    from hpo.spec import TaskSpec

    m = MODELS[name]
    return TaskSpec(kind="image_classification", model=m["model"], dataset={"name": "digits"},
                    image_size=m["image_size"], max_samples=samples)


def measure(name: str, k: int, arm: str, samples: int, cache: dict) -> dict:
    """One arm's K configurations: wall and CPU seconds, steps of one member, val losses."""
    from hpo.job import JobContext, run_job
    from hpo.job.fused import Member, run_fused
    from hpo.job.trial import FixedTrial

    task = task_of(name, samples)
    configs = members(k, MODELS[name]["freeze"])
    STEPS.update(cpu=0.0, wall=0.0)
    cpu, wall = time.process_time(), time.perf_counter()
    if arm == "fused":
        group = [Member(FixedTrial(i), p, JobContext(cache=cache)) for i, p in enumerate(configs)]
        run_fused(group, task)
        trials = [m.trial for m in group]
    else:
        trials = []
        for i, params in enumerate(configs):
            trial = FixedTrial(i)
            run_job(trial, task, params, JobContext(cache=cache))
            trials.append(trial)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    steps = int(samples * 0.8) // BATCH  # the train split's whole batches
    return {"model": name, "k": k, "arm": arm, "wall_s": wall, "cpu_s": cpu,
            "step_wall_s": STEPS["wall"], "step_cpu_s": STEPS["cpu"],
            "member_steps": k * steps, "val_losses": [t.reports[1] for t in trials]}


STEPS = {"cpu": 0.0, "wall": 0.0}
"""Time in the optimizer steps alone (forward, backward, update) of the arm measured now."""


def time_the_steps() -> None:
    """Count the time of every optimizer step: ``hpo.job.fused.fused_step`` (all members of a
    group at once) and ``hpo.job.step.train_step`` as the fit loop calls it (one trial)."""
    import hpo.job.fit as fit_module
    import hpo.job.fused as fused_module

    def timed(real):
        def call(*args, **kwargs):
            cpu, wall = time.process_time(), time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                STEPS["cpu"] += time.process_time() - cpu
                STEPS["wall"] += time.perf_counter() - wall
        return call

    fit_module.train_step = timed(fit_module.train_step)
    fused_module.fused_step = timed(fused_module.fused_step)


def run(repeats: int, samples: int, sizes: tuple[int, ...], models: list[str],
        say=print) -> list[dict]:
    cache: dict = {}
    time_the_steps()
    for name in models:  # a warm-up: data loaded, code paths run once
        measure(name, 1, "fused", samples, cache)
        measure(name, 1, "sequential", samples, cache)
    cells = [(name, k, arm) for name in models for k in sizes for arm in ARMS]
    runs = []
    for r in range(repeats):
        shift = r % len(cells)
        for name, k, arm in cells[shift:] + cells[:shift]:
            result = measure(name, k, arm, samples, cache)
            result["repeat"] = r
            say(f"fused: repeat {r + 1}/{repeats}, {name} K={k} {arm}: "
                f"{result['wall_s']:.2f} s wall, {result['cpu_s']:.2f} s CPU")
            runs.append(result)
    return runs


def _spread(values: list[float], digits: int = 1) -> str:
    return (f"{statistics.median(values):.{digits}f} "
            f"({min(values):.{digits}f}-{max(values):.{digits}f})")


def table(runs: list[dict]) -> str:
    lines = ["| model | K | arm | optimizer step, CPU ms a member-step | whole run, wall ms "
             "a member-step | whole run, CPU ms a member-step | configurations an hour | "
             "fused / sequential, by repeat: step CPU | whole run wall | whole run CPU | "
             "largest val loss difference, fused - sequential |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in dict.fromkeys(x["model"] for x in runs):
        for k in sorted({x["k"] for x in runs if x["model"] == name}):
            cell = {arm: [x for x in runs if (x["model"], x["k"], x["arm"]) == (name, k, arm)]
                    for arm in ARMS}
            ratios = {key: [f[key] / s[key] for f, s in zip(cell["fused"], cell["sequential"])]
                      for key in ("step_cpu_s", "wall_s", "cpu_s")}
            gaps = [abs(a - b) for f, s in zip(cell["fused"], cell["sequential"])
                    for a, b in zip(f["val_losses"], s["val_losses"])]
            for arm in ARMS:
                mine = cell[arm]
                lines.append(
                    f"| {name} | {k} | {arm} | "
                    f"{_spread([1e3 * x['step_cpu_s'] / x['member_steps'] for x in mine])} | "
                    f"{_spread([1e3 * x['wall_s'] / x['member_steps'] for x in mine])} | "
                    f"{_spread([1e3 * x['cpu_s'] / x['member_steps'] for x in mine])} | "
                    f"{_spread([3600 * k / x['wall_s'] for x in mine], 0)} | "
                    + (f"{_spread(ratios['step_cpu_s'], 2)} | {_spread(ratios['wall_s'], 2)} "
                       f"| {_spread(ratios['cpu_s'], 2)} | {max(gaps):.1e} |" if arm == "fused"
                       else " | | | |"))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the section into this results file")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=480,
                        help="digits examples (80%% train, 20%% val)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--smoke", action="store_true",
                        help="one repeat, K = 1 and 2, squeezenet on 96 examples")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    sizes, models = SIZES, args.models.split(",")
    if args.smoke:
        args.repeats, args.samples, sizes, models = 1, 96, (1, 2), ["squeezenet"]
    started = time.monotonic()
    runs = run(args.repeats, args.samples, sizes, models)
    text = table(runs)
    print(text)
    if args.out:
        from benchmarks.table import revision, write_section

        load = os.getloadavg()
        write_section(args.out, SECTION, f"## {SECTION}\n\n`python -m benchmarks.fused` at "
                      f"{revision()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
                      f"{args.repeats} repeats interleaved, {args.samples} digits examples, "
                      f"one epoch, batch {BATCH}, {args.threads} thread(s), "
                      f"{time.monotonic() - started:.0f} s in all; load average "
                      f"{load[0]:.1f} at the end.\n\n{text}\n")


if __name__ == "__main__":
    main()
