"""A real Slurm cluster runs the job array that ``hpo template slurm`` prints.

Where no controller answers, ``tests/support/slurm.py`` starts a one-node cluster on this
machine (Debian's slurm-wlm and munge); without those packages the test is skipped with the
reason, or fails under ``CI=true``.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import time

import pytest
from optuna.trial import TrialState

import slurm as cluster_support
from conftest import run_hpo, server_url
from hpo.run.worker import WORKER_INDEX_VAR, launched_worker_name, worker_identity
from processes import wait_for
from workers import epoch_log, fast_env, make_study, trials

TASKS = 3
"""Array tasks: one is stopped by Slurm's TERM, one re-queued, one runs throughout."""
N_TRIALS = 12
CPUS_PER_TASK = 4
"""What the template asks per task (``--cpus-per-task``) on nodes without GPUs."""


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the Slurm test must run, not skip)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def slurm():
    """Slurm's commands reach a controller: the machine's own, else a one-node cluster started
    for this module (and stopped after it)."""
    reason = cluster_support.missing()
    if reason:
        _skip_or_fail(reason)
    try:
        cluster = cluster_support.cluster(cpus=TASKS * CPUS_PER_TASK)
    except cluster_support.Unavailable as e:
        _skip_or_fail(str(e))
    yield cluster
    cluster.stop()


def test_a_worker_in_a_slurm_array_is_named_and_seeded_by_its_array_task(monkeypatch):
    host = socket.gethostname()
    monkeypatch.setenv(WORKER_INDEX_VAR, "1")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    assert worker_identity() == (f"{host}:w1", 1)

    # Every array task's launcher numbers its workers from 0: the array task tells them apart,
    # in the name and in the sampler seed (or every task would draw the same parameters).
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4242")
    seen = {}
    for task in ("0", "1", "2"):
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", task)
        name, offset = worker_identity()
        assert name == f"{host}:4242_{task}:w1"
        assert launched_worker_name(1) == name  # the launcher's live view finds its worker
        seen[name] = offset
    assert len(set(seen.values())) == 3

    monkeypatch.delenv(WORKER_INDEX_VAR)  # a worker started by hand inside an array task
    name, _ = worker_identity()
    assert name.startswith(f"{host}:4242_2:") and name.rsplit(":", 1)[1].isdigit()


def _tasks(slurm, job: str) -> dict[int, dict[str, str]]:
    """The array's tasks as Slurm sees them: ``{task: {JobState, ExitCode, Restarts, ...}}``."""
    r = slurm.run("scontrol", "-o", "show", "job", job, check=False)
    tasks = {}
    for line in r.stdout.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if fields.get("ArrayTaskId", "").isdigit():
            tasks[int(fields["ArrayTaskId"])] = fields
    return tasks


def _logs(folder) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()}" for p in sorted(folder.glob("*.out")))


@pytest.mark.slow
def test_a_slurm_job_array_runs_the_study_and_its_preempted_trials(slurm, server_urls,
                                                                   tmp_path):
    """``sbatch`` of what ``hpo template slurm`` prints, unchanged: three array tasks finish a
    12-trial study on PostgreSQL. One task gets Slurm's TERM (what ``--signal=B:TERM@120``
    sends before the time limit), one is re-queued (what preemption does): their running
    trials go back to the queue from their checkpoints and are finished, not failed."""
    url = server_url(server_urls, "postgresql")
    env = fast_env(tmp_path, epoch_seconds=1.0, HPO_GRACE_PERIOD="60")
    name = make_study(tmp_path, url, n=N_TRIALS, low=4, high=6, env=env)
    r = run_hpo("template", "slurm", name, "--storage", url, "--nodes", str(TASKS),
                "--gpus-per-node", "0", "--python", sys.executable,
                "--checkpoint-dir", env["HPO_CHECKPOINT_DIR"], cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    script = tmp_path / "hpo.sbatch"
    script.write_text(r.stdout)
    # sbatch hands the submitting shell's environment to the job (the custom job's
    # PYTHONPATH, the fast heartbeat); the URL comes from the script itself.
    submit = {k: v for k, v in os.environ.items() if k != "HPO_STORAGE"}
    submit.update(env)
    started = time.monotonic()
    sub = slurm.run("sbatch", "--parsable", str(script), check=False, env=submit, cwd=tmp_path)
    assert sub.returncode == 0, sub.stderr + slurm.logs()
    job = sub.stdout.strip().split(";")[0]
    host = socket.gethostname()
    try:
        # Two array tasks whose trials are mid-way: two epochs done (so the first epoch's
        # checkpoint is surely written), two or more to go (seconds to signal them).
        def two_tasks_mid_trial():
            mid = set()
            for t in trials(name, url):
                worker = str(t.user_attrs.get("worker", ""))
                if t.state == TrialState.RUNNING and worker.startswith(f"{host}:{job}_") and \
                        2 <= len(t.intermediate_values) <= t.params["epochs"] - 2:
                    mid.add(int(worker.split(":")[1].split("_")[1]))
            return sorted(mid) if len(mid) >= 2 else None

        stopped, requeued = wait_for(two_tasks_mid_trial, timeout=90,
                                     what="two array tasks mid-trial")[:2]
        slurm.run("scancel", "--batch", "--signal=TERM", f"{job}_{stopped}")
        slurm.run("scontrol", "requeue", f"{job}_{requeued}")
        # A re-queued job waits about two minutes before it may start again; let it go now.
        wait_for(lambda: _tasks(slurm, job).get(requeued, {}).get("JobState") == "PENDING",
                 timeout=60, what=f"array task {requeued} back in Slurm's queue")
        slurm.run("scontrol", "update", f"JobId={job}_{requeued}", "StartTime=now")
        wait_for(lambda: not slurm.run("squeue", "-h", "-j", job).stdout.strip(), timeout=150,
                 what="the job array to finish")
    except AssertionError as e:
        raise AssertionError(f"{e}: {_tasks(slurm, job)}\n{_logs(tmp_path)}\n"
                             f"{slurm.logs()}") from e
    finally:
        slurm.run("scancel", job, check=False)
    seconds = time.monotonic() - started
    tasks = _tasks(slurm, job)
    logs = {i: (tmp_path / f"hpo-{name}-{job}_{i}.out").read_text() for i in range(TASKS)}
    summary = {i: (t["JobState"], t["ExitCode"], f"restarts {t['Restarts']}")
               for i, t in sorted(tasks.items())}
    detail = f"after {seconds:.0f}s: {summary}\n{logs}"

    ts = trials(name, url)
    states = [t.state for t in ts]
    assert states.count(TrialState.COMPLETE) == N_TRIALS, detail
    assert states.count(TrialState.RUNNING) == 0 and states.count(TrialState.FAIL) == 0, detail
    # Every trial names its array task; the three tasks drew different parameters.
    workers = {t.user_attrs["worker"] for t in ts if t.state == TrialState.COMPLETE}
    assert workers <= {f"{host}:{job}_{i}:w0" for i in range(TASKS)}, workers
    assert len(workers) >= 2, workers
    assert len({t.params["lr"] for t in ts}) == len(ts)

    # The preempted trials (as each task's worker logged them): the same trial went back to
    # the queue and finished elsewhere or later, resumed from its checkpoint: each epoch
    # trained once.
    preempted = {}
    for i in (stopped, requeued):
        found = re.search(r"SIGTERM: trial (\d+) re-queued", logs[i])
        assert found, logs[i]
        preempted[i] = int(found.group(1))
    epochs = epoch_log(tmp_path)
    for number in preempted.values():
        trial = ts[number]
        assert trial.state == TrialState.COMPLETE, detail
        assert trial.user_attrs.get("resumed_from_epoch", 0) >= 1, trial.user_attrs
        ran = sorted(e for n, e, _ in epochs if n == number)
        assert ran == list(range(1, trial.params["epochs"] + 1)), (number, ran)
    assert ts[preempted[stopped]].user_attrs["worker"] != f"{host}:{job}_{stopped}:w0"

    # Slurm's side: the TERM'd task ended (not re-queued); the re-queued one ran again and
    # finished, its log appended to the first run's; the third finished.
    assert tasks[stopped]["Restarts"] == "0" and tasks[stopped]["JobState"] != "COMPLETED"
    assert "SIGTERM: asking the workers to checkpoint" in logs[stopped], logs[stopped]
    assert tasks[requeued]["Restarts"] == "1", detail
    assert logs[requeued].count(f"hpo: study {name} in") == 2, logs[requeued]
    for i in set(range(TASKS)) - {stopped}:
        assert (tasks[i]["JobState"], tasks[i]["ExitCode"]) == ("COMPLETED", "0:0"), detail
    print(f"slurm array {job}: {seconds:.0f}s from sbatch to the last task's end; {summary}")
