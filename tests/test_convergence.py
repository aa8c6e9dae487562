"""Knowing when to stop: repeats of the best configuration measure the seed noise; a study
with ``stop_when_converged`` stops once the room left for improvement is below it."""

from __future__ import annotations

import json

import optuna
import pytest

from hpo.cli import main
from hpo.records import REPEAT_OF_ATTR, SEED_ATTR, SEED_SPREAD_ATTR, STOPPED_ATTR

from conftest import run_hpo
from processes import SUPPORT

SPEC = """
study: {{name: {name}}}
task: {{kind: custom, entrypoint: "fastjob:epochs_job"}}
search_space:
  lr: {{type: float, low: 1.0e-4, high: 1.0e-1, log: true}}
  epochs: {{type: int, low: 1, high: 3}}
sampler: {{name: tpe, seed: 0}}
pruner: {{name: none}}
budget: {{n_trials: {n_trials}{budget}}}
"""


def _run(tmp_path, url, name, n_trials, budget, noise, workers="1"):
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(SPEC.format(name=name, n_trials=n_trials, budget=budget))
    r = run_hpo("run", str(spec), "--storage", url, "--workers", workers, "--checkpoint-dir",
                str(tmp_path / "ck"), cwd=tmp_path,
                env={"PYTHONPATH": str(SUPPORT), "FASTJOB_SEED_NOISE": str(noise)})
    assert r.returncode == 0, r.stdout + r.stderr
    return r, optuna.load_study(study_name=name, storage=url)


@pytest.mark.slow
def test_a_noisy_study_stops_when_converged_and_says_why(storage_url, tmp_path):
    name = f"conv-{tmp_path.name[-12:]}"
    r, study = _run(tmp_path, storage_url, name, 30,
                    ", stop_when_converged: true, min_trials: 6, repeats: 2", noise=2.0)
    trials = study.get_trials()
    assert len(trials) < 30, r.stdout
    assert "stopped (converged)" in r.stdout
    # The best of the first 6 was rerun with seeds 1 and 2, as trials of its own params.
    repeats = [t for t in trials if REPEAT_OF_ATTR in t.user_attrs]
    assert [t.user_attrs[SEED_ATTR] for t in repeats] == [1, 2]
    first_six = [t for t in trials if t.number < 6]
    best = min(first_six, key=lambda t: t.value)
    assert all(t.user_attrs[REPEAT_OF_ATTR] == best.number and t.params == best.params
               for t in repeats)
    # Their values differ by the seed noise alone: the spread is recorded beside the best.
    spread = study.user_attrs[SEED_SPREAD_ATTR]
    assert spread["trial"] == best.number and spread["seeds"] == [0, 1, 2]
    assert spread["values"] == [best.value] + [t.value for t in repeats]
    assert spread["std"] == pytest.approx(2.0 * 0.7272, abs=1e-3)
    stopped = study.user_attrs[STOPPED_ATTR]
    assert stopped.startswith(f"converged at trial {max(t.number for t in trials)}: the "
                              "regret bound") and "below the seed spread 1.454" in stopped

    status = run_hpo("status", name, "--storage", storage_url).stdout
    assert f"stopped  {stopped}" in status
    assert f"(seed spread ±1.4543 over 3 seeds of #{best.number})" in status
    best_text = run_hpo("best", name, "--storage", storage_url).stdout
    assert f"seed spread   std 1.4543, {min(spread['values']):.4f}.." in best_text
    best_json = json.loads(run_hpo("best", name, "--storage", storage_url, "--json").stdout)
    assert best_json["seed_spread"] == spread
    # Run again: a converged study stays stopped.
    r, again = _run(tmp_path, storage_url, name, 30,
                    ", stop_when_converged: true, min_trials: 6, repeats: 2", noise=2.0)
    assert len(again.get_trials()) == len(trials) and "stopped (converged)" in r.stdout


@pytest.mark.slow
def test_two_workers_rerun_the_best_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    r, study = _run(tmp_path, url, "two", 12,
                    ", stop_when_converged: true, min_trials: 4, repeats: 3", noise=0,
                    workers="2")
    repeats = [t for t in study.get_trials() if REPEAT_OF_ATTR in t.user_attrs]
    assert sorted(t.user_attrs[SEED_ATTR] for t in repeats) == [1, 2, 3], r.stdout
    assert len({t.user_attrs[REPEAT_OF_ATTR] for t in repeats}) == 1


@pytest.mark.slow
def test_without_noise_it_runs_its_whole_budget(tmp_path):
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    r, study = _run(tmp_path, url, "exact", 10,
                    ", stop_when_converged: true, min_trials: 4, repeats: 1", noise=0)
    trials = study.get_trials()
    assert len(trials) == 10 and "stopped (budget)" in r.stdout
    spread = study.user_attrs[SEED_SPREAD_ATTR]
    assert spread["std"] == 0 and len(spread["values"]) == 2
    assert STOPPED_ATTR not in study.user_attrs


@pytest.mark.slow
def test_a_study_without_the_keys_runs_as_before(tmp_path):
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    r, study = _run(tmp_path, url, "plain", 4, "", noise=2.0)
    assert len(study.get_trials()) == 4
    assert not any(REPEAT_OF_ATTR in t.user_attrs for t in study.get_trials())
    assert set(study.user_attrs) == {"hpo.spec", "hpo.version"}
    assert study.user_attrs["hpo.spec"]["budget"] == {"n_trials": 4, "timeout": None}
    status = run_hpo("status", "plain", "--storage", url).stdout
    assert "seed spread" not in status and "stopped" not in status


GOOD = SPEC.format(name="bad", n_trials=20, budget="{budget}")
BAD = [
    (", stop_when_converged: maybe", ["budget.stop_when_converged", "true or false"]),
    (", min_trials: 5", ["budget.min_trials", "only with stop_when_converged: true"]),
    (", repeats: 2", ["budget.repeats", "only with stop_when_converged: true"]),
    (", stop_when_converged: true, min_trials: 1", ["budget.min_trials", "integer >= 2"]),
    (", stop_when_converged: true, min_trials: 2.5", ["budget.min_trials", "integer >= 2"]),
    (", stop_when_converged: true, min_trials: 20", ["budget.min_trials", "not below n_trials"]),
    (", stop_when_converged: true, min_trials: 10, repeats: 10",
     ["budget.repeats", "min_trials (10) + repeats (10) is not below n_trials (20)"]),
    (", stop_when_converged: true, repeats: 0", ["budget.repeats", "integer >= 1", "got 0"]),
    (", stop_when_converged: true, repeats: many", ["budget.repeats", "integer >= 1"]),
    (", stop_when_converged: true, patience: 3", ["budget.patience", "unknown key"]),
]


@pytest.mark.parametrize("budget,words", BAD, ids=[b[0] for b in BAD])
def test_bad_convergence_keys_are_one_line_exit_2(budget, words, tmp_path, capsys):
    spec = tmp_path / "bad.yaml"
    spec.write_text(GOOD.replace("{budget}", budget))
    db = tmp_path / "hpo.db"
    code = main(["create", str(spec), "--storage", f"sqlite:///{db}"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith(f"hpo: error: {spec}: "), err
    for word in words:
        assert word in err, (word, err)
    assert not db.exists()


def test_the_regret_bound_is_fitted_once_for_the_same_complete_trials(monkeypatch):
    """A worker waiting at the end of the budget judges every few seconds: the Gaussian
    process is fitted again only when a trial has completed since."""
    from optuna.distributions import FloatDistribution
    from optuna.terminator import RegretBoundEvaluator
    from optuna.trial import create_trial

    from hpo.search.convergence import regret_bound

    fits = []
    real = RegretBoundEvaluator.evaluate

    def counted(self, trials, direction):
        fits.append(len(trials))
        return real(self, trials, direction)

    monkeypatch.setattr(RegretBoundEvaluator, "evaluate", counted)
    space = {"x": FloatDistribution(0.0, 1.0)}
    complete = []
    for i, x in enumerate((0.1, 0.4, 0.7, 0.9, 0.3)):
        t = create_trial(value=(x - 0.35) ** 2, params={"x": x}, distributions=space)
        t.number = i
        complete.append(t)
    first = regret_bound(complete[:4])
    assert regret_bound(complete[:4]) == first and fits == [4]
    regret_bound(complete)
    assert regret_bound(complete) is not None and fits == [4, 5]


def test_min_trials_defaults_to_10_and_must_leave_room():
    from hpo.spec import parse_spec

    raw = {"task": {"kind": "custom", "entrypoint": "fastjob:epochs_job"},
           "search_space": {"lr": {"type": "float", "low": 1e-4, "high": 1e-1}},
           "budget": {"n_trials": 10, "stop_when_converged": True}}
    with pytest.raises(Exception, match=r"budget.min_trials: 10 \(the default\) is not below"):
        parse_spec(raw, default_name="x", check_environment=False)
    raw["budget"]["n_trials"] = 13
    budget = parse_spec(raw, default_name="x", check_environment=False).budget
    assert (budget.first_judged, budget.n_repeats) == (10, 2)


def test_a_maximized_metric_repeats_its_highest_trial_and_bounds_regret_upwards(monkeypatch):
    """``study.metric: val_f1`` (maximized): the configuration rerun with other seeds is the
    highest one, and the regret bound is asked in the study's direction."""
    import os
    import socket

    from optuna.distributions import FloatDistribution
    from optuna.terminator import RegretBoundEvaluator

    from hpo.search.convergence import _enqueue_repeats, regret_bound
    from hpo.spec import parse_spec
    import yaml

    asked = []
    real = RegretBoundEvaluator.evaluate

    def seen(self, trials, direction):
        asked.append(direction)
        return real(self, trials, direction)

    monkeypatch.setattr(RegretBoundEvaluator, "evaluate", seen)
    for metric, best_x in (("score", 0.1), ("val_f1", 0.9)):
        text = SPEC.format(name="c", n_trials=8, budget=", stop_when_converged: true, "
                           "min_trials: 3, repeats: 2")
        text = text.replace("custom, entrypoint: \"fastjob:epochs_job\"",
                            "script, command: [python, -V]")
        spec = parse_spec(yaml.safe_load(text.replace("{name: c}", f"{{name: c, metric: {metric}}}")),
                          default_name="c")
        study = optuna.create_study(direction=spec.study.direction)
        for x in (0.5, 0.9, 0.1):
            study.add_trial(optuna.trial.create_trial(
                value=x, params={"lr": x / 10}, distributions={"lr": FloatDistribution(0, 1)},
                user_attrs={"host": socket.gethostname(), "pid": os.getpid()}))
        complete = study.get_trials()
        _enqueue_repeats(study, spec, complete)
        repeats = [t for t in study.get_trials() if REPEAT_OF_ATTR in t.user_attrs]
        assert {t.user_attrs[REPEAT_OF_ATTR] for t in repeats} == {
            next(t.number for t in complete if t.value == best_x)}, metric
        regret_bound(complete, spec.study.maximize)
    assert [d.name for d in asked] == ["MINIMIZE", "MAXIMIZE"]
