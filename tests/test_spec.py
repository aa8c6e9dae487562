"""The spec: every shipped spec loads; every kind of bad input is one clear line, exit 2,
nothing written."""

from __future__ import annotations

import os
from pathlib import Path

import optuna
import pytest
import yaml

from hpo.cli import main
from hpo.errors import SpecError
from hpo.spec import load_spec, parse_spec, suggest

from conftest import ROOT
from specs import refused_spec

SPECS = sorted((ROOT / "search_spaces").glob("*.yaml"))

GOOD = """
study: {name: t}
task:
  kind: image_classification
  model: resnet18
  dataset: {name: digits}
search_space:
  lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
  batch_size: {type: categorical, choices: [16, 32]}
  epochs: {type: int, low: 1, high: 3}
  optimizer: {type: categorical, choices: [adam, sgd]}
  momentum: {type: float, low: 0.5, high: 0.99, when: {optimizer: sgd}}
  dropout: {type: float, low: 0.0, high: 0.5}
  weight_decay: {type: float, low: 1.0e-6, high: 1.0e-2, log: true}
budget: {n_trials: 3}
"""


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_every_shipped_spec_loads(path: Path) -> None:
    spec = load_spec(path)
    assert spec.study.name
    assert parse_spec(spec.to_dict(), check_environment=False) == spec
    for p in spec.search_space:
        if p.searched:
            assert p.distribution() is not None


def test_shipped_specs_exist() -> None:
    assert "digits" in [p.stem for p in SPECS]


def test_good_spec_round_trips_and_samples_conditionally() -> None:
    import yaml

    spec = parse_spec(yaml.safe_load(GOOD), source="good.yaml")
    assert parse_spec(spec.to_dict()) == spec
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        params = suggest(trial, spec)
        assert ("momentum" in trial.params) == (params["optimizer"] == "sgd")
        assert {"lr", "batch_size", "epochs", "optimizer", "dropout", "weight_decay"} <= set(
            trial.params)
        assert 1e-4 <= params["lr"] <= 1e-1 and params["batch_size"] in (16, 32)
        seen.add(params["optimizer"])
        study.tell(trial, 0.0)
    assert seen == {"adam", "sgd"}


def _replace(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


# (name, spec text, words the one-line error must contain)
BAD = [
    ("unknown top key", GOOD + "extra: 1\n", ["extra", "unknown key"]),
    ("loss maximized",
     _replace(GOOD, "{name: t}", "{name: t, direction: maximize}"),
     ["study.direction", "val_loss is better lower", "expected minimize", "got maximize"]),
    ("f1 minimized",
     _replace(GOOD, "{name: t}", "{name: t, metric: val_f1, direction: minimize}"),
     ["study.direction", "val_f1 is better higher", "expected maximize", "got minimize"]),
    ("no direction",
     _replace(GOOD, "{name: t}", "{name: t, direction: up}"),
     ["study.direction", "expected minimize or maximize", "'up'"]),
    ("a metric the job does not record",
     _replace(GOOD, "{name: t}", "{name: t, metric: val_top5}"),
     ["study.metric", "records val_loss, val_accuracy", "val_auroc", "'val_top5'", "script"]),
    ("a train metric as the objective",
     _replace(GOOD, "{name: t}", "{name: t, metric: train_f1}"),
     ["study.metric", "'train_f1'"]),
    ("another metric with several objectives",
     _replace(GOOD, "{name: t}", "{name: t, metric: val_f1, objectives: [val_loss, params]}"),
     ["study.metric", "several study.objectives", "val_f1"]),
    ("unknown task key", _replace(GOOD, "model: resnet18", "model: resnet18\n  modle: x"),
     ["task.modle", "unknown key"]),
    ("unknown param key", _replace(GOOD, "log: true}", "log: true, scale: 2}"),
     ["search_space.lr.scale", "unknown key"]),
    ("unknown hyperparameter", _replace(GOOD, "  dropout:", "  droput: 0.1\n  dropout:"),
     ["search_space.droput", "unknown key"]),
    ("wrong type", _replace(GOOD, "low: 1.0e-4", "low: abc"),
     ["search_space.lr.low", "expected a number", "'abc'"]),
    ("low > high", _replace(GOOD, "low: 1, high: 3", "low: 5, high: 3"),
     ["search_space.epochs", "greater than high"]),
    ("log with low <= 0", _replace(GOOD, "low: 1.0e-6", "low: 0.0"),
     ["search_space.weight_decay.low", "> 0 with log"]),
    ("empty choices", _replace(GOOD, "choices: [16, 32]", "choices: []"),
     ["search_space.batch_size.choices", "empty"]),
    ("unknown optimizer", _replace(GOOD, "[adam, sgd]", "[adam, lion]"),
     ["search_space.optimizer.choices.1", "adam, adamw, sgd, rmsprop", "'lion'"]),
    ("unknown model", _replace(GOOD, "model: resnet18", "model: resnet19"),
     ["task.model", "unknown torchvision", "resnet19"]),
    ("unknown sampler", GOOD + "sampler: {name: bayes}\n", ["sampler.name", "unknown sampler"]),
    ("unknown pruner", GOOD + "pruner: {name: early}\n", ["pruner.name", "unknown pruner"]),
    ("pruner name a list", GOOD + "pruner: {name: [median]}\n",
     ["pruner.name", "unknown pruner a list", "expected one of median"]),
    ("unknown sampler option", GOOD + "sampler: {name: tpe, sed: 1}\n",
     ["sampler.sed", "unknown option"]),
    ("bad budget", _replace(GOOD, "n_trials: 3", "n_trials: 0"),
     ["budget.n_trials", "integer >= 1"]),
    ("no devices per trial", GOOD + "resources: {devices_per_trial: 0}\n",
     ["resources.devices_per_trial", "integer >= 1", "got 0"]),
    ("devices per trial not a number", GOOD + "resources: {devices_per_trial: two}\n",
     ["resources.devices_per_trial", "integer >= 1", "'two'"]),
    ("unknown resources key", GOOD + "resources: {gpus: 2}\n",
     ["resources.gpus", "unknown key", "devices_per_trial"]),
    ("malformed yaml", "study: {name: t\ntask: [", ["malformed YAML", "line"]),
    ("empty file", "", ["empty"]),
    ("missing task", "search_space: {lr: 0.1}\n", ["task", "missing"]),
    ("condition on a later param", _replace(GOOD, "when: {optimizer: sgd}", "when: {dropout: 0.1}"),
     ["search_space.momentum.when.dropout"]),
    ("condition value not a choice", _replace(GOOD, "when: {optimizer: sgd}",
                                              "when: {optimizer: lion}"),
     ["search_space.momentum.when.optimizer", "'lion'"]),
    ("dropout out of range", _replace(GOOD, "low: 0.0, high: 0.5", "low: 0.0, high: 1.5"),
     ["search_space.dropout.high", "[0, 1)"]),
    ("grid over a continuous float", GOOD + "sampler: {name: grid}\n",
     ["search_space.lr", "grid sampler"]),
    ("missing weights file", _replace(GOOD, "model: resnet18", "model: resnet18\n  weights: ./no.pt"),
     ["task.weights", "no checkpoint file"]),
    ("unknown dataset", _replace(GOOD, "{name: digits}", "{name: CIFAR11, root: /tmp}"),
     ["task.dataset.name", "CIFAR11"]),
    ("test_fraction out of range", _replace(GOOD, "model: resnet18",
                                            "model: resnet18\n  test_fraction: 1.5"),
     ["task.test_fraction", "(0, 1)", "1.5"]),
    ("test_fraction and a test split", _replace(
        GOOD, "{name: digits}", "{image_folder: /tmp/x, test: held}\n  test_fraction: 0.2"),
     ["task.test_fraction", "own test split", "dataset.test"]),
    ("test folder without an image folder", _replace(GOOD, "{name: digits}",
                                                     "{name: digits, test: x}"),
     ["task.dataset.test", "image_folder"]),
    ("thin a class to nothing", _replace(GOOD, "model: resnet18",
                                         "model: resnet18\n  thin_classes: {'3': 0}"),
     ["task.thin_classes.3", "share kept in (0, 1]", "got 0"]),
    ("thin classes not a mapping", _replace(GOOD, "model: resnet18",
                                            "model: resnet18\n  thin_classes: 0.1"),
     ["task.thin_classes", "mapping class name", "0.1"]),
    ("val subset of nothing", _replace(GOOD, "model: resnet18",
                                       "model: resnet18\n  val_subset: 0"),
     ["task.val_subset", "integer >= 1", "got 0"]),
    ("val subset with one evaluation an epoch", _replace(
        GOOD, "model: resnet18", "model: resnet18\n  val_subset: 100"),
     ["task.val_subset", "inside an epoch", "evals_per_epoch above 1"]),
]


@pytest.mark.parametrize("name,text,words", BAD, ids=[b[0] for b in BAD])
def test_bad_spec_is_one_clear_line_and_writes_nothing(name, text, words, tmp_path, capsys):
    refused_spec(text, tmp_path, capsys, *words)


@pytest.mark.parametrize(("study", "kind", "direction"), [
    ("{name: t}", "image_classification", "minimize"),
    ("{name: t, metric: val_f1}", "image_classification", "maximize"),
    ("{name: t, metric: val_accuracy, direction: maximize}", "image_classification", "maximize"),
    ("{name: t, metric: val_auroc}", "image_classification", "maximize"),
    ("{name: t, metric: score}", "script", "minimize"),
    ("{name: t, metric: score, direction: maximize}", "script", "maximize"),
    ("{name: t, metric: eval_accuracy}", "script", "maximize"),
    ("{name: t, metric: eval_loss}", "script", "minimize"),
])
def test_the_direction_defaults_to_the_metrics_natural_one(study, kind, direction):
    """Loss is minimized, accuracy, F1, ... maximized; a script's own name is minimized
    unless the spec says otherwise. The direction is stored with the spec."""
    text = _replace(GOOD, "{name: t}", study)
    if kind == "script":
        text = text.replace("kind: image_classification\n  model: resnet18\n"
                            "  dataset: {name: digits}", "kind: script\n  command: [python, -V]")
    spec = parse_spec(yaml.safe_load(text), source="t.yaml", default_name="t")
    assert spec.study.direction == direction
    assert spec.study.maximize == (direction == "maximize")
    assert spec.study.to_dict()["direction"] == direction
    if kind != "script":
        again = parse_spec(spec.to_dict(), source="stored", default_name="t")
        assert again.study == spec.study


def test_missing_spec_file(tmp_path, capsys):
    db = tmp_path / "hpo.db"
    assert main(["run", str(tmp_path / "nope.yaml"), "--storage", f"sqlite:///{db}"]) == 2
    err = capsys.readouterr().err
    assert "no such spec file" in err and "nope.yaml" in err
    assert not db.exists()


def test_spec_error_names_file_and_path() -> None:
    with pytest.raises(SpecError, match=r"^x.yaml: budget.timeout: expected seconds > 0"):
        parse_spec({"task": {"kind": "image_classification", "model": "resnet18",
                             "dataset": {"name": "digits"}},
                    "search_space": {"lr": {"type": "float", "low": 0.1, "high": 0.2}},
                    "budget": {"timeout": -1}}, source="x.yaml", default_name="x")


def _sorted_keys(value):
    """``value`` with every mapping's keys sorted, as a YAML tool that sorts keys writes it."""
    if isinstance(value, dict):
        return {k: _sorted_keys(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted_keys(v) for v in value]
    return value


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_every_shipped_spec_loads_with_its_keys_sorted(path: Path, tmp_path) -> None:
    import yaml

    original = load_spec(path)
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    copy = tmp_path / path.name
    copy.write_text(yaml.safe_dump(_sorted_keys(raw), sort_keys=True), encoding="utf-8")
    spec = load_spec(copy)
    assert spec.to_dict() == original.to_dict()
    # Every parent comes before its children, the rest keep the file's (sorted) order.
    names = [p.name for p in spec.search_space]
    for p in spec.search_space:
        for parent, _ in p.when:
            assert names.index(parent) < names.index(p.name), (parent, p.name)
    assert parse_spec(spec.to_dict(), check_environment=False) == spec


def test_when_order_is_stable_and_parents_are_sampled_first() -> None:
    import yaml

    raw = yaml.safe_load(GOOD)
    space = raw["search_space"]
    # momentum (when optimizer) before its parent; freeze_k (when freeze) before freeze.
    raw["search_space"] = {
        "freeze_k": {"type": "int", "low": 1, "high": 3, "when": {"freeze": "first_k"}},
        "momentum": space["momentum"],
        "lr": space["lr"],
        "optimizer": space["optimizer"],
        "freeze": {"type": "categorical", "choices": ["none", "first_k"]},
        "epochs": space["epochs"],
    }
    spec = parse_spec(raw, source="moved.yaml")
    names = [p.name for p in spec.search_space]
    # Parents move up just before their first child; everything else keeps its place.
    assert names == ["freeze", "freeze_k", "optimizer", "momentum", "lr", "epochs"]
    assert parse_spec(dict(raw), source="again.yaml") == spec  # deterministic
    assert parse_spec(spec.to_dict()) == spec
    # A spec in the original order keeps it.
    in_order = yaml.safe_load(GOOD)
    assert [p.name for p in parse_spec(in_order).search_space] == list(in_order["search_space"])

    class Recorder:
        """An Optuna trial stand-in that records the order of the suggest calls."""

        def __init__(self, values):
            self.values, self.asked = values, []

        def _ask(self, name, *args, **kwargs):
            self.asked.append(name)
            return self.values[name]

        suggest_float = suggest_int = suggest_categorical = _ask

    values = {"freeze": "first_k", "freeze_k": 2, "optimizer": "sgd", "momentum": 0.9,
              "lr": 1e-3, "epochs": 2}
    trial = Recorder(values)
    params = suggest(trial, spec)
    assert trial.asked == ["freeze", "freeze_k", "optimizer", "momentum", "lr", "epochs"]
    assert params["momentum"] == 0.9 and params["freeze_k"] == 2
    trial = Recorder({**values, "optimizer": "adam", "freeze": "none"})
    params = suggest(trial, spec)
    assert trial.asked == ["freeze", "optimizer", "lr", "epochs"]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        t = study.ask()
        params = suggest(t, spec)
        assert ("momentum" in t.params) == (params["optimizer"] == "sgd")
        assert ("freeze_k" in t.params) == (params["freeze"] == "first_k")
        study.tell(t, 0.0)


WHEN_CYCLE = """
task: {kind: image_classification, model: resnet18, dataset: {name: digits}}
search_space:
  lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
  optimizer: {type: categorical, choices: [adam, sgd], when: {schedule: cosine}}
  schedule: {type: categorical, choices: [constant, cosine], when: {optimizer: sgd}}
"""


@pytest.mark.parametrize("text,message", [
    (WHEN_CYCLE,
     "cyc.yaml: search_space.optimizer.when: a cycle: optimizer -> schedule -> optimizer"),
    (_replace(WHEN_CYCLE, "when: {schedule: cosine}", "when: {optimizer: adam}"),
     "cyc.yaml: search_space.optimizer.when: a cycle: optimizer -> optimizer"),
    (_replace(_replace(WHEN_CYCLE, "when: {schedule: cosine}", "when: {momentum: 0.9}"),
              "  lr:", "  momentum: {type: categorical, choices: [0.8, 0.9], "
                       "when: {schedule: constant}}\n  lr:"),
     "cyc.yaml: search_space.momentum.when: a cycle: momentum -> schedule -> optimizer -> "
     "momentum"),
    (_replace(WHEN_CYCLE, "when: {schedule: cosine}", "when: {dropout: 0.1}"),
     "cyc.yaml: search_space.optimizer.when.dropout: no such parameter in search_space"),
])
def test_when_cycle_or_missing_parent_is_one_clear_line(text, message) -> None:
    import yaml

    with pytest.raises(SpecError) as e:
        parse_spec(yaml.safe_load(text), source="cyc.yaml", default_name="cyc")
    assert str(e.value).startswith(message), str(e.value)
    assert "\n" not in str(e.value)


def test_when_missing_parent_through_the_cli(tmp_path, capsys) -> None:
    spec_file = tmp_path / "orphan.yaml"
    spec_file.write_text(_replace(GOOD, "  optimizer: {type: categorical, choices: [adam, sgd]}\n",
                                  ""))
    db = tmp_path / "hpo.db"
    assert main(["create", str(spec_file), "--storage", f"sqlite:///{db}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"hpo: error: {spec_file}: search_space.momentum.when.optimizer: no such "
                   "parameter in search_space"), err
    assert not db.exists()


def test_devices_per_trial_round_trips_and_is_left_out_where_default():
    """A study stored before ``resources`` existed reads back the same: the key is written
    only when it is set."""
    plain = parse_spec(yaml.safe_load(GOOD))
    assert plain.resources.devices_per_trial == 1 and "resources" not in plain.to_dict()
    gang = parse_spec(yaml.safe_load(GOOD + "resources: {devices_per_trial: 4}\n"))
    assert gang.resources.devices_per_trial == 4
    assert gang.to_dict()["resources"] == {"devices_per_trial": 4}
    assert parse_spec(gang.to_dict()) == gang


def test_a_custom_job_on_several_devices_is_refused():
    text = ('task: {kind: custom, entrypoint: "fastjob:epochs_job"}\n'
            "search_space: {lr: {type: float, low: 0.1, high: 1.0}}\n"
            "resources: {devices_per_trial: 2}\n")
    with pytest.raises(SpecError, match="resources.devices_per_trial: a custom job runs in "
                                        "its worker's process; expected 1, got 2"):
        parse_spec(yaml.safe_load(text), source="c.yaml", default_name="c")


@pytest.mark.slow
def test_hpo_create_reads_torchvisions_names_from_its_cache_and_rebuilds_a_bad_one(tmp_path):
    """The model, weights and dataset names a vision spec is checked against come from
    torchvision once per version, then from a cache file: a second ``hpo create`` imports
    neither torch nor torchvision; a corrupt or foreign file is rebuilt; bad names are refused
    the same with and without the file."""
    import json
    import subprocess
    import sys

    from hpo.spec._catalog import torchvision_catalog

    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    spec = tmp_path / "good.yaml"
    spec.write_text(GOOD)
    probe = (
        "import sys; from hpo.cli import main; code = main(sys.argv[1:]); "
        "print(code, 'torch' in sys.modules, 'torchvision' in sys.modules)"
    )

    def create(i: int, path=spec) -> list[str]:
        r = subprocess.run([sys.executable, "-c", probe, "create", str(path), "--storage",
                            f"sqlite:///{tmp_path}/{i}.db"], env=env, capture_output=True,
                           text=True, timeout=300)
        return [*r.stdout.split()[-3:], r.stderr.strip()]

    assert create(1)[:3] == ["0", "True", "True"]
    [cached] = (tmp_path / "cache" / "hpo").glob("torchvision-*.json")
    assert create(2)[:3] == ["0", "False", "False"]
    catalog = json.loads(cached.read_text())
    assert "IMAGENET1K_V1" in catalog["models"]["resnet18"] and "CIFAR10" in catalog["datasets"]

    for bad in ("{not json", json.dumps({**catalog, "torchvision": "0.0.1"}), "[]"):
        cached.write_text(bad)
        assert create(3)[:3] == ["0", "True", "True"], bad
        assert json.loads(cached.read_text()) == catalog

    for text, words in [(GOOD.replace("resnet18", "resnet19"), ["resnet19", "did you mean"]),
                        (GOOD.replace("model: resnet18", "model: resnet18\n  weights: V9"),
                         ["unknown weights 'V9'", "IMAGENET1K_V1"]),
                        (GOOD.replace("{name: digits}", "{name: CIFAR11, root: /tmp}"),
                         ["CIFAR11"])]:
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        code, *_, err = create(4, path)
        assert code == "2" and all(w in err for w in words), err
    assert not list(tmp_path.glob("4.db"))

    monkeypatched = {**env, "XDG_CACHE_HOME": "/proc/no-cache-here"}
    r = subprocess.run([sys.executable, "-c", probe, "create", str(spec), "--storage",
                        f"sqlite:///{tmp_path}/5.db"], env=monkeypatched, capture_output=True,
                       text=True, timeout=300)
    assert r.stdout.split()[-3:] == ["0", "True", "True"], r.stderr  # no cache: still works
    assert torchvision_catalog()["models"]  # in this process too


def test_a_grid_study_s_budget_is_its_grid(tmp_path, capsys):
    """Each point once: ``n_trials`` left out is the grid's size (written into the spec), one
    below it runs that many, one above it is refused in one line."""
    grid = ("search_space:\n  lr: {type: categorical, choices: [0.001, 0.01]}\n"
            "  epochs: {type: int, low: 1, high: 3}\nsampler: {name: grid}\n")
    base = "study: {name: g}\ntask: {kind: image_classification, model: resnet18, " \
           "dataset: {name: digits}}\n" + grid
    assert parse_spec(yaml.safe_load(base)).budget.n_trials == 6
    assert parse_spec(yaml.safe_load(base + "budget: {n_trials: null, timeout: 60}\n")
                      ).budget.n_trials == 6
    assert parse_spec(yaml.safe_load(base + "budget: {n_trials: 4}\n")).budget.n_trials == 4
    refused_spec(base + "budget: {n_trials: 7}\n", tmp_path, capsys,
                 "budget.n_trials", "7 is more than the grid's 6 points")
