"""One trial on a gang of N ranks: N processes started with ``torch.multiprocessing``, one
device each (``cuda:r`` of the GPUs the worker sees, NCCL; or the CPU, gloo).

The ranks are forked from a server process that imported torch and the task's job once
(``forkserver``, preloaded): a rank starts in a fraction of a second instead of importing
torch, torchvision or transformers again (7 CPU-seconds a rank for the digits job), and the
server, which touches no GPU, is shared by every gang trial of the worker; each rank gets
the worker's environment as it is when the rank starts.

The worker stays the trial's one voice: it claimed the trial, beats its heartbeat and tells
it. Rank 0 sends it the job's reports, attrs and pruning questions over a pipe, and its result
at the end; the other ranks talk only to the gang (``hpo.job.ranks``). The worker watches every
rank while it waits:

- the job finishes, is pruned or fails on every rank alike (decisions are made on reduced
  numbers), and rank 0's outcome is the trial's;
- a rank that fails with an error (its message says which) fails the trial with that reason;
- a rank that dies without a word (killed, out of host memory) breaks the gang: the others
  are killed and ``GangBroken`` tells the worker to re-queue the trial, which resumes from rank
  0's last epoch checkpoint;
- SIGTERM / SIGINT reach the worker alone (the ranks ignore them): it kills the ranks and
  re-queues the trial as for a single-device trial. If the worker itself dies, the rank
  server exits and the ranks get SIGKILL from the kernel (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import tempfile
from dataclasses import replace
from multiprocessing.connection import Connection, wait
from typing import Any

from hpo.job.context import JobContext
from hpo.records import reason

log = logging.getLogger("hpo")

START_METHOD = "forkserver"
"""How the ranks start (``spawn`` re-imports everything in each rank)."""

FINISH_GRACE = 60.0
"""Seconds the other ranks get to exit after rank 0 has sent the trial's outcome."""


class GangBroken(Exception):
    """A rank of the trial died without a word: re-queue the trial (its checkpoint resumes)."""


class RankFailed(Exception):
    """A rank's job raised an error: the trial fails with it."""


def run_on_devices(trial: Any, task: Any, params: dict, context: JobContext, devices: int) -> float:
    """The built-in job: in this process on one device, else on a gang of ``devices`` ranks
    (``run_gang``)."""
    if devices > 1:
        return run_gang(trial, task, params, context, devices)
    from hpo.job import run_job

    return run_job(trial, task, params, context)


def run_gang(trial: Any, task: Any, params: dict, context: JobContext, devices: int) -> float:
    """Run the built-in job on ``devices`` ranks; return rank 0's value.

    Args:
        trial: the job's trial (``hpo.job.trial.Trial``) that rank 0's calls go to.
        task: the study's ``TaskSpec``.
        params: the trial's params (rank 0 broadcasts them to the others).
        context: checkpoint and resume paths (rank 0 alone writes the checkpoint).
        devices: the number of ranks.

    Raises:
        optuna.TrialPruned: rank 0 was pruned (so were the others).
        RankFailed: a rank's job raised; the first rank's error.
        GangBroken: a rank died without a word.
    """
    import optuna
    import torch.multiprocessing as mp

    ctx = mp.get_context(START_METHOD)
    if START_METHOD == "forkserver" and not _server_stops_at_exit:
        # Takes effect when the server starts (the first gang); it is stopped, and waited
        # for, when this process exits, so that no process outlives the worker.
        ctx.set_forkserver_preload(preloaded_modules(task))
        atexit.register(_stop_rank_server)
        _server_stops_at_exit.append(True)
    pipes = [ctx.Pipe() for _ in range(devices)]
    ours, theirs = [p[0] for p in pipes], [p[1] for p in pipes]
    context = replace(context, cache={})  # each rank loads its own data
    with tempfile.TemporaryDirectory(prefix="hpo-gang-") as tmp:
        rendezvous = os.path.join(tmp, "rendezvous")
        gang = mp.start_processes(
            _rank_entry,
            args=(
                dict(os.environ),
                _rank_main,
                devices,
                rendezvous,
                theirs,
                task,
                params,
                context,
                trial.number,
                logging.getLogger().level,
            ),
            nprocs=devices,
            join=False,
            start_method=START_METHOD,
        )
        for end in theirs:
            end.close()  # ours is the parent's end: EOF once the rank has gone
        try:
            outcome = _relay(trial, gang.processes, ours)
        finally:
            for proc in gang.processes:
                if proc.is_alive():
                    proc.kill()
            for proc in gang.processes:
                proc.join()
    kind, message = outcome
    if kind == "value":
        return message
    if kind == "pruned":
        raise optuna.TrialPruned(message)
    if kind == "error":
        raise RankFailed(message)
    raise GangBroken(message)


_server_stops_at_exit: list[bool] = []


def _stop_rank_server() -> None:
    """Stop this process's rank server and wait for it (CPython's ``ForkServer._stop``; the
    server also exits by itself, a moment later, when this process has gone)."""
    from multiprocessing import forkserver

    stop = getattr(getattr(forkserver, "_forkserver", None), "_stop", None)
    if stop is not None:
        stop()


def preloaded_modules(task: Any) -> list[str]:
    """What the rank server imports before it forks the first rank: torch, the ranks' code
    and the job of the task's kind (torchvision or transformers)."""
    jobs = {"image_classification": "hpo.job.vision", "text_classification": "hpo.job.text"}
    modules = ["torch", "torch.distributed", "optuna", "hpo.job.run", __name__]
    if task.kind in jobs:
        modules.append(jobs[task.kind])
    return modules


def _relay(trial: Any, procs: list[Any], conns: list[Connection]) -> tuple[str, Any]:
    """Serve rank 0's trial calls and watch the ranks until the gang is done.

    Returns:
        ``("value", v)``, ``("pruned", why)``, ``("error", why)`` or ``("broken", why)``.
    """
    import time

    outcome: tuple[str, Any] | None = None
    errored: set[int] = set()  # the ranks that sent an error
    open_conns = dict(enumerate(conns))
    deadline = None
    while any(p.is_alive() for p in procs) or open_conns:
        sentinels = {p.sentinel: r for r, p in enumerate(procs) if p.is_alive()}
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready = wait([*open_conns.values(), *sentinels], timeout=timeout)
        if not ready and deadline is not None:
            log.warning(
                "trial %d: ranks still running %.0f s after rank 0 finished; killed",
                trial.number,
                FINISH_GRACE,
            )
            break
        conn: Connection | None  # below, a rank's connection where it is still open
        for r, conn in list(open_conns.items()):
            if conn not in ready:
                continue
            try:
                message = conn.recv()
            except (EOFError, OSError):
                del open_conns[r]
                continue
            kind = message[0]
            if kind == "report":
                trial.report(*message[1:])
            elif kind == "attrs":
                trial.set_attrs(message[1])
            elif kind == "should_prune":
                conn.send(trial.should_prune())
            elif kind == "error":
                errored.add(r)
                if outcome is None or outcome[0] != "error":
                    outcome = ("error", f"rank {r}: {message[1]}")
            elif kind in ("value", "pruned") and outcome is None:
                outcome = (kind, message[1])
                deadline = time.monotonic() + FINISH_GRACE
        for sentinel, r in sentinels.items():
            if sentinel not in ready:
                continue
            procs[r].join()
            code = procs[r].exitcode
            if code == 0:
                continue
            # Let a rank's last words (its error) arrive before judging it.
            conn = open_conns.get(r)
            while conn is not None and conn.poll(0.5):
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    break
                if message[0] == "error":
                    errored.add(r)
                    if outcome is None or outcome[0] != "error":
                        outcome = ("error", f"rank {r}: {message[1]}")
            if outcome is None or outcome[0] != "error":
                outcome = ("broken", _died(r, code, len(procs)))
            # The others may wait on it forever: the caller kills them.
            return _silent_death(procs, errored) or outcome
    return (
        _silent_death(procs, errored)
        or outcome
        or (
            "broken",
            "the ranks exited without a result",
        )
    )


def _died(rank: int, code: int, world: int) -> str:
    how = "was killed by " if code < 0 else "exited with "
    return f"rank {rank} of {world} {how}{describe_exit(code)}"


def _silent_death(procs: list[Any], errored: set[int]) -> tuple[str, str] | None:
    """``("broken", why)`` if a rank died without a word: it broke the gang, whatever the
    others said (their errors, a peer's connection gone, follow from its death and may
    arrive first)."""
    for rank, proc in enumerate(procs):
        code = proc.exitcode
        if rank not in errored and code not in (None, 0):
            return ("broken", _died(rank, code, len(procs)))
    return None


def describe_exit(code: int) -> str:
    """A process's exit code as said: ``3``, or ``SIGKILL`` for a signal's negative code."""
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return str(code)


class _RelayTrial:
    """Rank 0's trial: every call goes to the worker's trial over the pipe."""

    def __init__(self, conn: Connection, number: int) -> None:
        self._conn = conn
        self.number = number

    def report(self, value: float, step: int) -> None:
        self._conn.send(("report", value, step))

    def should_prune(self) -> bool:
        self._conn.send(("should_prune",))
        return bool(self._conn.recv())

    def set_attrs(self, attrs: dict[str, Any]) -> None:
        self._conn.send(("attrs", dict(attrs)))


def _rank_entry(rank: int, environ: dict[str, str], main: Any, *args: Any) -> None:
    """A rank forked by the server runs ``main`` in the worker's environment as it is now (as
    a spawned one would), not the server's."""
    os.environ.clear()
    os.environ.update(environ)
    main(rank, *args)


def _rank_main(
    rank: int,
    world: int,
    rendezvous: str,
    conns: list[Connection],
    task: Any,
    params: dict,
    context: JobContext,
    number: int,
    log_level: int,
) -> None:
    """One rank: join the gang, run the job, send the outcome (rank 0) or an error."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the worker stops the gang
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    _name_process(RANK_NAME.format(rank=rank))
    logging.basicConfig(level=log_level, format=f"%(levelname)s %(name)s rank {rank}: %(message)s")
    conn = conns[rank]
    for r, other in enumerate(conns):
        if r != rank:
            other.close()
    import optuna
    import torch
    import torch.distributed as dist

    from hpo.job import run_job
    from hpo.job.trial import FixedTrial

    try:
        if torch.cuda.is_available():
            torch.cuda.set_device(rank % torch.cuda.device_count())
            backend = "nccl"
        else:
            backend = "gloo"
            if "OMP_NUM_THREADS" not in os.environ:  # the ranks share the cores
                torch.set_num_threads(max(1, torch.get_num_threads() // world))
        dist.init_process_group(
            backend, init_method=f"file://{rendezvous}", rank=rank, world_size=world
        )
        box = [params if rank == 0 else None]
        dist.broadcast_object_list(box, src=0)  # rank 0's params on every rank
        if rank == 0:
            trial: Any = _RelayTrial(conn, number)
        else:
            trial, context = FixedTrial(number), replace(context, checkpoint_path=None)
        value = run_job(trial, task, box[0], context)
        if rank == 0:
            conn.send(("value", value))
    except optuna.TrialPruned as e:
        if rank == 0:
            conn.send(("pruned", str(e)))
    except Exception as e:
        conn.send(("error", reason(e)))
        conn.close()
        os._exit(1)  # no teardown: the other ranks may be waiting on this one
    if dist.is_initialized():
        # Leave together: a rank whose group is torn down while another still talks to it
        # may abort in gloo's teardown (SIGABRT), which would break a finished gang.
        dist.barrier()
        dist.destroy_process_group()
    conn.close()


RANK_NAME = "hpo rank {rank}"
"""A rank's process name (``ps``, ``/proc/PID/comm``): forked ranks share one command line."""


def _name_process(name: str) -> None:
    """Name this process (Linux ``PR_SET_NAME``, 15 bytes at most)."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(15, name.encode()[:15])
    except (OSError, AttributeError):
        pass


def _die_with_parent() -> None:
    """SIGKILL when the worker dies (Linux ``PR_SET_PDEATHSIG``), so no rank outlives it."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
