"""Storage and study on every backend: SQLite, PostgreSQL, MariaDB (real servers)."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import optuna
import pytest
import yaml

from hpo import __version__
from hpo.errors import SpecError, StorageError, StudyNotFoundError
from hpo.spec import parse_spec
from hpo.storage import open_storage, redact
from hpo.study import SPEC_ATTR, VERSION_ATTR, create_study, load_study, make_pruner, make_sampler

SPEC = """
task: {kind: image_classification, model: resnet18, dataset: {name: digits}}
search_space:
  lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
  epochs: {type: int, low: 1, high: 6}
  optimizer: {type: categorical, choices: [adam, sgd]}
budget: {n_trials: 5}
"""


def make_spec(name: str, extra: str = "", **replace: str):
    text = SPEC + extra
    for old, new in replace.items():
        text = text.replace(old, new)
    return parse_spec(yaml.safe_load(text), default_name=name)


def unique(prefix: str) -> str:
    return f"{prefix}-{time.time_ns()}"


def test_study_stores_the_whole_spec_and_loads_by_name(storage_url):
    spec = make_spec(unique("store"))
    study = create_study(spec, open_storage(storage_url))
    attrs = study.user_attrs
    assert attrs[VERSION_ATTR] == __version__
    assert parse_spec(attrs[SPEC_ATTR]) == spec
    # A worker elsewhere needs only the name and the URL.
    loaded, loaded_spec = load_study(spec.study.name, open_storage(storage_url, create=False))
    assert loaded_spec == spec
    assert isinstance(loaded.sampler, optuna.samplers.TPESampler)
    assert isinstance(loaded.pruner, optuna.pruners.MedianPruner)


def test_rerun_loads_and_may_change_only_the_budget(storage_url):
    name = unique("rerun")
    storage = open_storage(storage_url)
    create_study(make_spec(name), storage)
    create_study(make_spec(name), storage)  # same spec: resume
    create_study(make_spec(name, **{"n_trials: 5": "n_trials: 9"}), storage)
    _, spec = load_study(name, storage)
    assert spec.budget.n_trials == 9
    with pytest.raises(SpecError, match="different search_space.lr"):
        create_study(make_spec(name, **{"low: 1.0e-4": "low: 1.0e-3"}), storage)
    assert len(optuna.get_all_study_names(storage)) == len(set(optuna.get_all_study_names(storage)))


def test_many_workers_creating_one_study_do_not_race(storage_url):
    name = unique("race")
    spec = make_spec(name)
    errors = []

    def create() -> None:
        try:
            create_study(spec, open_storage(storage_url))
        except Exception as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=create) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert optuna.get_all_study_names(open_storage(storage_url)).count(name) == 1


def test_unknown_study_lists_the_studies_there_are(storage_url):
    storage = open_storage(storage_url)
    name = unique("known")
    create_study(make_spec(name), storage)
    with pytest.raises(StudyNotFoundError, match=f"no hpo study named 'nosuch'.*{name}"):
        load_study("nosuch", storage)


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
    from hpo.storage import set_user_attrs

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


SAMPLERS = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
            "gp": optuna.samplers.GPSampler, "cmaes": optuna.samplers.CmaEsSampler,
            "qmc": optuna.samplers.QMCSampler, "grid": optuna.samplers.GridSampler}


@pytest.mark.parametrize("name", SAMPLERS)
def test_sampler_factory(name):
    extra = f"sampler: {{name: {name}, seed: 3}}\n"
    spec = make_spec("s", extra, **{"log: true}": "step: 1.0e-4}"} if name == "grid" else {})
    sampler = make_sampler(spec, seed_offset=2)
    assert isinstance(sampler, SAMPLERS[name])
    # Different workers sample differently, the same worker reproducibly.
    def first(offset):
        study = optuna.create_study(sampler=make_sampler(spec, offset))
        t = study.ask()
        return t.suggest_float("lr", 1e-4, 1e-1, log=name != "grid",
                               step=1e-4 if name == "grid" else None)
    if name in ("random", "qmc"):
        assert first(0) == first(0) and first(0) != first(1)


PRUNERS = {
    "median": ("", optuna.pruners.MedianPruner),
    "percentile": ("percentile: 25", optuna.pruners.PercentilePruner),
    "successive_halving": ("", optuna.pruners.SuccessiveHalvingPruner),
    "hyperband": ("", optuna.pruners.HyperbandPruner),
    "patient": ("patience: 2, wrapped: {name: median}", optuna.pruners.PatientPruner),
    "threshold": ("upper: 5.0", optuna.pruners.ThresholdPruner),
    "none": ("", optuna.pruners.NopPruner),
}


@pytest.mark.parametrize("name", PRUNERS)
def test_pruner_factory(name):
    options, cls = PRUNERS[name]
    extra = f"pruner: {{name: {name}{', ' + options if options else ''}}}\n"
    assert isinstance(make_pruner(make_spec("p", extra)), cls)


def test_hyperband_max_resource_is_the_largest_epochs():
    pruner = make_pruner(make_spec("h", "pruner: {name: hyperband}\n"))
    assert pruner._max_resource == 6
