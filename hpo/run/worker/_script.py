"""A trial of a ``script`` task: the user's program in a process of its own, its reports
relayed to the trial over a Unix socket (the program's side: ``hpo.session``).

The worker stays the trial's one voice, as with a gang of ranks (``_gang``): it claimed the
trial, beats its heartbeat and tells it. What the script sends, it relays:

- a report's metrics: the study's ``metric`` is the trial's intermediate value at the step,
  the scheduler is asked, and the script gets its answer (go on, or stop: pruned or paused);
  a NaN stops it (``prune_reason: nan``); every report's metrics are kept by step (the
  ``metrics`` user attr, as the built-in job's), the best one's in ``best_metrics`` and as
  attrs of their own names;
- a report's checkpoint: the trial's ``checkpoint`` attr, which a continuation of its pause,
  a re-queue after SIGTERM or a retry after a kill resumes from (``HPO_RESUME_FROM``).

How the process ends decides the trial:

- exit 0: the best value of the metric it reported (the trial completes), or the stop it was
  told (pruned, paused); exit 0 without a report of the metric fails the trial, saying so;
- exit N: the trial fails, its ``fail_reason`` the last lines of the script's stderr;
- killed (a signal: kill -9, out of memory): as a rank that died, ``GangBroken`` (the trial
  is failed and retried, from its last reported checkpoint); after the trial's last report
  (its ``epochs``-th step) the result stands, with a warning: a rank's teardown that aborts
  (gloo's, at exit, on a loaded machine) does not undo a trained trial;
- SIGTERM / SIGINT to the worker (``Preempted``): the script is told to stop
  (``hpo.session.should_stop``), gets ``STOP_GRACE`` seconds to report a checkpoint of where
  it stands and exit, and the trial is re-queued to resume from there.

The script runs in a session of its own (the worker passes signals on as that stop); it gets
SIGKILL if the worker dies (``_DIE_WITH_WORKER``: ``PR_SET_PDEATHSIG`` before its ``exec``),
and a report to a worker that has gone answers stop. Its crash or leak is its own: the
worker lives on, warm, for the next trial.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from hpo import session
from hpo.records import (
    CHECKPOINT_ATTR,
)
from hpo.run.worker._gang import GangBroken, describe_exit
from hpo.run.worker._relay import Relay, StderrTail
from hpo.store import _optuna

log = logging.getLogger("hpo")


_DIE_WITH_WORKER = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os._exit(1)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)
"""How a script's process starts: it asks for SIGKILL when the worker dies
(``PR_SET_PDEATHSIG``, kept across ``exec``), makes sure the worker has not died already,
then becomes the script. In the child, not in ``preexec_fn``: that runs between fork and exec
while the worker's other threads (the heartbeat) may hold locks it needs."""


class ScriptFailed(Exception):
    """The script exited non-zero, or without reporting its metric: the trial fails."""


def run_script(
    job_trial: Any,
    trial: Any,
    task: Any,
    params: dict,
    checkpoint_dir: Path,
    metric: str,
    devices: int = 1,
    maximize: bool = False,
) -> float:
    """Run the ``script`` task's command for ``trial``; relay its reports to ``job_trial``.

    Args:
        job_trial: the job's trial (``StudyTrial``): reports, decisions, attrs.
        trial: the Optuna trial (its number, its ``checkpoint`` attr to resume from).
        task: the ``TaskSpec`` (``command``; ``seed``, a repeat's own, given to the script).
        params: the trial's params, given to the script as JSON.
        checkpoint_dir: the folder of this trial's checkpoint directory.
        metric: the reported metric that is the objective (``study.metric``).
        devices: the processes (ranks) to start, with the environment ``torchrun`` gives
            its ranks (``rank_env``); rank 0 reports.
        maximize: the best value of ``metric`` is the highest (``study.direction``).

    Returns:
        The best (lowest, or highest with ``maximize``) value of ``metric`` reported.

    Raises:
        optuna.TrialPruned: the scheduler stopped it (``job_trial.decision``), or a NaN.
        ScriptFailed: a rank exited non-zero, or all exited without reporting ``metric``.
        GangBroken: a rank was killed by a signal (retry from the checkpoint).
        Preempted: SIGTERM / SIGINT; raised on once the script has stopped.
    """
    import optuna

    previous = trial.user_attrs.get(CHECKPOINT_ATTR)
    resume = previous if previous and Path(previous).exists() else None
    with tempfile.TemporaryDirectory(prefix="hpo-script-") as tmp:
        address = os.path.join(tmp, "session")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(address)
        listener.listen(4)
        env = {
            **os.environ,
            session.SOCKET_VAR: address,
            session.PARAMS_VAR: json.dumps(params),
            session.CHECKPOINT_DIR_VAR: str(checkpoint_dir / f"trial-{trial.number}"),
            session.TRIAL_VAR: str(trial.number),
            session.SEED_VAR: str(task.seed),  # a repeat's own (hpo.search.convergence)
            "PYTHONUNBUFFERED": "1",
        }
        env.pop(session.RESUME_VAR, None)
        if resume is not None:
            env[session.RESUME_VAR] = str(resume)
            log.info("trial %d: resuming from %s", trial.number, resume)
        command = list(task.command)
        if command[0] in ("python", "python3"):
            command[0] = sys.executable  # the worker's interpreter, its environment's packages
        command = [sys.executable, "-c", _DIE_WITH_WORKER, str(os.getpid()), *command]
        relay = Relay(job_trial, metric, params, maximize)
        store = _rendezvous_store(devices) if devices > 1 else None
        procs = [
            subprocess.Popen(
                command,
                env={**env, **rank_env(rank, devices, store)},
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            for rank in range(devices)
        ]
        tails = [
            StderrTail(proc, f"[rank {r}] " if devices > 1 else "") for r, proc in enumerate(procs)
        ]
        try:
            relay.serve(listener, procs)
            ended = [proc.poll() for proc in procs]  # before the others are killed
        except BaseException:  # Preempted (SIGTERM): let it checkpoint where it stands
            relay.stop(procs, "preempted")
            raise
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
            for proc, tail in zip(procs, tails):
                proc.wait()
                tail.join()
            listener.close()
            relay.close()
            del store
    if job_trial.decision is not None or relay.pruned is not None:
        raise optuna.TrialPruned(relay.pruned or job_trial.decision.reason)
    # As the ranks ended (None: still running, killed here): a death first, which caused the
    # others' errors, then an error.
    for rank, code in enumerate(ended):
        who = f"rank {rank} of {devices}" if devices > 1 else "the script"
        if code is not None and code < 0 and relay.finished and relay.best is not None:
            # After its last report: the trial is trained (a rank's teardown, e.g. gloo's
            # abort at exit), and its result stands.
            log.warning(
                "trial %d: %s was killed by %s after the trial's last report; its result stands",
                trial.number,
                who,
                describe_exit(code),
            )
            return relay.best
        if code is not None and code < 0:
            raise GangBroken(f"{who} was killed by {describe_exit(code)}")
    for rank, (code, tail) in enumerate(zip(ended, tails)):
        who = f"rank {rank} of {devices}" if devices > 1 else "the script"
        if code is not None and code != 0:
            raise ScriptFailed(f"{who} exited with {code}: {tail.text() or 'no stderr'}")
    if relay.best is None and resume is not None:
        # Resumed with nothing left to train (its worker died between the last report and
        # the tell): the value is the best its earlier attempts reported.
        values = [
            v
            for v in _optuna.frozen(trial.study, trial).intermediate_values.values()
            if math.isfinite(v)
        ]
        if values:
            return max(values) if maximize else min(values)
    if relay.best is None:
        raise ScriptFailed(
            f"the script exited without reporting {metric} (study.metric) through "
            f"hpo.session.report; it reported {', '.join(relay.seen) or 'nothing'}"
        )
    return relay.best


def rank_env(rank: int, world: int, store: Any) -> dict[str, str]:
    """The environment ``torchrun`` gives rank ``rank`` of ``world`` on one machine: with
    ``init_process_group(init_method="env://")`` (DDP, FSDP, Accelerate, Lightning), every
    rank joins the store the worker hosts (``TORCHELASTIC_USE_AGENT_STORE``, as torchrun's
    agent does): no rank binds a port, so none can race another program for it."""
    if world == 1:
        return {}
    return {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_WORLD_SIZE": str(world),
        "GROUP_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(store.port),
        "TORCHELASTIC_USE_AGENT_STORE": "True",
    }


def _rendezvous_store(world: int) -> Any:
    """The ranks' ``TCPStore``, served by the worker on a port the kernel picks."""
    from datetime import timedelta

    from torch.distributed import TCPStore

    return TCPStore(
        "127.0.0.1", 0, world, True, timeout=timedelta(minutes=5), wait_for_workers=False
    )
