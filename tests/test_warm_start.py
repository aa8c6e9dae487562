"""Warm start: an earlier study's best configurations and the model family's known-good
defaults as a new study's first trials, enqueued once however often the spec is run."""

from __future__ import annotations

import textwrap

import optuna
import pytest
import yaml
from optuna.distributions import FloatDistribution, IntDistribution

from hpo.cli import main
from hpo.records import FIRST_GUESS_ATTR, FIRST_GUESSES_ATTR
from hpo.spec import parse_spec
from hpo.search.warm_start import fit_to_space

from conftest import run_hpo
from processes import SUPPORT, one_line_error
from specs import make_spec, unique

CUSTOM = """
study: {{name: {name}}}
task: {{kind: custom, entrypoint: "fastjob:epochs_job"}}
search_space:
  lr: {{type: float, low: 1.0e-4, high: 1.0e-1, log: true}}
  epochs: {{type: int, low: 1, high: 3}}
sampler: {{name: random, seed: 0}}
pruner: {{name: none}}
budget: {{n_trials: {n_trials}}}
"""

EARLIER = [  # (lr, epochs, value): the best three are #2, #0, #4 (#4 repeats #0's params)
    (0.003, 3, 0.40), (0.05, 1, 0.90), (0.004, 2, 0.30), (0.0001, 1, 2.0), (0.003, 3, 0.45),
    (0.02, 2, 0.60),
]


def _earlier_study(url: str, name: str, trials=EARLIER, lr_high: float = 1e-1) -> None:
    """An earlier study of this storage with complete trials of known params and values."""
    study = optuna.create_study(study_name=name, storage=url)
    dists = {"lr": FloatDistribution(1e-5, lr_high, log=True), "epochs": IntDistribution(1, 3)}
    for lr, epochs, value in trials:
        study.add_trial(optuna.trial.create_trial(
            params={"lr": lr, "epochs": epochs}, distributions=dists, value=value))


def _queued(url: str, name: str) -> list[dict]:
    """The params of the study's queued (enqueued, not yet run) trials, in order."""
    trials = optuna.load_study(study_name=name, storage=url).get_trials()
    assert all(t.state.name == "WAITING" for t in trials)
    return [t.system_attrs["fixed_params"] for t in trials]


JOB_ENV = {"PYTHONPATH": str(SUPPORT)}  # fastjob imports in the CLI and its workers


def _write(path, name, n_trials=3, warm=""):
    path.write_text(CUSTOM.format(name=name, n_trials=n_trials) + warm)
    return path


@pytest.mark.slow
def test_the_earlier_best_run_first_and_once(storage_url, tmp_path):
    earlier, name = unique("earlier"), unique("warm")
    _earlier_study(storage_url, earlier)
    spec = _write(tmp_path / "warm.yaml", name, n_trials=3,
                  warm=f"warm_start: {{from: {earlier}, top_k: 3}}\n")
    for n_trials in ("3", "5"):  # a second run of the same spec enqueues nothing again
        r = run_hpo("run", str(spec), "--storage", storage_url, "--workers", "1",
                    "--n-trials", n_trials, "--checkpoint-dir", str(tmp_path / "ck"),
                    cwd=tmp_path, env=JOB_ENV)
        assert r.returncode == 0, r.stdout + r.stderr
    study = optuna.load_study(study_name=name, storage=storage_url)
    trials = study.get_trials()
    assert len(trials) == 5 and all(t.state.name == "COMPLETE" for t in trials)
    guessed = [(t.number, t.params, t.user_attrs.get(FIRST_GUESS_ATTR)) for t in trials]
    # #4 has #0's params: one guess; the third is #5, the next best distinct configuration.
    assert guessed[:3] == [
        (0, {"lr": 0.004, "epochs": 2}, f"study {earlier} #2"),
        (1, {"lr": 0.003, "epochs": 3}, f"study {earlier} #0"),
        (2, {"lr": 0.02, "epochs": 2}, f"study {earlier} #5"),
    ]
    assert all(g[2] is None for g in guessed[3:])
    assert study.user_attrs[FIRST_GUESSES_ATTR] == [g[2] for g in guessed[:3]]


def test_trials_outside_the_space_are_skipped_by_name_or_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    # #0 and #2 (the best) have lr above this study's 0.1; #1 fits.
    _earlier_study(url, "wide", [(0.5, 1, 0.1), (0.01, 2, 0.5), (0.3, 1, 0.2)], lr_high=1.0)
    spec = _write(tmp_path / "warm.yaml", "warm", warm="warm_start: {from: wide, top_k: 2}\n")
    r = run_hpo("create", str(spec), "--storage", url, cwd=tmp_path, env=JOB_ENV)
    assert r.returncode == 0, r.stderr
    assert "skipped trial(s) outside this search space: #0 (lr=0.5 is outside [0.0001, 0.1])" \
           ", #2 (lr=0.3 is outside" in r.stderr
    assert _queued(url, "warm") == [{"lr": 0.01, "epochs": 2}]

    _earlier_study(url, "too-wide", [(0.5, 1, 0.1)], lr_high=1.0)
    spec = _write(tmp_path / "refused.yaml", "refused",
                  warm="warm_start: {from: too-wide}\n")
    r = run_hpo("run", str(spec), "--storage", url, cwd=tmp_path, env=JOB_ENV)
    one_line_error(r, spec, "warm_start.from", "none of the best trials of study 'too-wide'",
                   "#0 (lr=0.5 is outside [0.0001, 0.1])")
    assert "refused" not in optuna.get_all_study_names(url)  # nothing half-made


def test_an_earlier_study_in_another_storage(tmp_path):
    other, url = f"sqlite:///{tmp_path / 'other.db'}", f"sqlite:///{tmp_path / 'hpo.db'}"
    _earlier_study(other, "elsewhere")
    spec = _write(tmp_path / "warm.yaml", "warm",
                  warm=f"warm_start: {{from: elsewhere, top_k: 1, storage: '{other}'}}\n")
    r = run_hpo("create", str(spec), "--storage", url, cwd=tmp_path, env=JOB_ENV)
    assert r.returncode == 0, r.stderr
    assert _queued(url, "warm") == [{"lr": 0.004, "epochs": 2}]


def test_family_defaults_are_trial_0_clipped_to_the_space(tmp_path):
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    spec = tmp_path / "digits.yaml"
    spec.write_text(textwrap.dedent("""
        study: {name: digits}
        task: {kind: image_classification, model: resnet18, dataset: {name: digits}}
        search_space:
          lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
          batch_size: {type: categorical, choices: [16, 64]}
          optimizer: {type: categorical, choices: [adam, sgd]}
          momentum: {type: float, low: 0.5, high: 0.99, when: {optimizer: sgd}}
          weight_decay: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
          epochs: 2
        warm_start: {defaults: true}
        budget: {n_trials: 4}
    """))
    r = run_hpo("create", str(spec), "--storage", url, cwd=tmp_path, env=JOB_ENV)
    assert r.returncode == 0, r.stderr
    study = optuna.load_study(study_name="digits", storage=url)
    (first,) = study.get_trials()
    # convnet: Adam at 1e-3, weight decay 1e-4 raised to the space's 1e-3; batch 32 is not a
    # choice (sampled); no momentum (only with sgd).
    assert first.number == 0 and first.state.name == "WAITING"
    assert first.system_attrs["fixed_params"] == {"lr": 1e-3, "optimizer": "adam", "weight_decay": 1e-3}
    assert first.user_attrs[FIRST_GUESS_ATTR] == "defaults (convnet)"


def test_text_defaults_clip_into_the_space_and_the_steps():
    spec = parse_spec(yaml.safe_load("""
        task: {kind: text_classification, model: some-bert, dataset: {name: vader}}
        search_space:
          lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
          epochs: {type: int, low: 4, high: 8, step: 2}
          warmup_fraction: {type: float, low: 0.0, high: 0.3, step: 0.25}
          optimizer: {type: categorical, choices: [adamw, sgd]}
    """), default_name="t", check_environment=False)
    from hpo.spec import FAMILIES

    assert fit_to_space(FAMILIES["transformer-encoder"].params, spec) == {
        "lr": 1e-4, "epochs": 4, "warmup_fraction": 0.0, "optimizer": "adamw"}


def test_a_study_without_warm_start_stores_the_same_spec():
    spec = make_spec("plain")
    assert "warm_start" not in spec.to_dict()
    assert spec.to_dict()["budget"] == {"n_trials": 5, "timeout": None}


GOOD = CUSTOM.format(name="bad", n_trials=20)
BAD = [
    ("warm_start: {from: old, top_k: 0}", ["warm_start.top_k", "integer >= 1", "got 0"]),
    ("warm_start: {from: old, top_k: two}", ["warm_start.top_k", "integer >= 1"]),
    ("warm_start: {from: ''}", ["warm_start.from", "non-empty string"]),
    ("warm_start: {from: bad}", ["warm_start.from", "this study itself"]),
    ("warm_start: {top_k: 3}", ["warm_start.top_k", "only with from:"]),
    ("warm_start: {}", ["warm_start", "give from: STUDY, defaults: true, or both"]),
    ("warm_start: {defaults: yes please}", ["warm_start.defaults", "true or false"]),
    ("warm_start: {defaults: true}", ["warm_start.defaults", "your own code (task.kind: custom)"]),
    ("warm_start: {from: old, storage: hpo.db}", ["warm_start.storage", "storage URL"]),
    ("warm_start: {from: old, storage: 'postgresql://u:s3cret@db/hpo'}",
     ["warm_start.storage", "password"]),
    ("warm_start: {from: old, seed: 1}", ["warm_start.seed", "unknown key"]),
    ("warm_start: [old]", ["warm_start", "expected a mapping"]),
    ("warm_start: {from: nowhere}", ["warm_start.from", "no study named 'nowhere'"]),
    ("warm_start: {from: old}\nsampler: {name: grid}", ["warm_start", "grid sampler"]),
]


@pytest.mark.parametrize("text,words", BAD, ids=[b[0] for b in BAD])
def test_bad_warm_start_is_one_line_exit_2(text, words, tmp_path, capsys):
    spec = tmp_path / "bad.yaml"
    spec.write_text(GOOD.replace("sampler: {name: random, seed: 0}\n", "")
                    if "grid" in text else GOOD)
    spec.write_text(spec.read_text() + text + "\n")
    if "grid" in text:  # the grid sampler needs a finite space
        spec.write_text(spec.read_text().replace(
            "lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}",
            "lr: {type: categorical, choices: [0.01, 0.1]}"))
    code = main(["create", str(spec), "--storage", f"sqlite:///{tmp_path / 'hpo.db'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith(f"hpo: error: {spec}: "), err
    for word in words:
        assert word in err, (word, err)
    assert "s3cret" not in err


def test_an_earlier_study_that_maximizes_gives_its_highest_first(tmp_path):
    """A study of ``val_f1`` (maximized): its best trials are its highest, not its lowest."""
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    study = optuna.create_study(study_name="f1", storage=url, direction="maximize")
    for lr, value in ((0.01, 0.9), (0.05, 0.5), (0.002, 0.7)):
        study.add_trial(optuna.trial.create_trial(
            params={"lr": lr}, distributions={"lr": FloatDistribution(1e-4, 0.1)}, value=value))
    spec = _write(tmp_path / "warm.yaml", "warm", warm="warm_start: {from: f1, top_k: 2}\n")
    r = run_hpo("create", str(spec), "--storage", url, cwd=tmp_path, env=JOB_ENV)
    assert r.returncode == 0, r.stderr
    assert _queued(url, "warm") == [{"lr": 0.01}, {"lr": 0.002}]


def test_an_earlier_study_of_several_objectives_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    study = optuna.create_study(study_name="pareto", storage=url,
                                directions=["minimize", "minimize"])
    study.add_trial(optuna.trial.create_trial(
        params={"lr": 0.01}, distributions={"lr": FloatDistribution(1e-4, 0.1)},
        values=[0.9, 3.0]))
    spec = _write(tmp_path / "warm.yaml", "warm", warm="warm_start: {from: pareto}\n")
    r = run_hpo("create", str(spec), "--storage", url, cwd=tmp_path, env=JOB_ENV)
    one_line_error(r, spec, "warm_start.from", "'pareto' has several objectives")
    assert optuna.get_all_study_names(url) == ["pareto"]


def test_the_exported_best_spec_has_no_first_guesses(tmp_path):
    """The export's spec runs the best trial's params once: first guesses would not fit it."""
    from hpo.results.export import best_spec_dict

    spec = make_spec("digits", "warm_start: {defaults: true, from: older}\n")
    trial = optuna.trial.create_trial(
        params={"lr": 0.01, "epochs": 2, "optimizer": "adam"},
        distributions={p.name: p.distribution() for p in spec.search_space}, value=0.5)
    exported = parse_spec(best_spec_dict(spec, trial), check_environment=False)
    assert spec.warm_start is not None and exported.warm_start is None


def test_defaults_that_fit_nothing_enqueue_nothing(tmp_path):
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    spec = tmp_path / "odd.yaml"
    spec.write_text(textwrap.dedent("""
        study: {name: odd}
        task: {kind: image_classification, model: resnet18, dataset: {name: digits}}
        search_space:
          optimizer: {type: categorical, choices: [sgd, rmsprop]}
          lr: 0.01
        warm_start: {defaults: true}
    """))
    r = run_hpo("create", str(spec), "--storage", url, cwd=tmp_path)
    assert r.returncode == 0 and "none of the convnet defaults fits" in r.stderr, r.stderr
    assert optuna.load_study(study_name="odd", storage=url).get_trials() == []
