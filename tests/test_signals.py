"""Stopping a worker, as a user or the machine stops it: SIGTERM while the storage is gone, a
launcher killed with kill -9, Ctrl-C on ``hpo run``.

Real processes throughout: an ``hpo storage-proxy`` of the test's own (so that the test can
kill it), workers and launchers of ``fastjob.epochs_job`` started through the CLI.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from conftest import _proxy_url
from processes import start_hpo, wait_for
from workers import FAST, epoch_log, fast_env, make_study, trials

# --------------------------------------------------------------------------------------------
# A worker waiting out a storage outage still stops on SIGTERM.


def _start_proxy(database: str, log: Path) -> tuple[subprocess.Popen, str]:
    """``hpo storage-proxy`` of ``database`` on a free port: the process and its URL."""
    env = {k: v for k, v in os.environ.items() if k != "HPO_STORAGE"}
    env.update(PYTHONUNBUFFERED="1")
    with open(log, "w") as out:
        proxy = subprocess.Popen(
            [sys.executable, "-m", "hpo", "storage-proxy", "--storage", database, "--port", "0"],
            env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    return proxy, _proxy_url(proxy, log)


def _gone(pid: int) -> bool:
    """The process has exited (or is a zombie nobody reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.mark.slow
def test_sigterm_stops_a_worker_that_waits_for_a_proxy_that_is_gone(tmp_path):
    """The issue's worker: on ``grpc://`` behind ``hpo storage-proxy``, the proxy killed under
    it mid-trial. It waits for the proxy (``$HPO_OUTAGE_SECONDS``, here a minute), and SIGTERM
    ends the wait at once: the worker exits 143 within seconds, saying that its trial could
    not be re-queued. The trial, left running, is retried from its checkpoint as a dead
    worker's is, once its heartbeat goes stale."""
    database = f"sqlite:///{tmp_path / 'behind.db'}"
    env = fast_env(tmp_path, epoch_seconds=0.3, HPO_OUTAGE_SECONDS="60")
    name = make_study(tmp_path, database, n=1, low=8, high=8, env=env)
    proxy, url = _start_proxy(database, tmp_path / "proxy.log")
    worker = start_hpo("worker", name, "--storage", url, cwd=tmp_path, env=env)
    try:
        wait_for(lambda: epoch_log(tmp_path), what="epoch 1")
        proxy.kill()
        proxy.wait()
        time.sleep(2.0)  # the heartbeat and the next report find the proxy gone, and wait
        assert worker.poll() is None, worker.stdout.read()
        sent = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        out, _ = worker.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        proxy.kill()
        worker.kill()
    assert "storage proxy unavailable" in out, out  # it was waiting out the outage
    assert took < 3.0, (took, out)
    assert worker.returncode == 143, out
    assert "SIGTERM" in out and "not re-queued" in out, out
    assert "Traceback" not in out, out

    # Its trial, running still, goes stale and is retried from its last checkpoint.
    [t] = trials(name, database)
    assert t.state == TrialState.RUNNING
    time.sleep(3.5)  # HPO_GRACE_PERIOD
    r = start_hpo("worker", name, "--storage", database, cwd=tmp_path, env=env)
    out, _ = r.communicate(timeout=120)
    assert r.returncode == 0, out
    ts = trials(name, database)
    assert [t.state for t in ts] == [TrialState.FAIL, TrialState.COMPLETE], out
    assert ts[1].user_attrs["resumed_from_epoch"] >= 1


@pytest.mark.slow
def test_a_launcher_killed_with_kill_9_takes_its_waiting_workers_with_it(tmp_path):
    """A killed test run: the launcher gets kill -9 while its workers wait for a proxy that is
    gone. The workers must not outlive it waiting: they are gone within seconds."""
    database = f"sqlite:///{tmp_path / 'behind.db'}"
    env = fast_env(tmp_path, epoch_seconds=0.3, HPO_OUTAGE_SECONDS="60")
    name = make_study(tmp_path, database, n=2, low=8, high=8, env=env)
    proxy, url = _start_proxy(database, tmp_path / "proxy.log")
    launch = start_hpo("launch", name, "--storage", url, "--workers", "2", cwd=tmp_path,
                       env=env)
    workers: list[int] = []
    try:
        wait_for(lambda: len({n for n, _, _ in epoch_log(tmp_path)}) >= 2, what="two trials")
        workers = _children(launch.pid)
        assert len(workers) == 2, workers
        proxy.kill()
        proxy.wait()
        time.sleep(2.0)  # the workers find the proxy gone, and wait
        assert not any(_gone(p) for p in workers)
        os.kill(launch.pid, signal.SIGKILL)
        launch.wait()
        killed = time.monotonic()
        wait_for(lambda: all(_gone(p) for p in workers), timeout=30,
                 what="the workers of the killed launcher to exit")
        took = time.monotonic() - killed
    finally:
        proxy.kill()
        launch.kill()
        for p in workers:
            if not _gone(p):
                os.kill(p, signal.SIGKILL)
    assert took < 3.0, took


# --------------------------------------------------------------------------------------------
# Ctrl-C is said as what it was.


@pytest.mark.slow
def test_ctrl_c_on_hpo_run_is_reported_as_an_interrupt_and_requeues_the_trial(tmp_path):
    """Ctrl-C in a terminal: SIGINT to ``hpo run``'s process group. The launcher and its
    worker say that they were interrupted (SIGINT), not terminated, and the trial goes back
    to the queue."""
    url = f"sqlite:///{tmp_path / 'int.db'}"
    env = fast_env(tmp_path, epoch_seconds=0.3)
    name = f"ctrl-c-{time.time_ns()}"
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(FAST.format(name=name, n=1, low=8, high=8, pruner="none"))
    full = {k: v for k, v in os.environ.items() if k != "HPO_STORAGE"}
    full.update(PYTHONUNBUFFERED="1", **env)
    run = subprocess.Popen(
        [sys.executable, "-m", "hpo", "run", str(spec), "--storage", url, "--workers", "1"],
        cwd=tmp_path, env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)  # its own process group, as a terminal's foreground job
    try:
        wait_for(lambda: epoch_log(tmp_path), what="epoch 1")
        os.killpg(run.pid, signal.SIGINT)
        out, _ = run.communicate(timeout=60)
    finally:
        run.kill()
    assert run.returncode == 130, out
    assert "hpo: interrupted (SIGINT): asking the workers to checkpoint" in out, out
    assert "interrupted (SIGINT): trial 0 re-queued" in out, out
    assert "SIGTERM" not in out, out
    assert [t.state for t in trials(name, url)] == [TrialState.WAITING]


# --------------------------------------------------------------------------------------------
# Two stop signals at once.


def test_a_stop_signal_while_the_first_is_handled_raises_nothing():
    """Slurm signals every process of a step and the launcher passes its own SIGTERM on, so a
    worker gets two at once. A fresh-clone run saw the second raise again inside the handling
    of the first: a traceback, exit 1, the trial failed instead of re-queued. Real signals to
    this process, through the worker's handler: the first raises, the later ones only ask
    storage waits to give up."""
    from hpo.store.outage import clear_stop, stop_requested
    from hpo.run.worker._loop import StopSignals
    from hpo.run.worker._signals import Preempted

    handler = StopSignals()
    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with pytest.raises(Preempted, match="SIGTERM"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)  # the handler raises here
        try:  # the first is being handled: the later ones arrive now
            for s in (signal.SIGTERM, signal.SIGINT, signal.SIGTERM):
                os.kill(os.getpid(), s)
                time.sleep(0.01)
        except Preempted as e:
            pytest.fail(f"a later signal raised again: {e}")
        assert handler.first == signal.SIGTERM and stop_requested()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        clear_stop()


# --------------------------------------------------------------------------------------------
# The built-in job takes a SIGTERM after the step in flight, and checkpoints there.

BUILTIN = """
study: {name: NAME}
task: {kind: image_classification, model: resnet18, weights: null, dataset: {name: digits},
       image_size: 16, max_samples: 1200}
search_space:
  lr: {type: float, low: 1.0e-3, high: 1.0e-3}
  batch_size: {type: categorical, choices: [16]}
  epochs: {type: int, low: 3, high: 3}
sampler: {name: random, seed: 0}
pruner: {name: none}
budget: {n_trials: 1}
"""


@pytest.mark.slow
def test_sigterm_inside_an_epoch_of_the_builtin_job_resumes_at_that_batch(tmp_path):
    """SIGTERM while the built-in job trains epoch 2: the job ends the step in flight,
    checkpoints after it and stops; the trial is re-queued, and the next attempt resumes after
    that very batch (not at the epoch's start), and completes."""
    import random
    import re

    import optuna

    from processes import run_hpo

    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    name = f"builtin-{time.time_ns()}"
    spec = tmp_path / "spec.yaml"
    spec.write_text(BUILTIN.replace("NAME", name))
    env = {"HPO_CHECKPOINT_DIR": str(tmp_path / "ckpt"), "HPO_LOG_LEVEL": "INFO"}
    assert run_hpo("create", str(spec), "--storage", url, cwd=tmp_path, env=env).returncode == 0
    worker = start_hpo("worker", name, "--storage", url, cwd=tmp_path, env=env)

    def reported() -> bool:
        ts = optuna.load_study(study_name=name, storage=url).get_trials()
        return bool(ts) and 1 in ts[0].intermediate_values

    try:
        wait_for(reported, timeout=240, what="epoch 1's report")
        time.sleep(random.uniform(0.1, 0.6))
        worker.send_signal(signal.SIGTERM)
        out, _ = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
    stopped = re.search(r"trial 0: stopped after batch (\d+) of epoch 2", out)
    assert stopped, out
    assert worker.returncode == 143, out
    assert [t.state for t in trials(name, url)] == [TrialState.WAITING]
    r = run_hpo("worker", name, "--storage", url, cwd=tmp_path, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(rf"after epoch 1 and {stopped.group(1)} batches", r.stdout + r.stderr), \
        r.stdout + r.stderr
    (t,) = trials(name, url)
    assert t.state == TrialState.COMPLETE and sorted(t.intermediate_values) == [1, 2, 3]
