"""Workers in parallel, on every backend, surviving kills, preemption and database restarts.

The trials run ``fastjob.epochs_job`` (a custom task): the same epoch loop, reports,
checkpoints and resume as a fine-tuning job, in milliseconds, so that these tests exercise the
worker machinery (budget, heartbeat, retry, re-queue, recycling) at scale.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import ROOT, run_hpo

FAST = """
study: {{name: {name}}}
task: {{kind: custom, entrypoint: "fastjob:epochs_job"}}
search_space:
  lr: {{type: float, low: 1.0e-5, high: 1.0e-1, log: true}}
  epochs: {{type: int, low: {low}, high: {high}}}
sampler: {{name: random, seed: 0}}
pruner: {{name: {pruner}}}
budget: {{n_trials: {n}}}
"""


def fast_env(tmp_path: Path, epoch_seconds: float = 0.0, **extra: str) -> dict[str, str]:
    return {
        "PYTHONPATH": str(ROOT / "tests"),
        "FASTJOB_EPOCH_SECONDS": str(epoch_seconds),
        "FASTJOB_LOG": str(tmp_path / "epochs.log"),
        "HPO_HEARTBEAT_INTERVAL": "1",
        "HPO_GRACE_PERIOD": "3",
        "HPO_CHECKPOINT_DIR": str(tmp_path / "ckpt"),
        **extra,
    }


def make_study(tmp_path, storage_url, n, low=1, high=3, pruner="none", env=None) -> str:
    name = f"fast-{time.time_ns()}"
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(FAST.format(name=name, n=n, low=low, high=high, pruner=pruner))
    r = run_hpo("create", str(spec), "--storage", storage_url, cwd=tmp_path,
                env=env or fast_env(tmp_path))
    assert r.returncode == 0, r.stderr
    return name


def trials(name, url):
    return optuna.load_study(study_name=name, storage=url).get_trials()


def finished(ts):
    return [t for t in ts if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def epoch_log(tmp_path) -> list[tuple[int, int, int]]:
    path = tmp_path / "epochs.log"
    if not path.exists():
        return []
    return [tuple(map(int, line.split())) for line in path.read_text().splitlines()]


def start_hpo(*args, cwd, env) -> subprocess.Popen:
    full = {k: v for k, v in os.environ.items() if k != "HPO_STORAGE"}
    full.update(PYTHONUNBUFFERED="1", **env)
    return subprocess.Popen([sys.executable, "-m", "hpo", *args], cwd=cwd, env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(predicate, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


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
    from hpo.storage import open_storage
    from hpo.study import create_study
    from hpo.worker import over_budget
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
def test_reap_all_requeues_the_trials_of_a_dead_worker(tmp_path):
    url = f"sqlite:///{tmp_path / 'reap.db'}"
    env = fast_env(tmp_path, epoch_seconds=0.5, HPO_HEARTBEAT_INTERVAL="60")
    name = make_study(tmp_path, url, n=1, low=6, high=6, env=env)
    worker = start_hpo("worker", name, "--storage", url, cwd=tmp_path, env=env)
    wait_for(lambda: any(e >= 1 for _, e, _ in epoch_log(tmp_path)), what="epoch 1")
    worker.kill()
    worker.wait()
    r = run_hpo("reap", name, "--storage", url, cwd=tmp_path, env=env)
    assert r.returncode == 0 and "reaped 0" in r.stdout  # heartbeat still fresh
    r = run_hpo("reap", name, "--all", "--storage", url, cwd=tmp_path, env=env)
    assert r.returncode == 0 and "reaped 1 trial(s): #0" in r.stdout, r.stdout
    ts = trials(name, url)
    assert [t.state for t in ts] == [TrialState.FAIL, TrialState.WAITING]
    assert ts[1].user_attrs["checkpoint"] == ts[0].user_attrs["checkpoint"]


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


@pytest.mark.slow
def test_checkpoints_of_pruned_and_worse_trials_are_deleted(tmp_path):
    url = f"sqlite:///{tmp_path / 'keep.db'}"
    env = fast_env(tmp_path)
    name = make_study(tmp_path, url, n=12, low=2, high=4, env=env)
    r = run_hpo("worker", name, "--storage", url, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout
    ts = sorted((t for t in trials(name, url) if t.state == TrialState.COMPLETE),
                key=lambda t: t.value)
    kept = sorted(p.name for p in (tmp_path / "ckpt" / name).glob("*.pt"))
    assert kept == sorted(f"trial-{t.number}.pt" for t in ts[:3])


def _restart_postgresql() -> None:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
                   check=True, capture_output=True, timeout=120)


@pytest.mark.slow
def test_postgresql_restart_mid_study_loses_nothing(server_urls, tmp_path):
    url = server_urls["postgresql"]
    if isinstance(url, Exception):
        if os.environ.get("CI") == "true":
            pytest.fail(str(url))
        pytest.skip(str(url))
    if not os.path.isdir("/etc/postgresql") or os.geteuid() != 0:
        pytest.skip("restarting PostgreSQL needs its local cluster and root")
    env = fast_env(tmp_path, epoch_seconds=0.3)
    name = make_study(tmp_path, url, n=12, low=3, high=4, env=env)
    launch = start_hpo("launch", name, "--storage", url, "--workers", "2", cwd=tmp_path,
                       env=env)
    try:
        wait_for(lambda: len(finished(trials(name, url))) >= 3, timeout=120,
                 what="three finished trials")
        _restart_postgresql()
        out, _ = launch.communicate(timeout=300)
    finally:
        launch.kill()
    assert launch.returncode == 0, out[-3000:]
    ts = trials(name, url)
    assert len(finished(ts)) == 12
    assert not [t for t in ts if t.state == TrialState.RUNNING]


# --------------------------------------------------------------------------------------------
# The trial lifecycle: database outages, claims, checkpoints a retry needs.


def _proxied_postgresql(server_urls, cut_after=None):
    """The session's PostgreSQL database behind a proxy the test can cut: (proxy, url)."""
    from dbproxy import Proxy

    url = server_urls["postgresql"]
    if isinstance(url, Exception):
        if os.environ.get("CI") == "true":
            pytest.fail(str(url))
        pytest.skip(str(url))
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


def _study(storage_url, tmp_path, name):
    import yaml

    from hpo.spec import parse_spec
    from hpo.storage import open_storage
    from hpo.study import create_study

    spec = parse_spec(yaml.safe_load(FAST.format(name=name, n=3, low=1, high=2,
                                                 pruner="none")), source="<lifecycle>")
    return create_study(spec, open_storage(storage_url))


def test_a_claimed_trial_is_stale_from_its_first_moment(storage_url, tmp_path, monkeypatch):
    """A worker that dies between claiming a trial and starting its heartbeat thread leaves
    a trial the stale-trial search finds; a re-queued trial, claimed again, is not stale
    because of its previous worker's last heartbeat."""
    import hpo.storage
    from hpo._optuna import ask, requeue
    from hpo.worker import reap

    monkeypatch.setattr(hpo.storage, "HEARTBEAT_INTERVAL", 1)
    monkeypatch.setattr(hpo.storage, "GRACE_PERIOD", 1)
    study = _study(storage_url, tmp_path, f"claim-{time.time_ns()}")
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


def test_a_checkpoint_a_retry_will_resume_from_is_never_deleted(storage_url, tmp_path):
    """Worker B fails a stale trial and then queues its retry; worker A's checkpoint retention
    runs between the two, from a snapshot in which the trial is failed and has no retry yet."""
    from hpo.worker import retain_checkpoints

    study = _study(storage_url, tmp_path, f"keep-{time.time_ns()}")
    storage = study._storage
    old = tmp_path / "trial-0.pt"
    old.write_text("{}")
    trial = study.ask()
    trial.set_user_attr("checkpoint", str(old))
    # B, first half of the stale-trial search: the trial is failed ...
    storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    # ... A, right then: retention from a fresh read ...
    retain_checkpoints(study.get_trials())
    # ... B, second half: the retry is queued, to resume from the checkpoint.
    storage.get_heartbeat_stale_trial_callback()(study, storage.get_trial(trial._trial_id))
    assert old.exists(), "the retry's checkpoint was deleted before the retry was queued"
    retry = study.ask()
    assert retry.user_attrs["checkpoint"] == str(old)
    # Once the retry saved its own checkpoint and finished, the failed trial's file goes; a
    # failure the job raised (never retried) loses its checkpoint too.
    new = tmp_path / "trial-1.pt"
    new.write_text("{}")
    retry.set_user_attr("checkpoint", str(new))
    study.tell(retry, 1.0)
    broken = study.ask()
    crashed = tmp_path / "trial-2.pt"
    crashed.write_text("{}")
    broken.set_user_attr("checkpoint", str(crashed))
    broken.set_user_attr("fail_reason", "nan")
    study.tell(broken, state=TrialState.FAIL)
    retain_checkpoints(study.get_trials())
    assert not old.exists() and new.exists() and not crashed.exists()
    # A trial failed because its worker died keeps its checkpoint until its retry exists.
    from hpo._optuna import fail_and_retry

    dying = study.ask()
    kept = tmp_path / "trial-3.pt"
    kept.write_text("{}")
    dying.set_user_attr("checkpoint", str(kept))
    assert fail_and_retry(study, [study.get_trials()[dying.number]], "worker died") == [3]
    retain_checkpoints(study.get_trials())
    assert kept.exists()


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

    direct = server_urls["postgresql"]
    if isinstance(direct, Exception):
        pytest.skip(str(direct))
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


# --------------------------------------------------------------------------------------------
# The artifact store: the best trials' checkpoints, no more.


def test_an_upload_leaves_the_artifact_store_when_its_trial_leaves_the_best(tmp_path,
                                                                            monkeypatch):
    """Trials that complete among the best 3 upload their checkpoint (a hard link to it, not
    a copy); retention removes the upload when a better trial pushes its trial out. A retry
    inherits its failed attempt's artifact id: kept while the retry may run, removed when the
    retry finishes outside the best."""
    from hpo._optuna import fail_and_retry
    from hpo.artifacts import ARTIFACTS_VAR, CHECKPOINT_ARTIFACT_ATTR, upload_checkpoint
    from hpo.worker import retain_checkpoints

    monkeypatch.delenv(ARTIFACTS_VAR, raising=False)
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    study = _study(url, tmp_path, "uploads")
    store = tmp_path / "hpo-artifacts"

    def trained(name: str) -> tuple[optuna.Trial, str]:
        trial = study.ask()
        path = tmp_path / f"{name}.pt"
        path.write_bytes(os.urandom(4096))
        trial.set_user_attr("checkpoint", str(path))
        return trial, upload_checkpoint(trial, path, url)  # what the worker does

    def stored() -> set[str]:
        return {p.name for p in store.iterdir()}

    ids = []
    for number, value in enumerate([0.5, 0.4, 0.3]):
        trial, artifact = trained(f"t{number}")
        study.tell(trial, value)
        retain_checkpoints(study.get_trials(), storage_url=url)
        ids.append(artifact)
    assert stored() == set(ids)
    assert os.path.samefile(store / ids[0], tmp_path / "t0.pt")  # one file, two names
    trial, better = trained("t3")
    study.tell(trial, 0.2)
    retain_checkpoints(study.get_trials(), storage_url=url)
    assert stored() == {ids[1], ids[2], better}
    assert not (tmp_path / "t0.pt").exists()

    # A trial uploaded among the best whose worker died before the tell: its retry holds the
    # same id and keeps it until it finishes (here outside the best, without an upload).
    dying, inherited = trained("t4")
    assert fail_and_retry(study, [study.get_trials()[dying.number]], "worker died") == [4]
    retain_checkpoints(study.get_trials(), storage_url=url)
    assert inherited in stored()
    retry = study.ask()
    assert retry.user_attrs[CHECKPOINT_ARTIFACT_ATTR] == inherited
    study.tell(retry, 0.9)
    retain_checkpoints(study.get_trials(), storage_url=url)
    assert stored() == {ids[1], ids[2], better}
    retain_checkpoints(study.get_trials(), storage_url=url)  # again: nothing left to remove


@pytest.mark.slow
def test_a_study_leaves_the_best_three_checkpoints_in_the_artifact_store(tmp_path):
    url = f"sqlite:///{tmp_path / 'keep.db'}"
    env = fast_env(tmp_path, HPO_ARTIFACTS=str(tmp_path / "artifacts"))
    name = make_study(tmp_path, url, n=12, low=2, high=4, env=env)
    r = run_hpo("worker", name, "--storage", url, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout
    ts = trials(name, url)
    best = sorted((t for t in ts if t.state == TrialState.COMPLETE), key=lambda t: t.value)[:3]
    uploaded = [t for t in ts if "checkpoint_artifact" in t.user_attrs]
    assert len(uploaded) > 3  # some trials left the best after their upload
    kept = {p.name for p in (tmp_path / "artifacts").iterdir()}
    assert kept == {t.user_attrs["checkpoint_artifact"] for t in best}
    for t in best:  # the upload shares the checkpoint's bytes
        assert os.path.samefile(tmp_path / "artifacts" / t.user_attrs["checkpoint_artifact"],
                                t.user_attrs["checkpoint"])
