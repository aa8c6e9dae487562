"""Trials recorded where teams keep them (``tracking``): a real ``mlflow server`` on SQLite,
read back through MLflow's own client, and TensorBoard's event files read back with
TensorBoard's own reader; a tracking server that is down never fails a trial."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import optuna
import pytest
import yaml
from conftest import run_hpo
from optuna.trial import TrialState
from specs import write_tiny_spec
from tensorboard_records import check_tensorboard
from workers import FAST, TASKS, fast_env

pytestmark = pytest.mark.xdist_group("mlflow")  # one server for the tests of this file


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """``mlflow server`` on a SQLite backend and a free port, its artifacts proxied into a
    temp folder: started at once, waited for at its first ``url``."""

    def __init__(self, folder):
        self.folder = folder
        self.log = open(folder / "server.log", "w")
        port = _free_port()
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
             "--artifacts-destination", str(folder / "artifacts")],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self._url = f"http://127.0.0.1:{port}"
        self.ready = False

    @property
    def url(self) -> str:
        deadline = time.monotonic() + 120
        while not self.ready:
            try:
                with urllib.request.urlopen(f"{self._url}/health", timeout=2):
                    self.ready = True
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("mlflow server did not start: "
                                + (self.folder / "server.log").read_text()[-2000:])
                time.sleep(0.2)
        return self._url

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)  # the server and its uvicorn process
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.log.close()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """One ``MlflowServer`` for the test session."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _boot_mlflow_early(mlflow_server):
    """The server boots (about 5 s of CPU) while this file's first tests run without it."""


def _history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key),
                                               key=lambda m: m.step)]


def _script_spec(path, name, n, tracking, **sections):
    """The fast script task (``fastscript.py``: loss ``(log10(lr) + 2.5)^2 + 1/epoch``) as
    study ``name``, tracked as ``tracking`` says."""
    spec = yaml.safe_load(FAST.format(name=name, n=n, low=2, high=3, pruner="none")
                          .replace(TASKS["custom"], TASKS["script"]))
    spec.update(tracking=tracking, **sections)
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def test_a_tracking_server_that_is_down_is_a_warning_and_no_trial_fails(tmp_path):
    """A script task whose MLflow has nothing listening on its port: every trial completes,
    the worker warns once, and TensorBoard still gets every report (the script's reports
    reach it through the relay)."""
    name = f"down-{time.time_ns()}"
    down = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    _script_spec(tmp_path / "down.yaml", name, 2, {"mlflow": down, "tensorboard": "tb"})
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    run = run_hpo("run", "down.yaml", "--storage", url, "--workers", "1", cwd=tmp_path,
                  env=fast_env(tmp_path))
    assert run.returncode == 0, run.stdout + run.stderr
    trials = optuna.load_study(study_name=name, storage=url).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    out = run.stdout + run.stderr
    assert out.count(f"tracking: MLflow at {down}") == 1, out  # once, not per report
    assert "Traceback" not in out
    check_tensorboard(tmp_path / "tb" / name, trials)


def test_the_tracking_section_is_checked(tmp_path):
    """One clear line for a tracking section that cannot work (nothing written); a good
    one goes into the stored spec and back."""
    from processes import one_line_error
    from specs import TINY

    from hpo.errors import SpecError
    from hpo.spec import TrackingSpec, parse_spec

    cases = [
        ({}, "tracking: expected mlflow"),
        ({"experiment": "x"}, "tracking.experiment: names an MLflow experiment"),
        ({"mlflow": "http://me:secret@mlflow:5000"}, "tracking.mlflow: a password"),
        ({"tensorboard": 3}, "tracking.tensorboard: expected a non-empty string"),
        ({"wandb": "x"}, "tracking.wandb: unknown key"),
    ]
    for section, words in cases:
        with pytest.raises(SpecError, match=f"^s.yaml: {words}") as e:
            parse_spec({**TINY, "tracking": section}, source="s.yaml", default_name="s")
        assert "secret" not in str(e.value)
    good = {"mlflow": "http://mlflow:5000", "experiment": "team", "tensorboard": "tb"}
    spec = parse_spec({**TINY, "tracking": good}, default_name="s")
    assert spec.tracking == TrackingSpec(**good)
    assert parse_spec(spec.to_dict()) == spec
    assert "tracking" not in parse_spec(TINY, default_name="s").to_dict()

    path = write_tiny_spec(tmp_path / "bad.yaml", "bad", tracking={"experiment": "x"})
    result = run_hpo("create", "bad.yaml", "--storage", f"sqlite:///{tmp_path / 'hpo.db'}",
                     cwd=tmp_path)
    one_line_error(result, path.name, "tracking.experiment")
    assert not (tmp_path / "hpo.db").exists()


def test_mlflow_gets_the_study_as_one_run_and_each_trial_nested_under_it(
        mlflow_server, tmp_path):
    """A script task on two workers that race to create the study's run: one study run, a
    nested run per trial with its params, the metric history of every report step, its
    state and prune reason; TensorBoard gets a folder per trial; ``hpo export`` adds the
    exported checkpoint to the study's run."""
    from mlflow import MlflowClient

    name = f"tracked-{time.time_ns()}"
    # lr 0.1 gives loss 3.25 at step 1, over the threshold: pruned there; lr 0.003 completes.
    # Each worker's first two draws (seed 0, worker offsets 0 and 1) are one of each.
    _script_spec(tmp_path / "tracked.yaml", name, 4,
                 {"mlflow": mlflow_server.url, "tensorboard": "tb"},
                 search_space={"lr": {"type": "categorical", "choices": [0.003, 0.1]},
                               "epochs": {"type": "int", "low": 2, "high": 3}},
                 pruner={"name": "threshold", "upper": 2.0})
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    run = run_hpo("run", "tracked.yaml", "--storage", url, "--workers", "2", cwd=tmp_path,
                  env=fast_env(tmp_path))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "tracking:" not in run.stdout + run.stderr  # no warning: the server answered
    trials = optuna.load_study(study_name=name, storage=url).get_trials()
    assert {t.state for t in trials} == {TrialState.COMPLETE, TrialState.PRUNED}

    client = MlflowClient(mlflow_server.url)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("hpo.role") == "study"]
    assert len(parents) == 1, [r.info.run_name for r in parents]  # no duplicate from the race
    parent = parents[0]
    assert parent.info.run_name == name and parent.data.tags["hpo.study"] == name
    assert parent.info.status == "FINISHED"  # the workers stopped with the budget spent
    assert parent.data.params["pruner"] == "threshold"
    children = {int(r.data.tags["hpo.trial"]): r for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert sorted(children) == [t.number for t in trials]
    assert len(runs) == 1 + len(trials)
    for t in trials:
        child = children[t.number]
        assert child.info.run_name == f"trial-{t.number}"
        assert child.data.params == {k: str(v) for k, v in t.params.items()}
        assert _history(client, child.info.run_id, "val_loss") == sorted(
            t.intermediate_values.items())
        assert child.data.tags["hpo.state"] == t.state.name
        assert child.data.tags["hpo.worker"] == t.user_attrs["worker"]
        assert child.info.status == "FINISHED"
        if t.params["lr"] == 0.003:
            assert t.state == TrialState.COMPLETE
            assert child.data.metrics["best_val_loss"] == t.value
            assert len(t.intermediate_values) == t.params["epochs"]
        else:
            assert t.state == TrialState.PRUNED and list(t.intermediate_values) == [1]
            assert child.data.tags["hpo.prune_reason"] == t.user_attrs["prune_reason"]
            assert "best_val_loss" not in child.data.metrics

    check_tensorboard(tmp_path / "tb" / name, trials)

    export = run_hpo("export", name, "--storage", url, "--out", "best", cwd=tmp_path)
    assert export.returncode == 0, export.stderr
    assert f"the export is in run {parent.info.run_id}" in export.stdout
    files = {a.path for a in client.list_artifacts(parent.info.run_id, "export")}
    assert {"export/best-checkpoint", "export/record.json", "export/spec.yaml"} <= files
    best = min((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert client.get_run(parent.info.run_id).data.tags["hpo.exported_trial"] == str(best.number)
    assert client.get_run(children[best.number].info.run_id).data.tags["hpo.exported"] == "true"
