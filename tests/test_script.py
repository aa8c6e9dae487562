"""Script jobs: the user's own program, one process per trial, talking to hpo through
``hpo.session`` (the worker's side: hpo/run/worker/_script.py). Real processes throughout:
the shipped PyTorch example under ``hpo run`` with the promotion scheduler, a SIGTERM in the
middle of an epoch, a kill -9 of the script, a crash, a script that never reports, a NaN."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from hpo.search.schedulers.continuation import configuration
from hpo.errors import SpecError
from hpo.spec import parse_spec
from processes import ROOT, one_line_error, run_hpo, wait_for

EXAMPLE = ROOT / "examples" / "pytorch_loop"

TINY = """\
import json, os, sys, time
from hpo import session

params = session.params({"epochs": 3})
mode = os.environ.get("SCRIPT_MODE", "ok")
start = 1
if session.resume_from() is not None:
    start = json.loads((session.resume_from() / "state.json").read_text())["epoch"] + 1
    print(f"trial {session.trial_number()}: resumed after epoch {start - 1}", file=sys.stderr)
if mode == "crash":
    raise ValueError("boom before the first epoch")
if mode == "silent":
    sys.exit(0)
if mode == "abort_at_exit" and session.rank() == 1:
    import atexit
    # A rank's teardown that aborts, after rank 0's last report (no process group here to
    # keep the ranks in step: it waits instead).
    atexit.register(lambda: (time.sleep(3), os.abort()))
for epoch in range(start, params["epochs"] + 1):
    time.sleep(float(os.environ.get("SCRIPT_EPOCH_SECONDS", "0")))
    loss = float("nan") if mode == "nan" else 1.0 / epoch
    folder = session.checkpoint_dir()
    (folder / "state.json").write_text(json.dumps({"epoch": epoch}))
    print(f"trial {session.trial_number()} epoch {epoch} pid {os.getpid()}", file=sys.stderr)
    if not session.report({"val_loss": loss, "score": 2 * loss}, step=epoch, checkpoint=folder):
        break
"""


def _spec(tmp_path: Path, command: list[str], n: int = 1, pruner: str = "none",
          epochs: str = "{type: int, low: 3, high: 3}", metric: str = "val_loss",
          devices: int = 1) -> Path:
    name = f"script-{time.time_ns()}"
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(
        f"study: {{name: {name}, metric: {metric}}}\n"
        f"task: {{kind: script, command: {json.dumps(command)}}}\n"
        "search_space:\n"
        "  lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}\n"
        "  batch_size: {type: categorical, choices: [32]}\n"
        f"  epochs: {epochs}\n"
        "sampler: {name: random, seed: 0}\n"
        f"pruner: {{name: {pruner}}}\n"
        f"budget: {{n_trials: {n}}}\n"
        f"resources: {{devices_per_trial: {devices}}}\n"
    )
    return spec


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"HPO_CHECKPOINT_DIR": str(tmp_path / "ckpt"), "HPO_HEARTBEAT_INTERVAL": "1",
            "HPO_GRACE_PERIOD": "3", **extra}


def _tiny(tmp_path: Path) -> list[str]:
    script = tmp_path / "tiny.py"
    script.write_text(TINY)
    return ["python", str(script)]


def _trials(spec: Path, url: str) -> list[optuna.trial.FrozenTrial]:
    name = yaml.safe_load(spec.read_text())["study"]["name"]
    return optuna.load_study(study_name=name, storage=url).get_trials()


@contextlib.contextmanager
def _running(tmp_path: Path, spec: Path, url: str, log: Path, **env: str):
    """``hpo run SPEC`` left running, its output into ``log``; killed if still running after."""
    full = {**{k: v for k, v in os.environ.items() if k != "HPO_STORAGE"},
            **_env(tmp_path, **env), "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "hpo", "run", str(spec), "--storage", url],
            cwd=tmp_path, env=full, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield launcher
        finally:
            if launcher.poll() is None:
                launcher.kill()


def _run(tmp_path, spec, url, **env):
    return run_hpo("run", str(spec), "--storage", url, cwd=tmp_path, env=_env(tmp_path, **env),
                   timeout=300)


@pytest.mark.slow
def test_the_pytorch_example_pauses_and_resumes_from_its_own_checkpoints(tmp_path):
    """The shipped example under ``hpo run`` with the promotion scheduler: trials pause at
    the rungs and their continuations resume from the checkpoint the script reported; by
    the script's own log, every epoch of a configuration is trained once."""
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    spec = EXAMPLE / "spec.yaml"
    r = run_hpo("run", str(spec), "--storage", url, "--n-trials", "4", cwd=ROOT,
                env=_env(tmp_path), timeout=500)
    assert r.returncode == 0, r.stdout + r.stderr
    ts = _trials(spec, url)
    resumed = [t for t in ts if "resumed_from" in t.user_attrs and t.state != TrialState.WAITING]
    assert resumed, r.stdout + r.stderr  # some paused configuration went on
    assert any(t.state == TrialState.COMPLETE for t in resumed)
    trained: dict[int, list[int]] = {}
    for number, epoch in re.findall(r"trial (\d+) epoch (\d+) trained", r.stdout + r.stderr):
        trained.setdefault(configuration(ts[int(number)]), []).append(int(epoch))
    for config, epochs in trained.items():
        assert sorted(epochs) == list(range(1, len(epochs) + 1)), (config, epochs)
    for t in resumed:  # each continuation started where its pause left off
        assert f"trial {t.number}: resumed at epoch {t.user_attrs['paused_at'] + 1} batch 0" \
            in r.stdout + r.stderr
    best = min((t for t in ts if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert best.user_attrs["val_accuracy"] > 0.5
    assert Path(best.user_attrs["checkpoint"], "state.pt").is_file()
    # The export carries the script's checkpoint directory as it saved it.
    out = tmp_path / "export"
    r = run_hpo("export", "pytorch-loop", "--storage", url, "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    record = json.loads((out / "record.json").read_text())
    assert record["model"]["path"] == "best-checkpoint/", record["model"]
    assert (out / "best-checkpoint" / "state.pt").is_file()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("example", "n", "env", "accuracy", "checkpoint"),
    [
        ("hf_trainer", "4", {"EXAMPLE_SAMPLES": "300"}, "eval_accuracy", "checkpoint-"),
        ("lightning", "4", {}, "val_accuracy", ".ckpt"),
    ],
)
def test_a_framework_example_resumes_from_the_framework_s_own_checkpoints(
    tmp_path, example, n, env, accuracy, checkpoint
):
    """The Hugging Face ``Trainer`` example (MiniLM on VADER) and the Lightning one under
    ``hpo run`` with the promotion scheduler: their ``HpoCallback`` reports each epoch's
    evaluation with the checkpoint the framework saved there, a paused configuration resumes
    from it (``resume_from_checkpoint``, ``ckpt_path``), and no epoch of a configuration is
    trained twice (by the script's own log)."""
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    spec = ROOT / "examples" / example / "spec.yaml"
    r = run_hpo("run", str(spec), "--storage", url, "--n-trials", n, cwd=ROOT,
                env=_env(tmp_path, **env), timeout=800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ts = _trials(spec, url)
    output = r.stdout + r.stderr
    resumed = [t for t in ts if "resumed_from" in t.user_attrs and t.state != TrialState.WAITING]
    assert resumed, output[-3000:]
    trained: dict[int, list[int]] = {}
    for number, epoch in re.findall(r"trial (\d+) epoch (\d+) trained", output):
        trained.setdefault(configuration(ts[int(number)]), []).append(int(epoch))
    for config, epochs in trained.items():
        assert sorted(epochs) == list(range(1, len(epochs) + 1)), (config, epochs)
    for t in ts:
        if t.state == TrialState.COMPLETE:
            assert accuracy in t.user_attrs and checkpoint in t.user_attrs["checkpoint"]


def test_the_example_runs_alone_with_its_defaults(tmp_path):
    """``python train.py`` without hpo: its defaults, its reports printed, no stop."""
    r = subprocess.run([sys.executable, str(EXAMPLE / "train.py")], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300,
                       env={k: v for k, v in os.environ.items() if not k.startswith("HPO_")})
    assert r.returncode == 0, r.stderr
    assert re.search(r"step 4: val_loss [\d.]+  val_accuracy 0\.9", r.stderr), r.stderr
    assert (tmp_path / "checkpoints" / "state.pt").is_file()


def test_sigterm_mid_epoch_resumes_at_the_step_it_was_at(tmp_path):
    """SIGTERM to the worker inside epoch 2: the script is told to stop, saves where it
    stands and reports that checkpoint; the trial is re-queued, and the next worker's attempt
    starts at that very batch, not at the epoch's start."""
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    spec = _spec(tmp_path, ["python", str(EXAMPLE / "train.py")], epochs="{type: int, low: 3, high: 3}")
    assert run_hpo("create", str(spec), "--storage", url, cwd=tmp_path).returncode == 0
    name = yaml.safe_load(spec.read_text())["study"]["name"]
    env = {**{k: v for k, v in os.environ.items() if k != "HPO_STORAGE"},
           **_env(tmp_path, EXAMPLE_STEP_SECONDS="0.02"), "PYTHONUNBUFFERED": "1"}
    worker = subprocess.Popen([sys.executable, "-m", "hpo", "worker", name, "--storage", url],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(worker.stdout), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any("trial 0 epoch 1 trained" in x for x in lines), timeout=120,
                 what="epoch 1")
        time.sleep(random.uniform(0.1, 0.5))
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
    reader.join(timeout=10)
    output = "".join(lines)
    stopped = re.search(r"trial 0: stopped at epoch 2 batch (\d+)", output)
    assert stopped, output
    ts = _trials(spec, url)
    assert [t.state for t in ts] == [TrialState.WAITING], output
    r = run_hpo("worker", name, "--storage", url, cwd=tmp_path, env=_env(tmp_path), timeout=200)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"trial 0: resumed at epoch 2 batch {stopped.group(1)}" in r.stderr + r.stdout
    assert "trial 0 epoch 1 trained" not in r.stderr + r.stdout  # not trained again
    (t,) = _trials(spec, url)
    assert t.state == TrialState.COMPLETE and sorted(t.intermediate_values) == [1, 2, 3]


def test_a_killed_script_is_retried_from_its_last_checkpoint(tmp_path):
    """kill -9 of the script's process after its first report: the trial fails saying so,
    and its retry starts after the epoch the script had checkpointed."""
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    spec = _spec(tmp_path, _tiny(tmp_path))
    log = tmp_path / "script.log"
    with _running(tmp_path, spec, url, log, SCRIPT_EPOCH_SECONDS="1.0") as launcher:
        found = wait_for(lambda: re.search(r"trial 0 epoch 1 pid (\d+)", log.read_text()),
                         timeout=120, what="the script's first epoch")
        os.kill(int(found.group(1)), signal.SIGKILL)
        assert launcher.wait(timeout=120) == 0, log.read_text()
    ts = _trials(spec, url)
    assert [t.state for t in ts] == [TrialState.FAIL, TrialState.COMPLETE], log.read_text()
    assert "the script was killed by SIGKILL" in ts[0].user_attrs["fail_reason"]
    assert "trial 1: resumed after epoch 1" in log.read_text()
    assert sorted(ts[1].intermediate_values) == [1, 2, 3] and ts[1].value == pytest.approx(1 / 3)


def test_a_ddp_script_runs_as_two_ranks_and_a_killed_rank_retries_it(tmp_path):
    """The DDP example as one trial of 2 ranks (gloo, torchrun's environment, the worker's
    store): kill -9 of rank 1 inside epoch 2 fails the trial naming the rank, and its retry's
    ranks both start after the epoch rank 0 had checkpointed, and finish."""
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    spec = _spec(tmp_path, ["python", str(ROOT / "examples" / "ddp" / "train.py")], devices=2)
    log = tmp_path / "ranks.log"
    with _running(tmp_path, spec, url, log, EXAMPLE_EPOCH_SECONDS="1.5") as launcher:
        found = wait_for(
            lambda: re.search(r"rank 1: trial 0 epoch 1 trained \(pid (\d+)\)", log.read_text()),
            timeout=180, what="rank 1's first epoch")
        wait_for(lambda: "checkpoint" in _trials(spec, url)[0].user_attrs, timeout=30,
                 what="epoch 1's checkpoint")
        time.sleep(random.uniform(0.0, 1.0))
        os.kill(int(found.group(1)), signal.SIGKILL)
        assert launcher.wait(timeout=240) == 0, log.read_text()
    text = log.read_text()
    ts = _trials(spec, url)
    assert [t.state for t in ts] == [TrialState.FAIL, TrialState.COMPLETE], text
    assert "rank 1 of 2 was killed by SIGKILL" in ts[0].user_attrs["fail_reason"]
    for rank in (0, 1):
        assert re.search(rf"rank {rank}: trial 1: resumed after epoch [12]\b", text), text
    assert sorted(ts[1].intermediate_values) == [1, 2, 3]


@pytest.mark.parametrize(
    ("mode", "state", "says"),
    [
        ("crash", TrialState.FAIL, "ValueError: boom before the first epoch"),
        ("silent", TrialState.FAIL, "exited without reporting val_loss"),
        ("nan", TrialState.PRUNED, "nan"),
    ],
)
def test_a_script_that_crashes_is_silent_or_reports_nan(tmp_path, mode, state, says):
    """Each trial ends as it should, with its reason, and the worker goes on to the next
    trial (two trials, one worker process)."""
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    spec = _spec(tmp_path, _tiny(tmp_path), n=2)
    r = _run(tmp_path, spec, url, SCRIPT_MODE=mode)
    ts = _trials(spec, url)
    assert [t.state for t in ts][:2] == [state, state], r.stdout + r.stderr
    for t in ts[:2]:
        why = t.user_attrs.get("fail_reason") or t.user_attrs.get("prune_reason")
        assert says in why, why
    if mode == "crash":  # the script's own traceback is passed on for its author to read
        assert "ValueError: boom" in r.stdout + r.stderr


def test_a_rank_that_aborts_at_exit_after_the_last_report_keeps_the_result(tmp_path):
    """Two ranks; rank 1 aborts (SIGABRT) as it exits, after the trial's last report (gloo's
    teardown does so at times on a loaded machine): the trained trial completes, with a
    warning, and is not retried."""
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    spec = _spec(tmp_path, _tiny(tmp_path), devices=2)
    r = _run(tmp_path, spec, url, SCRIPT_MODE="abort_at_exit")
    assert r.returncode == 0, r.stdout + r.stderr
    assert [t.state for t in _trials(spec, url)] == [TrialState.COMPLETE], r.stdout + r.stderr
    assert "rank 1 of 2 was killed by SIGABRT after the trial's last report" in r.stdout + r.stderr


def test_the_objective_is_the_metric_the_spec_names(tmp_path):
    """``study.metric: score``: the trial's curve and value are the script's ``score``."""
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    spec = _spec(tmp_path, _tiny(tmp_path), metric="score")
    r = _run(tmp_path, spec, url)
    assert r.returncode == 0, r.stdout + r.stderr
    (t,) = _trials(spec, url)
    assert t.value == pytest.approx(2 / 3)
    assert t.intermediate_values == pytest.approx({1: 2.0, 2: 1.0, 3: 2 / 3})
    assert t.user_attrs["val_loss"] == pytest.approx(1 / 3)  # the best report's metrics
    assert t.user_attrs["best_metrics"] == pytest.approx({"val_loss": 1 / 3, "score": 2 / 3})
    assert t.user_attrs["metrics"]["1"] == pytest.approx({"val_loss": 1.0, "score": 2.0})


def test_a_maximized_metric_keeps_the_highest_report(tmp_path):
    """``study.metric: score, direction: maximize``: the script's score falls each epoch, so
    the best is its first report (2.0), the trial's value and ``best_metrics`` are that one's,
    and the study maximizes."""
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    spec = _spec(tmp_path, _tiny(tmp_path), metric="score, direction: maximize")
    r = _run(tmp_path, spec, url)
    assert r.returncode == 0, r.stdout + r.stderr
    (t,) = _trials(spec, url)
    assert t.value == pytest.approx(2.0)
    assert t.user_attrs["best_metrics"] == pytest.approx({"val_loss": 1.0, "score": 2.0})
    assert t.user_attrs["best_step"] == 1
    study = optuna.load_study(study_name=spec.stem, storage=url)
    assert study.direction.name == "MAXIMIZE"


def _parse(text: str):
    return parse_spec(yaml.safe_load(text), default_name="s")


SPACE = "search_space: {lr: {type: float, low: 0.001, high: 0.1}}\n"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("task: {kind: script}\n", ["command", "expected the program"]),
        ("task: {kind: script, command: [python, -V], model: m}\n", ["model", "script task"]),
        ("study: {metric: eval_f1}\n"
         "task: {kind: image_classification, model: resnet18, dataset: {name: digits}}\n",
         ["metric", "eval_f1", "script"]),
        ("task: {kind: image_classification, model: resnet18, dataset: {name: digits},"
         " command: [python]}\n", ["command", "script task only"]),
    ],
)
def test_a_script_spec_that_cannot_run_is_refused(text, words):
    with pytest.raises(SpecError) as e:
        _parse(text + SPACE)
    for word in words:
        assert word in str(e.value), (word, str(e.value))


def test_a_missing_script_file_is_one_line(tmp_path):
    spec = _spec(tmp_path, ["python", str(tmp_path / "nowhere.py")])
    r = run_hpo("create", str(spec), "--storage", f"sqlite:///{tmp_path / 'hpo.db'}",
                cwd=tmp_path)
    one_line_error(r, spec, "no such file", "nowhere.py")
    if (tmp_path / "hpo.db").exists():  # nothing written: no study in it
        assert optuna.get_all_study_names(f"sqlite:///{tmp_path / 'hpo.db'}") == []
