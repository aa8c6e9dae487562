"""Studies on every backend: the spec stored in the study, loading by name, creation races,
reruns that change only the budget, and the sampler and pruner factories."""

from __future__ import annotations

import threading
import time

import optuna
import yaml
import pytest

from conftest import SUPPORT, run_hpo
from hpo import __version__
from hpo.errors import SpecError, StudyNotFoundError
from hpo.spec import parse_spec
from hpo.store.storage import open_storage
from hpo.search.study import (SPEC_ATTR, VERSION_ATTR, create_study, load_study, make_pruner, make_sampler,
                       with_sampler_defaults)
from specs import make_spec, unique


@pytest.mark.parametrize("rounds", [12])
def test_concurrent_creates_with_different_specs_one_wins_the_other_is_refused(
        rounds, storage_url):
    storages = [open_storage(storage_url), open_storage(storage_url)]
    for r in range(rounds):
        name = f"both-{r}-{time.time_ns()}"
        specs = [make_spec(name), make_spec(name, **{"high: 1.0e-1": "high: 1.0e-2"})]
        barrier = threading.Barrier(2)
        outcome: list = [None, None]

        def create(i: int) -> None:
            barrier.wait()
            try:
                create_study(specs[i], storages[i])
                outcome[i] = "created"
            except SpecError as e:
                outcome[i] = e

        threads = [threading.Thread(target=create, args=(i,)) for i in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(map(type, outcome), key=str) == sorted([str, SpecError], key=str), outcome
        winner = outcome.index("created")
        error = str(outcome[1 - winner])
        assert "search_space.lr.high" in error and "\n" not in error
        _, stored = load_study(name, open_storage(storage_url, create=False))
        assert stored == with_sampler_defaults(specs[winner]), \
            f"round {r}: the loser overwrote the winner's spec"


def test_create_with_another_spec_is_exit_2_naming_the_difference(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    spec = tmp_path / "s.yaml"
    text = ("task: {kind: custom, entrypoint: 'fastjob:epochs_job'}\n"
            "search_space: {lr: {type: float, low: 1.0e-5, high: 1.0e-1, log: true}}\n")
    spec.write_text(text)
    env = {"PYTHONPATH": str(SUPPORT)}
    assert run_hpo("create", str(spec), "--storage", url, cwd=tmp_path, env=env).returncode == 0
    spec.write_text(text.replace("high: 1.0e-1", "high: 0.5"))
    r = run_hpo("create", str(spec), "--storage", url, cwd=tmp_path, env=env)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "search_space.lr.high (stored: 0.1, this spec: 0.5)" in r.stderr


def test_study_stores_the_whole_spec_and_loads_by_name(storage_url):
    spec = make_spec(unique("store"))
    study = create_study(spec, open_storage(storage_url))
    attrs = study.user_attrs
    assert attrs[VERSION_ATTR] == __version__
    # The whole spec, with the sampler default for its small budget written in.
    assert parse_spec(attrs[SPEC_ATTR]) == with_sampler_defaults(spec)
    # A worker elsewhere needs only the name and the URL.
    loaded, loaded_spec = load_study(spec.study.name, open_storage(storage_url, create=False))
    assert loaded_spec == with_sampler_defaults(spec)
    # No pruner named: the default for 5 trials of up to 6 epochs (hpo.spec's
    # with_default_pruner), whose TPE learns from each configuration where it stopped.
    from hpo.search.judging import JudgingSampler
    from hpo.search.schedulers.promotion import Promotion

    assert isinstance(loaded.sampler, JudgingSampler)
    assert isinstance(loaded.sampler.inner, optuna.samplers.TPESampler)
    assert isinstance(loaded.pruner, Promotion) and loaded.pruner.rungs == {1, 3, 9}

def test_rerun_loads_and_may_change_only_the_budget(storage_url):
    name = unique("rerun")
    storage = open_storage(storage_url)
    create_study(make_spec(name), storage)
    create_study(make_spec(name), storage)  # same spec: resume
    create_study(make_spec(name, **{"n_trials: 5": "n_trials: 9"}), storage)
    _, spec = load_study(name, storage)
    assert spec.budget.n_trials == 9
    with pytest.raises(SpecError, match="different search_space.lr"):
        create_study(make_spec(name, **{"low: 1.0e-4": "low: 1.0e-3"}), storage)
    assert len(optuna.get_all_study_names(storage)) == len(set(optuna.get_all_study_names(storage)))

def test_many_workers_creating_one_study_do_not_race(storage_url):
    name = unique("race")
    spec = make_spec(name)
    errors = []

    def create() -> None:
        try:
            create_study(spec, open_storage(storage_url))
        except Exception as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=create) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert optuna.get_all_study_names(open_storage(storage_url)).count(name) == 1

def test_unknown_study_lists_the_studies_there_are(storage_url):
    storage = open_storage(storage_url)
    name = unique("known")
    create_study(make_spec(name), storage)
    with pytest.raises(StudyNotFoundError, match=f"no hpo study named 'nosuch'.*{name}"):
        load_study("nosuch", storage)


SAMPLERS = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
            "gp": optuna.samplers.GPSampler, "cmaes": optuna.samplers.CmaEsSampler,
            "qmc": optuna.samplers.QMCSampler, "grid": optuna.samplers.GridSampler}


@pytest.mark.parametrize("name", SAMPLERS)
def test_sampler_factory(name):
    extra = f"sampler: {{name: {name}, seed: 3}}\n"
    spec = make_spec("s", extra, **{"log: true}": "step: 1.0e-4}"} if name == "grid" else {})
    sampler = make_sampler(spec, seed_offset=2)
    assert isinstance(getattr(sampler, "inner", sampler), SAMPLERS[name])  # a judging TPE
    # Different workers sample differently, the same worker reproducibly.
    def first(offset):
        study = optuna.create_study(sampler=make_sampler(spec, offset))
        t = study.ask()
        return t.suggest_float("lr", 1e-4, 1e-1, log=name != "grid",
                               step=1e-4 if name == "grid" else None)
    if name in ("random", "qmc"):
        assert first(0) == first(0) and first(0) != first(1)


PRUNERS = {
    "median": ("", optuna.pruners.MedianPruner),
    "percentile": ("percentile: 25", optuna.pruners.PercentilePruner),
    "successive_halving": ("", optuna.pruners.SuccessiveHalvingPruner),
    "hyperband": ("", optuna.pruners.HyperbandPruner),
    "patient": ("patience: 2, wrapped: {name: median}", optuna.pruners.PatientPruner),
    "threshold": ("upper: 5.0", optuna.pruners.ThresholdPruner),
    "none": ("", optuna.pruners.NopPruner),
}


@pytest.mark.parametrize("name", PRUNERS)
def test_pruner_factory(name):
    options, cls = PRUNERS[name]
    extra = f"pruner: {{name: {name}{', ' + options if options else ''}}}\n"
    assert isinstance(make_pruner(make_spec("p", extra)), cls)


def test_hyperband_max_resource_is_the_largest_epochs():
    pruner = make_pruner(make_spec("h", "pruner: {name: hyperband}\n"))
    assert pruner._max_resource == 6


def test_a_small_tpe_budget_starts_modelling_sooner_and_keeps_it(tmp_path):
    """benchmarks/startup.py: on 8-12 trials, max(2, n // 4) random startup trials beat
    Optuna's 10. Written into the stored spec, so reruns and workers keep it."""
    storage = open_storage(f"sqlite:///{tmp_path / 'hpo.db'}")

    def startup(name: str):
        return load_study(name, storage)[1].sampler.options.get("n_startup_trials")

    create_study(make_spec("small", **{"n_trials: 5": "n_trials: 12"}), storage)
    assert startup("small") == 3
    # A rerun with another budget keeps the study's sampler (and raises no difference).
    create_study(make_spec("small", **{"n_trials: 5": "n_trials: 40"}), storage)
    assert startup("small") == 3 and load_study("small", storage)[1].budget.n_trials == 40
    create_study(make_spec("larger", **{"n_trials: 5": "n_trials: 13"}), storage)
    assert startup("larger") is None  # Optuna's default
    create_study(make_spec("set", "sampler: {name: tpe, n_startup_trials: 10}\n"), storage)
    assert startup("set") == 10
    create_study(make_spec("random", "sampler: {name: random}\n"), storage)
    assert startup("random") is None
    # A study stored before the default existed keeps Optuna's default on every rerun.
    old = make_spec("old")
    create_study(old, storage)
    storage.set_study_user_attr(storage.get_study_id_from_name("old"), SPEC_ATTR, old.to_dict())
    create_study(old, storage)
    assert startup("old") is None


@pytest.mark.parametrize("extra, replace, pruner, evals", [
    ("", {"high: 6": "high: 3"}, {"name": "promotion", "min_resource": 0.25,
                                  "reduction_factor": 3}, 4),
    ("", {}, {"name": "promotion", "min_resource": 0.5, "reduction_factor": 3}, 2),
    ("", {"high: 6": "high: 12"}, {"name": "promotion", "min_resource": 1,
                                    "reduction_factor": 3}, 1),
    ("", {"n_trials: 5": "n_trials: 3"}, {"name": "none"}, 1),
    ("", {"dataset: {name: digits}}": "dataset: {name: digits}, evals_per_epoch: 3}"},
     {"name": "promotion", "min_resource": 1, "reduction_factor": 3}, 3),
    ("", {"high: 6": "high: 2", "dataset: {name: digits}}":
          "dataset: {name: digits}, evals_per_epoch: 2}"},
     {"name": "promotion", "min_resource": 0.5, "reduction_factor": 3}, 2),
    ("pruner: {name: median}\n", {}, {"name": "median"}, 1),
])
def test_a_spec_that_names_no_pruner_gets_the_measured_default_written_in(extra, replace,
                                                                          pruner, evals):
    """No pruner named: promotion with an early first rung, chosen from the epochs and the
    trials (few trials: none), stored in the spec, so the study reads back the same."""
    spec = make_spec("d", extra, **replace)
    assert spec.to_dict()["pruner"] == pruner
    assert spec.task.evals_per_epoch == evals
    assert parse_spec(spec.to_dict()) == spec


def test_the_default_of_a_custom_job_or_several_objectives():
    custom = parse_spec(yaml.safe_load("""
study: {name: c}
task: {kind: custom, entrypoint: "fastjob:epochs_job"}
search_space: {lr: {type: float, low: 1.0e-5, high: 1.0e-1, log: true}}
"""), check_environment=False)
    assert custom.pruner.name == "median"  # its job may not checkpoint where it stops
    several = make_spec("m", **{"task:": "study: {objectives: [val_loss, params]}\ntask:"})
    assert several.pruner.name == "none"


def test_hpo_create_says_which_pruner_it_chose_for_a_spec_that_names_none(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("""
task: {kind: image_classification, model: resnet18, dataset: {name: digits}}
search_space:
  lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
  epochs: {type: int, low: 1, high: 3}
budget: {n_trials: 6}
""")
    r = run_hpo("create", str(spec), "--storage", f"sqlite:///{tmp_path / 's.db'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert ("the spec names no pruner: promotion (min_resource 0.25, reduction_factor 3), "
            "task.evals_per_epoch 4; stored in the study's spec") in r.stdout
    stored = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 's.db'}")
    assert stored.user_attrs["hpo.spec"]["pruner"]["name"] == "promotion"
    spec.write_text(spec.read_text() + "pruner: {name: median}\n")
    named = run_hpo("create", str(spec), "--storage", f"sqlite:///{tmp_path / 't.db'}",
                    cwd=tmp_path)
    assert named.returncode == 0 and "names no pruner" not in named.stdout
