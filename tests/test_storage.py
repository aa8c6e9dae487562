"""Storage on every backend: SQLite, PostgreSQL, MariaDB (real servers), the gRPC proxy in
front of PostgreSQL and a journal file: hpo's storage classes (claims, attrs with the trial,
heartbeats and retries), opening a URL, redaction."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from collections import Counter

import optuna
import pytest

from hpo.errors import StorageError
from hpo.store.storage import open_storage
from hpo.store.url import redact
from hpo.search.study import create_study, load_study
from processes import start_hpo, wait_for
from specs import make_spec, unique
from workers import epoch_log, fast_env, finished, make_study


def reopen(name: str, url: str) -> optuna.Study:
    """The study as another process sees it: its own storage object."""
    return optuna.load_study(study_name=name, storage=open_storage(url, create=False))


def test_dead_worker_trial_is_failed_and_requeued_with_its_values(all_storage_url, monkeypatch):
    import hpo.store.storage

    storage_url = all_storage_url
    monkeypatch.setattr(hpo.store.storage, "HEARTBEAT_INTERVAL", 1)
    monkeypatch.setattr(hpo.store.storage, "GRACE_PERIOD", 1)
    storage = open_storage(storage_url)
    study, _ = load_study(create_study(make_spec(unique("stale")), storage).study_name, storage)
    trial = study.ask()
    trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    trial.report(0.9, 1)
    trial.report(0.7, 2)
    trial.set_user_attr("checkpoint", "/ckpt/trial-0.pt")
    storage.record_heartbeat(trial._trial_id)
    time.sleep(2.5)  # the "worker" died: no heartbeat past the grace period
    optuna.storages.fail_stale_trials(study)
    trials = study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL,
                                         optuna.trial.TrialState.WAITING]
    retry = trials[1]
    assert retry.params == trials[0].params
    assert retry.intermediate_values == {1: 0.9, 2: 0.7}
    assert retry.user_attrs["checkpoint"] == "/ckpt/trial-0.pt"  # so the retry resumes
    assert retry.system_attrs["failed_trial"] == 0


def test_worker_trials_carry_host_and_worker_and_queued_trials_go_first(all_storage_url):
    """The worker's attrs go in with the trial's creation (one transaction, hpo's storage
    class); a queued trial is taken before a new one is created, and keeps its own attrs."""
    from hpo.store._optuna import ask as _ask

    storage_url = all_storage_url
    storage = open_storage(storage_url)
    study, _ = load_study(create_study(make_spec(unique("attrs")), storage).study_name, storage)
    study.enqueue_trial({"lr": 0.01}, user_attrs={"note": "queued"})
    attrs = {"host": "node-a", "worker": "node-a:w3"}
    seen = study.get_trials()  # what two workers read at the same moment: trial 0 queued
    queued = _ask(study, attrs, seen)
    new = _ask(study, attrs, seen)  # its claim of trial 0 fails: it creates trial 1
    assert (queued.number, new.number) == (0, 1)
    assert queued.suggest_float("lr", 1e-4, 1e-1, log=True) == 0.01  # the queued params
    reread = reopen(study.study_name, storage_url)
    first, second = reread.get_trials()
    assert first.user_attrs == {"note": "queued", "host": "node-a", "worker": "node-a:w3"}
    assert second.user_attrs == attrs
    assert [first.state, second.state] == [optuna.trial.TrialState.RUNNING] * 2
    assert second.datetime_start is not None


def test_a_queued_trial_is_claimed_once_and_the_budget_never_overshot(all_storage_url):
    """Several workers (each its own connection) claim at the same moment: a queued trial goes
    to exactly one of them, and new trials stop at the budget, however many ask at once."""
    from hpo.store._optuna import ask

    storage_url = all_storage_url
    n_workers, rounds = 4, 8
    storage = open_storage(storage_url)
    study, _ = load_study(create_study(make_spec(unique("claim")), storage).study_name, storage)
    studies = [load_study(study.study_name, open_storage(storage_url))[0]
               for _ in range(n_workers)]
    for r in range(rounds):
        study.enqueue_trial({"lr": 0.01})
        waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
        budget = 2 * r + 1  # room for the queued trial alone: the rest must be refused
        barrier = threading.Barrier(n_workers)
        got: list = [None] * n_workers

        def claim(i: int) -> None:
            barrier.wait()
            got[i] = ask(studies[i], {"worker": f"w{i}"}, waiting, budget)

        threads = [threading.Thread(target=claim, args=(i,)) for i in range(n_workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        claimed = [t.number for t in got if t is not None]
        assert claimed == [waiting[0].number], (r, claimed)
        study.tell(claimed[0], 1.0)
        study.tell(study.ask(), 1.0)  # one more finished trial: the next round's budget
    states = [t.state for t in study.get_trials()]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 2 * rounds
    assert not [s for s in states if s != optuna.trial.TrialState.COMPLETE]


def test_user_attrs_of_a_running_trial_are_written_together(all_storage_url):
    """The job's attrs in one transaction: new and rewritten keys land, the trial object sees
    them; a finished trial refuses them as Optuna does; a FixedTrial takes them one by one."""
    from hpo.store._optuna import set_user_attrs

    storage_url = all_storage_url
    storage = open_storage(storage_url)
    study, _ = load_study(create_study(make_spec(unique("uattrs")), storage).study_name, storage)
    trial = study.ask()
    trial.set_user_attr("epochs_run", 0)
    set_user_attrs(trial, {"epochs_run": 2, "device": "cpu", "val_accuracy": 0.5})
    assert trial.user_attrs == {"epochs_run": 2, "device": "cpu", "val_accuracy": 0.5}
    reread = reopen(study.study_name, storage_url)
    assert reread.trials[0].user_attrs == {"epochs_run": 2, "device": "cpu", "val_accuracy": 0.5}
    study.tell(trial, 1.0)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        set_user_attrs(trial, {"epochs_run": 3})
    fixed = optuna.trial.FixedTrial({})
    set_user_attrs(fixed, {"device": "cpu"})
    assert fixed.user_attrs == {"device": "cpu"}


def test_sqlite_uses_wal(tmp_path):
    db = tmp_path / "w.db"
    open_storage(f"sqlite:///{db}")
    mode = sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_read_only_open_of_a_missing_sqlite_file_creates_nothing(tmp_path):
    db = tmp_path / "typo.db"
    with pytest.raises(StorageError, match="no database at"):
        open_storage(f"sqlite:///{db}", create=False)
    assert not db.exists()


@pytest.mark.parametrize("url", [
    "postgresql+psycopg2://bob:s3cr3t-pw@127.0.0.1:5999/x",
    "mysql+pymysql://bob:s3cr3t-pw@127.0.0.1:3399/x",
    "postgresql://bob:s3cr3t-pw@no-such-host.invalid/x",
])
def test_unreachable_database_is_one_line_fast_and_hides_the_password(url):
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        open_storage(url)
    assert time.monotonic() - started < 15
    message = str(info.value)
    assert "s3cr3t-pw" not in message and "***" in message
    assert "\n" not in message
    if "5999" in url:  # psycopg2's two sentences, kept apart
        assert "Connection refused. Is the server running" in message, message


def test_redact():
    assert redact("postgresql://u:pw@h/d") == "postgresql://u:***@h/d"
    assert redact("error for pw", "mysql://u:pw@h/d") == "error for ***"




def test_a_beating_trial_stays_a_silent_one_goes_stale_from_its_claim(all_storage_url,
                                                                      monkeypatch):
    """Heartbeats reach the storage (the proxy's database, the journal): a trial that beats
    is never stale; one claimed by a worker that died before its first beat is; a re-queued
    trial claimed again is not stale for its previous worker's last beat."""
    import hpo.store.storage
    from hpo.store._optuna import ask, requeue
    from hpo.run.worker import reap

    monkeypatch.setattr(hpo.store.storage, "HEARTBEAT_INTERVAL", 1)
    monkeypatch.setattr(hpo.store.storage, "GRACE_PERIOD", 1)
    storage = open_storage(all_storage_url)
    study, _ = load_study(create_study(make_spec(unique("beat")), storage).study_name, storage)
    attrs = {"host": "h", "worker": "h:w0", "pid": 1}
    beating = ask(study, attrs, [])
    silent = ask(study, attrs, [])  # ... and its worker dies here: no heartbeat thread
    queued = ask(study, attrs, [])
    requeue(study, queued)  # SIGTERM: back to the queue, its last beat at the claim
    for _ in range(8):
        storage.record_heartbeat(beating._trial_id)
        time.sleep(0.3)
    again = ask(study, {**attrs, "pid": 2},
                study.get_trials(states=(optuna.trial.TrialState.WAITING,)))
    assert again.number == queued.number
    assert reap(study) == [silent.number]
    states = {t.number: t.state for t in reopen(study.study_name, all_storage_url).trials}
    assert states[beating.number] == states[again.number] == optuna.trial.TrialState.RUNNING
    assert states[silent.number] == optuna.trial.TrialState.FAIL


@pytest.mark.slow
def test_a_plain_ask_gets_no_heartbeat_and_never_goes_stale(all_storage_url, monkeypatch):
    """A trial that Optuna code asks for through hpo's storage (``study.ask()``, no hpo
    worker) is nobody's claim: no heartbeat starts for it, so it is never failed as stale
    (hpo's reaping, or Optuna's ``fail_stale_trials``), and no hpo attr shows on it. Its
    neighbour claimed by hpo and left silent goes stale as before."""
    import hpo.store.storage
    from hpo.store._optuna import ask
    from hpo.run.worker import reap

    monkeypatch.setattr(hpo.store.storage, "HEARTBEAT_INTERVAL", 1)
    monkeypatch.setattr(hpo.store.storage, "GRACE_PERIOD", 1)
    storage = open_storage(all_storage_url)
    study, _ = load_study(create_study(make_spec(unique("plain")), storage).study_name, storage)
    plain = study.ask()
    silent = ask(study, {"host": "h", "worker": "h:w0", "pid": 1}, [])
    time.sleep(2.5)
    assert reap(study) == [silent.number]
    optuna.storages.fail_stale_trials(study)
    trial = reopen(study.study_name, all_storage_url).trials[plain.number]
    assert trial.state == optuna.trial.TrialState.RUNNING
    assert not [k for k in trial.system_attrs if k.startswith("hpo:")], trial.system_attrs


def test_every_storage_pickles_and_its_copy_reads_and_writes(all_storage_url):
    """A storage handed to another process (a process pool, ``pickle``) works there: the
    copy sees the study and writes to it. (Every storage class is defined at module level.)"""
    import pickle

    storage = open_storage(all_storage_url)
    study, _ = load_study(create_study(make_spec(unique("pickle")), storage).study_name, storage)
    copy = pickle.loads(pickle.dumps(storage))
    assert type(copy) is type(storage)
    study_id = copy.get_study_id_from_name(study.study_name)
    trial_id = copy.create_new_trial(study_id)
    copy.set_trial_user_attr(trial_id, "from", "the copy")
    assert storage.get_trial(trial_id).user_attrs == {"from": "the copy"}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["grpc", "journal"])
def test_workers_through_the_proxy_and_on_a_journal_meet_the_budget_and_resume_a_killed_trial(
        kind, request, tmp_path):
    """Three launched workers of the fast job: exactly the budget, no trial run twice, each
    trial with its worker's attrs, and a worker killed (SIGKILL) mid-trial: its trial is
    failed, retried and resumed from its checkpoint on another worker."""
    url = (request.getfixturevalue("storage_proxy") if kind == "grpc"
           else f"journal://{tmp_path / 'study.log'}")
    env = fast_env(tmp_path, epoch_seconds=0.3)
    name = make_study(tmp_path, url, n=12, low=3, high=4, env=env)
    launch = start_hpo("launch", name, "--storage", url, "--workers", "3", cwd=tmp_path,
                       env=env)
    try:
        def victim():
            for number, epoch, pid in reversed(epoch_log(tmp_path)):
                if epoch >= 2:
                    return number, epoch, pid
            return None

        number, _, pid = wait_for(victim, timeout=120, what="a trial two epochs in")
        os.kill(pid, signal.SIGKILL)
        out, _ = launch.communicate(timeout=300)
    finally:
        launch.kill()
    assert launch.returncode == 0, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    ts = reopen(name, url).trials
    assert len(finished(ts)) == 12
    assert not [t for t in ts if t.state == optuna.trial.TrialState.RUNNING]
    log = epoch_log(tmp_path)
    runs = Counter((n, e) for n, e, _ in log)
    assert max(runs.values()) == 1, [k for k, v in runs.items() if v > 1]  # none run twice
    for t in ts:
        assert {"host", "worker", "pid"} <= set(t.user_attrs), t.user_attrs
        assert t.user_attrs["pid"] == next(p for n, _, p in log if n == t.number)
    killed = ts[number]
    assert killed.state == optuna.trial.TrialState.FAIL
    assert killed.user_attrs["fail_reason"] == "worker died"
    retry = [t for t in ts if t.system_attrs.get("failed_trial") == number]
    assert len(retry) == 1 and retry[0].state == optuna.trial.TrialState.COMPLETE
    reached = max(e for n, e, _ in log if n == number)
    assert retry[0].user_attrs["resumed_from_epoch"] == reached


@pytest.mark.parametrize("url,words", [
    ("grpc://bob:s3cr3t-pw@127.0.0.1:13000", ["takes no user or password", "bob:***@"]),
    ("grpc://127.0.0.1:1", ["cannot connect to the storage proxy grpc://127.0.0.1:1",
                            "hpo storage-proxy"]),
    ("grpc://127.0.0.1:13000/db", ["expected grpc://HOST:PORT"]),
    ("grpc://:13000", ["expected grpc://HOST:PORT"]),
    ("journal:///no/such/dir/study.log", ["no journal at /no/such/dir/study.log"]),
])
def test_a_bad_proxy_or_journal_url_is_one_line_fast(url, words):
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        open_storage(url, create=False)
    assert time.monotonic() - started < 15
    message = str(info.value)
    assert "\n" not in message and "s3cr3t-pw" not in message
    for word in words:
        assert word in message, (word, message)


def test_a_journal_is_created_only_when_asked_and_another_file_is_refused(tmp_path):
    log = tmp_path / "study.log"
    with pytest.raises(StorageError, match="no journal at"):
        open_storage(f"journal://{log}", create=False)
    assert not log.exists()
    with pytest.raises(StorageError, match="does not exist"):
        open_storage(f"journal://{tmp_path / 'nodir' / 'x.log'}")
    db = tmp_path / "not-a-journal.db"
    open_storage(f"sqlite:///{db}")
    with pytest.raises(StorageError, match="is not an Optuna journal file"):
        open_storage(f"journal://{db}", create=False)
    open_storage(f"journal://{log}")
    assert log.is_file()  # created, empty: a journal with no study yet
    assert open_storage(f"journal://{log}", create=False).get_all_studies() == []


def test_optunas_own_proxy_is_refused_by_name(server_urls, tmp_path):
    """A plain Optuna proxy lacks hpo's claims and heartbeats: one line says so."""
    import socket

    from optuna.storages._grpc.server import make_server

    from conftest import server_url

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = make_server(optuna.storages.get_storage(f"sqlite:///{tmp_path / 'o.db'}"),
                         "127.0.0.1", port)
    server.start()
    try:
        with pytest.raises(StorageError, match="is not an hpo storage proxy"):
            open_storage(f"grpc://127.0.0.1:{port}", create=False)
    finally:
        server.stop(0)


@pytest.mark.slow
def test_workers_wait_through_a_proxy_restart(server_urls, tmp_path):
    """The proxy killed (SIGKILL) while workers train, and started again on its port: the
    workers' calls wait for it, as for a database restart, and the study finishes."""
    import re
    import socket
    import subprocess
    import sys

    from conftest import server_url

    database = server_url(server_urls, "postgresql")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"grpc://127.0.0.1:{port}"

    def proxy():
        env = {k: v for k, v in os.environ.items() if k != "HPO_STORAGE"}
        started = subprocess.Popen(
            [sys.executable, "-m", "hpo", "storage-proxy", "--storage", database, "--port",
             str(port)], env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        assert re.search(r"--storage grpc://", started.stdout.readline()
                         + started.stdout.readline()), "the proxy did not start"
        return started

    first = proxy()
    env = fast_env(tmp_path, epoch_seconds=0.3, HPO_GRACE_PERIOD="60")  # longer than the gap
    launch = None
    try:
        name = make_study(tmp_path, url, n=8, low=3, high=4, env=env)
        launch = start_hpo("launch", name, "--storage", url, "--workers", "2", cwd=tmp_path,
                           env=env)
        wait_for(lambda: len(epoch_log(tmp_path)) >= 3, timeout=120, what="training")
        first.kill()
        first.wait()
        time.sleep(3)  # calls fail meanwhile: the workers wait
        second = proxy()
        try:
            out, _ = launch.communicate(timeout=300)
            assert launch.returncode == 0, out[-3000:]
            assert "storage proxy unavailable" in out, out[-3000:]
            ts = reopen(name, url).trials
        finally:
            second.terminate()
            second.wait(timeout=20)
    finally:
        first.kill()
        if launch is not None:
            launch.kill()
    assert len(ts) == len(finished(ts)) == 8  # none failed, none left running
    runs = Counter((n, e) for n, e, _ in epoch_log(tmp_path))
    assert max(runs.values()) == 1


def test_a_worker_through_the_proxy_needs_no_database_driver(storage_proxy, tmp_path):
    """The worker runs its trials with the database drivers made unimportable: only the proxy
    talks to the database (and only it holds the URL with the credentials)."""
    import subprocess
    import sys

    from processes import ROOT, SUPPORT

    env = fast_env(tmp_path)
    name = make_study(tmp_path, storage_proxy, n=2, env=env)
    code = ("import sys\n"
            "sys.modules['psycopg2'] = sys.modules['pymysql'] = None  # ImportError if used\n"
            "from hpo.cli import main\n"
            f"code = main(['worker', {name!r}, '--storage', {storage_proxy!r}])\n"
            "assert 'psycopg2' not in sys.modules or sys.modules['psycopg2'] is None\n"
            "sys.exit(code)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300, env={**os.environ, **env,
                                                    "PYTHONPATH": f"{SUPPORT}:{ROOT}"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert len(finished(reopen(name, storage_proxy).trials)) == 2


@pytest.mark.slow
def test_children_forked_while_threads_use_the_proxy_are_not_aborted(storage_proxy):
    """The launcher starts its workers with a ``preexec_fn`` while its own threads may be
    calling the proxy: gRPC's fork handlers, run in such a child, aborted it now and then
    (SIGABRT, about 4 in 100 here, 2 of 128 workers in the scale benchmark)."""
    import subprocess
    import sys

    from processes import ROOT

    code = (
        "import subprocess, sys, threading\n"
        "from hpo.store.storage import open_storage\n"
        f"storage = open_storage({storage_proxy!r}, create=False)\n"
        "stop = threading.Event()\n"
        "def busy():\n"
        "    while not stop.is_set():\n"
        "        storage.get_all_studies()\n"
        "threads = [threading.Thread(target=busy) for _ in range(4)]\n"
        "[t.start() for t in threads]\n"
        "codes = [subprocess.run(['true'], preexec_fn=lambda: None).returncode\n"
        "         for _ in range(200)]\n"
        "stop.set()\n"
        "[t.join() for t in threads]\n"
        "print(sum(c != 0 for c in codes))\n")
    env = {k: v for k, v in os.environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[-1] == "0", r.stdout[-500:] + r.stderr[-2000:]
