"""A recorded digits study written into a real database, for the report, dashboard and export
tests.

The trials carry what workers record: the digits spec's params with their distributions,
validation loss per epoch, the user attrs (epochs run / planned, seconds, worker, reasons,
training and validation metrics by step, the best evaluation's per class) and a checkpoint
file on disk. Two workers ran them side by side; the median pruner stopped some
early, one ran out of memory.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from conftest import ROOT
from hpo.spec import load_spec
from hpo.store.storage import open_storage
from hpo.search.study import create_study

DIGITS = ROOT / "search_spaces" / "digits.yaml"
# (state, epochs planned, epochs run, final loss): a study's worth of outcomes.
OUTCOMES = [
    ("COMPLETE", 6, 6, 0.21), ("COMPLETE", 4, 4, 0.35), ("PRUNED", 8, 2, 1.40),
    ("COMPLETE", 8, 8, 0.12), ("PRUNED", 7, 3, 0.95), ("FAIL", 5, 1, None),
    ("COMPLETE", 5, 3, 0.30), ("PRUNED", 6, 2, 2.10), ("COMPLETE", 7, 7, 0.16),
    ("RUNNING", 8, 2, None),
]


def build_sample_study(url: str, name: str, checkpoint_dir: Path, *, outcomes=OUTCOMES,
                       seed: int = 0, **task: object) -> optuna.Study:
    """Create study ``name`` from the digits spec (``task`` keys replaced) and add the
    recorded trials to it."""
    import torch

    spec = load_spec(DIGITS)
    from dataclasses import replace

    # The recorded outcomes plan up to 8 epochs, whatever the shipped spec's range is today.
    space = tuple(replace(p, low=2, high=8) if p.name == "epochs" else p
                  for p in spec.search_space)
    spec = replace(spec, study=replace(spec.study, name=name), search_space=space,
                   task=replace(spec.task, **task))
    study = create_study(spec, open_storage(url))
    rng = random.Random(seed)
    # Started a quarter of an hour ago: the running trial is running now.
    start = dt.datetime.now().replace(microsecond=0) - dt.timedelta(minutes=15)
    clock = {"w0": start, "w1": start + dt.timedelta(seconds=3)}
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    for number, (state, planned, run, final) in enumerate(outcomes):
        params = {
            "lr": math.exp(rng.uniform(math.log(1e-4), math.log(1e-1))),
            "batch_size": rng.choice([32, 64, 128]),
            "epochs": planned,
            "optimizer": rng.choice(["adam", "adamw", "sgd", "rmsprop"]),
            "dropout": rng.uniform(0.0, 0.5),
            "weight_decay": math.exp(rng.uniform(math.log(1e-6), math.log(1e-2))),
        }
        if params["optimizer"] in ("sgd", "rmsprop"):
            params["momentum"] = rng.uniform(0.5, 0.99)
        distributions = {p.name: p.distribution() for p in spec.search_space
                         if p.name in params}
        # A curve that falls from ~2.3 (chance on 10 classes) towards the trial's final loss.
        end = final if final is not None else 1.8
        curve = {e: end + (2.3 - end) * math.exp(-1.2 * (e - 1)) + rng.uniform(0, 0.02)
                 for e in range(1, run + 1)}
        seconds_per_epoch = 4.0 * 64 / params["batch_size"]
        seconds = round(seconds_per_epoch * run, 3)
        worker = "w0" if number % 2 == 0 else "w1"
        began = clock[worker]
        clock[worker] = began + dt.timedelta(seconds=seconds + 1)
        attrs = {
            "host": "node-a", "worker": f"node-a:{worker}", "device": "cpu",
            "epochs_run": run, "epochs_planned": planned, "train_seconds": seconds,
            "samples_per_second": 1437 / seconds_per_epoch, "peak_memory_mb": 812.0,
        }
        # The metrics of each evaluation: training pulls ahead of validation as it goes on.
        attrs["metrics"] = {
            str(e): {"train_loss": round(v * (1 - 0.06 * e), 6), "val_loss": round(v, 6),
                     "train_accuracy": round(min(1.0, 1 - v / 3 + 0.02 * e), 6),
                     "val_accuracy": round(1 - v / 3, 6)}
            for e, v in curve.items()
        }
        value = None
        if state == "COMPLETE":
            value = min(curve.values())
            attrs["val_accuracy"] = round(1 - value / 3, 4)
            attrs["best_epoch"] = min(curve, key=curve.get)
            attrs["best_metrics"] = {
                **attrs["metrics"][str(attrs["best_epoch"])],
                "val_precision_per_class": [round(0.8 + i / 100, 4) for i in range(10)],
                "val_recall_per_class": [round(0.9 - i / 100, 4) for i in range(10)],
                "val_f1_per_class": [round(0.85 - i / 200, 4) for i in range(10)],
                # true i: 30 - i right, one taken for i + 1 (rows of 31 - i examples)
                "val_confusion": [[30 - i if j == i else int(j == (i + 1) % 10)
                                   for j in range(10)] for i in range(10)],
            }
        elif state == "PRUNED":
            value = curve[run]
            attrs["prune_reason"] = "pruned"
        elif state == "FAIL":
            attrs["fail_reason"] = "oom"
        if state in ("COMPLETE", "PRUNED"):
            path = checkpoint_dir / f"trial-{number}.pt"
            torch.save({"trial": number, "weights": torch.full((4,), float(number))}, path)
            attrs["checkpoint"] = str(path)
        # FrozenTrial rather than create_trial: the trials keep their real start and end.
        study.add_trial(FrozenTrial(
            number=number, trial_id=number, state=TrialState[state], value=value, values=None,
            params=params, distributions=distributions, intermediate_values=curve,
            user_attrs=attrs, system_attrs={}, datetime_start=began,
            datetime_complete=None if state == "RUNNING" else clock[worker],
        ))
    return study
