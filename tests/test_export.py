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
from optuna.trial import TrialState

from conftest import ROOT, run_hpo
from sample_study import OUTCOMES, build_sample_study

from hpo.artifacts import upload_checkpoint
from hpo.spec import load_spec, suggest
from hpo.study import create_study


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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

    # The checkpoint, byte for byte.
    copied = out / "best-checkpoint.pt"
    assert copied.read_bytes() == (tmp_path / "ckpt" / f"trial-{best.number}.pt").read_bytes()

    record = json.loads((out / "record.json").read_text())
    assert record["trial"]["number"] == best.number
    assert record["trial"]["value"] == pytest.approx(best.value)
    assert record["trial"]["params"] == best.params
    assert record["checkpoint"]["sha256"] == _sha256(copied)
    for package in ("optuna", "torch", "torchvision", "sqlalchemy", "plotly", "hpo"):
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
    from hpo.export import data_fingerprint
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


TINY = """
study: {{name: {name}}}
task:
  kind: image_classification
  model: resnet18
  dataset: {{name: digits}}
  image_size: 16
  max_samples: 200
search_space:
  lr:           {{type: float, low: 1.0e-3, high: 1.0e-2, log: true}}
  batch_size:   {{type: categorical, choices: [32, 64]}}
  epochs:       2
  optimizer:    {{type: categorical, choices: [adam, adamw]}}
  dropout:      {{type: float, low: 0.0, high: 0.3}}
sampler: {{name: random, seed: 3}}
pruner:  {{name: none}}
budget:  {{n_trials: 2}}
"""


@pytest.mark.slow
def test_exported_spec_reproduces_the_best_trial(tmp_path):
    """Run a small digits study, export its best trial, run the exported spec: same val loss."""
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    (tmp_path / "tiny.yaml").write_text(TINY.format(name="tiny"))
    ckpt = str(tmp_path / "ckpt")
    run = run_hpo("run", "tiny.yaml", "--storage", url, "--checkpoint-dir", ckpt,
                  "--workers", "1", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    export = run_hpo("export", "tiny", "--storage", url, "--out", "best", cwd=tmp_path)
    assert export.returncode == 0, export.stdout + export.stderr
    assert (tmp_path / "best" / "best-checkpoint.pt").stat().st_size > 1_000_000  # resnet18

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
