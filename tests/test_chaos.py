"""Chaos, short: one round of ``benchmarks.chaos`` per backend, three faults each.

Each round runs ``hpo launch --workers 3`` on a study of ``fastjob.epochs_job`` and, at random
moments, kills workers (SIGKILL, also the moment one claims a trial), preempts one (SIGTERM),
kills the launcher and starts it again, or restarts PostgreSQL; then checks that the study
ends exactly at its budget, nothing left running, nothing left waiting but a queued retry (or
re-queued trial with progress) that the budget did not need, every interrupted trial resumed
from its checkpoint. Between them the three rounds inject every kind of fault. ``python -m
benchmarks.chaos --rounds 24`` is the long version.
"""

from __future__ import annotations

import os
import random

import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from conftest import server_url

from benchmarks.chaos import (
    INVARIANTS,
    SECTION,
    RoundResult,
    _leftovers,
    _resume_violations,
    _root,
    backend_of,
    markdown,
    run_round,
    write_section,
)

ROUND_FAULTS = {
    "sqlite": ["kill9_claim", "sigterm_worker", "kill9_launcher"],
    "postgresql": ["kill9_worker", "restart_postgresql", "kill9_claim"],
    "mariadb": ["sigterm_worker", "kill9_launcher", "kill9_worker"],
}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mariadb"])
def test_a_round_of_random_faults_breaks_no_invariant(backend, request, tmp_path):
    """The PostgreSQL round restarts a server of its own (``private_postgresql``): the
    machine's, which the other tests share, stays up."""
    restart = None
    if backend == "postgresql":
        cluster = request.getfixturevalue("private_postgresql")
        url, restart = cluster.url, cluster.restart
    elif backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'hpo.db'}"
    else:
        url = server_url(request.getfixturevalue("server_urls"), backend)
    faults = ROUND_FAULTS[backend]
    seed = f"{os.environ.get('HPO_CHAOS_SEED', '0')}:{backend}"
    result = run_round(backend, url, tmp_path / "round", random.Random(seed),
                       seed=seed, faults=faults, timeout=150, say=lambda s: None,
                       restart=restart)
    report = result.report()
    print(report)
    assert len(result.injected) >= 2, report  # faults that landed before the study ended
    assert result.ok, report


@pytest.mark.slow
def test_a_promotion_round_of_random_faults_breaks_no_invariant(tmp_path):
    """A round whose study pauses trials at rungs and resumes their configurations (the
    ``promotion`` pruner): the checks count configurations (a trial, its retries and the
    continuations of its pauses), and a configuration left paused is allowed."""
    seed = f"{os.environ.get('HPO_CHAOS_SEED', '0')}:promotion"
    result = run_round("sqlite", f"sqlite:///{tmp_path / 'hpo.db'}", tmp_path / "round",
                       random.Random(seed), seed=seed, timeout=150, say=lambda s: None,
                       faults=["kill9_worker", "sigterm_worker", "kill9_claim"],
                       pruner="promotion")
    report = result.report()
    print(report)
    assert len(result.injected) >= 2, report
    assert result.ok, report
    trials = result.trials_table
    assert "PRUNED" in trials and "WAITING" in trials, report  # it paused configurations


@pytest.mark.slow
def test_a_pbt_round_with_a_kill_at_a_pause_breaks_no_invariant(tmp_path):
    """A round of population-based training (every member pauses each epoch; the worst go on
    from the best's checkpoint), a worker killed the moment a trial pauses among the faults:
    no pause is lost (invariant 8), and the budget counts the population."""
    seed = f"{os.environ.get('HPO_CHAOS_SEED', '0')}:pbt"
    result = run_round("sqlite", f"sqlite:///{tmp_path / 'hpo.db'}", tmp_path / "round",
                       random.Random(seed), seed=seed, timeout=150, say=lambda s: None,
                       faults=["kill9_pause", "kill9_worker", "kill9_pause"], pruner="pbt")
    report = result.report()
    print(report)
    assert any(f.kind == "kill9_pause" for f in result.injected), report
    assert result.ok, report
    assert "exploited" in result.trials_table or "paused" in result.trials_table, report


# --------------------------------------------------------------------------------------------
# The checker itself, on made-up trials: it must see a resume that went back, and accept one
# whose log is an epoch behind its checkpoint; it must see a trial left RUNNING or a fresh
# surplus left WAITING, and accept a queued retry the budget did not need.


def _trial(number, state, epochs, values, *, retry_of=None, resumed=None, pid=None):
    """A made-up trial of the chaos study (``epochs`` None: no params yet)."""
    system = {}
    if retry_of is not None:
        system = {"failed_trial": retry_of[0], "retry_history": list(retry_of)}
    user = {"worker": "h:w0"}
    if resumed is not None:
        user["resumed_from_epoch"] = resumed
    if pid is not None:
        user["pid"] = pid
    params, distributions = {}, {}
    if epochs is not None:
        params = {"lr": 0.01, "epochs": epochs}
        distributions = {"lr": FloatDistribution(1e-5, 0.1, log=True),
                         "epochs": IntDistribution(3, 5)}
    t = create_trial(
        state=state, value=1.0 if state == TrialState.COMPLETE else None,
        params=params, distributions=distributions,
        intermediate_values={e: 1.0 for e in values}, user_attrs=user, system_attrs=system)
    t.number = number
    t._trial_id = 100 + number
    return t


def _check(trials, log):
    chains = {}
    for t in trials:
        chains.setdefault(_root(t), []).append(t)
    return _resume_violations(trials, log, chains)


def test_the_checker_sees_a_retry_that_started_over():
    failed = _trial(0, TrialState.FAIL, 5, [1, 2, 3])
    retry = _trial(1, TrialState.COMPLETE, 5, range(1, 6), retry_of=[0], resumed=None, pid=11)
    log = [(0, 1, 10), (0, 2, 10), (0, 3, 10)] + [(1, e, 11) for e in range(1, 6)]
    problems = _check([failed, retry], log)
    assert any("3 epochs redone" in p for p in problems), problems
    assert any("without resuming" in p for p in problems), problems


def test_the_checker_accepts_resumes_from_the_checkpoint():
    # #0 was killed after checkpointing epoch 3 but before logging it: the retry resumes at 3.
    failed = _trial(0, TrialState.FAIL, 5, [1, 2, 3])
    retry = _trial(1, TrialState.COMPLETE, 5, range(1, 6), retry_of=[0], resumed=3, pid=11)
    # #2 was preempted (SIGTERM) after epoch 2, re-queued with its number, resumed elsewhere.
    requeued = _trial(2, TrialState.COMPLETE, 4, range(1, 5), resumed=2, pid=13)
    log = [(0, 1, 10), (2, 1, 12), (0, 2, 10), (2, 2, 12), (1, 4, 11), (2, 3, 13), (1, 5, 11),
           (2, 4, 13)]
    assert _check([failed, retry, requeued], log) == []


def test_the_checker_sees_a_resume_that_went_back():
    requeued = _trial(0, TrialState.COMPLETE, 5, range(1, 6), resumed=1, pid=13)
    log = [(0, 1, 12), (0, 2, 12), (0, 3, 12), (0, 2, 13), (0, 3, 13), (0, 4, 13), (0, 5, 13)]
    problems = _check([requeued], log)
    assert any("2 epochs redone" in p for p in problems), problems
    assert any("resumed from epoch 1, but epoch 3" in p for p in problems), problems


def test_the_results_section_is_replaced_not_repeated(tmp_path):
    out = tmp_path / "RESULTS.md"
    out.write_text("# hpo benchmarks\n\n| a | b |\n")
    ok = RoundResult(index=0, backend="sqlite", seed="0:0",
                     left_waiting=["trial #9 WAITING, never needed (h:w0, retry of #5)"])
    bad = RoundResult(index=1, backend="mariadb", seed="0:1", broken={2: ["trial #3 RUNNING"]})
    for _ in range(2):
        write_section(out, SECTION, markdown([ok, bad], ["sqlite", "mariadb"], ["context"]))
    text = out.read_text()
    assert text.startswith("# hpo benchmarks\n\n| a | b |\n\n## ")
    assert text.count(f"## {SECTION}") == 1
    assert f"2 ({INVARIANTS[2]}) in 1 round(s)" in text
    assert "| sqlite | 1 | 1 | 0 | 0 |" in text
    assert "- round 0 (sqlite): trial #9 WAITING, never needed" in text


def test_the_checker_sees_a_trial_run_twice_at_once():
    from benchmarks.chaos import _concurrent_attempts

    requeued = _trial(1, TrialState.COMPLETE, 5, range(1, 6), resumed=2, pid=12)
    log = [(1, 1, 10), (1, 2, 10), (1, 3, 12), (1, 3, 11), (1, 4, 12), (1, 4, 11)]
    problems = _concurrent_attempts(log, {1: [requeued]})
    assert problems == ["trial #1 ran in two processes at once: pid 12 epochs [3, 4], pid 11 "
                        "epochs [3, 4]"]
    assert _concurrent_attempts(log[:2] + log[2::2], {1: [requeued]}) == []


def test_the_checker_allows_only_queued_retries_and_resumes_left_waiting():
    failed = _trial(0, TrialState.FAIL, 5, [1, 2])
    retry = _trial(1, TrialState.WAITING, 5, [1, 2], retry_of=[0])  # failed, its retry queued
    preempted = _trial(2, TrialState.WAITING, 4, [1], pid=12)  # SIGTERM: re-queued, same number
    done = _trial(3, TrialState.COMPLETE, 3, [1, 2, 3], pid=13)
    problems, allowed = _leftovers([failed, retry, preempted, done])
    assert problems == []
    assert [a.split(",")[0] for a in allowed] == ["trial #1 WAITING", "trial #2 WAITING"]


def test_the_checker_sees_a_trial_left_running_or_a_surplus_left_waiting():
    running = _trial(0, TrialState.RUNNING, 5, [1, 2], pid=11)
    # A retry that was claimed and then lost its worker is RUNNING too: never allowed.
    running_retry = _trial(1, TrialState.RUNNING, 5, [1, 2], retry_of=[0], pid=12)
    surplus = _trial(2, TrialState.WAITING, None, [], pid=13)  # asked past the budget
    unstarted = _trial(3, TrialState.WAITING, 4, [], pid=14)  # re-queued before epoch 1
    problems, allowed = _leftovers([running, running_retry, surplus, unstarted],
                                   {100: 7.0})
    assert allowed == []
    assert len(problems) == 4, problems
    assert problems[0].startswith("trial #0 RUNNING") and "last heartbeat 7s" in problems[0]
    assert problems[1].startswith("trial #1 RUNNING") and "retry of #0" in problems[1]
    assert "no heartbeat ever recorded" in problems[1]
    assert "trial #2 WAITING, a fresh surplus trial" in problems[2]
    assert "trial #3 WAITING, re-queued without progress" in problems[3]


def test_the_results_section_outlives_a_benchmarks_run(tmp_path):
    # benchmarks.run rewrites its table from RESULTS.json: the chaos section and the one
    # benchmarks.digits_kill appends stay, in their order, and are not repeated.
    from benchmarks import run

    out = tmp_path / "RESULTS.md"
    out.write_text("# hpo benchmarks\n\n- old context\n\n| old table |\n")
    write_section(out, SECTION, markdown([RoundResult(index=0, backend="sqlite", seed="0:0")],
                                         ["sqlite"], ["context"]))
    kill = "## Kill -9 during digits (issue #11's scenario), 2026-11-30\n\n| round |\n"
    out.write_text(out.read_text() + "\n" + kill)
    measured = {"warm": {"date": "2026-12-01T00:00+00:00", "machine": "m", "mode": "smoke",
                         "seconds": 1.0, "rows": [{"benchmark": "warm", "case": "c",
                                                   "metric": "s", "hpo": 1.0}]}}
    chaos = out.read_text()[out.read_text().index(f"## {SECTION}"):]
    for _ in range(2):
        table = run._write(out, measured)
    text = out.read_text()
    assert text.startswith(table) and "old table" not in text and "| warm | c | s |" in table
    assert text == table + "\n" + chaos
    assert text.count("## ") == 2 and text.endswith(kill)
