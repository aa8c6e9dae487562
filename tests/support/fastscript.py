"""``fastjob.epochs_job`` as a script task (``task: {kind: script, command: [python,
fastscript.py]}``): the same losses, epochs, checkpoints and epoch log, through
``hpo.session``. It logs the *worker's* pid (its parent's), as the custom job logs its own
process's, so the chaos runner's checks read both alike; it reports ``resumed_from_epoch``
with every report of an attempt that resumed (the best report's metrics become the trial's
attrs: the custom job's ``resumed_from_epoch`` attr).

Its seed is the trial's (``session.seed``: a repeat's own), its noise ``FASTJOB_SEED_NOISE``
x a normal draw of it, as the custom job's. A param of the spec's own, ``offset``, is added
to the loss, and with ``FASTSCRIPT_PARAMS`` each attempt appends ``{"trial": N, "params":
{...}}``, what ``session.params()`` gave it, to that file."""

from __future__ import annotations

import json
import math
import os
import random
import time

from hpo import session


def main() -> None:
    params = session.params()
    epoch_seconds = float(os.environ.get("FASTJOB_EPOCH_SECONDS", "0"))
    first, best, resumed = 1, math.inf, None
    resume = session.resume_from()
    if resume is not None:
        state = json.loads((resume / "state.json").read_text())
        first, best, resumed = state["epoch"] + 1, state["best"], state["epoch"]
    noise = float(os.environ.get("FASTJOB_SEED_NOISE", "0"))
    shift = noise * random.Random(session.seed()).gauss(0, 1) if noise else 0
    shift += float(params.get("offset", 0.0))
    seen = os.environ.get("FASTSCRIPT_PARAMS")
    if seen:
        with open(seen, "a") as f:
            f.write(json.dumps({"trial": session.trial_number(), "params": params}) + "\n")
    folder = session.checkpoint_dir()
    if first > params["epochs"]:  # trained already (the worker died before the tell)
        session.report({"val_loss": best, "resumed_from_epoch": resumed}, step=params["epochs"])
    for epoch in range(first, params["epochs"] + 1):
        time.sleep(epoch_seconds)
        loss = (math.log10(params["lr"]) + 2.5) ** 2 + 1.0 / epoch + shift
        best = min(best, loss)
        tmp = folder / "state.tmp"
        tmp.write_text(json.dumps({"epoch": epoch, "best": best}))
        os.replace(tmp, folder / "state.json")
        log = os.environ.get("FASTJOB_LOG")
        if log:
            with open(log, "a") as f:
                f.write(f"{session.trial_number()} {epoch} {os.getppid()}\n")
        metrics = {"val_loss": loss}
        if resumed is not None:
            metrics["resumed_from_epoch"] = resumed
        if not session.report(metrics, step=epoch, checkpoint=folder):
            return


if __name__ == "__main__":
    main()
