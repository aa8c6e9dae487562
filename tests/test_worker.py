"""Workers in parallel, on every backend: the global budget, kills, preemption, recycling.

The trials run ``fastjob.epochs_job`` (a custom task): the same epoch loop, reports,
checkpoints and resume as a fine-tuning job, in milliseconds, so that these tests exercise the
worker machinery (budget, heartbeat, retry, re-queue, recycling) at scale. Database outages
are in test_outage.py, checkpoint retention and reaping in test_housekeeping.py.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import pytest
from optuna.trial import TrialState

from conftest import run_hpo
from processes import start_hpo, wait_for
from workers import FAST, epoch_log, fast_env, fast_study, finished, make_study, trials

# --------------------------------------------------------------------------------------------
# The global budget across parallel workers.


@pytest.mark.slow
def test_four_workers_meet_the_budget_exactly(storage_url, tmp_path):
    env = fast_env(tmp_path, epoch_seconds=0.05)
    name = make_study(tmp_path, storage_url, n=40, env=env)
    r = run_hpo("launch", name, "--storage", storage_url, "--workers", "4", cwd=tmp_path,
                env=env)
    assert r.returncode == 0, r.stdout[-3000:]
    ts = trials(name, storage_url)
    numbers = [t.number for t in ts]
    assert len(numbers) == len(set(numbers))
    assert len(finished(ts)) == 40
    assert not [t for t in ts if t.state == TrialState.RUNNING]
    workers = Counter(t.user_attrs["worker"] for t in finished(ts))
    assert len(workers) == 4, workers  # every worker took part
    assert "database is locked" not in r.stdout


def test_simultaneous_asks_past_the_budget_leave_exactly_the_later_ones_surplus(tmp_path):
    """Four workers ask for the budget's last trial at once: the three later ones yield, in
    whatever order they check, and a failed trial does not count against the budget."""
    from hpo.spec import parse_spec
    from hpo.store.storage import open_storage
    from hpo.search.study import create_study
    from hpo.run.worker import over_budget
    import yaml

    spec = parse_spec(yaml.safe_load(FAST.format(name="asks", n=3, low=1, high=2,
                                                 pruner="none")), source="<asks>")
    study = create_study(spec, open_storage(f"sqlite:///{tmp_path / 'asks.db'}"))
    failed = study.ask()
    study.tell(failed, state=TrialState.FAIL)
    done = study.ask()
    study.tell(done, 1.0)
    asked = [study.ask() for _ in range(4)]  # numbers 2 to 5, all RUNNING at once
    verdicts = {t.number: over_budget(study, spec, t.number) for t in reversed(asked)}
    assert verdicts == {2: False, 3: False, 4: True, 5: True}


@pytest.mark.slow
def test_four_sqlite_workers_100_trials_without_lock_errors(tmp_path):
    url = f"sqlite:///{tmp_path / 'many.db'}"
    env = fast_env(tmp_path)
    name = make_study(tmp_path, url, n=100, low=1, high=2, env=env)
    r = run_hpo("launch", name, "--storage", url, "--workers", "4", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "locked" not in r.stdout.lower()
    ts = trials(name, url)
    states = Counter(t.state.name for t in ts)
    assert len(finished(ts)) == 100, (states, r.stdout[-3000:])
    assert not states["RUNNING"] + states["FAIL"], (states, r.stdout[-3000:])


# --------------------------------------------------------------------------------------------
# Faults.


@pytest.mark.slow
def test_kill_9_three_times_each_trial_resumes_where_it_was(tmp_path):
    url = f"sqlite:///{tmp_path / 'chaos.db'}"
    env = fast_env(tmp_path, epoch_seconds=0.4)
    name = make_study(tmp_path, url, n=8, low=5, high=6, env=env)
    launch = start_hpo("launch", name, "--storage", url, "--workers", "2", cwd=tmp_path,
                       env=env)
    killed = {}
    try:
        for _ in range(3):
            def victim():
                log = epoch_log(tmp_path)
                running = {t.number for t in trials(name, url) if t.state == TrialState.RUNNING
                           and t.number not in killed
                           and "failed_trial" not in t.system_attrs}  # not a retry
                for number, epoch, pid in reversed(log):
                    if number in running and epoch >= 2:
                        return number, epoch, pid
                return None
            number, _, pid = wait_for(victim, what="a trial two epochs in")
            os.kill(pid, signal.SIGKILL)
            killed[number] = pid
        out, _ = launch.communicate(timeout=240)
    finally:
        launch.kill()
    assert launch.returncode == 0, out[-3000:]
    assert "restart" in out
    ts = trials(name, url)
    assert len(finished(ts)) == 8
    assert not [t for t in ts if t.state == TrialState.RUNNING]
    log = epoch_log(tmp_path)
    for number in killed:
        original = ts[number]
        assert original.state == TrialState.FAIL
        retry = [t for t in ts if t.system_attrs.get("failed_trial") == number]
        assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
        retry = retry[0]
        reached = max(e for n, e, _ in log if n == number)
        assert retry.user_attrs["resumed_from_epoch"] == reached
        redone = [e for n, e, _ in log if n == retry.number]
        assert min(redone) == reached + 1  # nothing redone past the last checkpoint
        assert set(retry.intermediate_values) == set(range(1, retry.params["epochs"] + 1))


@pytest.mark.slow
def test_sigterm_requeues_the_trial_without_a_failure(storage_url, tmp_path):
    env = fast_env(tmp_path, epoch_seconds=0.5)
    name = make_study(tmp_path, storage_url, n=2, low=6, high=6, env=env)
    worker = start_hpo("worker", name, "--storage", storage_url, cwd=tmp_path, env=env)
    wait_for(lambda: any(e >= 2 for _, e, _ in epoch_log(tmp_path)), what="epoch 2")
    sent = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    out, _ = worker.communicate(timeout=30)
    assert time.monotonic() - sent < 30
    assert worker.returncode == 143, out
    ts = trials(name, storage_url)
    assert [t.state for t in ts] == [TrialState.WAITING]
    reached = max(e for _, e, _ in epoch_log(tmp_path))
    assert set(ts[0].intermediate_values) == set(range(1, reached + 1))

    r = run_hpo("worker", name, "--storage", storage_url, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout
    ts = trials(name, storage_url)
    assert [t.state for t in ts] == [TrialState.COMPLETE, TrialState.COMPLETE]
    assert ts[0].user_attrs["resumed_from_epoch"] == reached
    assert not [t for t in ts if t.state == TrialState.FAIL]


@pytest.mark.slow
@pytest.mark.parametrize("gap", [0.0, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016])
def test_a_second_sigterm_does_not_cut_the_requeue_short(gap, tmp_path):
    url = f"sqlite:///{tmp_path / 'twice.db'}"
    env = fast_env(tmp_path, epoch_seconds=0.3)
    name = make_study(tmp_path, url, n=1, low=6, high=6, env=env)
    worker = start_hpo("worker", name, "--storage", url, cwd=tmp_path, env=env)
    wait_for(lambda: epoch_log(tmp_path), what="epoch 1")
    worker.send_signal(signal.SIGTERM)
    time.sleep(gap)
    worker.send_signal(signal.SIGTERM)  # e.g. the kernel's, after a launcher's own
    out, _ = worker.communicate(timeout=30)
    assert [t.state for t in trials(name, url)] == [TrialState.WAITING], out


@pytest.mark.slow
def test_ctrl_c_on_the_launcher_requeues_and_exits(tmp_path):
    url = f"sqlite:///{tmp_path / 'int.db'}"
    env = fast_env(tmp_path, epoch_seconds=0.5)
    name = make_study(tmp_path, url, n=6, low=6, high=6, env=env)
    launch = start_hpo("launch", name, "--storage", url, "--workers", "2", cwd=tmp_path,
                       env=env)
    wait_for(lambda: len({n for n, _, _ in epoch_log(tmp_path)}) >= 2, what="two trials")
    launch.send_signal(signal.SIGINT)
    out, _ = launch.communicate(timeout=40)
    assert launch.returncode == 130, out
    ts = trials(name, url)
    assert not [t for t in ts if t.state in (TrialState.RUNNING, TrialState.FAIL)]
    assert len([t for t in ts if t.state == TrialState.WAITING]) == 2


@pytest.mark.slow
def test_workers_recycle_their_process_and_still_meet_the_budget(tmp_path):
    url = f"sqlite:///{tmp_path / 'recycle.db'}"
    env = fast_env(tmp_path)
    name = make_study(tmp_path, url, n=7, env=env)
    r = run_hpo("launch", name, "--storage", url, "--workers", "2",
                "--max-trials-per-process", "2", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout
    assert r.stdout.count("recycling the worker process") >= 2
    assert len({pid for _, _, pid in epoch_log(tmp_path)}) >= 4
    assert len(finished(trials(name, url))) == 7


# --------------------------------------------------------------------------------------------
# The trial lifecycle: claims, a relaunched worker's samples.


@pytest.mark.slow
def test_a_claimed_trial_is_stale_from_its_first_moment(storage_url, tmp_path, monkeypatch):
    """A worker that dies between claiming a trial and starting its heartbeat thread leaves
    a trial the stale-trial search finds; a re-queued trial, claimed again, is not stale
    because of its previous worker's last heartbeat."""
    import hpo.store.storage
    from hpo.store._optuna import ask, requeue
    from hpo.run.worker import reap

    monkeypatch.setattr(hpo.store.storage, "HEARTBEAT_INTERVAL", 1)
    monkeypatch.setattr(hpo.store.storage, "GRACE_PERIOD", 1)
    study = fast_study(storage_url, f"claim-{time.time_ns()}")
    attrs = {"host": "h", "worker": "h:w0", "pid": 1}
    claimed = ask(study, attrs, [])  # ... and the worker dies here: no heartbeat thread
    queued = ask(study, attrs, [])
    queued.report(0.5, 1)
    requeue(study, queued)  # SIGTERM: back to the queue, its last heartbeat at the claim
    time.sleep(2.5)
    again = ask(study, {**attrs, "pid": 2}, study.get_trials(states=(TrialState.WAITING,)))
    assert again.number == queued.number
    assert reap(study) == [claimed.number]
    states = {t.number: t.state for t in study.get_trials()}
    assert states[claimed.number] == TrialState.FAIL
    assert states[again.number] == TrialState.RUNNING
    assert study.get_trials()[again.number].user_attrs["pid"] == 2


@pytest.mark.slow
def test_a_relaunched_worker_does_not_repeat_its_predecessors_trials(tmp_path):
    url = f"sqlite:///{tmp_path / 'seeds.db'}"
    env = fast_env(tmp_path)
    name = make_study(tmp_path, url, n=3, low=1, high=1, env=env)
    for n in ("3", "6"):  # the same slot (w0), a second process
        r = run_hpo("launch", name, "--storage", url, "--workers", "1", "--n-trials", n,
                    cwd=tmp_path, env=env)
        assert r.returncode == 0, r.stdout
    lrs = [t.params["lr"] for t in trials(name, url)]
    assert len(lrs) == 6 and len(set(lrs)) == 6, lrs


def test_a_sampler_that_fails_fails_the_trial_with_its_reason(tmp_path):
    """An error while the params are sampled (the sampler's, before the job starts) fails
    the trial with the error as its fail_reason, as a job's error does (it showed as
    'unknown error')."""
    import optuna

    from hpo.run.worker._objective import Objective
    from hpo.run.worker._trial import run_trial
    from hpo.search.schedulers import scheduler_of
    from hpo.search.study import create_study, load_study
    from hpo.store.storage import open_storage
    from specs import make_spec, unique

    class Broken(optuna.samplers.RandomSampler):
        def sample_independent(self, study, trial, name, distribution):
            raise RuntimeError("the sampler broke")

    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study, spec = load_study(create_study(make_spec(unique("broken")), storage).study_name,
                             storage)
    study.sampler = Broken()
    objective = Objective(study, spec, scheduler_of(study), {}, tmp_path, None)
    number = run_trial(study, spec, objective, {"host": "h", "worker": "w", "pid": 1}, [])
    trial = study.get_trials()[number]
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["fail_reason"] == "RuntimeError: the sampler broke"


def test_a_grid_study_runs_every_point_once_and_its_worker_lives(tmp_path):
    """The grid sampler stops Optuna's study once its grid is spent (``study.stop()``), which
    raises outside ``study.optimize``: the worker that told the last point died (exit 1).
    hpo's budget ends a grid study; with no ``n_trials`` it is the grid's size."""
    env = fast_env(tmp_path)
    spec = tmp_path / "grid.yaml"
    spec.write_text(
        "study: {name: grid}\n"
        'task: {kind: custom, entrypoint: "fastjob:epochs_job"}\n'
        "search_space:\n"
        "  lr: {type: categorical, choices: [0.001, 0.01, 0.1]}\n"
        "  epochs: {type: int, low: 1, high: 2}\n"
        "sampler: {name: grid}\npruner: {name: none}\nbudget: {n_trials: null}\n")
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    r = run_hpo("run", str(spec), "--storage", url, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "worker died" not in r.stdout and "Study.stop" not in r.stdout, r.stdout[-3000:]
    ts = trials("grid", url)
    assert [t.state for t in ts] == [TrialState.COMPLETE] * 6
    assert sorted((t.params["lr"], t.params["epochs"]) for t in ts) == sorted(
        (lr, e) for lr in (0.001, 0.01, 0.1) for e in (1, 2))
