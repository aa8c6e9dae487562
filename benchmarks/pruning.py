"""Pruning efficiency on the real offline tasks: the same study (sampler seed, trials) with
the median, hyperband and promotion (pause and resume) pruners and with none; epochs consumed,
wall time, best val loss. The promotion pruner runs twice: as hpo runs it (its TPE sampler
learns from each configuration judged where it stopped, ``hpo.search.judging.JudgingSampler``)
and as ``promotion-plain``, its TPE learning from the raw trials.

All three studies validate ``EVALS_PER_EPOCH`` times per epoch (report steps in fractions of
an epoch), so that a pruner can stop a hopeless trial before it has seen a whole epoch; the
epochs consumed are counted in data seen (last report step / evals per epoch).

Every arm runs over ``SEEDS`` sampler seeds (smoke: ``SMOKE_SEEDS``), interleaved (seed 0:
none, median, hyperband, promotion; seed 1: ...); a pruner's ratios are taken per seed against the study
without pruning of the same seed, and the table shows their median with the min-max spread.
``$HPO_BENCH_PRUNING_SEEDS`` (e.g. ``0,1,2,3,4,5``) replaces the seeds;
``$HPO_BENCH_PRUNING_ARMS`` (e.g. ``promotion``, or ``none`` alone) and
``$HPO_BENCH_PRUNING_TASKS`` (e.g. ``vader_minilm``) run only those pruners (and none, their
baseline) and tasks.

The promotion pruner is also *replayed* on the learning curves of the studies without pruning
(``replay``), at first rungs of a quarter, half and whole epoch: the same configurations,
so what it measures is the ranking at the rungs alone, apart from the sampler. The curves are
kept in ``<workdir>/pruning/pruning-curves-<task>.json``.

One seed of the full run took 25 minutes on 2 CPU cores (both tasks, three arms, before the
promotion arm): five seeds of four arms take about two and a half hours; vader_minilm's study
without pruning takes about 13 minutes a seed.

Each study runs in this process through ``hpo.run.worker.run_worker`` (one worker) with the
built-in job, one after the other on fresh SQLite files; each loads its data once. Tasks: every spec in
``search_spaces/`` that the benchmark knows (digits; vader_minilm where the spec exists).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import replace
from pathlib import Path

from benchmarks.databases import fresh_database
from benchmarks.studies import ROOT
from benchmarks.table import Row, fmt, judged, median
from hpo.results.numbers import savings

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
    # quarter epoch, 3/4, 2 1/4) and resumes what ranks high later (hpo.search.schedulers.promotion). Its
    # min_resource, one evaluation in epochs, is set from the run's evals_per_epoch.
    "promotion": {"name": "promotion", "reduction_factor": 3},
    # The same, its TPE sampler learning from the raw trials (a paused trial as a pruned
    # one), not from each configuration judged where it stopped (hpo.search.judging.JudgingSampler).
    "promotion-plain": {"name": "promotion", "reduction_factor": 3},
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
    # "none" alone: the baseline studies and the replays on their curves.
    pruners = {k: v for k, v in _chosen("HPO_BENCH_PRUNING_ARMS",
                                         {"none": {}, **PRUNERS}).items() if k != "none"}
    # $HPO_BENCH_PRUNING_FINISH: these arms' configurations, each trained to its end after
    # the study (what its proposals were worth, apart from the pruner's ranking).
    finish = _chosen("HPO_BENCH_PRUNING_FINISH", pruners) if os.environ.get(
        "HPO_BENCH_PRUNING_FINISH") else {}
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
        kept = _baseline(task_name, budget, seeds, spec.task.evals_per_epoch, n_trials)
        first_rung = float(os.environ.get("HPO_BENCH_PRUNING_FIRST_RUNG") or
                           1 / spec.task.evals_per_epoch)
        for seed in seeds:
            seeded = replace(spec, sampler=ComponentSpec(
                spec.sampler.name, {**spec.sampler.options, "seed": seed}))
            for pruner, options in {"none": {"name": "none"}, **pruners}.items():
                if pruner == "none" and kept:
                    runs["none"].append(kept[seed])
                    continue
                say(f"pruning: {task_name}: seed {seed}: {pruner}, {budget}")
                if options["name"] == "promotion":  # the first rung, by default one evaluation
                    options = {**options, "min_resource": first_rung}
                runs[pruner].append(_study(seeded, options, workdir,
                                           plain_tpe=pruner == "promotion-plain"))
                if pruner in finish:
                    say(f"pruning: {task_name}: seed {seed}: {pruner}'s unfinished "
                        f"configurations, trained to their end")
                    runs[pruner][-1]["finished"] = finished(
                        runs[pruner][-1]["configurations"], seeded, workdir,
                        spec.task.evals_per_epoch)
            # Kept seed by seed: the replays can be run again on what a cut-off run left, and
            # the baselines reused ($HPO_BENCH_PRUNING_BASELINE).
            done = runs["none"]
            (workdir / f"pruning-curves-{task_name}.json").write_text(json.dumps(
                {"evals_per_epoch": spec.task.evals_per_epoch, "budget": budget,
                 "seeds": list(seeds[:len(done)]), "none": [b["curves"] for b in done],
                 "seconds": [b["seconds"] for b in done]}))
        # Every arm's trials (params, states, curves), for what the sampler proposed.
        (workdir / f"pruning-trials-{task_name}.json").write_text(json.dumps(
            {arm: {str(seed): r.get("trials") for seed, r in zip(seeds, got)}
             for arm, got in runs.items()}))
        if finish:  # and their configurations trained to their end
            (workdir / f"pruning-finished-{task_name}.json").write_text(json.dumps(
                {arm: {str(seed): r.get("finished") for seed, r in zip(seeds, runs[arm])}
                 for arm in finish}))
        if any(o["name"] == "promotion" for o in pruners.values()):
            budget += f", promotion's first rung {first_rung:g} epoch"
        base = runs["none"]
        rows += replay_rows(task_name, [b["curves"] for b in base], spec.task.evals_per_epoch)
        for pruner in finish:
            rows += finished_rows(f"{task_name}, {pruner} vs none", runs[pruner], base,
                                  first_rung, spec.task.evals_per_epoch)
        where = f"median (min-max) over {len(seeds)} seeds; {budget}"
        for pruner in pruners:
            got = runs[pruner]
            case = f"{task_name}, {pruner} vs none"
            epochs = [g["epochs"] / b["epochs"] for g, b in zip(got, base)]
            losses = [g["best"] / b["best"] for g, b in zip(got, base)]
            walls = [g["seconds"] / b["seconds"] for g, b in zip(got, base)
                     if b["seconds"] is not None]
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
            if walls:
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


def _baseline(task_name: str, budget: str, seeds, evals_per_epoch: int,
              n_trials: int) -> dict[int, dict]:
    """The studies without pruning of ``$HPO_BENCH_PRUNING_BASELINE`` (a
    ``pruning-curves-<task>.json`` an earlier run of the same budget kept), by seed; {} when
    unset. Their epochs and best value come from the curves; their wall time, where kept.
    Seeded studies without pruning are deterministic on CPU: rerunning them costs about 13
    minutes a seed on vader_minilm and measures nothing new."""
    path = os.environ.get("HPO_BENCH_PRUNING_BASELINE")
    if not path:
        return {}
    kept = json.loads(Path(path).read_text())
    if kept.get("budget", budget) != budget or kept["evals_per_epoch"] != evals_per_epoch \
            or any(len(curves) != n_trials for curves in kept["none"]) \
            or not set(seeds) <= set(kept["seeds"]):
        raise SystemExit(f"pruning: {path}: not the baselines of {task_name}, {budget}, "
                         f"seeds {list(seeds)}")
    seconds = kept.get("seconds") or [None] * len(kept["seeds"])
    out = {}
    for seed, curves, wall in zip(kept["seeds"], kept["none"], seconds):
        epochs = _trained(curves, evals_per_epoch)
        out[seed] = {"epochs": epochs, "completed_epochs": epochs, "pruned": 0, "seconds": wall,
                     "best": min(c["value"] for c in curves), "curves": curves}
    return out


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


def _study(spec, pruner: dict | None, workdir: Path, plain_tpe: bool = False,
           enqueue: list[dict] | None = None) -> dict:
    """Run one study of ``spec`` with ``pruner``; its epochs, best value, time, pruned.
    ``plain_tpe``: the promotion study's TPE learns from the raw trials (the arm that measures
    ``hpo.search.judging.JudgingSampler`` against what it replaced). ``enqueue``: the study runs
    exactly these configurations (its budget is their number), not the sampler's."""
    from optuna.trial import TrialState

    from hpo.search.schedulers.continuation import configurations
    from hpo.records import was_paused
    from hpo.spec import ComponentSpec
    from hpo.store.storage import open_storage
    from hpo.search.study import create_study, load_study
    from hpo.run.worker import run_worker

    if pruner is not None:
        options = dict(pruner)
        spec = replace(spec, pruner=ComponentSpec(options.pop("name"), options))
    spec = replace(spec, study=replace(
        spec.study, name=f"{spec.study.name}-{spec.pruner.name}{'-plain' if plain_tpe else ''}"
                         f"{'-enqueued' if enqueue else ''}"))
    if enqueue:
        spec = spec.with_budget(len(enqueue))
    with fresh_database("sqlite", workdir) as url:
        storage = open_storage(url)
        create_study(spec, storage)
        study, spec = load_study(spec.study.name, storage)
        if plain_tpe:
            study.sampler = getattr(study.sampler, "inner", study.sampler)
        for params in enqueue or ():
            study.enqueue_trial(params)
        start = time.perf_counter()
        report = run_worker(study, spec, worker="bench", checkpoint_dir=workdir / "checkpoints")
        seconds = time.perf_counter() - start
        trials = study.get_trials(deepcopy=False)
        storage.engine.dispose()
    every = [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
              "paused": was_paused(t),
              "curve": {str(k): v for k, v in sorted(t.intermediate_values.items())}}
             for t in trials]
    curves = [t for t in every if t["state"] == "COMPLETE"]
    # Each configuration once, its curve joined over its attempts (hpo.search.schedulers.promotion), in order.
    configs = [{"configuration": c, "params": attempt.params, "value": final,
                "curve": {str(k): v for k, v in sorted(curve.items())}}
               for c, (attempt, curve, final) in sorted(configurations(trials).items())]
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
        # Configurations that never completed (stopped, or still paused): a paused
        # configuration that a promotion completed is not one.
        "pruned": sum(c["value"] is None for c in configs),
        "curves": curves,
        "trials": every,
        "configurations": configs,
    }


def finished(configs: list[dict], spec, workdir: Path, evals_per_epoch: int) -> dict:
    """Every configuration of a pruned study (``_study``'s ``configurations``) trained to its
    end: those it did not complete run again from scratch, without pruning, in a study that
    runs exactly them (the built-in job is seeded by the task, so a configuration's curve
    does not depend on its trial). Returns the curves of all of them in the order they first
    arrived (``{"curve", "value"}``, as the studies without pruning keep them), the best
    final value among them, and ``prefix_gap``: the largest relative difference between a
    rerun curve and what the pruned study had seen of it (0 when the rerun reproduces it)."""
    todo = [c for c in configs if c["value"] is None]
    rerun = _study(spec, {"name": "none"}, workdir, enqueue=[c["params"] for c in todo]) \
        ["configurations"] if todo else []
    full = dict(zip((c["configuration"] for c in todo), rerun))  # the queue keeps the order
    curves, gap = [], 0.0
    for c in configs:
        if c["value"] is not None:
            curves.append({"curve": c["curve"], "value": c["value"]})
            continue
        got = full[c["configuration"]]
        gap = max([gap, *(abs(got["curve"][s] - v) / abs(v) for s, v in c["curve"].items())])
        curves.append({"curve": got["curve"], "value": got["value"]})
    return {"curves": curves, "best": min(c["value"] for c in curves), "prefix_gap": gap,
            "rerun": len(todo), "epochs": _trained(curves, evals_per_epoch)}


def finished_rows(case: str, got: list[dict], base: list[dict], first_rung: float,
                  evals_per_epoch: int) -> list[Row]:
    """Where a pruned arm's best val loss is lost, per seed (``finished``): in what its
    sampler proposed (the best of its own configurations trained to their end, against the
    study without pruning) or in the ranking at the rungs (its best against that best of
    its own; and the replay of the pruner on its configurations' full curves)."""
    pairs = [(g, b) for g, b in zip(got, base) if "finished" in g]
    if not pairs:
        return []
    proposals = [g["finished"]["best"] / b["best"] for g, b in pairs]
    ranking = [g["best"] / g["finished"]["best"] for g, _ in pairs]
    replayed = [replay(g["finished"]["curves"], first_rung, evals_per_epoch)["best"]
                / g["finished"]["best"] for g, _ in pairs]
    gaps = max(g["finished"]["prefix_gap"] for g, _ in pairs)
    return [
        Row("pruning", case, "best val loss of its configurations trained to their end",
            hpo=median([g["finished"]["best"] for g, _ in pairs]),
            baseline=median([b["best"] for _, b in pairs]), baseline_name="no pruning",
            ratio=median(proposals),
            note=f"ratio per seed {', '.join(fmt(r) for r in proposals)}; within "
                 f"{LOSS_GOAL} in {sum(r <= LOSS_GOAL for r in proposals)}/{len(pairs)}; "
                 f"rerun curves differ from the pruned study's by at most {gaps:.2g}"),
        Row("pruning", case, "best val loss against the best of its own configurations",
            hpo=median([g["best"] for g, _ in pairs]),
            baseline=median([g["finished"]["best"] for g, _ in pairs]),
            baseline_name="its configurations trained to their end", ratio=median(ranking),
            note=f"ratio per seed {', '.join(fmt(r) for r in ranking)}; the pruner replayed "
                 f"on their full curves: {', '.join(fmt(r) for r in replayed)}"),
    ]


REPLAY_RUNGS = (0.25, 0.5, 1.0)
"""First rungs (epochs) the replay tries on the learning curves of the study without pruning."""


def _last_step(curve: dict) -> int:
    """The last report step of a kept trial (``{"curve": {step: loss}}``)."""
    return max(int(s) for s in curve["curve"])


def _trained(curves: list[dict], evals_per_epoch: int) -> float:
    """The epochs that trials run to their last report trained."""
    return sum(_last_step(c) for c in curves) / evals_per_epoch


def replay(curves: list[dict], min_resource: float, evals_per_epoch: int,
           reduction_factor: int = 3) -> dict:
    """The promotion pruner replayed on fixed learning curves: the configurations of a study
    without pruning (``curves``, in trial order, each ``{"curve": {step: loss}, "value"}``)
    arrive one at a time to one worker, which pauses and promotes them by the pruner's own
    rule (``hpo.search.schedulers.promotion.in_top`` at its ``rung_steps``; promoted configurations first,
    then the paused rung leaders once the budget is spent). A resumed trial continues the
    same curve (hpo resumes exactly). What it measures: whether ranking at the rungs keeps
    the best of *these* configurations, apart from the sampler proposing other ones once
    it learns from paused trials.

    Returns the best value reached, the epochs trained, the best configuration's rank at
    the first rung among all of them, and ``good_set``: what TPE would learn from before each
    arrival after the first ``STARTUP``, as the mean percentile (0 the best, 1 the worst) of
    its good set (the top ``ceil(n / 10)`` of the ``n`` configurations seen, TPE's default
    split) in the true ranking by final value, for each of ``hpo.search.judging.judged_order``
    (``judged``) and Optuna's ranking of the raw trials (``optuna``: complete ones by value,
    then the paused by depth)."""
    from hpo.search.judging import judged_order
    from hpo.search.schedulers.promotion import in_top as in_top_points
    from hpo.search.schedulers.promotion import rung_steps

    def in_top(values: dict[int, float], i: int, eta: int) -> bool:
        return in_top_points({c: (v,) for c, v in values.items()}, i, eta)

    last = {i: _last_step(c) for i, c in enumerate(curves)}
    rungs = sorted(rung_steps(min_resource, reduction_factor, evals_per_epoch,
                              max(last.values()) // evals_per_epoch))
    reached: dict[int, dict[int, float]] = {r: {} for r in rungs}
    paused: dict[int, int] = {}
    done: list[float] = []
    steps = 0

    def run(i: int, start: int) -> None:
        nonlocal steps
        for r in rungs:
            if start < r < last[i]:
                reached[r][i] = curves[i]["curve"][str(r)]
                if not in_top(reached[r], i, reduction_factor):
                    steps += r - start
                    paused[i] = r
                    return
        steps += last[i] - start
        done.append(curves[i]["value"])

    def promote(finishing: bool) -> int | None:
        ready = []
        for i, r in paused.items():
            eta = min(reduction_factor, len(reached[r])) if finishing else reduction_factor
            if in_top(reached[r], i, eta):
                ready.append((-r, reached[r][i], i))
        return min(ready)[2] if ready else None

    good_set: dict[str, list[float]] = {"judged": [], "optuna": []}

    def learn(n: int) -> None:
        seen = {}
        for c in range(n):
            curve = {int(s): v for s, v in curves[c]["curve"].items()}
            if c in paused:
                curve = {s: v for s, v in curve.items() if s <= paused[c]}
            seen[c] = (curve, curves[c]["value"] if c not in paused else None)
        truth = sorted(seen, key=lambda c: curves[c]["value"])
        k = math.ceil(n / 10)
        for name, order in (("judged", judged_order(seen)), ("optuna", _optuna_order(seen))):
            good_set[name].append(sum(truth.index(c) for c in order[:k]) / k / (n - 1))

    for i in range(len(curves) + 1):
        finishing = i == len(curves)
        while (j := promote(finishing)) is not None:
            run(j, paused.pop(j))
        if not finishing:
            if i >= STARTUP:
                learn(i)
            run(i, 0)
    best = min(range(len(curves)), key=lambda i: curves[i]["value"])
    step = str(rungs[0]) if rungs else ""
    first = {i: c["curve"][step] for i, c in enumerate(curves) if step in c["curve"]}
    return {"best": min(done), "epochs": steps / evals_per_epoch,
            "best_rank": sorted(first, key=first.get).index(best) + 1 if best in first else 1,
            "good_set": {name: median(got) for name, got in good_set.items() if got}}


STARTUP = 6
"""The random startup trials of the tasks' TPE (search_spaces/*.yaml), before which it learns
nothing."""


def _optuna_order(seen: dict[int, tuple[dict[int, float], float | None]]) -> list[int]:
    """The configurations in the order Optuna's TPE splits the raw trials of one worker: the
    complete ones by value, then the paused ones deepest first, by their value there."""
    done = sorted((c for c, (_, final) in seen.items() if final is not None),
                  key=lambda c: seen[c][1])
    stopped = sorted((c for c, (_, final) in seen.items() if final is None),
                     key=lambda c: (-max(seen[c][0]), seen[c][0][max(seen[c][0])]))
    return done + stopped


def replay_rows(task_name: str, runs: list[list[dict]], evals_per_epoch: int) -> list[Row]:
    """Rows of the promotion pruner replayed on each seed's study without pruning, for each
    first rung of ``REPLAY_RUNGS`` on the ``evals_per_epoch`` grid: epochs and best value
    against the study's own."""
    rows = []
    for min_resource in REPLAY_RUNGS:
        if round(min_resource * evals_per_epoch) != min_resource * evals_per_epoch:
            continue
        got = [replay(curves, min_resource, evals_per_epoch) for curves in runs]
        base_epochs = [_trained(curves, evals_per_epoch) for curves in runs]
        base_best = [min(c["value"] for c in curves) for curves in runs]
        epochs = [g["epochs"] / b for g, b in zip(got, base_epochs)]
        losses = [g["best"] / b for g, b in zip(got, base_best)]
        case = (f"{task_name}, promotion replayed on the curves without pruning, first rung "
                f"{min_resource:g} epoch")
        ranks = ", ".join(str(g["best_rank"]) for g in got)
        rows.append(judged(Row(
            "pruning", case, "epochs trained", hpo=median([g["epochs"] for g in got]),
            baseline=median(base_epochs), baseline_name="no pruning", ratio=median(epochs),
            goal=f"<= {EPOCH_GOAL:.2f}", note=f"ratio {_spread(epochs)}"),
            lambda r: r <= EPOCH_GOAL))
        rows.append(judged(Row(
            "pruning", case, "best val loss", hpo=median([g["best"] for g in got]),
            baseline=median(base_best), baseline_name="no pruning", ratio=median(losses),
            goal=f"<= {LOSS_GOAL}",
            note=f"ratio {_spread(losses)}; within {LOSS_GOAL} in "
                 f"{sum(r <= LOSS_GOAL for r in losses)}/{len(runs)} seeds; the best "
                 f"configuration ranked {ranks} of {len(runs[0])} at the first rung"),
            lambda r: r <= LOSS_GOAL))
        judging = [g["good_set"]["judged"] for g in got if g["good_set"]]
        raw = [g["good_set"]["optuna"] for g in got if g["good_set"]]
        if judging:
            rows.append(Row(
                "pruning", case, "TPE's good set, true percentile", hpo=median(judging),
                baseline=median(raw), baseline_name="raw trials",
                ratio=median(judging) / median(raw) if median(raw) else None,
                note=f"judged {', '.join(fmt(v) for v in judging)}; raw "
                     f"{', '.join(fmt(v) for v in raw)} (per seed: the median over the "
                     f"proposals after the first {STARTUP}; 0 is the best)"))
    return rows
