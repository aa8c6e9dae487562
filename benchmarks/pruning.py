"""Pruning efficiency on the real offline tasks: the same study (sampler seed, trials) with
the median, hyperband and promotion (pause and resume) pruners and with none; epochs consumed,
wall time, best val loss.

All three studies validate ``EVALS_PER_EPOCH`` times per epoch (report steps in fractions of
an epoch), so that a pruner can stop a hopeless trial before it has seen a whole epoch; the
epochs consumed are counted in data seen (last report step / evals per epoch).

Every arm runs over ``SEEDS`` sampler seeds (smoke: ``SMOKE_SEEDS``), interleaved (seed 0:
none, median, hyperband, promotion; seed 1: ...); a pruner's ratios are taken per seed against the study
without pruning of the same seed, and the table shows their median with the min-max spread.
``$HPO_BENCH_PRUNING_SEEDS`` (e.g. ``0,1,2,3,4,5``) replaces the seeds;
``$HPO_BENCH_PRUNING_ARMS`` (e.g. ``promotion``) and ``$HPO_BENCH_PRUNING_TASKS`` (e.g.
``vader_minilm``) run only those pruners (and none, their baseline) and tasks. One seed of the
full run took 25 minutes on 2 CPU cores (both tasks, three arms, before the promotion arm):
five seeds of four arms take about two and a half hours.

Each study runs in this process through ``hpo.worker.run_worker`` (one worker) with the
built-in job, one after the other on fresh SQLite files; each loads its data once. Tasks: every spec in
``search_spaces/`` that the benchmark knows (digits; vader_minilm where the spec exists).
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

from benchmarks.databases import fresh_database
from benchmarks.studies import ROOT
from benchmarks.table import Row, fmt, judged, median
from hpo.numbers import savings

EPOCH_GOAL = 1 / 3
LOSS_GOAL = 1.02
EVALS_PER_EPOCH = 4
"""Validation passes per epoch in all three studies (the baseline pays for them too): a
pruner can only stop a trial where it reports, so without them no pruned trial costs less
than a whole epoch."""
PRUNERS = {
    # Steps are quarters of an epoch: warm-up / min_resource of 2 and 1 steps.
    "median": {"name": "median", "n_startup_trials": 5, "n_warmup_steps": 2},
    "hyperband": {"name": "hyperband", "min_resource": 1, "reduction_factor": 3},
    # Pauses at the first evaluation, then x3 (steps 1, 3, 9, ...: hyperband's rungs; a
    # quarter epoch, 3/4, 2 1/4) and resumes what ranks high later (hpo.promotion). Its
    # min_resource, one evaluation in epochs, is set from the run's evals_per_epoch.
    "promotion": {"name": "promotion", "reduction_factor": 3},
}
TASKS = {
    # spec file: (trials, task overrides) of the full run; the smoke run shrinks both further
    # All of digits: at max_samples 240 (192 training images, one optimizer step an epoch
    # at batch 128) almost no trial learned (val loss ~2.2-2.3, chance is 2.30).
    "digits": (30, {"evals_per_epoch": EVALS_PER_EPOCH}),
    "vader_minilm": (30, {"evals_per_epoch": EVALS_PER_EPOCH}),  # its own max_samples (1200)
}
SMOKE = (1, {"max_samples": 100, "evals_per_epoch": 2})
SEEDS = (0, 1, 2, 3, 4)
"""Sampler seeds of the full run: each arm runs once per seed (issue #16: 5 or more)."""
SMOKE_SEEDS = (0,)


def run(smoke: bool, workdir: Path, say) -> list[Row]:
    from hpo.spec import ComponentSpec, load_spec

    rows = []
    pruners = _chosen("HPO_BENCH_PRUNING_ARMS", PRUNERS)
    for task_name in _chosen("HPO_BENCH_PRUNING_TASKS", TASKS):
        n_trials, overrides = TASKS[task_name]
        path = ROOT / "search_spaces" / f"{task_name}.yaml"
        if not path.is_file():
            rows.append(Row("pruning", task_name, "epochs", goal=f"<= {EPOCH_GOAL:.2f}",
                            skipped=f"no {path.relative_to(ROOT)} yet"))
            continue
        if smoke and task_name != "digits":
            continue  # one task shows the code path; loading MiniLM alone takes seconds
        spec = load_spec(path)
        if smoke:
            n_trials, overrides = SMOKE
            spec = _smoke_spec(spec)
        spec = replace(spec, task=replace(spec.task, **overrides)).with_budget(n_trials)
        seeds = _seeds(smoke)
        budget = ", ".join([f"{n_trials} trials", _describe_space(spec),
                            *(f"{k}={v}" for k, v in overrides.items())])
        runs: dict[str, list[dict]] = {"none": [], **{p: [] for p in pruners}}
        for seed in seeds:
            seeded = replace(spec, sampler=ComponentSpec(
                spec.sampler.name, {**spec.sampler.options, "seed": seed}))
            for pruner, options in {"none": {"name": "none"}, **pruners}.items():
                say(f"pruning: {task_name}: seed {seed}: {pruner}, {budget}")
                if pruner == "promotion":  # the first rung at the first evaluation
                    options = {**options, "min_resource": 1 / spec.task.evals_per_epoch}
                runs[pruner].append(_study(seeded, options, workdir))
        base = runs["none"]
        where = f"median (min-max) over {len(seeds)} seeds; {budget}"
        for pruner in pruners:
            got = runs[pruner]
            case = f"{task_name}, {pruner} vs none"
            epochs = [g["epochs"] / b["epochs"] for g, b in zip(got, base)]
            losses = [g["best"] / b["best"] for g, b in zip(got, base)]
            walls = [g["seconds"] / b["seconds"] for g, b in zip(got, base)]
            pruned = [g["pruned"] for g in got]
            rows.append(judged(Row(
                "pruning", case, "epochs", hpo=median([g["epochs"] for g in got]),
                baseline=median([b["epochs"] for b in base]), baseline_name="no pruning",
                ratio=median(epochs), goal=f"<= {EPOCH_GOAL:.2f}",
                note=f"ratio {_spread(epochs)}; pruned {_spread(pruned)} of {n_trials}; the "
                     f"completed trials used {_spread([g['completed_epochs'] for g in got])} "
                     f"of the epochs; {where}"),
                lambda r: r <= EPOCH_GOAL))
            rows.append(judged(Row(
                "pruning", case, "best val loss", hpo=median([g["best"] for g in got]),
                baseline=median([b["best"] for b in base]), baseline_name="no pruning",
                ratio=median(losses), goal=f"<= {LOSS_GOAL}",
                note=f"ratio {_spread(losses)}; within {LOSS_GOAL} in "
                     f"{sum(r <= LOSS_GOAL for r in losses)}/{len(seeds)} seeds"),
                lambda r: r <= LOSS_GOAL))
            rows.append(Row(
                "pruning", case, "wall s", hpo=median([g["seconds"] for g in got]),
                baseline=median([b["seconds"] for b in base]), baseline_name="no pruning",
                ratio=median(walls), note=f"ratio {_spread(walls)}"))
    return rows


def _chosen(env: str, table: dict) -> dict:
    """The entries of ``table`` that ``$env`` names (comma-separated), else all of it."""
    names = [n for n in os.environ.get(env, "").split(",") if n]
    unknown = [n for n in names if n not in table]
    if unknown:
        raise SystemExit(f"pruning: {env}: unknown {', '.join(unknown)}; expected some of "
                         + ", ".join(table))
    return {n: table[n] for n in (names or table)}


def _seeds(smoke: bool) -> tuple[int, ...]:
    text = os.environ.get("HPO_BENCH_PRUNING_SEEDS", "")
    if text:
        return tuple(int(x) for x in text.split(","))
    return SMOKE_SEEDS if smoke else SEEDS


def _spread(values: list[float]) -> str:
    """``median (min-max)``."""
    return f"{fmt(median(values))} ({fmt(min(values))}-{fmt(max(values))})"


def _smoke_spec(spec):
    """The spec shrunk to seconds: 1-2 epochs."""
    from hpo.spec import ParamSpec

    space = tuple(replace(p, low=1, high=2) if p.name == "epochs" and p.searched
                  else ParamSpec("epochs", "fixed", value=1) if p.name == "epochs" else p
                  for p in spec.search_space)
    return replace(spec, search_space=space)


def _describe_space(spec) -> str:
    epochs = spec.param("epochs")
    if epochs is None:
        return "epochs default"
    if not epochs.searched:
        return f"epochs {epochs.value}"
    return f"epochs {epochs.low}-{epochs.high}"


def _study(spec, pruner: dict | None, workdir: Path) -> dict:
    """Run one study of ``spec`` with ``pruner``; its epochs, best value, time, pruned."""
    from optuna.trial import TrialState

    from hpo.spec import ComponentSpec
    from hpo.storage import open_storage
    from hpo.study import create_study, load_study
    from hpo.worker import run_worker

    if pruner is not None:
        options = dict(pruner)
        spec = replace(spec, pruner=ComponentSpec(options.pop("name"), options))
    spec = replace(spec, study=replace(spec.study, name=f"{spec.study.name}-{spec.pruner.name}"))
    with fresh_database("sqlite", workdir) as url:
        storage = open_storage(url)
        create_study(spec, storage)
        study, spec = load_study(spec.study.name, storage)
        start = time.perf_counter()
        report = run_worker(study, spec, worker="bench", checkpoint_dir=workdir / "checkpoints")
        seconds = time.perf_counter() - start
        trials = study.get_trials(deepcopy=False)
        storage.engine.dispose()
    if report.stopped_because != "budget":
        raise RuntimeError(f"pruning: the worker stopped ({report.stopped_because}): "
                           f"{report.last_failure}")
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]

    def epochs(trials) -> float:
        # Epochs of training data consumed (the trials' epochs_trained; a configuration the
        # promotion pruner paused and resumed once, as the report counts it).
        return savings(list(trials))["epochs_run"]

    return {
        "epochs": epochs(finished),
        # What pruning cannot save: the trials good enough to survive run all their epochs.
        "completed_epochs": epochs(t for t in finished if t.state == TrialState.COMPLETE),
        "best": min(t.value for t in finished if t.state == TrialState.COMPLETE),
        "seconds": seconds,
        "pruned": sum(t.state == TrialState.PRUNED for t in finished),
    }

