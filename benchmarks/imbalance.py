"""Imbalanced digits: the study that optimizes macro-F1 against the one that optimizes the
validation loss, judged on the test split (issue #29).

    python -m benchmarks.imbalance [--seeds 0,1,2,3,4] [--smoke] [--out benchmarks/RESULTS.md]

The task is ``search_spaces/digits_imbalanced.yaml`` (digits with the 3s, 5s and 8s thinned
to a tenth of the examples the trials see; the ``test_fraction`` hold-out is taken before the
thinning, so the test split keeps 35 to 37 of every class). For each seed two studies run
with the same search space (the ``imbalance`` remedy among it), the same TPE seed and the
same budget, one worker each (so a seed gives the same trials in both up to where they differ
in what they chase): ``val_f1`` (macro, maximized: the spec's objective) and ``val_loss``
(minimized). The spec searches ``imbalance``, so every trial's validation loss is weighted by
balanced class weights (``hpo.job.loss``): the loss arm is not blind to the rare classes, it
only weighs them differently. Each study's best trial is then retrained on its train + val
examples (``hpo retrain``, its ``best_epoch``) and tested once; the table compares the test
macro-F1 and the mean test recall of the thinned classes (the minority classes), per seed and
their medians, with the paired difference (F1 arm minus loss arm).

The budget is smaller than the shipped spec's, to fit 2 shared CPU cores in about 20 minutes:
``N_TRIALS`` trials a study of 2 to 4 epochs, 5 of them TPE's random start. ``--smoke`` runs
one seed of 2 one-epoch trials on a subsample, to show that it runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.studies import ROOT, environment, run_hpo

SPEC = ROOT / "search_spaces" / "digits_imbalanced.yaml"
N_TRIALS = 10
ARMS = {"f1": ("val_f1", "maximize"), "loss": ("val_loss", "minimize")}
TITLE = "## Imbalanced digits: optimizing macro-F1 vs the validation loss (issue #29)"


def arm_spec(arm: str, seed: int, smoke: bool) -> dict:
    """The shipped imbalanced spec with the arm's objective, the seed and the budget."""
    spec = yaml.safe_load(SPEC.read_text())
    metric, direction = ARMS[arm]
    spec["study"] = {"name": f"imbalance-{arm}-{seed}", "metric": metric, "direction": direction}
    spec["sampler"] = {"name": "tpe", "seed": seed, "n_startup_trials": 5}
    spec["budget"] = {"n_trials": 2 if smoke else N_TRIALS}
    spec["search_space"]["epochs"] = 1 if smoke else {"type": "int", "low": 2, "high": 4}
    if smoke:
        spec["task"]["max_samples"] = 300
    return spec


def minority(spec: dict) -> list[str]:
    """The thinned classes' names."""
    return [str(c) for c in spec["task"]["thin_classes"]]


def run_arm(arm: str, seed: int, smoke: bool, workdir: Path) -> dict:
    """One study and the retrain of its best trial; its numbers."""
    import optuna

    spec = arm_spec(arm, seed, smoke)
    name = spec["study"]["name"]
    folder = workdir / name
    folder.mkdir(parents=True)
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    url = f"sqlite:///{folder / 'hpo.db'}"
    env = environment()
    started = time.perf_counter()
    run_hpo(["run", "spec.yaml", "--storage", url, "--workers", "1"], cwd=folder, env=env,
            log=folder / "run.log")
    study_seconds = time.perf_counter() - started
    run_hpo(["retrain", name, "--storage", url, "--out", "retrain"], cwd=folder, env=env,
            log=folder / "retrain.log")
    record = json.loads((folder / "retrain" / "retrain.json").read_text())
    best = optuna.load_study(study_name=name, storage=url).best_trial
    test, per = record["test"], record["test"]["per_class"]
    rare = [per["classes"].index(c) for c in minority(spec)]
    return {
        "arm": arm,
        "seed": seed,
        "best": best.number,
        "imbalance": best.params.get("imbalance"),
        "val_f1": best.user_attrs["best_metrics"]["val_f1"],
        "test_f1": test["f1"],
        "test_accuracy": test["accuracy"],
        "minority_recall": statistics.fmean(per["recall"][i] for i in rare),
        "minority_recalls": [per["recall"][i] for i in rare],
        "seconds": round(time.perf_counter() - started, 1),
        "study_seconds": round(study_seconds, 1),
    }


def table(results: list[dict], spec: dict) -> str:
    """The per-seed rows, then the medians of each arm and of the paired difference."""
    rare = ", ".join(minority(spec))
    lines = [
        f"| seed | objective | best trial (remedy) | val macro-F1 | test macro-F1 | "
        f"test recall of {rare} (mean) | test accuracy | seconds |",
        "|---:|---|---|---:|---:|---|---:|---:|",
    ]
    for r in results:
        recalls = " / ".join(f"{x:.3f}" for x in r["minority_recalls"])
        lines.append(
            f"| {r['seed']} | {ARMS[r['arm']][0]} | #{r['best']} ({r['imbalance']}) | "
            f"{r['val_f1']:.4f} | {r['test_f1']:.4f} | {recalls} ({r['minority_recall']:.3f}) "
            f"| {r['test_accuracy']:.4f} | {r['seconds']:.0f} |"
        )
    by = {arm: [r for r in results if r["arm"] == arm] for arm in ARMS}
    lines += ["", "| objective | median test macro-F1 (min-max) | median minority recall "
              "(min-max) | median val macro-F1 |", "|---|---|---|---:|"]
    for arm, rows in by.items():
        f1s, recalls = [r["test_f1"] for r in rows], [r["minority_recall"] for r in rows]
        lines.append(
            f"| {ARMS[arm][0]} | {statistics.median(f1s):.4f} ({min(f1s):.4f}-{max(f1s):.4f}) | "
            f"{statistics.median(recalls):.3f} ({min(recalls):.3f}-{max(recalls):.3f}) | "
            f"{statistics.median(r['val_f1'] for r in rows):.4f} |"
        )
    pairs = list(zip(by["f1"], by["loss"]))
    d_f1 = [a["test_f1"] - b["test_f1"] for a, b in pairs]
    d_rec = [a["minority_recall"] - b["minority_recall"] for a, b in pairs]
    wins = sum(d > 0 for d in d_f1), sum(d < 0 for d in d_f1)
    lines.append(
        f"| difference (val_f1 - val_loss), paired by seed | median {statistics.median(d_f1):+.4f} "
        f"({min(d_f1):+.4f} to {max(d_f1):+.4f}; higher in {wins[0]}, lower in {wins[1]} of "
        f"{len(pairs)}) | median {statistics.median(d_rec):+.3f} ({min(d_rec):+.3f} to "
        f"{max(d_rec):+.3f}) | |"
    )
    return "\n".join(lines)


def write_section(out: Path, text: str) -> None:
    """Put ``text`` (starting with ``TITLE``) into ``out``: in place of an earlier one, else
    at the end."""
    old = out.read_text() if out.exists() else ""
    if TITLE in old:
        head, rest = old.split(TITLE, 1)
        tail = rest[rest.find("\n## ") + 1:] if "\n## " in rest else ""
        new = head + text + ("\n" + tail if tail else "")
    else:
        new = old.rstrip("\n") + "\n\n" + text
    out.write_text(new)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4", help="TPE seeds, comma-separated")
    parser.add_argument("--smoke", action="store_true", help="one seed, 2 one-epoch trials")
    parser.add_argument("--workdir", type=Path, help="keep the studies here (default: a temp dir)")
    parser.add_argument("--out", type=Path, help="write the section into this Markdown file")
    args = parser.parse_args(argv)
    seeds = [0] if args.smoke else [int(s) for s in args.seeds.split(",")]
    results = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hpo-imbalance-") as tmp:
        workdir = args.workdir or Path(tmp)
        for seed in seeds:
            for arm in ARMS:  # the arms alternate: a load that changes weighs on both
                r = run_arm(arm, seed, args.smoke, workdir)
                results.append(r)
                print(f"seed {seed} {ARMS[arm][0]}: best #{r['best']} ({r['imbalance']}), test "
                      f"macro-F1 {r['test_f1']:.4f}, minority recall {r['minority_recall']:.3f}, "
                      f"{r['seconds']:.0f} s", flush=True)
    spec = arm_spec("f1", seeds[0], args.smoke)
    text = (
        f"{TITLE}, {time.strftime('%Y-%m-%d')}\n\n`python -m benchmarks.imbalance --seeds "
        f"{','.join(map(str, seeds))}`{' --smoke' if args.smoke else ''}: "
        f"`search_spaces/digits_imbalanced.yaml`, {spec['budget']['n_trials']} trials a study, "
        f"one worker, each study's best trial retrained and tested on the 359 held-out digits; "
        f"{time.perf_counter() - started:.0f} s in all.\n\n" + table(results, spec) + "\n"
    )
    print(text)
    if args.out:
        write_section(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
