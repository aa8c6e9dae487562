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
from workers import FAST, TASKS, fast_env

pytestmark = pytest.mark.xdist_group("mlflow")  # one server for the tests of this file


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """``mlflow server`` on a SQLite backend and a free port (its artifacts proxied into a
    temp folder): its URL."""
    folder = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    log = open(folder / "server.log", "w")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
         "--artifacts-destination", str(folder / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("mlflow server did not start: "
                                + (folder / "server.log").read_text()[-2000:])
                time.sleep(0.2)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its uvicorn process
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def _history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key),
                                               key=lambda m: m.step)]


def test_mlflow_gets_the_study_as_one_run_and_each_trial_nested_under_it(
        mlflow_server, tmp_path):
    """The built-in job on two workers that race to create the study's run: one study run,
    a nested run per trial with its params, the metric history of every report step, its
    state and prune reason; TensorBoard gets a folder per trial; ``hpo export`` adds the
    exported model to the study's run."""
    from mlflow import MlflowClient

    name = f"tracked-{time.time_ns()}"
    tb = tmp_path / "tb"
    write_tiny_spec(tmp_path / "tiny.yaml", name,
                    tracking={"mlflow": mlflow_server, "tensorboard": str(tb)})
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    run = run_hpo("run", "tiny.yaml", "--storage", url, "--workers", "2",
                  "--checkpoint-dir", str(tmp_path / "ckpt"), cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "tracking:" not in run.stdout + run.stderr  # no warning: the server answered
    trials = optuna.load_study(study_name=name, storage=url).get_trials()
    assert len(trials) == 4

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("hpo.role") == "study"]
    assert len(parents) == 1, [r.info.run_name for r in parents]  # no duplicate from the race
    parent = parents[0]
    assert parent.info.run_name == name and parent.data.tags["hpo.study"] == name
    assert parent.info.status == "FINISHED"  # the workers stopped with the budget spent
    assert parent.data.params["sampler"] == "random"
    children = {int(r.data.tags["hpo.trial"]): r for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert sorted(children) == [t.number for t in trials]
    assert len(runs) == 1 + len(trials)
    for t in trials:
        child = children[t.number]
        assert child.info.run_name == f"trial-{t.number}"
        assert child.data.params == {k: str(v) for k, v in t.params.items()}
        # The metrics attr's values: rounded to 6 significant digits (hpo.job.metrics).
        logged, reported = _history(client, child.info.run_id, "val_loss"), sorted(
            t.intermediate_values.items())
        assert [s for s, _ in logged] == [s for s, _ in reported]
        assert [v for _, v in logged] == pytest.approx([v for _, v in reported], rel=1e-5)
        steps = [s for s, _ in _history(client, child.info.run_id, "train_accuracy")]
        assert steps == sorted(t.intermediate_values)
        assert child.data.tags["hpo.state"] == t.state.name
        assert child.data.tags["hpo.worker"] == t.user_attrs["worker"]
        if t.state == TrialState.COMPLETE:
            assert child.info.status == "FINISHED"
            assert child.data.metrics["best_val_loss"] == t.value
        else:
            assert t.state == TrialState.PRUNED
            assert child.data.tags["hpo.prune_reason"] == t.user_attrs["prune_reason"]
    assert {t.state for t in trials} == {TrialState.COMPLETE, TrialState.PRUNED}

    _check_tensorboard(tb / name, trials)

    export = run_hpo("export", name, "--storage", url, "--out", "best", cwd=tmp_path)
    assert export.returncode == 0, export.stderr
    assert f"the export is in run {parent.info.run_id}" in export.stdout + export.stderr
    files = {a.path for a in client.list_artifacts(parent.info.run_id, "export")}
    assert {"export/model.pt", "export/record.json", "export/spec.yaml"} <= files
    best = min((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert client.get_run(parent.info.run_id).data.tags["hpo.exported_trial"] == str(best.number)
    assert client.get_run(children[best.number].info.run_id).data.tags["hpo.exported"] == "true"


def _check_tensorboard(folder, trials, metric="val_loss"):
    """Each trial's folder: its metric at every report step, its params as hparams, its
    status at the end."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import api_pb2, metadata
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    assert sorted(p.name for p in folder.iterdir()) == sorted(f"trial-{t.number}" for t in trials)
    for t in trials:
        events = EventAccumulator(str(folder / f"trial-{t.number}"))
        events.Reload()
        scalars = [(e.step, e.value) for e in events.Scalars(metric)]
        expected = sorted(t.intermediate_values.items())
        assert [s for s, _ in scalars] == [s for s, _ in expected]
        assert [v for _, v in scalars] == pytest.approx([v for _, v in expected], rel=1e-5)
        content = events.PluginTagToContent(metadata.PLUGIN_NAME)
        start = HParamsPluginData.FromString(content[metadata.SESSION_START_INFO_TAG])
        hparams = start.session_start_info.hparams
        assert set(hparams) == set(t.params)
        assert hparams["lr"].number_value == pytest.approx(t.params["lr"])
        end = HParamsPluginData.FromString(content[metadata.SESSION_END_INFO_TAG])
        status = api_pb2.Status.Name(end.session_end_info.status)
        assert status == ("STATUS_SUCCESS" if t.state == TrialState.COMPLETE
                          else "STATUS_UNKNOWN")


def test_a_tracking_server_that_is_down_is_a_warning_and_no_trial_fails(tmp_path):
    """A script task whose MLflow has nothing listening on its port: every trial completes,
    the worker warns once, and TensorBoard still gets every report (the script's reports
    reach it through the relay)."""
    name = f"down-{time.time_ns()}"
    down = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    spec = FAST.format(name=name, n=3, low=2, high=3, pruner="none")
    spec = yaml.safe_load(spec.replace(TASKS["custom"], TASKS["script"]))
    spec["tracking"] = {"mlflow": down, "tensorboard": "tb"}
    (tmp_path / "down.yaml").write_text(yaml.safe_dump(spec))
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    run = run_hpo("run", "down.yaml", "--storage", url, "--workers", "1", cwd=tmp_path,
                  env=fast_env(tmp_path))
    assert run.returncode == 0, run.stdout + run.stderr
    trials = optuna.load_study(study_name=name, storage=url).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    out = run.stdout + run.stderr
    assert out.count(f"tracking: MLflow at {down}") == 1, out  # once, not per report
    assert "Traceback" not in out
    _check_tensorboard(tmp_path / "tb" / name, trials)


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
