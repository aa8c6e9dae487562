"""Host time per training step (issue #30): hpo's fit loop as it is against the loop as it was
before the step stopped reading the device (``--base``, a git revision), on a model whose
arithmetic is negligible, so that what is measured is what the host does around it.

The job: a linear classifier (8x8 RGB digits, 192 -> 10) trained through ``hpo.job.fit.fit``
with a fixed trial, batch 32, AdamW, one evaluation an epoch, the data as hpo's image job
gives it (scikit-learn's digits, transformed once). Each run is a fresh process that imports
hpo from its arm's tree (the base's ``hpo/`` is copied out of git into the work directory),
one thread (``OMP_NUM_THREADS=1``), and reports the time a training step takes over every
epoch after the first (a warm-up): each epoch timed around ``train_epoch``, less the
evaluations in it (data loading and the loop's own work included). On a CPU the host time is
the process's CPU time (user + system), which other work on the machine changes far less than
the wall time, reported beside it.

Arms: ``base`` (the loop at ``--base``), ``now`` (this tree), and ``floor``: the bare eager
PyTorch loop on batches gathered in advance (forward, cross-entropy, backward, fused AdamW,
``zero_grad``; no schedule, no metrics, no checks): what PyTorch itself costs a step, which no
change to hpo's loop can go below without compiling the step. Arms and repeats are
interleaved (each repeat runs every arm, in turn order rotated), so that other work on the
machine falls on all of them alike; the table gives medians and (min-max) spreads.

The goal of issue #30: ``now`` at most 1/3 of ``base``.

    .venv/bin/python -m benchmarks.step                       # prints the table
    .venv/bin/python -m benchmarks.step --out benchmarks/RESULTS.md   # and writes its section
    .venv/bin/python -m benchmarks.step --smoke               # one short run of each arm
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

SECTION = "Host time per training step (issue #30)"
ROOT = Path(__file__).resolve().parents[1]
BASE = "00d4b88"
"""The last revision before the training step stopped reading the device."""
ARMS = ("base", "now", "floor")
GOAL = 1 / 3
BATCH = 32


def probe(arm: str, epochs: int) -> dict:
    """In this process: the CPU and wall ms a training step of the epochs after the first
    (each epoch timed around ``train_epoch``, less the evaluations inside it)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    if arm == "floor":
        return _floor(epochs)
    import hpo.job.fit as fit_module
    from hpo.job.context import JobContext
    from hpo.job.image_data import image_datasets
    from hpo.job.image_source import load_images
    from hpo.job.setup import TrainingSetup
    from hpo.job.trial import FixedTrial
    from hpo.spec import HYPERPARAMETERS, TaskSpec

    task = TaskSpec(kind="image_classification", model="resnet18", dataset={"name": "digits"},
                    image_size=8)
    params = {name: hp.default for name, hp in HYPERPARAMETERS.items()}
    params.update(batch_size=BATCH, lr=1e-3, epochs=epochs, optimizer="adamw", dropout=0.0,
                  weight_decay=0.0)
    cache: dict = {}
    train, val, ready = image_datasets(task, load_images(task.dataset, cache), None, cache,
                                       params)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    setup = TrainingSetup(model=model, head=list(model.parameters()), blocks=[],
                          train_set=train, val_set=val, num_classes=10, in_memory=ready)
    spent = {"cpu": 0.0, "wall": 0.0}  # in training steps, from the second epoch on
    evaluating = {"cpu": 0.0, "wall": 0.0}

    def timed(real, into):
        def call(*args, **kwargs):
            cpu, wall = time.process_time(), time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                into["cpu"] += time.process_time() - cpu
                into["wall"] += time.perf_counter() - wall
        return call

    real_epoch = fit_module.train_epoch

    def epoch(state, trial, number):
        if number == 1:  # a warm-up
            return real_epoch(state, trial, number)
        before = dict(evaluating)
        outer = {"cpu": 0.0, "wall": 0.0}
        result = timed(real_epoch, outer)(state, trial, number)
        for k in spent:
            spent[k] += outer[k] - (evaluating[k] - before[k])
        return result

    fit_module.evaluate_and_report = timed(fit_module.evaluate_and_report, evaluating)
    fit_module.train_epoch = epoch
    trial = FixedTrial()
    fit_module.fit(trial, setup, params, task, JobContext(cache=cache))
    steps = (epochs - 1) * (len(train) // BATCH)  # type: ignore[arg-type]
    return {"cpu_ms": 1e3 * spent["cpu"] / steps, "wall_ms": 1e3 * spent["wall"] / steps,
            "val_loss": trial.reports[epochs]}


def _floor(epochs: int) -> dict:
    """The bare eager loop, on the same number of examples as hpo's digits split."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    n = 1437
    x, y = torch.randn(n, 3, 8, 8), torch.randint(0, 10, (n,))
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0, fused=True)
    steps = n // BATCH
    batches = []
    for _ in range(epochs):
        order = torch.randperm(n)
        batches.append([(x[order[k * BATCH:(k + 1) * BATCH]], y[order[k * BATCH:(k + 1) * BATCH]])
                        for k in range(steps)])
    cpu = wall = 0.0
    for epoch, epoch_batches in enumerate(batches):
        if epoch == 1:
            cpu, wall = time.process_time(), time.perf_counter()
        for inputs, labels in epoch_batches:
            loss = F.cross_entropy(model(inputs), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    count = (epochs - 1) * steps
    return {"cpu_ms": 1e3 * (time.process_time() - cpu) / count,
            "wall_ms": 1e3 * (time.perf_counter() - wall) / count}


def base_tree(base: str, workdir: Path) -> Path:
    """``hpo/`` at revision ``base``, copied out of git into ``workdir`` (once)."""
    tree = workdir / f"hpo-{base}"
    if not (tree / "hpo").is_dir():
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", base, "hpo"],
                                 capture_output=True, check=True, timeout=60).stdout
        tree.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tree, filter="data")
    return tree


def _run_one(arm: str, epochs: int, base: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = str(base if arm == "base" else ROOT)
    # The script by its path: its directory, not the tree's root, is first on sys.path, so
    # the arm's hpo is the one imported.
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--probe", arm,
                          "--epochs", str(epochs)], cwd=base.parent, env=env,
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"the {arm} run failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(repeats: int, epochs: int, base: str, workdir: Path, say=print) -> list[dict]:
    tree = base_tree(base, workdir)
    runs = []
    for r in range(repeats):
        turn = ARMS[r % len(ARMS):] + ARMS[:r % len(ARMS)]
        for arm in turn:
            result = _run_one(arm, epochs, tree)
            result.update(repeat=r, arm=arm)
            say(f"step: repeat {r + 1}/{repeats}, {arm}: {result['cpu_ms']:.3f} ms CPU, "
                f"{result['wall_ms']:.3f} ms wall a step")
            runs.append(result)
    return runs


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def table(runs: list[dict]) -> str:
    def median(arm: str, key: str) -> float:
        return statistics.median(x[key] for x in runs if x["arm"] == arm)

    lines = ["| arm | CPU ms a step: median (min-max) | / base | wall ms a step: median "
             "(min-max) | / base | val loss after the last epoch |",
             "|---|---:|---:|---:|---:|---|"]
    for arm in ARMS:
        mine = [x for x in runs if x["arm"] == arm]
        losses = sorted({f"{x['val_loss']:.6g}" for x in mine if "val_loss" in x})
        cells = []
        for key in ("cpu_ms", "wall_ms"):
            cells += [_spread([x[key] for x in mine]),
                      f"{median(arm, key) / median('base', key):.2f}"]
        lines.append(f"| {arm} | {' | '.join(cells)} | {', '.join(losses)} |")
    lines.append("")
    for arm in ("now", "floor"):
        paired = _paired(runs, arm)
        lines.append(f"- {arm} / base within each repeat (runs side by side, under the same "
                     f"load), CPU time a step: median {statistics.median(paired):.2f} "
                     f"({min(paired):.2f}-{max(paired):.2f}).")
    ratio = statistics.median(_paired(runs, "now"))
    lines.append(f"- Goal of issue #30, now / base at most {GOAL:.2f}: "
                 f"{'met' if ratio <= GOAL else 'missed'}.")
    return "\n".join(lines)


def _paired(runs: list[dict], arm: str) -> list[float]:
    """``arm``'s CPU time a step over base's, repeat by repeat."""
    by = {(x["repeat"], x["arm"]): x["cpu_ms"] for x in runs}
    repeats = sorted({x["repeat"] for x in runs})
    return [by[r, arm] / by[r, "base"] for r in repeats]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the section into this results file")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=12,
                        help="epochs a run (the first one is a warm-up, not counted)")
    parser.add_argument("--base", help=f"the git revision of the loop as it was (default "
                        f"{BASE}; with --smoke, HEAD: any checkout has it)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/hpo-bench-step"))
    parser.add_argument("--smoke", action="store_true", help="one repeat of 2 epochs an arm")
    parser.add_argument("--probe", choices=ARMS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(probe(args.probe, args.epochs)))
        return
    if args.smoke:
        args.repeats, args.epochs = 1, 2
    args.base = args.base or ("HEAD" if args.smoke else BASE)
    started = time.monotonic()
    runs = run(args.repeats, args.epochs, args.base, args.workdir)
    text = table(runs)
    print(text)
    if args.out:
        from benchmarks.table import revision, write_section

        load = os.getloadavg()
        write_section(args.out, SECTION, f"## {SECTION}\n\n`python -m benchmarks.step` at "
                      f"{revision()} against {args.base}, {time.strftime('%Y-%m-%d')}: "
                      f"{args.repeats} repeats interleaved, {args.epochs} epochs a run (the "
                      f"first not counted), one thread, {time.monotonic() - started:.0f} s in "
                      f"all; load average {load[0]:.1f} at the end.\n\n{text}\n")


if __name__ == "__main__":
    main()
