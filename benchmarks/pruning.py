"""Pruning efficiency on the real offline tasks: the same study (sampler seed, trials) with
the median and hyperband pruners and with none; epochs consumed, wall time, best val loss.

All three studies validate ``EVALS_PER_EPOCH`` times per epoch (report steps in fractions of
an epoch), so that a pruner can stop a hopeless trial before it has seen a whole epoch; the
epochs consumed are counted in data seen (last report step / evals per epoch).

Each study runs in this process through ``hpo.worker.run_worker`` (one worker) with the
built-in job, one after the other on fresh SQLite files; each loads its data once. Tasks: every spec in
``search_spaces/`` that the benchmark knows (digits; vader_minilm where the spec exists).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from benchmarks.databases import fresh_database
from benchmarks.studies import ROOT
from benchmarks.table import Row, judged

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
}
TASKS = {
    # spec file: (trials, task overrides) of the full run; the smoke run shrinks both further
    # All of digits: at max_samples 240 (192 training images, one optimizer step an epoch
    # at batch 128) almost no trial learned (val loss ~2.2-2.3, chance is 2.30).
    "digits": (30, {"evals_per_epoch": EVALS_PER_EPOCH}),
    "vader_minilm": (30, {"evals_per_epoch": EVALS_PER_EPOCH}),  # its own max_samples (1200)
}
SMOKE = (1, {"max_samples": 100, "evals_per_epoch": 2})


def run(smoke: bool, workdir: Path, say) -> list[Row]:
    from hpo.spec import load_spec

    rows = []
    for task_name, (n_trials, overrides) in TASKS.items():
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
        budget = ", ".join([f"{n_trials} trials", _describe_space(spec),
                            *(f"{k}={v}" for k, v in overrides.items())])
        say(f"pruning: {task_name}: no pruning, {budget}")
        base = _study(spec, {"name": "none"}, workdir)
        for pruner, options in PRUNERS.items():
            say(f"pruning: {task_name}: {pruner}")
            got = _study(spec, options, workdir)
            case = f"{task_name}, {pruner} vs none"
            rows.append(judged(Row(
                "pruning", case, "epochs", hpo=got["epochs"], baseline=base["epochs"],
                baseline_name="no pruning", ratio=got["epochs"] / base["epochs"],
                goal=f"<= {EPOCH_GOAL:.2f}",
                note=f"{got['pruned']}/{n_trials} pruned; the {n_trials - got['pruned']} "
                     f"completed trials used {got['completed_epochs']:.1f} of the epochs; "
                     f"{budget}"),
                lambda r: r <= EPOCH_GOAL))
            rows.append(judged(Row(
                "pruning", case, "best val loss", hpo=got["best"], baseline=base["best"],
                baseline_name="no pruning", ratio=got["best"] / base["best"],
                goal=f"<= {LOSS_GOAL}"), lambda r: r <= LOSS_GOAL))
            rows.append(Row(
                "pruning", case, "wall s", hpo=got["seconds"], baseline=base["seconds"],
                baseline_name="no pruning", ratio=got["seconds"] / base["seconds"]))
    return rows


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
    evals = spec.task.evals_per_epoch

    def epochs(trials) -> float:
        # Epochs of training data consumed: a trial's last report step is in 1/evals epochs.
        return sum(max(t.intermediate_values, default=0) / evals for t in trials)

    return {
        "epochs": epochs(finished),
        # What pruning cannot save: the trials good enough to survive run all their epochs.
        "completed_epochs": epochs(t for t in finished if t.state == TrialState.COMPLETE),
        "best": min(t.value for t in finished if t.state == TrialState.COMPLETE),
        "seconds": seconds,
        "pruned": sum(t.state == TrialState.PRUNED for t in finished),
    }

