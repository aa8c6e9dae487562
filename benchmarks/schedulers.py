"""hpo's schedulers against their baselines (``hpo.search.schedulers``), each over several seeds.

1. ``pbt``: population-based training against the same population trained to its end without
   it (parallel random search at the same compute). Each seed samples the population once
   (``RandomSampler(seed)`` through ``hpo.spec.suggest``) and enqueues the same configurations
   into both studies, so the arms differ by the scheduler alone: ``pruner: {name: pbt,
   interval: 1}`` against ``{name: none}``, a fixed schedule of ``epochs`` epochs, the random
   sampler with the seed (PBT's explore is seeded by it too). Metric: the study's best val loss
   (the lowest over its trials). Goal: PBT at or below the baseline in at least 4 of 5 seeds.

2. ``promotion`` on a study of two objectives, ``[val_loss, trainable_params]`` (the task's
   ``freeze`` / ``freeze_k`` are searched, so the second varies; it is exact and free, see
   ``## Several objectives`` in RESULTS.md), against no pruning: same spec and TPE sampler
   seed. Metric: the hypervolume of the complete trials' front, each objective scaled per
   seed to [0, 1] between the best and the worst value seen over both arms of the seed, with
   the reference point at 1.1 on both (the hypervolume is divided by 1.21, so 1 is the
   utopia); and the epochs trained. Goal: promotion's hypervolume >= 0.98 of no pruning's with
   at most 1/3 of its epochs, medians of the per-seed ratios.

Epochs trained are data seen, counted per attempt: each trial's last report step minus the
step it resumed from (``paused_at``; 0 for a fresh trial), over ``evals_per_epoch``. A PBT
member that exploits another goes on from the other's step, so both arms of measurement 1
train ``population x epochs`` epochs.

Seeds are interleaved (seed 0: pbt's none, pbt, promotion's none, promotion; seed 1: ...),
so a run cut short has every arm for the seeds it reached. ``$HPO_BENCH_SCHEDULERS_SEEDS``
(e.g. ``0,1``) replaces the seeds; ``$HPO_BENCH_SCHEDULERS_MEASURE`` (``pbt`` or
``promotion``) runs one measurement alone. Every study runs in this process through
``hpo.run.worker.run_worker`` (one worker) with the built-in job on a fresh SQLite file, as
``benchmarks.pruning`` does; the raw trials of every study are kept in
``<workdir>/schedulers-runs.json`` and the per-seed tables in ``<workdir>/schedulers.md``.

The full run's budget is smaller than vader_minilm's own spec to fit about an hour on 2 CPU
cores (``PBT_TASK``, ``MO_TASK``: ``max_samples``, ``val_subset``); the smoke run does both
measurements on a few hundred digits in seconds.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

from benchmarks.databases import fresh_database
from benchmarks.studies import ROOT
from benchmarks.table import Row, fmt, median

SEEDS = (0, 1, 2, 3, 4)
SMOKE_SEEDS = (0,)
PBT_SEEDS_GOAL = 0.8
"""PBT's best val loss at or below the baseline's in at least this share of seeds (4 of 5)."""
HV_GOAL = 0.98
EPOCH_GOAL = 1 / 3
REFERENCE = 1.1
"""The hypervolume's reference point on each objective scaled to [0, 1] (best, worst seen)."""

# Each: the task spec, what replaces its task options, its search space's entries, budget.
# One seed's pilot (2026-12-07, max_samples 800, OMP_NUM_THREADS=1): a trial of 6 epochs without
# PBT took ~20 s (8 of them 164 s), but a PBT attempt of one epoch ~12 s (the first generation,
# 8 attempts, 94 s: each pause saves MiniLM's model and AdamW state, each resume rebuilds and
# restores them). At 8 or 6 epochs the PBT arm alone would take ~12 or ~9 minutes a seed, so 4.
PBT_TASK = {
    "spec": "vader_minilm",
    "task": {"max_samples": 800},
    "space": {"epochs": 4},
    "population": 8,
    "pruner": {"name": "pbt", "interval": 1},
}
PBT_SMOKE = {
    "spec": "digits",
    "task": {"max_samples": 200, "test_fraction": None},
    "space": {"epochs": 2},
    "population": 4,
    "pruner": {"name": "pbt", "interval": 1},
}
MO_TASK = {
    "spec": "vader_minilm",
    "task": {"max_samples": 800, "evals_per_epoch": 4, "val_subset": 100},
    "space": {},  # its own: epochs 1-4, freeze none / first_k, freeze_k 1-4
    "n_trials": 20,
    # The first rung at one evaluation (a quarter epoch), as benchmarks.pruning's promotion.
    "pruner": {"name": "promotion", "min_resource": 0.25, "reduction_factor": 3},
}
MO_SMOKE = {
    "spec": "digits",
    "task": {"max_samples": 200, "test_fraction": None, "evals_per_epoch": 2},
    "space": {"epochs": {"type": "int", "low": 1, "high": 2},
              "freeze": {"type": "categorical", "choices": ["none", "head_only"]}},
    "n_trials": 6,
    "pruner": {"name": "promotion", "min_resource": 0.5, "reduction_factor": 3},
}
OBJECTIVES = ["val_loss", "trainable_params"]


def run(smoke: bool, workdir: Path, say) -> list[Row]:
    pbt_setup, mo_setup = (PBT_SMOKE, MO_SMOKE) if smoke else (PBT_TASK, MO_TASK)
    seeds = _seeds(smoke)
    measure = _measure()
    runs: dict[str, list[dict]] = {"pbt-none": [], "pbt": [], "mo-none": [], "mo-promotion": []}
    for seed in seeds:
        if "pbt" in measure:
            pbt_spec = _spec(pbt_setup, seed, sampler="random",
                             n_trials=pbt_setup["population"], name="pbt")
            population = sample(pbt_spec, pbt_setup["population"], seed)
            for arm, pruner in (("pbt-none", {"name": "none"}), ("pbt", pbt_setup["pruner"])):
                say(f"schedulers: seed {seed}: {arm}, {_describe(pbt_setup)}")
                runs[arm].append(study(_with_pruner(pbt_spec, pruner, arm), workdir,
                                       enqueue=population))
                _keep(workdir, seeds, runs)
        if "promotion" in measure:
            mo_spec = _spec(mo_setup, seed, sampler=None, n_trials=mo_setup["n_trials"],
                            name="mo", objectives=OBJECTIVES)
            for arm, pruner in (("mo-none", {"name": "none"}),
                                ("mo-promotion", mo_setup["pruner"])):
                say(f"schedulers: seed {seed}: {arm}, {_describe(mo_setup)}")
                runs[arm].append(study(_with_pruner(mo_spec, pruner, arm), workdir))
                _keep(workdir, seeds, runs)
    (workdir / "schedulers.md").write_text(section(seeds, runs, pbt_setup, mo_setup))
    return ((pbt_rows(seeds, runs, pbt_setup) if runs["pbt"] else [])
            + (mo_rows(seeds, runs, mo_setup) if runs["mo-promotion"] else []))


MEASUREMENTS = ("pbt", "promotion")


def _measure() -> tuple[str, ...]:
    names = tuple(n for n in os.environ.get("HPO_BENCH_SCHEDULERS_MEASURE", "").split(",") if n)
    unknown = [n for n in names if n not in MEASUREMENTS]
    if unknown:
        raise SystemExit(f"schedulers: $HPO_BENCH_SCHEDULERS_MEASURE: unknown "
                         f"{', '.join(unknown)}; expected some of {', '.join(MEASUREMENTS)}")
    return names or MEASUREMENTS


def _seeds(smoke: bool) -> tuple[int, ...]:
    text = os.environ.get("HPO_BENCH_SCHEDULERS_SEEDS", "")
    if text:
        return tuple(int(x) for x in text.split(","))
    return SMOKE_SEEDS if smoke else SEEDS


def _describe(setup: dict) -> str:
    n = setup.get("population") or setup["n_trials"]
    return ", ".join([f"{setup['spec']}, {n} trials",
                      *(f"{k} {v}" for k, v in {**setup["space"], **setup["task"]}.items())])


def _spec(setup: dict, seed: int, *, sampler: str | None, n_trials: int, name: str,
          objectives: list[str] | None = None):
    """The task spec of ``setup`` with its overrides, sampler seed and budget, parsed again
    (so that every check of a spec holds)."""
    from hpo.spec import load_spec, parse_spec

    raw = load_spec(ROOT / "search_spaces" / f"{setup['spec']}.yaml").to_dict()
    raw["study"] = {"name": f"{setup['spec']}-{name}-{seed}",
                    **({"objectives": objectives} if objectives else {})}
    for key, value in setup["task"].items():
        if value is None:
            raw["task"].pop(key, None)
        else:
            raw["task"][key] = value
    raw["search_space"].update(setup["space"])
    raw["sampler"] = {**({"name": sampler} if sampler else raw["sampler"]), "seed": seed}
    raw["budget"] = {"n_trials": n_trials}
    raw["pruner"] = {"name": "none"}
    return parse_spec(raw, source=f"<schedulers {name}>")


def _with_pruner(spec, pruner: dict, arm: str):
    from hpo.spec import parse_spec

    raw = spec.to_dict()
    raw["pruner"] = dict(pruner)
    raw["study"]["name"] = f"{raw['study']['name']}-{arm}"
    return parse_spec(raw, source=f"<schedulers {arm}>")


def sample(spec, n: int, seed: int) -> list[dict]:
    """``n`` configurations of ``spec``'s search space drawn by ``RandomSampler(seed)``."""
    import optuna

    from hpo.spec import suggest

    drawn = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    configurations = []
    for _ in range(n):
        trial = drawn.ask()
        suggest(trial, spec)
        configurations.append(dict(trial.params))
    return configurations


def study(spec, workdir: Path, enqueue: list[dict] = ()) -> dict:
    """Run one study of ``spec`` with one in-process worker (``enqueue``: these configurations
    first, in order); its trials as plain data, its wall time and what it trained."""
    from hpo.store.storage import open_storage
    from hpo.search.study import create_study, load_study
    from hpo.run.worker import run_worker

    checkpoints = workdir / "checkpoints" / spec.study.name
    with fresh_database("sqlite", workdir) as url:
        storage = open_storage(url)
        create_study(spec, storage)
        loaded, spec = load_study(spec.study.name, storage)
        for params in enqueue:
            loaded.enqueue_trial(params)
        start = time.perf_counter()
        report = run_worker(loaded, spec, worker="bench", checkpoint_dir=checkpoints)
        seconds = time.perf_counter() - start
        trials = [_plain(t) for t in loaded.get_trials(deepcopy=False)]
        storage.engine.dispose()
    shutil.rmtree(checkpoints, ignore_errors=True)  # MiniLM's are ~250 MB each
    if report.stopped_because != "budget":
        raise RuntimeError(f"schedulers: {spec.study.name}: the worker stopped "
                           f"({report.stopped_because}): {report.last_failure}")
    return {"study": spec.study.name, "seconds": round(seconds, 1),
            "evals_per_epoch": spec.task.evals_per_epoch, "trials": trials,
            "epochs": epochs_trained(trials, spec.task.evals_per_epoch)}


KEPT_ATTRS = ("prune_reason", "fail_reason", "resumed_from", "paused_at", "paused_from",
              "pbt_lineage", "trainable_params", "epochs_trained")


def _plain(t) -> dict:
    return {"number": t.number, "state": t.state.name, "values": t.values, "params": t.params,
            "attrs": {k: t.user_attrs[k] for k in KEPT_ATTRS if k in t.user_attrs},
            "curve": {str(k): v for k, v in sorted(t.intermediate_values.items())}}


def epochs_trained(trials: list[dict], evals_per_epoch: int) -> float:
    """Data seen by the trials that ran: each one's last report step minus the step it
    resumed from, in epochs (a queued continuation that never ran trained nothing)."""
    steps = 0
    for t in trials:
        if t["state"] == "WAITING" or not t["curve"]:
            continue
        steps += max(int(s) for s in t["curve"]) - int(t["attrs"].get("paused_at", 0))
    return steps / evals_per_epoch


def best_loss(run: dict) -> float:
    """The lowest val loss over the study's complete trials."""
    return min(t["values"][0] for t in run["trials"] if t["state"] == "COMPLETE")


def front_points(run: dict) -> list[tuple[float, ...]]:
    """The complete trials' objective vectors."""
    return [tuple(t["values"]) for t in run["trials"] if t["state"] == "COMPLETE"]


def hypervolumes(*arms: list[tuple[float, ...]]) -> list[float]:
    """Each arm's 2-objective hypervolume (both minimized), the objectives scaled to [0, 1]
    between the best and the worst value seen over all ``arms``, the reference point at
    ``REFERENCE`` on each, divided by the reference box's area (1 is the utopia)."""
    seen = [p for arm in arms for p in arm]
    lows = [min(p[k] for p in seen) for k in range(2)]
    highs = [max(p[k] for p in seen) for k in range(2)]

    def scaled(p):
        return tuple((p[k] - lows[k]) / (highs[k] - lows[k]) if highs[k] > lows[k] else 0.0
                     for k in range(2))

    return [hypervolume([scaled(p) for p in arm], (REFERENCE, REFERENCE))
            / REFERENCE ** 2 for arm in arms]


def hypervolume(points: list[tuple[float, float]], reference: tuple[float, float]) -> float:
    """The area that ``points`` dominate below ``reference`` (two objectives, minimized)."""
    area, floor = 0.0, reference[1]
    for x, y in sorted(p for p in points if p[0] < reference[0] and p[1] < reference[1]):
        if y < floor:  # a point of the front: the strip from it to the reference's x
            area += (reference[0] - x) * (floor - y)
            floor = y
    return area


def _keep(workdir: Path, seeds, runs: dict) -> None:
    (workdir / "schedulers-runs.json").write_text(json.dumps(
        {"seeds": list(seeds), "runs": runs}, indent=None, default=str))


def _spread(values: list[float]) -> str:
    return f"{fmt(median(values))} ({fmt(min(values))}-{fmt(max(values))})"


def _pbt_numbers(runs: dict) -> dict:
    pbt, none = runs["pbt"], runs["pbt-none"]
    return {"pbt": [best_loss(r) for r in pbt], "none": [best_loss(r) for r in none],
            "pbt_epochs": [r["epochs"] for r in pbt], "none_epochs": [r["epochs"] for r in none],
            "pbt_s": [r["seconds"] for r in pbt], "none_s": [r["seconds"] for r in none],
            "exploits": [sum(t["attrs"].get("prune_reason") == "exploited"
                             for t in r["trials"]) for r in pbt]}


def _mo_numbers(runs: dict) -> dict:
    promo, none = runs["mo-promotion"], runs["mo-none"]
    hvs = [hypervolumes(front_points(p), front_points(n)) for p, n in zip(promo, none)]
    return {"promo_hv": [h[0] for h in hvs], "none_hv": [h[1] for h in hvs],
            "promo_epochs": [r["epochs"] for r in promo],
            "none_epochs": [r["epochs"] for r in none],
            "promo_s": [r["seconds"] for r in promo], "none_s": [r["seconds"] for r in none],
            "promo_best": [best_loss(r) for r in promo], "none_best": [best_loss(r) for r in none],
            "completed": [sum(t["state"] == "COMPLETE" for t in r["trials"]) for r in promo]}


def pbt_rows(seeds, runs: dict, setup: dict) -> list[Row]:
    n = len(seeds)
    got = _pbt_numbers(runs)
    ratios = [p / b for p, b in zip(got["pbt"], got["none"])]
    wins = sum(p <= b for p, b in zip(got["pbt"], got["none"]))
    needed = math.ceil(PBT_SEEDS_GOAL * n)
    case = f"{setup['spec']}, pbt vs the same {setup['population']} configurations without it"
    where = f"{n} seed(s); {_describe(setup)}; pruner {setup['pruner']}"
    return [
        Row("schedulers", case, "best val loss", hpo=median(got["pbt"]),
            baseline=median(got["none"]), baseline_name="no PBT", ratio=median(ratios),
            goal=f"at or below in >= {needed}/{n} seeds", met=wins >= needed,
            note=f"at or below in {wins}/{n}; ratio {_spread(ratios)}; per seed pbt "
                 f"{', '.join(fmt(v) for v in got['pbt'])}, none "
                 f"{', '.join(fmt(v) for v in got['none'])}; {where}"),
        Row("schedulers", case, "epochs trained", hpo=median(got["pbt_epochs"]),
            baseline=median(got["none_epochs"]), baseline_name="no PBT",
            ratio=median([p / b for p, b in zip(got["pbt_epochs"], got["none_epochs"])]),
            note=f"exploits per seed {', '.join(map(str, got['exploits']))}"),
        Row("schedulers", case, "wall s", hpo=median(got["pbt_s"]),
            baseline=median(got["none_s"]), baseline_name="no PBT",
            ratio=median([p / b for p, b in zip(got["pbt_s"], got["none_s"])]),
            note=f"ratio {_spread([p / b for p, b in zip(got['pbt_s'], got['none_s'])])}; "
                 "a shared machine: noisy"),
    ]


def mo_rows(seeds, runs: dict, setup: dict) -> list[Row]:
    n = len(seeds)
    got = _mo_numbers(runs)
    hv = [p / b for p, b in zip(got["promo_hv"], got["none_hv"])]
    epochs = [p / b for p, b in zip(got["promo_epochs"], got["none_epochs"])]
    walls = [p / b for p, b in zip(got["promo_s"], got["none_s"])]
    case = f"{setup['spec']}, promotion vs none, objectives {', '.join(OBJECTIVES)}"
    where = f"median of {n} seed(s); {_describe(setup)}; pruner {setup['pruner']}"
    hv_met, epochs_met = median(hv) >= HV_GOAL, median(epochs) <= EPOCH_GOAL
    return [
        Row("schedulers", case, "hypervolume", hpo=median(got["promo_hv"]),
            baseline=median(got["none_hv"]), baseline_name="no pruning", ratio=median(hv),
            goal=f">= {HV_GOAL}", met=hv_met,
            note=f"ratio {_spread(hv)}, >= {HV_GOAL} in {sum(r >= HV_GOAL for r in hv)}/{n}; "
                 f"scaled per seed to the best and worst seen over both arms, reference "
                 f"{REFERENCE}; {where}"),
        Row("schedulers", case, "epochs trained", hpo=median(got["promo_epochs"]),
            baseline=median(got["none_epochs"]), baseline_name="no pruning",
            ratio=median(epochs), goal=f"<= {EPOCH_GOAL:.2f}", met=epochs_met,
            note=f"ratio {_spread(epochs)}; completed configurations "
                 f"{_spread(got['completed'])} of {setup['n_trials']}"),
        Row("schedulers", case, "wall s", hpo=median(got["promo_s"]),
            baseline=median(got["none_s"]), baseline_name="no pruning", ratio=median(walls),
            note=f"ratio {_spread(walls)}; a shared machine: noisy"),
    ]


def section(seeds, runs: dict, pbt_setup: dict, mo_setup: dict) -> str:
    """The per-seed tables of both measurements (markdown, for RESULTS.md)."""
    lines = []
    if runs["pbt"]:
        lines += _pbt_table(seeds, runs, pbt_setup) + [""]
    if runs["mo-promotion"]:
        lines += _mo_table(seeds, runs, mo_setup)
    return "\n".join(lines) + "\n"


def _pbt_table(seeds, runs: dict, pbt_setup: dict) -> list[str]:
    p = _pbt_numbers(runs)
    lines = [f"**PBT vs no PBT** ({_describe(pbt_setup)}; pruner {pbt_setup['pruner']})", "",
             "| seed | best val loss, pbt | no PBT | ratio | epochs, pbt | no PBT | exploits "
             "| wall s, pbt | no PBT |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for i, seed in enumerate(seeds[:len(runs["pbt"])]):
        lines.append(f"| {seed} | {p['pbt'][i]:.4f} | {p['none'][i]:.4f} | "
                     f"{p['pbt'][i] / p['none'][i]:.3f} | {fmt(p['pbt_epochs'][i])} | "
                     f"{fmt(p['none_epochs'][i])} | {p['exploits'][i]} | {p['pbt_s'][i]:.0f} | "
                     f"{p['none_s'][i]:.0f} |")
    ratios = [a / b for a, b in zip(p["pbt"], p["none"])]
    lines.append(f"| median (min-max) | {_spread(p['pbt'])} | {_spread(p['none'])} | "
                 f"{_spread(ratios)} | {fmt(median(p['pbt_epochs']))} | "
                 f"{fmt(median(p['none_epochs']))} | {fmt(median(p['exploits']))} | "
                 f"{_spread(p['pbt_s'])} | {_spread(p['none_s'])} |")
    return lines


def _mo_table(seeds, runs: dict, mo_setup: dict) -> list[str]:
    m = _mo_numbers(runs)
    lines = [f"**Promotion vs no pruning, objectives {', '.join(OBJECTIVES)}** "
                  f"({_describe(mo_setup)}; pruner {mo_setup['pruner']})", "",
              "| seed | hypervolume, promotion | none | ratio | epochs, promotion | none | "
              "ratio | best val loss, promotion | none | completed | wall s, promotion | "
              "none |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for i, seed in enumerate(seeds[:len(runs["mo-promotion"])]):
        lines.append(
            f"| {seed} | {m['promo_hv'][i]:.4f} | {m['none_hv'][i]:.4f} | "
            f"{m['promo_hv'][i] / m['none_hv'][i]:.3f} | {fmt(m['promo_epochs'][i])} | "
            f"{fmt(m['none_epochs'][i])} | {m['promo_epochs'][i] / m['none_epochs'][i]:.3f} | "
            f"{m['promo_best'][i]:.4f} | {m['none_best'][i]:.4f} | {m['completed'][i]} | "
            f"{m['promo_s'][i]:.0f} | {m['none_s'][i]:.0f} |")
    hv = [a / b for a, b in zip(m["promo_hv"], m["none_hv"])]
    ep = [a / b for a, b in zip(m["promo_epochs"], m["none_epochs"])]
    lines.append(
        f"| median (min-max) | {_spread(m['promo_hv'])} | {_spread(m['none_hv'])} | "
        f"{_spread(hv)} | {_spread(m['promo_epochs'])} | {_spread(m['none_epochs'])} | "
        f"{_spread(ep)} | {_spread(m['promo_best'])} | {_spread(m['none_best'])} | "
        f"{_spread(m['completed'])} | {_spread(m['promo_s'])} | {_spread(m['none_s'])} |")
    return lines
