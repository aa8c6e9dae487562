"""Storage on every backend: SQLite, PostgreSQL, MariaDB (real servers): hpo's storage class
(claims, attrs with the trial, heartbeats and retries), opening a URL, redaction."""

from __future__ import annotations

import sqlite3
import threading
import time

import optuna
import pytest

from hpo.errors import StorageError
from hpo.storage import open_storage, redact
from hpo.study import create_study, load_study
from specs import make_spec, unique

def test_dead_worker_trial_is_failed_and_requeued_with_its_values(storage_url, monkeypatch):
    import hpo.storage

    monkeypatch.setattr(hpo.storage, "HEARTBEAT_INTERVAL", 1)
    monkeypatch.setattr(hpo.storage, "GRACE_PERIOD", 1)
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


def test_worker_trials_carry_host_and_worker_and_queued_trials_go_first(storage_url):
    """The worker's attrs go in with the trial's creation (one transaction, hpo's storage
    class); a queued trial is taken before a new one is created, and keeps its own attrs."""
    from hpo._optuna import ask as _ask

    storage = open_storage(storage_url)
    study, _ = load_study(create_study(make_spec(unique("attrs")), storage).study_name, storage)
    study.enqueue_trial({"lr": 0.01}, user_attrs={"note": "queued"})
    attrs = {"host": "node-a", "worker": "node-a:w3"}
    seen = study.get_trials()  # what two workers read at the same moment: trial 0 queued
    queued = _ask(study, attrs, seen)
    new = _ask(study, attrs, seen)  # its claim of trial 0 fails: it creates trial 1
    assert (queued.number, new.number) == (0, 1)
    assert queued.suggest_float("lr", 1e-4, 1e-1, log=True) == 0.01  # the queued params
    reread = optuna.load_study(study_name=study.study_name, storage=storage_url)
    first, second = reread.get_trials()
    assert first.user_attrs == {"note": "queued", "host": "node-a", "worker": "node-a:w3"}
    assert second.user_attrs == attrs
    assert [first.state, second.state] == [optuna.trial.TrialState.RUNNING] * 2
    assert second.datetime_start is not None


def test_a_queued_trial_is_claimed_once_and_the_budget_never_overshot(storage_url):
    """Several workers (each its own connection) claim at the same moment: a queued trial goes
    to exactly one of them, and new trials stop at the budget, however many ask at once."""
    from hpo._optuna import ask

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


def test_user_attrs_of_a_running_trial_are_written_together(storage_url):
    """The job's attrs in one transaction: new and rewritten keys land, the trial object sees
    them; a finished trial refuses them as Optuna does; a FixedTrial takes them one by one."""
    from hpo._optuna import set_user_attrs

    storage = open_storage(storage_url)
    study, _ = load_study(create_study(make_spec(unique("uattrs")), storage).study_name, storage)
    trial = study.ask()
    trial.set_user_attr("epochs_run", 0)
    set_user_attrs(trial, {"epochs_run": 2, "device": "cpu", "val_accuracy": 0.5})
    assert trial.user_attrs == {"epochs_run": 2, "device": "cpu", "val_accuracy": 0.5}
    reread = optuna.load_study(study_name=study.study_name, storage=storage_url)
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


