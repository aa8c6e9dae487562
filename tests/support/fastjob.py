"""A fast stand-in for a fine-tuning job (a ``custom`` task), for tests of the worker machinery.

It behaves like the real job where the worker can tell: an epoch loop that reports a validation
loss per epoch, checkpoints after every epoch (atomically), resumes from a checkpoint, and
obeys the pruner. Each epoch sleeps ``$FASTJOB_EPOCH_SECONDS`` and appends
``trial epoch pid`` to ``$FASTJOB_LOG``, so a test can see which epochs ran where. With
``$FASTJOB_DONE_FILE`` set, a job that trained its last epoch writes that file and waits
``$FASTJOB_DONE_SECONDS`` before it returns (a test acts between the training and the tell).
With ``$FASTJOB_SEED_NOISE`` set, every loss moves by that much times a fixed draw of the
trial's seed (its ``seed`` user attr, a repeat's; else 0): the noise that repeats measure.
"""

from __future__ import annotations

import json
import math
import os
import random
import time

import optuna


def epochs_job(trial, params, context) -> float:
    epoch_seconds = float(os.environ.get("FASTJOB_EPOCH_SECONDS", "0"))
    first, best = 1, math.inf
    if context.resume_path is not None:
        state = json.loads(context.resume_path.read_text())
        first, best = state["epoch"] + 1, state["best"]
        trial.set_user_attr("resumed_from_epoch", state["epoch"])
    noise = float(os.environ.get("FASTJOB_SEED_NOISE", "0"))
    shift = noise * random.Random(trial.user_attrs.get("seed", 0)).gauss(0, 1) if noise else 0
    for epoch in range(first, params["epochs"] + 1):
        time.sleep(epoch_seconds)
        loss = (math.log10(params["lr"]) + 2.5) ** 2 + 1.0 / epoch + shift
        trial.report(loss, epoch)
        best = min(best, loss)
        if context.checkpoint_path is not None:
            path = context.checkpoint_path
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"epoch": epoch, "best": best}))
            os.replace(tmp, path)
            trial.set_user_attr("checkpoint", str(path))
        log = os.environ.get("FASTJOB_LOG")
        if log:
            with open(log, "a") as f:
                f.write(f"{trial.number} {epoch} {os.getpid()}\n")
        if trial.should_prune():
            trial.set_user_attr("prune_reason", "pruned")
            raise optuna.TrialPruned()
    trial.set_user_attr("epochs_run", params["epochs"])
    done = os.environ.get("FASTJOB_DONE_FILE")
    if done:
        with open(done, "a") as f:
            f.write(f"{trial.number}\n")
        time.sleep(float(os.environ.get("FASTJOB_DONE_SECONDS", "0")))
    return best
