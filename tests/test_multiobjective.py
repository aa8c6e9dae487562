"""Several objectives: the spec's refusals (one line, exit 2), the samplers that serve them, a
two-objective study's values and Pareto set in every storage, the job's parameter counts and
latency, and a real two-objective study through the CLI (best, report, export, retrain)."""

from __future__ import annotations

import json
import math
import uuid

import optuna
import pytest
import yaml

from conftest import run_hpo
from processes import one_line_error
from specs import TINY, refused_spec, write_tiny_spec

from hpo.store import _optuna
from hpo.records import CHECKPOINT_ATTR
from hpo.spec import LatencySpec, parse_spec
from hpo.search.study import create_study, load_study, make_sampler
from hpo.run.worker._housekeeping import retain_checkpoints
from hpo.run.worker._objective import StudyTrial

BASE = """
study: {name: mo}
task: {kind: image_classification, model: resnet18, dataset: {name: digits}}
search_space:
  lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
  freeze: {type: categorical, choices: [none, head_only]}
budget: {n_trials: 3}
"""
TWO = BASE.replace("{name: mo}", "{name: mo, objectives: [val_loss, trainable_params]}")


def _pareto(values: dict[int, list[float]]) -> list[int]:
    """The trial numbers no other beats on every objective, by brute force."""
    def beats(a, b):
        return all(x <= y for x, y in zip(a, b)) and a != b
    return sorted(n for n, v in values.items() if not any(beats(w, v) for w in values.values()))


# --------------------------------------------------------------------------------------------
# The spec.

# (name, spec text, words the one-line error must contain)
BAD = [
    ("direction and directions",
     BASE.replace("{name: mo}", "{name: mo, direction: minimize, directions: [minimize]}"),
     ["study.directions", "not both"]),
    ("unknown objective",
     BASE.replace("{name: mo}", "{name: mo, objectives: [val_loss, flops]}"),
     ["study.objectives.1", "unknown objective 'flops'", "latency_ms, params, trainable_params"]),
    ("val_loss not first",
     BASE.replace("{name: mo}", "{name: mo, objectives: [params, val_loss]}"),
     ["study.objectives.0", "expected val_loss first", "'params'"]),
    ("an objective twice",
     BASE.replace("{name: mo}", "{name: mo, objectives: [val_loss, params, params]}"),
     ["study.objectives.2", "params is listed twice"]),
    ("objectives not a list",
     BASE.replace("{name: mo}", "{name: mo, objectives: val_loss}"),
     ["study.objectives", "expected a list of objectives", "'val_loss'"]),
    ("directions of another length",
     TWO.replace("trainable_params]", "trainable_params], directions: [minimize]"),
     ["study.directions", "expected a list of 2", "got a list of 1"]),
    ("a direction against the objective's",
     TWO.replace("trainable_params]", "trainable_params], directions: [minimize, maximize]"),
     ["study.directions.1", "trainable_params is minimized", "'maximize'"]),
    ("a pruner with several objectives", TWO + "pruner: {name: median}\n",
     ["pruner.name", "expected none or promotion with several study.objectives",
      "rank one objective"]),
    ("cmaes with several objectives", TWO + "sampler: {name: cmaes}\n",
     ["sampler.name", "one objective only", "nsga2"]),
    ("latency without latency_ms",
     TWO.replace("trainable_params]", "trainable_params], latency: {repeats: 3}"),
     ["study.latency", "only with latency_ms"]),
    ("latency repeats 0",
     BASE.replace("{name: mo}", "{name: mo, objectives: [val_loss, latency_ms], "
                                "latency: {repeats: 0}}"),
     ["study.latency.repeats", "integer >= 1", "got 0"]),
    ("unknown latency key",
     BASE.replace("{name: mo}", "{name: mo, objectives: [val_loss, latency_ms], "
                                "latency: {batch: 8}}"),
     ["study.latency.batch", "unknown key"]),
    ("a custom job with several objectives", """
study: {name: mo, objectives: [val_loss, params]}
task: {kind: custom, entrypoint: "fastjob:epochs_job"}
search_space: {lr: {type: float, low: 1.0e-4, high: 1.0e-1}}
""", ["study.objectives", "a custom job returns val_loss alone", "params need a built-in"]),
]


@pytest.mark.parametrize("name,text,words", BAD, ids=[b[0] for b in BAD])
def test_bad_objectives_are_one_clear_line(name, text, words, tmp_path, capsys):
    refused_spec(text, tmp_path, capsys, *words)


def test_bad_objectives_through_the_cli_process(tmp_path):
    spec_file = tmp_path / "bad.yaml"
    spec_file.write_text(TWO + "pruner: {name: hyperband}\n")
    result = run_hpo("create", str(spec_file), "--storage", f"sqlite:///{tmp_path}/x.db",
                     cwd=tmp_path)
    one_line_error(result, spec_file, "pruner.name", "Optuna's pruners and pbt rank one objective")


def test_several_objectives_default_the_pruner_and_round_trip():
    spec = parse_spec(yaml.safe_load(TWO.replace("trainable_params]", "latency_ms]")))
    assert spec.study.objectives == ("val_loss", "latency_ms") and spec.study.multi
    assert spec.study.directions == ("minimize", "minimize")
    assert spec.pruner.name == "none"  # Optuna prunes no multi-objective trial
    assert spec.study.latency == LatencySpec(batch_size=32, warmup=5, repeats=20)
    stored = spec.to_dict()["study"]
    assert stored == {"name": "mo", "directions": ["minimize", "minimize"],
                      "objectives": ["val_loss", "latency_ms"],
                      "latency": {"batch_size": 32, "warmup": 5, "repeats": 20}}
    assert parse_spec(spec.to_dict()) == spec


def test_one_objective_is_stored_as_before():
    """A study stored before these keys existed reads back the same, and writes the same."""
    old = parse_spec(yaml.safe_load(BASE))
    assert old.to_dict()["study"] == {"name": "mo", "direction": "minimize"}
    assert old.pruner.name == "none" and not old.study.multi  # 3 trials: none by default
    written = parse_spec(yaml.safe_load(BASE.replace("{name: mo}", "{name: mo, objectives: "
                                                     "[val_loss], directions: [minimize]}")))
    assert written == old


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "gp", "random", "qmc", "grid"])
def test_samplers_allowed_with_several_objectives_serve_them(sampler):
    options = {"tpe": {"n_startup_trials": 2}, "nsga2": {"population_size": 2},
               "gp": {"n_startup_trials": 2}}.get(sampler, {})
    text = TWO.replace("lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}",
                       "lr: {type: categorical, choices: [0.001, 0.01, 0.1]}")
    spec = parse_spec(yaml.safe_load(text + yaml.safe_dump({"sampler": {"name": sampler,
                                                                        "seed": 0, **options}})))
    study = create_study(spec, optuna.storages.InMemoryStorage())
    study.sampler = make_sampler(spec)
    for i in range(5):  # past the startup trials: the multi-objective model samples
        trial = study.ask()
        trial.suggest_categorical("lr", [0.001, 0.01, 0.1])
        trial.suggest_categorical("freeze", ["none", "head_only"])
        study.tell(trial, [1.0 / (i + 1), float(i)])
    assert len(study.best_trials) >= 1


def test_cmaes_is_refused_because_optuna_cannot():
    study = optuna.create_study(directions=["minimize", "minimize"],
                                sampler=optuna.samplers.CmaEsSampler(n_startup_trials=0))
    with pytest.raises(ValueError, match="multi-objective"):
        study.optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_float("y", 0, 1)),
                       n_trials=1)


# --------------------------------------------------------------------------------------------
# A two-objective study in every storage: told values, learning curves, the Pareto set.

VALUES = {0: [0.9, 5000.0], 1: [0.5, 11_000_000.0], 2: [1.2, 5000.0], 3: [0.7, 9000.0],
          4: [0.5, 12_000_000.0]}
"""Trial -> (val loss, trainable params): 0, 1 and 3 are the Pareto set."""


@pytest.mark.slow
def test_values_and_pareto_set_in_each_storage(storage_url, tmp_path):
    name = f"mo-{uuid.uuid4().hex[:8]}"
    spec = parse_spec(yaml.safe_load(TWO), default_name=name)
    spec = parse_spec({**spec.to_dict(), "study": {**spec.to_dict()["study"], "name": name}})
    from hpo.store.storage import open_storage

    study, _ = load_study(create_study(spec, open_storage(storage_url)).study_name,
                          open_storage(storage_url))
    assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE"]
    for number, values in VALUES.items():
        trial = _optuna.ask(study, {}, [])
        job_trial = StudyTrial(trial, several_objectives=True)  # what the fit loop sees
        job_trial.report(values[0] + 0.1, 1)  # Optuna's report refuses; the curve is kept
        job_trial.report(values[0], 2)
        assert job_trial.should_prune() is False
        ckpt = tmp_path / f"trial-{number}.pt"
        ckpt.write_bytes(b"x")
        job_trial.set_attrs({CHECKPOINT_ATTR: str(ckpt)})
        assert _optuna.tell(study, trial, values, None)[0].name == "COMPLETE"
    pareto = _pareto(VALUES)
    assert pareto == [0, 1, 3]

    result = run_hpo("best", name, "--storage", storage_url, "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    front = json.loads(result.stdout)
    assert [r["number"] for r in front] == pareto
    for r in front:
        assert r["values"] == VALUES[r["number"]] and r["value"] == VALUES[r["number"]][0]
        assert r["objectives"] == dict(zip(["val_loss", "trainable_params"], r["values"]))
        assert r["intermediate_values"] == {"1": pytest.approx(r["value"] + 0.1),
                                            "2": r["value"]}
    text = run_hpo("best", name, "--storage", storage_url, cwd=tmp_path).stdout
    assert "Pareto set of" in text and "trainable_params" in text
    assert [line.split()[0] for line in text.splitlines()[2:]] == [f"#{n}" for n in pareto]

    for command in (["status", name], ["studies"], ["trials", name]):
        done = run_hpo(*command, "--storage", storage_url, cwd=tmp_path)
        assert done.returncode == 0, (command, done.stderr)
    refused = run_hpo("export", name, "--storage", storage_url, cwd=tmp_path)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "give --trial N, one of its Pareto set: #0, #1, #3" in refused.stderr

    # Retention keeps the Pareto set's checkpoints besides the best val loss's (trial 1).
    retain_checkpoints(study.get_trials(), keep_best=1)
    assert sorted(int(p.stem.split("-")[1]) for p in tmp_path.glob("trial-*.pt")) == pareto


# --------------------------------------------------------------------------------------------
# The job: parameter counts on every trial, latency where it is an objective.


def _tiny_task():
    raw = {**TINY, "study": {"name": "job"},
           "task": {**TINY["task"], "max_samples": 120}}
    return parse_spec(raw).task


def _params(**changes):
    from hpo.spec import HYPERPARAMETERS

    return {**{k: h.default for k, h in HYPERPARAMETERS.items()},
            "epochs": 1, "batch_size": 32, **changes}


@pytest.mark.slow
def test_job_records_parameter_counts_and_latency():
    from hpo.job import FixedTrial, JobContext, run_job

    task = _tiny_task()
    trial = FixedTrial()
    value = run_job(trial, task, _params(freeze="head_only"),
                    JobContext(latency=LatencySpec(batch_size=4, warmup=1, repeats=3)))
    assert math.isfinite(value)
    # ResNet-18 with a 10-class head: 11,181,642 parameters; the head alone, 512 x 10 + 10.
    assert trial.attrs["params"] == 11_181_642 and trial.attrs["trainable_params"] == 5130
    assert trial.attrs["latency_ms"] > 0 and trial.attrs["latency_ms_batch"] > 0
    assert trial.attrs["latency_batch_size"] == 4

    plain = FixedTrial()
    run_job(plain, task, _params(), JobContext())  # latency is not an objective: not measured
    assert plain.attrs["trainable_params"] == plain.attrs["params"] == 11_181_642
    assert "latency_ms" not in plain.attrs


def test_a_pruned_trial_has_its_parameter_counts():
    from hpo.job import FixedTrial, JobContext, run_job

    class Pruning(FixedTrial):
        def should_prune(self) -> bool:
            return True

    trial = Pruning()
    with pytest.raises(optuna.TrialPruned):
        run_job(trial, _tiny_task(), _params(epochs=2, freeze="head_only"), JobContext())
    assert trial.attrs["trainable_params"] == 5130 and trial.attrs["prune_reason"] == "pruned"


# --------------------------------------------------------------------------------------------
# A real two-objective study through the CLI.


@pytest.mark.slow
def test_two_objective_study_end_to_end(tmp_path):
    url = f"sqlite:///{tmp_path}/mo.db"
    write_tiny_spec(
        tmp_path / "mo.yaml", "mo",
        study={"name": "mo", "objectives": ["val_loss", "trainable_params"]},
        task={"max_samples": 120}, budget={"n_trials": 3},
        search_space={"lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-1, "log": True},
                      "epochs": 1,
                      "freeze": {"type": "categorical", "choices": ["none", "head_only"]}},
        sampler={"name": "nsga2", "seed": 3, "population_size": 2},
        pruner={"name": "none"})
    run = run_hpo("run", "mo.yaml", "--storage", url, "--checkpoint-dir", "ckpt", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Pareto set of mo" in run.stdout + run.stderr

    study = optuna.load_study(study_name="mo", storage=url)
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 3
    for t in trials:
        assert t.values[1] == t.user_attrs["trainable_params"]
        assert t.user_attrs["params"] == 11_181_642
        assert t.intermediate_values  # the learning curve, though nothing prunes
    values = {t.number: t.values for t in trials}
    pareto = _pareto(values)

    best = run_hpo("best", "mo", "--storage", url, "--json", cwd=tmp_path)
    assert [r["number"] for r in json.loads(best.stdout)] == pareto

    report = run_hpo("report", "mo", "--storage", url, "--out", "r.html", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    page = (tmp_path / "r.html").read_text()
    assert 'id="hpo-pareto"' in page and 'id="pareto-set"' in page
    numbers = json.loads(page.split('id="hpo-numbers">')[1].split("</script>")[0])
    assert [r["number"] for r in numbers[0]["pareto"]] == pareto

    chosen = min(pareto, key=lambda n: values[n][1])  # the fewest trainable: fast to retrain
    export = run_hpo("export", "mo", "--storage", url, "--trial", str(chosen), "--out", "ex",
                     cwd=tmp_path)
    assert export.returncode == 0, export.stderr
    record = json.loads((tmp_path / "ex" / "record.json").read_text())
    assert record["trial"]["number"] == chosen and record["picked"] == "--trial"
    assert (tmp_path / "ex" / "model.pt").is_file()

    retrain = run_hpo("retrain", "mo", "--storage", url, "--trial", str(chosen), "--out", "rt",
                      cwd=tmp_path)
    assert retrain.returncode == 0, retrain.stderr
    assert json.loads((tmp_path / "rt" / "retrain.json").read_text())["trial"]["number"] == chosen


@pytest.mark.slow
def test_promotion_pauses_and_resumes_a_two_objective_study(tmp_path):
    """The promotion scheduler on a real two-objective study: the job measures the objectives
    before training (a rung ranks on them), a configuration behind on the front pauses with
    its checkpoint and its continuation resumes it; the Pareto set is of complete trials."""
    from hpo.records import is_continuation, was_paused

    url = f"sqlite:///{tmp_path}/mop.db"
    write_tiny_spec(
        tmp_path / "mop.yaml", "mop",
        study={"name": "mop", "objectives": ["val_loss", "trainable_params"]},
        task={"max_samples": 120}, budget={"n_trials": 4},
        search_space={"lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-1, "log": True},
                      "epochs": 3,
                      "freeze": {"type": "categorical", "choices": ["none", "head_only"]}},
        sampler={"name": "random", "seed": 5},
        pruner={"name": "promotion", "min_resource": 1, "reduction_factor": 2})
    run = run_hpo("run", "mop.yaml", "--storage", url, "--checkpoint-dir", "ckpt",
                  "--workers", "1", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    study = optuna.load_study(study_name="mop", storage=url)
    ts = study.get_trials()
    paused = [t for t in ts if was_paused(t)]
    assert paused, [(t.number, t.state.name, t.user_attrs.get("prune_reason")) for t in ts]
    for t in paused:  # ranked at its rung on both objectives: measured before it trained
        assert t.user_attrs["trainable_params"] > 0 and t.user_attrs["checkpoint"]
    resumed = [t for t in ts if is_continuation(t) and t.state != optuna.trial.TrialState.WAITING]
    for t in resumed:
        assert t.user_attrs["promoted"] is True and t.params == ts[t.user_attrs["resumed_from"]].params
    complete = [t for t in ts if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete and all(t.values[1] == t.user_attrs["trainable_params"] for t in complete)
    best = run_hpo("best", "mop", "--storage", url, "--json", cwd=tmp_path)
    assert [r["number"] for r in json.loads(best.stdout)] == \
        _pareto({t.number: t.values for t in complete})


@pytest.mark.slow
def test_tpe_under_promotion_samples_past_its_start_on_two_objectives(tmp_path):
    """TPE of a two-objective promotion study, past its random start, with paused trials in
    the study: it learns from the completed configurations (Optuna's TPE ranked a pruned
    trial in the study's one direction, which raised: every trial after the start failed)."""
    url = f"sqlite:///{tmp_path}/motpe.db"
    write_tiny_spec(
        tmp_path / "motpe.yaml", "motpe",
        study={"name": "motpe", "objectives": ["val_loss", "trainable_params"]},
        task={"max_samples": 200, "evals_per_epoch": 2}, budget={"n_trials": 6},
        search_space={"lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-1, "log": True},
                      "epochs": {"type": "int", "low": 1, "high": 2},
                      "freeze": {"type": "categorical", "choices": ["none", "head_only"]}},
        sampler={"name": "tpe", "seed": 0, "n_startup_trials": 2},
        pruner={"name": "promotion", "min_resource": 0.5, "reduction_factor": 3})
    run = run_hpo("run", "motpe.yaml", "--storage", url, "--workers", "1", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    ts = optuna.load_study(study_name="motpe", storage=url).get_trials()
    assert not [t.number for t in ts if t.state == optuna.trial.TrialState.FAIL]
    assert len([t for t in ts if "resumed_from" not in t.user_attrs]) == 6
