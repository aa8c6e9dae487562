"""Plain DistributedDataParallel, tuned by hpo: each trial runs as 2 ranks (gloo on the CPU,
NCCL on GPUs), started by the worker with the environment ``torchrun`` gives its ranks.

Alone, it runs as one process, or as ranks under ``torchrun``::

    python examples/ddp/train.py
    torchrun --nproc_per_node 2 examples/ddp/train.py

Under hpo (``examples/ddp/spec.yaml``, ``resources.devices_per_trial: 2``), rank 0 reports and
checkpoints; ``hpo.session.report`` gives every rank rank 0's answer, so they stop together.
It logs ``rank R: trial N epoch E trained`` per epoch, and where it resumed.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from sklearn.datasets import load_digits
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from hpo import session

DEFAULTS = {"lr": 1e-2, "batch_size": 64, "epochs": 3, "dropout": 0.1}
EPOCH_SECONDS = float(os.environ.get("EXAMPLE_EPOCH_SECONDS", "0"))
"""A pause per epoch (the tests slow the loop down to land a kill inside it)."""


def main() -> None:
    ranks = "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
    if ranks:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = session.rank(), session.world_size()
    params = session.params(DEFAULTS)
    torch.manual_seed(0)
    x, y = load_digits(return_X_y=True)
    inputs, labels = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
    order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(0))
    val, train = order[:360], order[360:]

    model: nn.Module = nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Dropout(params["dropout"]), nn.Linear(128, 10)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=params["lr"])
    first = 1
    resume = session.resume_from()
    if resume is not None:  # every rank loads rank 0's checkpoint
        state = torch.load(Path(resume) / "state.pt")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        first = state["epoch"] + 1
        print(f"rank {rank}: trial {session.trial_number()}: resumed after epoch "
              f"{state['epoch']}", file=sys.stderr)
    net = DistributedDataParallel(model) if ranks else model
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(first, params["epochs"] + 1):
        shuffled = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(epoch))]
        mine = shuffled[rank::world]  # this rank's share
        net.train()
        for idx in mine.split(params["batch_size"] // world):
            optimizer.zero_grad()
            loss_fn(net(inputs[idx]), labels[idx]).backward()
            optimizer.step()
        time.sleep(EPOCH_SECONDS)
        net.eval()
        with torch.no_grad():
            val_loss = loss_fn(model(inputs[val]), labels[val]).item()
        folder = session.checkpoint_dir()
        if rank == 0:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "epoch": epoch}
            torch.save(state, folder / "state.pt.tmp")
            os.replace(folder / "state.pt.tmp", folder / "state.pt")
        print(f"rank {rank}: trial {session.trial_number()} epoch {epoch} trained "
              f"(pid {os.getpid()})", file=sys.stderr)
        if not session.report({"val_loss": val_loss}, step=epoch, checkpoint=folder):
            break
    if ranks:  # leave together: a rank that tears down while another still talks aborts
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
