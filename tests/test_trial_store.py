"""The trial-store contract (hpo/store/_optuna/_store.py) on every storage kind: SQLite, PostgreSQL,
MariaDB, the journal file and the gRPC proxy. What the worker and the schedulers rely on:
pauses queued before their tell, continuations claimed outside the budget, a continuation
replaced with other params leaving exactly one, and a worker killed between a pause and its
tell losing nothing. (Claims, the budget and heartbeats: tests/test_storage.py, on the same
five kinds.)"""

from __future__ import annotations

import time

import optuna
import pytest
from optuna.trial import TrialState

from hpo.store import _optuna
from hpo.records import PROMOTED_ATTR, PRUNE_REASON_ATTR, is_paused
from hpo.search.schedulers import Resume
from hpo.search.schedulers.continuation import configuration, queue_continuation
from hpo.store.storage import open_storage
from hpo.search.study import create_study, load_study
from specs import make_spec, unique

WORKER = {"host": "h", "worker": "h:w0", "pid": 1}


def _study(url: str, prefix: str, n_trials: int = 2) -> optuna.Study:
    storage = open_storage(url)
    spec = make_spec(unique(prefix), **{"n_trials: 5": f"n_trials: {n_trials}"})
    study, _ = load_study(create_study(spec, storage).study_name, storage)
    return study


def _run(study: optuna.Study, trial: optuna.Trial, values: dict[int, float]) -> None:
    trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    trial.suggest_int("epochs", 1, 6)
    trial.suggest_categorical("optimizer", ["adam", "sgd"])
    for step, value in values.items():
        trial.report(value, step)
    trial.set_user_attr("checkpoint", f"/ckpt/trial-{trial.number}.pt")


def _pause(study: optuna.Study, trial: optuna.Trial, step: int) -> optuna.trial.FrozenTrial:
    _optuna.set_user_attrs(trial, {PRUNE_REASON_ATTR: "paused"})
    queued = queue_continuation(study, _optuna.frozen(study, trial), step)
    _optuna.tell(study, trial, None, TrialState.PRUNED)
    return queued


def test_every_storage_kind_implements_the_trial_store(all_storage_url):
    study = _study(all_storage_url, "store")
    assert isinstance(_optuna.backend_of(study), _optuna.TrialStore)


def test_a_pause_is_resumed_outside_the_budget_and_keeps_its_progress(all_storage_url):
    """A budget of two configurations: one pauses, the other completes. The budget is then
    spent for new trials, but the continuation is claimed all the same (it resumes a
    configuration the budget counted), with the paused trial's params, curve and checkpoint;
    a second claim of it loses."""
    study = _study(all_storage_url, "pause")
    first = _optuna.ask(study, WORKER, [], budget=2)
    _run(study, first, {1: 0.9})
    _pause(study, first, 1)
    second = _optuna.ask(study, WORKER, [], budget=2)
    _run(study, second, {1: 0.5, 2: 0.4})
    _optuna.tell(study, second, 0.4, None)
    trials = study.get_trials(deepcopy=False)
    paused = [t for t in trials if is_paused(t)]
    assert len(paused) == 1 and paused[0].user_attrs["paused_from"] == first.number
    # New trials: refused, two configurations are finished.
    assert _optuna.ask(study, WORKER, [], budget=2) is None
    resumed = _optuna.ask(study, {**WORKER, PROMOTED_ATTR: True}, paused, create=False)
    assert resumed is not None and resumed.number == paused[0].number
    assert _optuna.ask(study, WORKER, paused, create=False) is None  # one winner
    now = _optuna.frozen(study, resumed)
    assert now.state == TrialState.RUNNING and now.params == first.params
    assert now.intermediate_values == {1: 0.9}
    assert now.user_attrs["checkpoint"] == f"/ckpt/trial-{first.number}.pt"
    assert configuration(now) == first.number and not is_paused(now)


def test_a_continuation_replaced_with_other_params_leaves_exactly_one(all_storage_url):
    """PBT's exploit: the claimed continuation is replaced by one with the parent's params,
    checkpoint and curve (queued first), then told PRUNED as exploited: one continuation of
    the configuration waits, with the new params, claimable again."""
    from hpo.run.worker._trial import _replace

    study = _study(all_storage_url, "replace")
    trial = _optuna.ask(study, WORKER, [], budget=2)
    _run(study, trial, {1: 0.9})
    _pause(study, trial, 1)
    paused = next(t for t in study.get_trials(deepcopy=False) if is_paused(t))
    claimed = _optuna.ask(study, {**WORKER, PROMOTED_ATTR: True}, [paused], create=False)
    lr = 0.05 if paused.params["lr"] != 0.05 else 0.02  # another value, inside the range
    new = {**paused.params, "lr": lr}
    _replace(study, claimed, Resume(paused, params=new, attrs={"checkpoint": "/ckpt/parent.pt"},
                                    intermediate_values={1: 0.3}, reason="exploited"))
    trials = study.get_trials(deepcopy=False)
    assert trials[claimed.number].state == TrialState.PRUNED
    assert trials[claimed.number].user_attrs[PRUNE_REASON_ATTR] == "exploited"
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert len(waiting) == 1 and is_paused(waiting[0])
    assert waiting[0].params["lr"] == pytest.approx(new["lr"])
    assert waiting[0].user_attrs["checkpoint"] == "/ckpt/parent.pt"
    assert waiting[0].intermediate_values == {1: 0.3}
    assert waiting[0].user_attrs["paused_from"] == claimed.number
    assert configuration(waiting[0]) == trial.number


@pytest.mark.slow
def test_a_worker_killed_between_a_pause_and_its_tell_loses_nothing(all_storage_url,
                                                                     monkeypatch):
    """The pause is queued, and the worker dies before it tells the trial: the trial goes
    stale and is told PRUNED as the pause it was (its continuation runs the configuration on;
    no retry), so the configuration waits once, paused, and the budget still counts it, on
    every kind of storage. (Failed, it counted nowhere: a budget of n ran n + 1
    configurations.)"""
    import hpo.store.storage
    from hpo.run.worker import reap

    monkeypatch.setattr(hpo.store.storage, "HEARTBEAT_INTERVAL", 1)
    monkeypatch.setattr(hpo.store.storage, "GRACE_PERIOD", 1)
    study = _study(all_storage_url, "killed")
    trial = _optuna.ask(study, WORKER, [])
    _run(study, trial, {1: 0.9})
    _optuna.set_user_attrs(trial, {PRUNE_REASON_ATTR: "paused"})
    queue_continuation(study, _optuna.frozen(study, trial), 1)  # ... and the worker dies here
    time.sleep(2.5)
    assert reap(study) == [trial.number]
    trials = study.get_trials(deepcopy=False)
    assert trials[trial.number].state == TrialState.PRUNED
    assert trials[trial.number].value == pytest.approx(0.9)  # as a tell of PRUNED sets it
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert len(waiting) == 1 and is_paused(waiting[0])
    assert configuration(waiting[0]) == trial.number
    assert _optuna.ask(study, WORKER, [], budget=1) is None  # the configuration counts


@pytest.mark.parametrize("reason", ["worker died", "reaped"])
def test_a_dead_worker_s_pause_is_told_pruned_by_its_launcher_too(tmp_path, reason):
    """The launcher saw the worker die (``reap_process``), or ``hpo reap --all``: a trial
    whose pause was queued is told PRUNED, not failed, and gets no retry."""
    from hpo.run.worker import reap
    from hpo.run.worker._housekeeping import reap_process

    study = _study(f"sqlite:///{tmp_path / 'hpo.db'}", "dead")
    trial = _optuna.ask(study, WORKER, [])
    _run(study, trial, {1: 0.9})
    _optuna.set_user_attrs(trial, {PRUNE_REASON_ATTR: "paused"})
    queue_continuation(study, _optuna.frozen(study, trial), 1)
    if reason == "reaped":
        assert reap(study, everything=True) == [trial.number]
    else:
        assert reap_process(study, "h", 1) == [trial.number]
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.PRUNED, TrialState.WAITING]
    assert "fail_reason" not in trials[0].user_attrs
    assert _optuna.ask(study, WORKER, [], budget=1) is None
