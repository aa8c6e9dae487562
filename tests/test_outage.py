"""Database outages, for real: PostgreSQL restarted, or cut off behind a proxy, while workers
run. Storage calls wait and retry (up to ``$HPO_OUTAGE_SECONDS``); the training is never redone;
past the window a worker exits non-zero and its trial resumes elsewhere."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from optuna.trial import TrialState

from conftest import run_hpo, server_url
from processes import start_hpo, wait_for
from workers import epoch_log, fast_env, finished, make_study, trials


@pytest.mark.slow
def test_postgresql_restart_mid_study_loses_nothing(private_postgresql, tmp_path):
    """PostgreSQL restarted (a server of the test's own) while two workers run: they wait for
    it, and the study ends at its budget with nothing left running."""
    url = private_postgresql.url
    env = fast_env(tmp_path, epoch_seconds=0.3)
    name = make_study(tmp_path, url, n=12, low=3, high=4, env=env)
    launch = start_hpo("launch", name, "--storage", url, "--workers", "2", cwd=tmp_path,
                       env=env)
    try:
        wait_for(lambda: len(finished(trials(name, url))) >= 3, timeout=120,
                 what="three finished trials")
        private_postgresql.restart()
        out, _ = launch.communicate(timeout=300)
    finally:
        launch.kill()
    assert launch.returncode == 0, out[-3000:]
    ts = trials(name, url)
    assert len(finished(ts)) == 12
    assert not [t for t in ts if t.state == TrialState.RUNNING]


def _proxied_postgresql(server_urls, cut_after=None):
    """The session's PostgreSQL database behind a proxy the test can cut: (proxy, url)."""
    from dbproxy import Proxy

    url = server_url(server_urls, "postgresql")
    proxy = Proxy(("127.0.0.1", 5432), cut_after=cut_after)
    return proxy, url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")


@pytest.mark.slow
def test_an_outage_at_the_end_of_a_trial_retries_the_calls_not_the_training(server_urls,
                                                                             tmp_path):
    proxy, url = _proxied_postgresql(server_urls)
    done = tmp_path / "done"
    env = fast_env(tmp_path, epoch_seconds=0.2, FASTJOB_DONE_FILE=str(done),
                   FASTJOB_DONE_SECONDS="1")
    name = make_study(tmp_path, url, n=1, low=2, high=2, env=env)
    worker = start_hpo("worker", name, "--storage", url, cwd=tmp_path, env=env)
    try:
        wait_for(done.exists, what="the trial's last epoch")
        proxy.cut()  # the job returns while the database is gone: its tell meets the outage
        time.sleep(4)
        proxy.restore()
        out, _ = worker.communicate(timeout=120)
    finally:
        worker.kill()
        proxy.close()
    assert worker.returncode == 0, out
    assert "database unavailable" in out
    ts = trials(name, server_urls["postgresql"])
    assert [t.state for t in ts] == [TrialState.COMPLETE]  # one trial, told once
    assert [(n, e) for n, e, _ in epoch_log(tmp_path)] == [(0, 1), (0, 2)]  # trained once


@pytest.mark.slow
def test_an_outage_past_the_window_exits_non_zero_and_the_trial_resumes_elsewhere(
        server_urls, tmp_path):
    proxy, url = _proxied_postgresql(server_urls)
    done = tmp_path / "done"
    env = fast_env(tmp_path, epoch_seconds=0.2, FASTJOB_DONE_FILE=str(done),
                   FASTJOB_DONE_SECONDS="0.5", HPO_OUTAGE_SECONDS="2")
    name = make_study(tmp_path, url, n=1, low=3, high=3, env=env)
    worker = start_hpo("worker", name, "--storage", url, cwd=tmp_path, env=env)
    try:
        wait_for(done.exists, what="the trial's last epoch")
        proxy.cut()
        out, _ = worker.communicate(timeout=60)
    finally:
        worker.kill()
        proxy.restore()
    assert worker.returncode == 1, out
    assert "the database did not answer for 2s" in out and "Traceback" not in out
    direct = server_urls["postgresql"]
    assert [t.state for t in trials(name, direct)] == [TrialState.RUNNING]
    # Another worker finds it stale (no heartbeat for the grace period) and resumes it.
    r = run_hpo("worker", name, "--storage", direct, cwd=tmp_path, env=env)
    proxy.close()
    assert r.returncode == 0, r.stdout + r.stderr
    first, retry = trials(name, direct)
    assert (first.state, retry.state) == (TrialState.FAIL, TrialState.COMPLETE)
    assert retry.user_attrs["resumed_from_epoch"] == 3
    assert [e for n, e, _ in epoch_log(tmp_path) if n == retry.number] == []  # nothing redone


@pytest.mark.slow
def test_a_worker_restarted_while_the_database_restarts_waits_for_it(server_urls, tmp_path):
    """A launcher restarts a dead worker at once, maybe while the server restarts too: the new
    worker waits for the database as its storage calls would, instead of failing as bad input
    (exit 2), which made the launcher give its slot up."""
    proxy, url = _proxied_postgresql(server_urls)
    env = fast_env(tmp_path, epoch_seconds=0.1)
    name = make_study(tmp_path, url, n=2, low=1, high=2, env=env)
    proxy.cut()
    try:
        worker = start_hpo("worker", name, cwd=tmp_path,
                           env={**env, "HPO_STORAGE": url, "HPO_WORKER_INDEX": "0"})
        time.sleep(3)
        assert worker.poll() is None, worker.communicate()[0]
        proxy.restore()
        out, _ = worker.communicate(timeout=120)
    finally:
        proxy.close()
    assert worker.returncode == 0, out
    assert len(finished(trials(name, server_urls["postgresql"]))) == 2
    # A person's command does not wait: one line, exit 2, at once.
    r = run_hpo("status", name, "--storage", url, cwd=tmp_path, timeout=60)
    assert r.returncode == 2 and "cannot connect" in r.stderr


@pytest.mark.slow
def test_a_worker_whose_database_goes_away_while_it_opens_the_storage_waits(server_urls,
                                                                           tmp_path):
    """The server answers the connection check, then restarts while Optuna reads the schema
    version: the worker waits for it there too."""
    from dbproxy import Proxy

    direct = server_url(server_urls, "postgresql")
    env = fast_env(tmp_path, epoch_seconds=0.1)
    name = make_study(tmp_path, direct, n=1, low=1, high=1, env=env)
    proxy = Proxy(("127.0.0.1", 5432), cut_after=1)
    url = direct.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    try:
        worker = start_hpo("worker", name, cwd=tmp_path,
                           env={**env, "HPO_STORAGE": url, "HPO_WORKER_INDEX": "0"})
        time.sleep(4)
        assert proxy.accepted >= 1 and worker.poll() is None, worker.communicate()[0]
        proxy.restore()
        out, _ = worker.communicate(timeout=120)
    finally:
        proxy.close()
    assert worker.returncode == 0, out
    assert len(finished(trials(name, direct))) == 1



INTERRUPTED_STOP = """
import os, signal, sys
from hpo.store import outage

signal.signal(signal.SIGUSR1, lambda signum, frame: outage.request_stop())
inside = [0]

def trace(frame, event, arg):  # a signal at every line run inside request_stop
    if event == "call" and frame.f_code is outage.request_stop.__code__:
        inside[0] += 1
    if inside[0] and event == "line":
        os.kill(os.getpid(), signal.SIGUSR1)
    if event == "return" and frame.f_code is outage.request_stop.__code__:
        inside[0] -= 1
    return trace

sys.settrace(trace)
outage.request_stop()
sys.settrace(None)
print("stopped", outage.stop_requested())
"""


def test_a_signal_that_interrupts_a_stop_request_asks_again_at_once(tmp_path):
    """The worker's signal handler asks for the stop; a second signal (the kernel's after
    the launcher's, at a launcher's death) interrupts it wherever it is, and asks again. That
    must not wait for anything the first holds: it waited for the lock of a threading.Event
    the first had taken, for ever (a worker killed with its launcher hung in an outage)."""
    import subprocess
    import sys

    script = tmp_path / "interrupted.py"
    script.write_text(INTERRUPTED_STOP)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=20)
    assert done.returncode == 0 and done.stdout.strip() == "stopped True", done.stderr
