"""Your own code's own parameters, warm start and repeats on a script task: the fast script
(tests/support/fastscript.py) under the CLI. It adds its param ``offset`` to its loss and
writes what ``hpo.session.params()`` gave each attempt to ``FASTSCRIPT_PARAMS``, so a test
reads what the script got, not only what the study recorded."""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from hpo.records import FIRST_GUESS_ATTR, REPEAT_OF_ATTR, SEED_ATTR, SEED_SPREAD_ATTR
from hpo.search.schedulers.continuation import configuration
from hpo.search.schedulers.pbt import LINEAGE_ATTR
from processes import SUPPORT, one_line_error, run_hpo

SCRIPT = f'{{kind: script, command: [python, "{SUPPORT / "fastscript.py"}"]}}'

OWN = """\
  lr:     {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
  offset: {type: float, low: 0.0, high: 2.0}
  width:  {type: int, low: 4, high: 64, log: true}
  head:   {type: categorical, choices: [mlp, linear]}
  depth:  {type: int, low: 1, high: 3, when: {head: mlp}}
  tag:    v1
  epochs: 2
"""
"""The fast script's lr and epochs, and parameters of its own: a float, an int on a log
scale, a categorical, an int searched only with ``head: mlp``, a fixed string."""


def _spec(tmp_path: Path, name: str, space: str = OWN, extra: str = "",
          task: str = SCRIPT, n: int = 4, sampler: str = "{name: random, seed: 0}") -> Path:
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(f"study: {{name: {name}}}\ntask: {task}\nsearch_space:\n{space}"
                    f"sampler: {sampler}\npruner: {{name: none}}\n{extra}"
                    f"budget: {{n_trials: {n}}}\n")
    return spec


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"HPO_CHECKPOINT_DIR": str(tmp_path / "ckpt"),
            "FASTSCRIPT_PARAMS": str(tmp_path / "params.jsonl"), **extra}


def _hpo(tmp_path: Path, *args: str, **env: str):
    r = run_hpo(*args, cwd=tmp_path, env=_env(tmp_path, **env), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def _given(tmp_path: Path) -> dict[int, list[dict]]:
    """What ``session.params()`` gave each attempt, by trial number."""
    out: dict[int, list[dict]] = {}
    for line in (tmp_path / "params.jsonl").read_text().splitlines():
        seen = json.loads(line)
        out.setdefault(seen["trial"], []).append(seen["params"])
    return out


def _loss(params: dict, epoch: int, shift: float = 0.0) -> float:
    """The fast script's loss at ``epoch`` (tests/support/fastscript.py)."""
    return (math.log10(params["lr"]) + 2.5) ** 2 + 1.0 / epoch + params.get("offset", 0.0) + shift


def test_a_script_searches_its_own_params_and_a_later_study_warm_starts_from_them(tmp_path):
    """A script's own params are sampled in their ranges by the study's sampler, given to the
    script (and nothing the spec does not name: its own defaults stand), recorded with their
    distributions, and shown by ``hpo best``, ``hpo trials`` and ``hpo export`` (whose spec
    runs again); a second study warm-starts from the first's best two, own params included."""
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    _hpo(tmp_path, "run", str(_spec(tmp_path, "own")), "--storage", url)
    ts = optuna.load_study(study_name="own", storage=url).get_trials()
    given = _given(tmp_path)
    assert [t.state for t in ts] == [TrialState.COMPLETE] * 4
    for t in ts:
        (got,) = given[t.number]
        assert got == {**t.params, "tag": "v1", "epochs": 2}, (got, t.params)
        assert 0.0 <= got["offset"] <= 2.0 and 4 <= got["width"] <= 64
        assert isinstance(got["width"], int) and got["head"] in ("mlp", "linear")
        assert ("depth" in got) == (got["head"] == "mlp")
        assert t.value == pytest.approx(_loss(got, 2))  # the offset reached the loss
    assert len({t.params["offset"] for t in ts}) == 4  # sampled, not a default
    d = ts[0].distributions
    assert d["offset"] == FloatDistribution(0.0, 2.0)
    assert d["width"] == IntDistribution(4, 64, log=True)
    assert d["head"] == CategoricalDistribution(["mlp", "linear"])

    best = min(ts, key=lambda t: t.value)
    shown = json.loads(_hpo(tmp_path, "best", "own", "--storage", url, "--json").stdout)
    assert shown["params"] == best.params
    text = _hpo(tmp_path, "best", "own", "--storage", url).stdout
    assert f"offset         {best.params['offset']:.4g}" in text, text
    assert f"width          {best.params['width']}" in text, text
    table = _hpo(tmp_path, "trials", "own", "--storage", url, "--format", "csv").stdout
    header = table.splitlines()[0].split(",")
    assert {"param_offset", "param_width", "param_head", "param_depth"} <= set(header), header
    _hpo(tmp_path, "export", "own", "--storage", url, "--out", str(tmp_path / "out"))
    exported = yaml.safe_load((tmp_path / "out" / "spec.yaml").read_text())
    assert exported["search_space"]["offset"] == {"type": "categorical",
                                                  "choices": [best.params["offset"]]}
    _hpo(tmp_path, "run", str(tmp_path / "out" / "spec.yaml"), "--storage", url)
    (again,) = optuna.load_study(study_name="own-best", storage=url).get_trials()
    assert again.params == best.params and again.value == pytest.approx(best.value)

    # A second study (another script's range of offset) starts from the first's best two.
    top = sorted(ts, key=lambda t: t.value)[:2]
    later = _spec(tmp_path, "later", OWN.replace("high: 2.0}", "high: 3.0}"), n=3,
                  extra="warm_start: {from: own, top_k: 2}\n")
    (tmp_path / "params.jsonl").unlink()
    _hpo(tmp_path, "run", str(later), "--storage", url)
    first = optuna.load_study(study_name="later", storage=url).get_trials()[:2]
    given = _given(tmp_path)
    for t, source in zip(first, top):
        assert t.params == source.params
        assert t.user_attrs[FIRST_GUESS_ATTR] == f"study own #{source.number}"
        assert given[t.number] == [{**source.params, "tag": "v1", "epochs": 2}]
        assert t.value == pytest.approx(source.value)


BUILTIN = "{kind: image_classification, model: resnet18, dataset: {name: digits}}"


@pytest.mark.parametrize(("task", "space", "extra", "words"), [
    (BUILTIN, "  lr: 0.01\n  dropuot: {type: float, low: 0.0, high: 0.5}\n", "",
     ["search_space.dropuot", "unknown key", "did you mean dropout?", "script or custom"]),
    (SCRIPT, "  alpha: {type: float, low: 0.0, high: 64.0, log: true}\n", "",
     ["search_space.alpha.low", "must be > 0 with log: true"]),
    (SCRIPT, "  alpha: {type: int, low: 1, high: 2.5}\n", "",
     ["search_space.alpha.high", "expected an integer", "2.5"]),
    (SCRIPT, "  head: {type: categorical, choices: [mlp, [a]]}\n", "",
     ["search_space.head.choices.1", "expected a string or number"]),
    (SCRIPT, "  lr: {type: float, low: -1.0, high: 1.0}\n", "",
     ["search_space.lr.low", "expected a number > 0 for lr"]),
    (SCRIPT, "  2nd: {type: float, low: 0.1, high: 1.0}\n", "",
     ["search_space.2nd", "letters, digits and _"]),
    (SCRIPT, "  alpha: {type: float, low: 1.0, high: 64.0}\n", "warm_start: {defaults: true}\n",
     ["warm_start.defaults", "no known defaults for your own code (task.kind: script)"]),
])
def test_a_bad_own_param_is_one_line(tmp_path, task, space, extra, words):
    """Each is one line naming the key. A built-in task refuses a name it does not know (a
    typo must not become a param nobody reads)."""
    from hpo.errors import SpecError
    from hpo.spec import load_spec

    spec = _spec(tmp_path, "bad", space, extra=extra, task=task)
    with pytest.raises(SpecError) as e:
        load_spec(spec)
    line = str(e.value)
    assert line.startswith(f"{spec}: ") and "\n" not in line, line
    for word in words:
        assert word in line, (word, line)


def test_an_unknown_name_of_a_built_in_task_exits_2_and_writes_nothing(tmp_path):
    """``hpo create``: exit 2, the one line, no study written."""
    spec = _spec(tmp_path, "typo", "  lr: 0.01\n  dropuot: {type: float, low: 0.0, high: 0.5}\n",
                 task=BUILTIN)
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    one_line_error(run_hpo("create", str(spec), "--storage", url, cwd=tmp_path), spec,
                   "search_space.dropuot", "did you mean dropout?")
    if (tmp_path / "hpo.db").exists():
        assert optuna.get_all_study_names(url) == []


def test_repeats_of_a_script_run_with_their_own_seeds(tmp_path):
    """``budget.repeats`` on a script task: the best configuration reruns with seeds 1 and 2,
    which reach the script (``hpo.session.seed``): its noise differs by seed, and the spread
    recorded is the one those seeds give."""
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    noise = 0.5
    spec = _spec(tmp_path, "rep", "  lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}\n"
                 "  offset: {type: float, low: 0.0, high: 1.0}\n  epochs: 2\n", n=5,
                 extra="", sampler="{name: random, seed: 0}")
    spec.write_text(spec.read_text().replace(
        "n_trials: 5}", "n_trials: 5, stop_when_converged: true, min_trials: 2, repeats: 2}"))
    _hpo(tmp_path, "run", str(spec), "--storage", url, FASTJOB_SEED_NOISE=str(noise))
    study = optuna.load_study(study_name="rep", storage=url)
    ts = study.get_trials()
    repeats = [t for t in ts if REPEAT_OF_ATTR in t.user_attrs]
    assert [t.user_attrs[SEED_ATTR] for t in repeats] == [1, 2]
    best = ts[repeats[0].user_attrs[REPEAT_OF_ATTR]]
    assert best.number < 2 and all(t.params == best.params for t in repeats)
    for t in [best, *repeats]:
        seed = t.user_attrs.get(SEED_ATTR, 0)
        shift = noise * random.Random(seed).gauss(0, 1)
        assert t.value == pytest.approx(_loss(best.params, 2, shift)), (seed, t.value)
    spread = study.user_attrs[SEED_SPREAD_ATTR]
    assert spread["seeds"] == [0, 1, 2] and spread["std"] > 0.1


PBT = "{name: pbt, interval: 1, quantile: 0.25, resample_probability: 0.0}"


def test_pbt_explores_a_script_s_own_float_param(tmp_path):
    """PBT on a script: the worst member goes on from the best one's checkpoint directory with
    its params explored, the script's own float ``offset`` too (x0.8 or x1.25), and the
    script's next attempt gets the explored values."""
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    space = ("  lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}\n"
             "  offset: {type: float, low: 0.01, high: 1.0}\n  epochs: 3\n")
    spec = _spec(tmp_path, "pop", space)
    spec.write_text(spec.read_text().replace("pruner: {name: none}", f"pruner: {PBT}"))
    _hpo(tmp_path, "create", str(spec), "--storage", url)
    study = optuna.load_study(study_name="pop", storage=url)
    for lr, offset in ((10 ** -2.5, 0.2), (1e-3, 0.3), (1e-2, 0.4), (1e-1, 0.5)):
        study.enqueue_trial({"lr": lr, "offset": offset}, skip_if_exists=False)
    _hpo(tmp_path, "worker", "pop", "--storage", url)
    ts = study.get_trials()
    worst = [t for t in ts if configuration(t) == 3]
    final = max(worst, key=lambda t: t.number)
    assert final.state == TrialState.COMPLETE
    step = final.user_attrs[LINEAGE_ATTR][0]
    assert step["step"] == 1 and step["parent"] == 0
    explored = step["params"]
    assert explored["offset"] in (pytest.approx(0.2 * 0.8), pytest.approx(0.2 * 1.25))
    went_on = min((t for t in worst if t.params == explored
                   and t.user_attrs.get("prune_reason") != "exploited"), key=lambda t: t.number)
    assert _given(tmp_path)[went_on.number] == [{**explored, "epochs": 3}]
    assert went_on.user_attrs["resumed_from_epoch"] == 1  # the best member's epoch 1
    assert went_on.intermediate_values[2] == pytest.approx(_loss(explored, 2))


def test_your_own_code_gets_its_own_names_and_a_script_only_the_spec_s():
    """A custom job's params are the built-in job's defaults and its own; a script's are the
    spec's alone. hpo's names whose meaning is the built-in job's (``lora_r`` needs its
    adapter, ``augment`` its images, ``optimizer`` its four) are your code's to read as it
    likes; their numbers keep their domain (the bad-input test: ``lr`` > 0)."""
    from hpo.spec import parse_spec, suggest

    space = {"alpha": {"type": "float", "low": 1.0, "high": 64.0, "log": True},
             "lora_r": {"type": "categorical", "choices": [4, 8]}, "augment": "strong",
             "optimizer": {"type": "categorical", "choices": ["adamw", "lion"]}}
    tasks = {"custom": {"kind": "custom", "entrypoint": "fastjob:epochs_job"},
             "script": {"kind": "script", "command": ["python", "train.py"]}}
    got = {}
    for kind, task in tasks.items():
        spec = parse_spec({"task": task, "search_space": space}, default_name=kind,
                          check_environment=False)
        trial = optuna.create_study().ask()
        got[kind] = suggest(trial, spec)
        assert 1.0 <= got[kind]["alpha"] <= 64.0 and got[kind]["lora_r"] in (4, 8)
        assert got[kind]["augment"] == "strong"
    assert set(got["script"]) == {"alpha", "lora_r", "augment", "optimizer"}
    assert got["custom"]["lr"] == 1e-3 and got["custom"]["epochs"] == 3
