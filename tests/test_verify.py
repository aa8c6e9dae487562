"""Records that reproduce: the same spec and seed, run twice in separate processes with one
worker, give the same trials to the last bit; ``hpo verify`` reruns a recorded trial from its
params, seed and thread count and says how far its curve is from the record."""

from __future__ import annotations

import json
import shutil
import sqlite3

import optuna
import pytest
from optuna.trial import TrialState

from conftest import run_hpo
from specs import write_tiny_spec

SPEC = dict(
    task={"max_samples": 240, "image_size": 8},
    search_space={
        "lr": {"type": "float", "low": 1.0e-3, "high": 3.0e-2, "log": True},
        "batch_size": 32,
        "epochs": {"type": "int", "low": 1, "high": 2},
        "dropout": {"type": "float", "low": 0.0, "high": 0.5},
    },
    # TPE after one random trial: a later trial's params depend on the earlier values, so a
    # difference in any value's last bit would show as other params.
    sampler={"name": "tpe", "seed": 4, "n_startup_trials": 1},
    pruner={"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
    budget={"n_trials": 3},
)


@pytest.fixture(scope="module")
def twice(tmp_path_factory):
    """The study run twice, each by its own ``hpo run`` (one worker), each in its folder."""
    runs = []
    for name in ("first", "second"):
        folder = tmp_path_factory.mktemp(name)
        write_tiny_spec(folder / "spec.yaml", "repro", **SPEC)
        url = f"sqlite:///{folder / 'hpo.db'}"
        r = run_hpo("run", "spec.yaml", "--storage", url, "--workers", "1", cwd=folder)
        assert r.returncode == 0, r.stdout + r.stderr
        runs.append((folder, url))
    return runs


def _trials(url):
    return optuna.load_study(study_name="repro", storage=url).get_trials()


@pytest.mark.slow
@pytest.mark.xdist_group("verify")  # one process runs the module's studies once
def test_one_worker_and_a_seed_give_the_same_trials_in_two_processes(twice):
    (_, first), (_, second) = twice
    a, b = _trials(first), _trials(second)
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        assert x.params == y.params, (x.number, x.params, y.params)
        assert x.state == y.state and x.values == y.values
        assert x.intermediate_values == y.intermediate_values  # to the last bit
        assert x.user_attrs["threads"] == y.user_attrs["threads"] >= 1
    assert {t.state for t in a} <= {TrialState.COMPLETE, TrialState.PRUNED}


@pytest.mark.slow
@pytest.mark.xdist_group("verify")
def test_verify_reruns_a_trial_to_the_last_bit_and_finds_a_changed_record(twice, tmp_path):
    (folder, url), _ = twice
    r = run_hpo("verify", "repro", "--storage", url, "--json", cwd=folder)
    assert r.returncode == 0, r.stdout + r.stderr
    result = json.loads(r.stdout)
    best = optuna.load_study(study_name="repro", storage=url).best_trial
    assert result["trial"] == best.number and result["verdict"] == "identical"
    assert [s["step"] for s in result["steps"]] == sorted(best.intermediate_values)
    assert all(s["recorded"] == s["rerun"] for s in result["steps"])
    assert result["threads"]["recorded"] == result["threads"]["rerun"] == best.user_attrs[
        "threads"]

    # A record that no longer matches its training (a value changed by hand): the rerun
    # says where, and exits 1.
    copy = tmp_path / "changed.db"
    shutil.copy(folder / "hpo.db", copy)
    step = max(best.intermediate_values)
    with sqlite3.connect(copy) as db:
        changed = db.execute(
            "UPDATE trial_intermediate_values SET intermediate_value = intermediate_value * 1.01"
            " WHERE step = ? AND trial_id = (SELECT trial_id FROM trials WHERE number = ?)",
            (step, best.number)).rowcount
    assert changed == 1
    r = run_hpo("verify", "repro", "--storage", f"sqlite:///{copy}", cwd=folder)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "hpo: differs" in r.stdout
    line = next(x for x in r.stdout.splitlines() if x.split()[:1] == [str(step)])
    assert float(line.split()[1]) == pytest.approx(best.intermediate_values[step] * 1.01)
    assert float(line.split()[2]) == pytest.approx(best.intermediate_values[step])


def test_verify_refuses_your_own_code_in_one_line(tmp_path):
    (tmp_path / "train.py").write_text("from hpo import session\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "study: {name: own}\n"
        "task: {kind: script, command: [python, train.py]}\n"
        "search_space: {lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}}\n"
        "budget: {n_trials: 1}\n")
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    assert run_hpo("create", str(spec), "--storage", url, cwd=tmp_path).returncode == 0
    r = run_hpo("verify", "own", "--storage", url, cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "your own code" in r.stderr
