"""A plain PyTorch training loop, tuned by hpo: a small network on scikit-learn's digits.

Alone, it trains once with its defaults and prints its reports::

    python examples/pytorch_loop/train.py

Under hpo (``examples/pytorch_loop/spec.yaml``), each trial runs it in a process of its own
with the trial's params; what it needs from hpo is ``hpo.session``: the params, a report per
epoch with the checkpoint that holds it (a pause resumes there), and ``should_stop`` asked
every step (a preemption: save where it stands, and return).

It logs one line per epoch it trained (``trial N epoch E trained``) to stderr, which the
worker passes on: how a test sees that a resumed trial trains each epoch once.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from torch import nn

from hpo import session

DEFAULTS = {
    "lr": 1e-2,
    "batch_size": 64,
    "epochs": 4,
    "optimizer": "adam",
    "momentum": 0.9,
    "dropout": 0.1,
    "weight_decay": 0.0,
}
STEP_SECONDS = float(os.environ.get("EXAMPLE_STEP_SECONDS", "0"))
"""A pause after each step (the tests slow the loop down to land a signal inside an epoch)."""


def main() -> None:
    params = session.params(DEFAULTS)
    torch.manual_seed(0)
    x, y = load_digits(return_X_y=True)
    inputs, labels = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
    order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(0))
    val, train = order[:360], order[360:]

    model = nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Dropout(params["dropout"]), nn.Linear(128, 10)
    )
    optimizer = make_optimizer(model, params)
    epoch, batch = 1, 0  # where to start: the first epoch, its first batch
    resume = session.resume_from()
    if resume is not None:
        state = torch.load(Path(resume) / "state.pt")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        epoch, batch = state["epoch"], state["batch"]
        print(f"trial {session.trial_number()}: resumed at epoch {epoch} batch {batch}",
              file=sys.stderr)
    for param_group in optimizer.param_groups:  # the trial's own lr (a PBT exploit changes it)
        param_group["lr"], param_group["weight_decay"] = params["lr"], params["weight_decay"]

    loss_fn = nn.CrossEntropyLoss()
    while epoch <= params["epochs"]:
        shuffled = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(epoch))]
        batches = shuffled.split(params["batch_size"])
        model.train()
        for i in range(batch, len(batches)):
            idx = batches[i]
            optimizer.zero_grad()
            loss_fn(model(inputs[idx]), labels[idx]).backward()
            optimizer.step()
            time.sleep(STEP_SECONDS)
            if session.should_stop():  # preempted: save where it stands, resume there
                save(model, optimizer, epoch, i + 1)
                session.report(checkpoint=session.checkpoint_dir())
                print(f"trial {session.trial_number()}: stopped at epoch {epoch} batch {i + 1}",
                      file=sys.stderr)
                return
        model.eval()
        with torch.no_grad():
            logits = model(inputs[val])
            val_loss = loss_fn(logits, labels[val]).item()
            accuracy = (logits.argmax(1) == labels[val]).float().mean().item()
        save(model, optimizer, epoch + 1, 0)
        print(f"trial {session.trial_number()} epoch {epoch} trained", file=sys.stderr)
        go_on = session.report(
            {"val_loss": val_loss, "val_accuracy": accuracy},
            step=epoch,
            checkpoint=session.checkpoint_dir(),
        )
        if not go_on:
            return
        epoch, batch = epoch + 1, 0


def make_optimizer(model: nn.Module, params: dict) -> torch.optim.Optimizer:
    if params["optimizer"] == "sgd":
        return torch.optim.SGD(model.parameters(), lr=params["lr"], momentum=params["momentum"])
    return torch.optim.Adam(model.parameters(), lr=params["lr"])


def save(model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, batch: int) -> None:
    """The checkpoint of where training stands (``epoch`` and ``batch`` to start from), written
    whole before it replaces the last one."""
    folder = session.checkpoint_dir()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "epoch": epoch, "batch": batch}
    torch.save(state, folder / "state.pt.tmp")
    os.replace(folder / "state.pt.tmp", folder / "state.pt")


if __name__ == "__main__":
    main()
