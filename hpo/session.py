"""Your own training code under hpo: the trial's params, reports, checkpoints, the stop.

A script that hpo runs (``task: {kind: script, command: [...]}``) talks to its worker through
these few functions; the same script run alone (``python train.py``) gets its own defaults,
its reports printed, and never a stop::

    from hpo import session

    params = session.params({"lr": 1e-3, "epochs": 3})
    start = load(session.resume_from()) if session.resume_from() else 0
    for epoch in range(start + 1, params["epochs"] + 1):
        for batch in batches:
            train(batch)
            if session.should_stop():      # a pause or a preemption: save where you stand
                save(session.checkpoint_dir(), epoch, batch)
                session.report(checkpoint=session.checkpoint_dir())
                return
        save(session.checkpoint_dir(), epoch)
        if not session.report({"val_loss": validate()}, step=epoch,
                              checkpoint=session.checkpoint_dir()):
            return                         # pruned or paused: stop here

- ``params``: the trial's params over your defaults; ``seed``: the trial's seed.
- ``report``: metrics at a step (one of them is the study's objective, ``study.metric``), and
  the checkpoint that holds this point (a directory or a file you have finished writing).
  It answers whether to go on. A paused trial resumes later from the checkpoint reported
  with the step it paused at; a preempted one from the last checkpoint reported.
- ``checkpoint_dir`` / ``resume_from``: where to save this trial's checkpoints, and the one to
  start from (None: start afresh).
- ``should_stop``: the worker asks the trial to stop now (SIGTERM, a spot machine's notice):
  save where you stand, report that checkpoint, and return. Cheap enough to ask every step.
- ``rank`` / ``world_size`` / ``local_rank`` / ``device``: where this process trains.

With several ranks (``resources.devices_per_trial``; the environment is ``torchrun``'s), rank
0 reports: its metrics and checkpoint count. Once the ranks have a process group,
``report`` and ``should_stop`` are collectives that give every rank rank 0's answer, so the
ranks stop together: call them on every rank at the same points.

Only this module of hpo is imported (no torch, unless ``device`` is asked): the script keeps
its own start-up time. The worker's side is ``hpo.run.worker._script``.
"""

from __future__ import annotations

import json
import os
import select
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SOCKET_VAR = "HPO_SESSION"
"""The worker's Unix socket this process reports to (unset: the script runs alone)."""
PARAMS_VAR = "HPO_PARAMS"
"""The trial's params, a JSON object."""
CHECKPOINT_DIR_VAR = "HPO_TRIAL_CHECKPOINT_DIR"
"""The directory this trial saves its checkpoints in."""
RESUME_VAR = "HPO_RESUME_FROM"
"""The checkpoint (file or directory) this attempt starts from; unset: from the start."""
TRIAL_VAR = "HPO_TRIAL"
"""The trial's number."""
SEED_VAR = "HPO_SEED"
"""The trial's seed: ``task.seed``, or a repeat's own (``budget.repeats``)."""

_connection: _Connection | None = None


class _Connection:
    """JSON lines over the worker's socket: reports go out and wait for their answer; a stop
    the worker pushes (``{"stop": why}``) is kept until asked."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.buffer = b""
        self.stop: str | None = None

    def send(self, message: dict[str, Any]) -> None:
        try:
            self.sock.sendall(json.dumps(message).encode() + b"\n")
        except OSError:  # the worker has gone: stop, as a preemption would
            self.stop = self.stop or "the worker has gone"
            self.buffer += b'{"go_on": false}\n'

    def _read(self, block: bool) -> dict[str, Any] | None:
        while b"\n" not in self.buffer:
            if not block and not select.select([self.sock], [], [], 0)[0]:
                return None
            chunk = self.sock.recv(65536)
            if not chunk:  # the worker has gone: stop, as a preemption would
                self.stop = self.stop or "the worker has gone"
                return {"go_on": False}
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        message: dict[str, Any] = json.loads(line)
        if "stop" in message:
            self.stop = self.stop or str(message["stop"])
        return message

    def answer(self) -> dict[str, Any]:
        """The worker's answer to the last report (a stop pushed meanwhile is kept)."""
        while True:
            message = self._read(block=True)
            if message is not None and "go_on" in message:
                return message

    def poll(self) -> None:
        """Take in what the worker pushed (a stop), without waiting."""
        while self._read(block=False) is not None:
            pass


def _session() -> _Connection | None:
    global _connection
    path = os.environ.get(SOCKET_VAR)
    if not path or rank() != 0:  # alone, or a rank that is not the one that reports
        return None
    if _connection is None:
        _connection = _Connection(path)
    return _connection


def _rank_zeros(value: Any) -> Any:
    """Rank 0's ``value`` on every rank, where the ranks have a process group (a collective:
    every rank calls it at the same point); else this rank's own."""
    dist = sys.modules.get("torch.distributed")  # never imported here: the script's own
    if world_size() > 1 and dist is not None and dist.is_available() and dist.is_initialized():
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return value


def params(defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The trial's params (the spec's ``search_space``: sampled or fixed, hpo's names and
    your own) over ``defaults``; what the spec leaves out keeps its default (alone: all)."""
    given = json.loads(os.environ.get(PARAMS_VAR, "{}"))
    return {**(defaults or {}), **given}


def seed(default: int = 0) -> int:
    """The trial's seed: ``task.seed``, or another for a repeat of the best configuration
    (``budget.repeats``: the same params, other seeds, to measure the noise); seed your data
    split, initialization and data order with it. Alone: ``default``."""
    given = os.environ.get(SEED_VAR)
    return int(given) if given else default


def report(
    metrics: Mapping[str, float] | None = None,
    *,
    step: int | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
) -> bool:
    """Report ``metrics`` at ``step`` (an epoch, or an evaluation's count), and the
    ``checkpoint`` that holds this point, finished writing. Either may come alone: a
    checkpoint without metrics is where a preempted trial resumes.

    Returns:
        Whether to go on: False when the trial is pruned, paused or must stop (return then;
        a paused trial resumes from the checkpoint reported with this step).
    """
    if metrics and step is None:
        raise ValueError("hpo.session.report: metrics need the step they were measured at")
    values = {str(k): float(v) for k, v in (metrics or {}).items()}
    conn = _session()
    if conn is None:
        if rank() == 0 and values and SOCKET_VAR not in os.environ:
            shown = "  ".join(f"{k} {v:.4g}" for k, v in values.items())
            print(f"step {step}: {shown}", file=sys.stderr, flush=True)
        return bool(_rank_zeros(True))
    conn.send(
        {
            "step": step,
            "metrics": values,
            "checkpoint": None if checkpoint is None else str(Path(checkpoint).resolve()),
        }
    )
    go_on = bool(conn.answer().get("go_on")) and conn.stop is None
    return bool(_rank_zeros(go_on))


def should_stop() -> bool:
    """Whether the worker asks this trial to stop now (a preemption): save where you stand,
    ``report(checkpoint=...)`` it, and return. Never true when the script runs alone."""
    conn = _session()
    if conn is not None:
        conn.poll()
    return bool(_rank_zeros(conn is not None and conn.stop is not None))


def checkpoint_dir() -> Path:
    """This trial's checkpoint directory (created); alone: ``./checkpoints``."""
    path = Path(os.environ.get(CHECKPOINT_DIR_VAR) or "checkpoints")
    path.mkdir(parents=True, exist_ok=True)
    return path


def resume_from() -> Path | None:
    """The checkpoint this attempt starts from (a paused, preempted or killed attempt's last
    reported one), or None: start from the beginning."""
    path = os.environ.get(RESUME_VAR)
    return Path(path) if path else None


def trial_number() -> int | None:
    """The trial's number (None alone)."""
    number = os.environ.get(TRIAL_VAR)
    return int(number) if number else None


def rank() -> int:
    """This process's rank among the trial's processes (``RANK``, as torchrun sets it)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """How many processes train the trial (``WORLD_SIZE``)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    """This process's rank on its machine (``LOCAL_RANK``)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def device() -> str:
    """The device this process trains on: ``cuda:LOCAL_RANK`` where CUDA is, else ``cpu``
    (imports torch)."""
    import torch

    if torch.cuda.is_available():
        return f"cuda:{local_rank() % torch.cuda.device_count()}"
    return "cpu"
