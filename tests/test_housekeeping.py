"""Housekeeping on every backend: checkpoint retention, the artifact store's copies of the best
trials, and reaping dead workers' trials (``hpo reap``)."""

from __future__ import annotations

import os
import time

import optuna
import pytest
from optuna.trial import TrialState

from conftest import run_hpo
from processes import start_hpo, wait_for
from workers import epoch_log, fast_env, fast_study, make_study, trials


@pytest.mark.slow
def test_reap_all_requeues_the_trials_of_a_dead_worker(tmp_path):
    url = f"sqlite:///{tmp_path / 'reap.db'}"
    # A grace period far longer than the test: the heartbeat is fresh for the plain reap
    # however loaded the machine (with the fast env's 3 s a slow start made it stale).
    env = fast_env(tmp_path, epoch_seconds=0.5, HPO_HEARTBEAT_INTERVAL="60",
                   HPO_GRACE_PERIOD="300")
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


def _checkpoint(trial, path):
    """Give ``trial`` a checkpoint file at ``path`` (as the job does after an epoch)."""
    path.write_text("{}")
    trial.set_user_attr("checkpoint", str(path))
    return path


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


def test_a_checkpoint_a_retry_will_resume_from_is_never_deleted(storage_url, tmp_path):
    """Worker B fails a stale trial and then queues its retry; worker A's checkpoint retention
    runs between the two, from a snapshot in which the trial is failed and has no retry yet."""
    from hpo.run.worker import retain_checkpoints

    study = fast_study(storage_url, f"keep-{time.time_ns()}")
    storage = study._storage
    trial = study.ask()
    old = _checkpoint(trial, tmp_path / "trial-0.pt")
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
    new = _checkpoint(retry, tmp_path / "trial-1.pt")
    study.tell(retry, 1.0)
    broken = study.ask()
    crashed = _checkpoint(broken, tmp_path / "trial-2.pt")
    broken.set_user_attr("fail_reason", "nan")
    study.tell(broken, state=TrialState.FAIL)
    retain_checkpoints(study.get_trials())
    assert not old.exists() and new.exists() and not crashed.exists()
    # A trial failed because its worker died keeps its checkpoint until its retry exists.
    from hpo.store._optuna import fail_and_retry

    dying = study.ask()
    kept = tmp_path / "trial-3.pt"
    kept.write_text("{}")
    dying.set_user_attr("checkpoint", str(kept))
    assert fail_and_retry(study, [study.get_trials()[dying.number]], "worker died") == [3]
    retain_checkpoints(study.get_trials())
    assert kept.exists()


def test_an_upload_leaves_the_artifact_store_when_its_trial_leaves_the_best(tmp_path,
                                                                            monkeypatch):
    """Trials that complete among the best 3 upload their checkpoint (a hard link to it, not
    a copy); retention removes the upload when a better trial pushes its trial out. A retry
    inherits its failed attempt's artifact id: kept while the retry may run, removed when the
    retry finishes outside the best."""
    from hpo.store._optuna import fail_and_retry
    from hpo.store.artifacts import ARTIFACTS_VAR, CHECKPOINT_ARTIFACT_ATTR, upload_checkpoint
    from hpo.run.worker import retain_checkpoints

    monkeypatch.delenv(ARTIFACTS_VAR, raising=False)
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    study = fast_study(url, "uploads")
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


def test_a_paused_trials_checkpoint_outlives_the_moment_before_its_continuation(storage_url,
                                                                               tmp_path):
    """Two workers of a promotion study: one tells its trial PRUNED (paused) and only then
    queues the continuation that resumes from the trial's checkpoint (hpo's order before it
    queued the pause first; a study written then has it); the other's retention,
    reading the study in between, must not delete that checkpoint (the fresh-clone CI caught
    a promoted trial starting afresh this way). Once the continuation ran with its own
    checkpoint, the paused trial's file goes."""
    from hpo.search.schedulers.continuation import queue_continuation
    from hpo.run.worker import retain_checkpoints

    study = fast_study(storage_url, f"pause-{time.time_ns()}")
    trial = study.ask()
    old = _checkpoint(trial, tmp_path / "trial-0.pt")
    trial.set_user_attr("prune_reason", "paused")
    trial.report(0.5, 1)
    study.tell(trial, state=TrialState.PRUNED)
    retain_checkpoints(study.get_trials())  # the other worker, right then
    assert old.exists(), "the paused trial's checkpoint was deleted before its continuation"
    queue_continuation(study, study.trials[0], 1)
    resumed = study.ask()
    assert resumed.user_attrs["checkpoint"] == str(old)
    new = _checkpoint(resumed, tmp_path / "trial-1.pt")
    study.tell(resumed, 0.4)
    retain_checkpoints(study.get_trials())
    assert not old.exists() and new.exists()


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


def test_a_maximized_metric_keeps_the_highest_trials_checkpoints(tmp_path):
    """``study.direction: maximize``: the best checkpoints kept (and uploaded) are the
    highest trials', not the lowest."""
    from optuna.distributions import FloatDistribution

    from hpo.run.worker import retain_checkpoints
    from hpo.run.worker._housekeeping import _among_best

    for maximize, kept in ((True, {0.9, 0.8}), (False, {0.1, 0.2})):
        study = optuna.create_study(direction="maximize" if maximize else "minimize")
        for i, value in enumerate((0.2, 0.9, 0.1, 0.8, 0.5)):
            path = tmp_path / f"{maximize}-{i}.pt"
            path.write_bytes(b"x")
            study.add_trial(optuna.trial.create_trial(
                value=value, params={"lr": value}, distributions={"lr": FloatDistribution(0, 1)},
                user_attrs={"checkpoint": str(path)}))
        assert _among_best(study, 0.85, k=2) is maximize  # only 0.9 is better when maximized
        retain_checkpoints(study.get_trials(), keep_best=2, maximize=maximize)
        left = {t.value for t in study.get_trials() if os.path.exists(t.user_attrs["checkpoint"])}
        assert left == kept, maximize


@pytest.mark.parametrize("how", ["reap", "stale"])
def test_a_worker_reading_between_a_reaps_writes_sees_the_attempt_or_its_retry(
        how, storage_url, monkeypatch):
    """Failing a dead worker's trial and queueing its retry are two writes. A worker that reads
    the study between them must see the configuration running or queued: seeing neither, it
    started a new configuration in the dead one's place, and the retry then waited past the
    budget's end (test_launch's kill -9 scenario, once under load). Both the launcher's reap
    (``fail_and_retry``) and the stale-trial search (``fail_stale``)."""
    from hpo.store._optuna import fail_and_retry, fail_stale

    study = fast_study(storage_url, f"order-{time.time_ns()}")
    storage = study._storage
    dying = study.ask()
    dying.set_user_attr("checkpoint", "/nowhere/trial-0.pt")
    seen: list[list[tuple[int, TrialState, int | None]]] = []

    def spied(method):
        def call(*args, **kwargs):
            out = method(*args, **kwargs)
            seen.append([(t.number, t.state, t.system_attrs.get("failed_trial"))
                         for t in storage.get_all_trials(study._study_id, deepcopy=False)])
            return out
        return call

    for name in ("set_trial_state_values", "create_new_trial"):
        monkeypatch.setattr(storage, name, spied(getattr(storage, name)))
    if how == "reap":
        assert fail_and_retry(study, [study.get_trials()[0]], "worker died") == [0]
    else:
        monkeypatch.setattr(type(storage), "_get_stale_trial_ids",
                            lambda self, study_id: [dying._trial_id])
        fail_stale(study)
    assert seen, "no write was seen"
    for snapshot in seen:
        running = any(n == 0 and s == TrialState.RUNNING for n, s, _ in snapshot)
        queued = any(s == TrialState.WAITING and f == 0 for _, s, f in snapshot)
        assert running or queued, snapshot
    states = {n: s for n, s, _ in seen[-1]}
    assert states == {0: TrialState.FAIL, 1: TrialState.WAITING}, seen[-1]
    retry = study.get_trials()[1]
    assert retry.user_attrs["checkpoint"] == "/nowhere/trial-0.pt"
    assert "fail_reason" not in retry.user_attrs


def test_a_retry_queued_for_a_trial_that_finished_meanwhile_is_withdrawn(tmp_path, monkeypatch):
    """The reap queues the retry first; where the trial's worker tells it (COMPLETE) between
    the retry and the FAIL, the retry is failed with a reason, never run, and the trial keeps
    its value."""
    from hpo.store._optuna import fail_and_retry
    from hpo.store._optuna._reap import WITHDRAWN

    study = fast_study(f"sqlite:///{tmp_path / 'hpo.db'}", f"late-{time.time_ns()}")
    storage = study._storage
    late = study.ask()
    frozen = study.get_trials()[0]
    create = storage.create_new_trial

    def create_then_finish(*args, **kwargs):
        out = create(*args, **kwargs)
        storage.set_trial_state_values(late._trial_id, TrialState.COMPLETE, [0.5])
        return out

    monkeypatch.setattr(storage, "create_new_trial", create_then_finish)
    assert fail_and_retry(study, [frozen], "worker died") == []
    first, retry = study.get_trials()
    assert first.state == TrialState.COMPLETE and first.value == 0.5
    assert retry.state == TrialState.FAIL and retry.user_attrs["fail_reason"] == WITHDRAWN
