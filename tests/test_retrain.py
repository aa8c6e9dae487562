"""``hpo retrain``: the best configuration fit on train + val, tested on the test split; the
``test_fraction`` hold-out that no trial sees; test splits of the other datasets."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
import uuid
from importlib import metadata
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState

from conftest import ROOT, run_hpo
from specs import write_tiny_spec
from sample_study import build_sample_study
from test_job import write_pngs
from test_job_text import make_params as text_params
from test_job_text import reviews_csv, tiny_bert  # noqa: F401 - fixtures

from hpo.cli import main
from hpo.job import JobContext, JobSetupError, run_job
from hpo.job.data import heldout_test_indices, split, subsample, train_val_indices
from hpo.job.image_data import final_image_datasets, image_datasets
from hpo.job.image_source import load_images, load_test_images
from hpo.job.text_data import load_test_texts, load_texts
from hpo.job.trial import FixedTrial
from hpo.records import RETRAIN_ATTR
from hpo.results.retrain import retrain_epochs
from hpo.spec import TaskSpec, parse_spec
from hpo.store.storage import open_storage
from hpo.search.study import create_study



def digits_labels() -> np.ndarray:
    from sklearn.datasets import load_digits

    return np.asarray(load_digits().target, dtype=np.int64)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A real two-trial digits study with a test_fraction hold-out, on SQLite."""
    folder = tmp_path_factory.mktemp("tiny")
    url = f"sqlite:///{folder / 'hpo.db'}"
    write_tiny_spec(folder / "tiny.yaml", "tiny", task={"max_samples": 600, "test_fraction": 0.2},
                    search_space={
                        "lr": {"type": "float", "low": 3.0e-4, "high": 8.0e-4, "log": True},
                        "batch_size": 32,
                        "epochs": {"type": "int", "low": 2, "high": 3},
                        "optimizer": "adam",
                    }, sampler={"name": "random", "seed": 3}, pruner={"name": "none"},
                    budget={"n_trials": 2})
    run = run_hpo("run", "tiny.yaml", "--storage", url, "--workers", "1", cwd=folder)
    assert run.returncode == 0, run.stdout + run.stderr
    return folder, url


# --------------------------------------------------------------------------------------------
# The command, end to end.


@pytest.mark.slow
@pytest.mark.xdist_group("retrain-tiny")  # one process trains the module's study once
def test_retrain_the_best_trial_on_train_and_val_and_test_it(tiny):
    folder, url = tiny
    result = run_hpo("retrain", "tiny", "--storage", url, cwd=folder)
    assert result.returncode == 0, result.stdout + result.stderr
    study = optuna.load_study(study_name="tiny", storage=url)
    best = study.best_trial
    out = folder / "retrain" / "tiny"
    assert sorted(p.name for p in out.iterdir()) == ["model.pt", "retrain.json"]
    assert [p.name for p in (folder / "retrain").iterdir()] == ["tiny"]  # no temp folder left

    record = json.loads((out / "retrain.json").read_text())
    assert record["trial"]["number"] == best.number
    assert record["trial"]["val_loss"] == pytest.approx(best.value)
    assert record["epochs"] == best.user_attrs["best_epoch"]
    assert record["epochs_from"] == "best_epoch"
    assert record["params"]["lr"] == best.params["lr"]
    assert record["params"]["epochs"] == record["epochs"]  # what ran; the trial's is kept:
    assert record["trial"]["epochs"] == best.params["epochs"]
    assert record["train_examples"] == 600  # the trials' train + val: max_samples
    labels = digits_labels()
    _, held_out = heldout_test_indices(labels, 0.2, seed=0)
    test = record["test"]
    assert test["examples"] == len(held_out) == 359
    majority = np.bincount(labels[held_out]).max() / len(held_out)
    print(f"digits retrain: test accuracy {test['accuracy']:.4f}, loss {test['loss']:.4f}; "
          f"best trial val accuracy {best.user_attrs['val_accuracy']:.4f}; "
          f"majority class {majority:.3f}; {record['seconds']} s")
    assert test["accuracy"] > majority + 0.3
    assert 0 < test["loss"] < 2.3  # below a uniform guess over 10 classes
    assert "test_fraction 0.2" in record["test_split"]
    # By class: precision, recall, F1 and the confusion matrix of the test split, each
    # scikit-learn's on the same predictions (the matrix's own counts).
    from sklearn import metrics as sk

    matrix = np.array(test["confusion"])
    assert matrix.shape == (10, 10) and matrix.sum() == 359
    assert matrix.sum(axis=1).tolist() == np.bincount(labels[held_out]).tolist()
    y = np.repeat(np.arange(10), matrix.sum(axis=1))
    p = np.concatenate([np.repeat(np.arange(10), row) for row in matrix])
    per = test["per_class"]
    assert per["classes"] == [str(i) for i in range(10)]
    assert per["examples"] == matrix.sum(axis=1).tolist()
    for name, score in (("precision", sk.precision_score), ("recall", sk.recall_score),
                        ("f1", sk.f1_score)):
        assert per[name] == pytest.approx(score(y, p, average=None, zero_division=0), abs=1e-5)
    assert test["f1"] == pytest.approx(sk.f1_score(y, p, average="macro"), abs=1e-5)
    assert test["accuracy"] == pytest.approx(np.trace(matrix) / 359, abs=1e-6)
    assert record["device"] == "cpu" and record["seconds"] > 0
    # As a worker's: a short spin, no long spinning on shared cores (unless the run set one).
    assert record["omp_wait"] == {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
                                  "GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT", "3000")}
    for package in ("hpo-finetune", "optuna", "torch", "torchvision"):
        assert record["packages"][package] == metadata.version(package)
    assert record["data"]["sha256"] and record["model"]["sha256"] == hashlib.sha256(
        (out / "model.pt").read_bytes()).hexdigest()

    state = torch.load(out / "model.pt", weights_only=True)
    assert state["epoch"] == record["epochs"] and "optimizer" not in state
    assert state["model"]["fc.1.weight"].shape == (10, 512)  # the new 10-class head

    attr = study.user_attrs[RETRAIN_ATTR]
    assert attr["trial"] == best.number and attr["epochs"] == record["epochs"]
    assert attr["test_accuracy"] == test["accuracy"] and attr["test_examples"] == 359
    assert attr["out"] == str(out.resolve())
    assert attr["test_confusion"] == test["confusion"] and attr["test_per_class"] == per

    # The report shows them: the test split's per-class table, its heatmap beside it.
    from hpo.results.report import write_report

    page = write_report(study, folder / "tiny.html", dashboard=False)[0].read_text()
    section = page.split('<section id="test_confusion">', 1)[1].split("</section>", 1)[0]
    assert section.count("<tr>") == 1 + 10 and 'id="hpo-test_confusion"' in section
    assert f"<tr><td>4</td><td>{per['precision'][4]:.4g}" in section

    lines = result.stdout.splitlines()
    assert any(line.strip().startswith("test:") and f"{test['accuracy']:.4f}" in line
               for line in lines), result.stdout
    assert any(line.strip().startswith("validation:") for line in lines), result.stdout
    assert f"macro-F1 {test['f1']:.4f}" in result.stdout
    by_class = lines[lines.index("  test by class:") + 2:][:10]  # after its header
    assert [line.split()[0] for line in by_class] == per["classes"], result.stdout
    assert by_class[7].split()[1:] == [f"{per['precision'][7]:.4f}", f"{per['recall'][7]:.4f}",
                                       f"{per['f1'][7]:.4f}", str(per["examples"][7])]
    assert not result.stderr.strip(), result.stderr
    # The study never saw the held-out examples: its trials are as many as the spec asked.
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 2

    status = run_hpo("status", "tiny", "--storage", url, cwd=folder)
    assert status.returncode == 0, status.stderr
    assert (f"retrain  #{best.number} for {record['epochs']} epochs: test_loss "
            f"{test['loss']:.4f} acc {test['accuracy']:.3f} on 359") in status.stdout


@pytest.mark.slow
@pytest.mark.xdist_group("retrain-tiny")  # one process trains the module's study once
def test_retrain_a_chosen_trial_for_chosen_epochs(tiny):
    folder, url = tiny
    study = optuna.load_study(study_name="tiny", storage=url)
    other = max(study.trials, key=lambda t: t.value).number  # the worse trial
    result = run_hpo("retrain", "tiny", "--storage", url, "--trial", str(other),
                     "--epochs", "1", "--out", "mine", cwd=folder)
    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads((folder / "mine" / "retrain.json").read_text())
    assert record["trial"]["number"] == other
    assert (record["epochs"], record["epochs_from"]) == (1, "--epochs")
    assert record["test"]["examples"] == 359
    assert optuna.load_study(study_name="tiny", storage=url).user_attrs[RETRAIN_ATTR][
        "trial"] == other


@pytest.mark.slow
def test_retrain_without_a_test_split_says_so_and_saves(tmp_path):
    """A digits study without test_fraction: retrain, save, one line saying so.
    (SQLite only: the bad-input test covers the servers without training.)"""
    storage_url = f"sqlite:///{tmp_path / 'hpo.db'}"
    name = f"sample-{uuid.uuid4().hex[:8]}"
    build_sample_study(storage_url, name, tmp_path / "ckpt", test_fraction=None)
    result = run_hpo("retrain", name, "--storage", storage_url, "--epochs", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    said = [line for line in result.stdout.splitlines() if "no test split" in line]
    assert len(said) == 1 and "test_fraction" in said[0], result.stdout
    out = tmp_path / "retrain" / name
    record = json.loads((out / "retrain.json").read_text())
    assert record["test"] is None and record["epochs"] == 1
    assert record["train_examples"] == 1797  # every digit: train + val, nothing held out
    assert (out / "model.pt").stat().st_size > 1_000_000
    attr = optuna.load_study(study_name=name, storage=storage_url).user_attrs[RETRAIN_ATTR]
    assert attr["test_accuracy"] is None and "no test split" in attr["test_split"]
    assert "secret" not in (out / "retrain.json").read_text()


@pytest.mark.slow
def test_retrain_prints_a_progress_line_per_epoch_as_it_trains(tmp_path):
    """A long retrain is not silent: one flushed line per epoch (epoch k/N, train loss,
    elapsed, samples/s) as it trains -- read from a pipe with no PYTHONUNBUFFERED, the first
    one arrives while the command is still training."""
    import os
    import re

    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    name = f"sample-{uuid.uuid4().hex[:8]}"
    build_sample_study(url, name, tmp_path / "ckpt", outcomes=[("COMPLETE", 3, 3, 0.2)],
                       max_samples=300, test_fraction=0.2)
    env = {k: v for k, v in os.environ.items() if k not in ("HPO_STORAGE", "PYTHONUNBUFFERED")}
    proc = subprocess.Popen([sys.executable, "-m", "hpo", "retrain", name, "--storage", url,
                             "--epochs", "3"], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines, running_at = [], {}
    try:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            running_at[len(lines) - 1] = proc.poll() is None
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = proc.stderr.read()
    assert proc.returncode == 0, "\n".join(lines) + stderr
    progress = re.compile(r"^hpo: epoch (\d+)/3: train loss (\d+\.\d{4}), "
                          r"(\d+\.\d) s elapsed, (\d+) samples/s$")
    at = [i for i, line in enumerate(lines) if progress.match(line)]
    assert [int(progress.match(lines[i])[1]) for i in at] == [1, 2, 3], lines
    assert lines[0].startswith("hpo: retraining trial #0") and at[0] == 1, lines
    final = next(i for i, line in enumerate(lines) if line.startswith("hpo: retrained"))
    assert at[-1] < final, lines
    assert running_at[at[0]], "the first epoch's line came only once the command had ended"
    elapsed = [float(progress.match(lines[i])[3]) for i in at]
    assert elapsed == sorted(elapsed) and elapsed[0] > 0, lines
    assert all(int(progress.match(lines[i])[4]) > 0 for i in at), lines
    record = json.loads((tmp_path / "retrain" / name / "retrain.json").read_text())
    last_loss = float(progress.match(lines[at[-1]])[2])
    assert last_loss == pytest.approx(record["train_loss"], abs=1e-4)
    assert not stderr.strip(), stderr


# --------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written.


def _custom_study(url: str, name: str) -> None:
    spec = parse_spec({"study": {"name": name},
                       "task": {"kind": "custom", "entrypoint": "fastjob:epochs_job"},
                       "search_space": {"lr": {"type": "float", "low": 1e-4, "high": 1e-1}}},
                      check_environment=False)
    create_study(spec, open_storage(url))


@pytest.mark.slow
def test_bad_input_is_one_line_and_writes_nothing(storage_url, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name = f"sample-{uuid.uuid4().hex[:8]}"
    build_sample_study(storage_url, name, tmp_path / "ckpt")  # trial 2 pruned, 5 failed
    build_sample_study(storage_url, f"{name}-pruned", tmp_path / "ckpt",
                       outcomes=[("PRUNED", 4, 1, 2.0)])
    _custom_study(storage_url, f"{name}-custom")
    cases = [
        ([f"{name}-nope"], ["no hpo study named", f"{name}-nope"]),
        ([f"{name}-pruned"], [f"'{name}-pruned' has no complete trial to retrain"]),
        ([name, "--trial", "2"], ["trial #2", "is PRUNED, not COMPLETE"]),
        ([name, "--trial", "5"], ["trial #5", "is FAIL"]),
        ([name, "--trial", "99"], ["has no trial #99"]),
        ([f"{name}-custom"], ["custom job", "fastjob:epochs_job", "built-in"]),
        ([name, "--out", str(tmp_path / "ckpt" / "trial-0.pt")], ["is a file"]),
        ([name, "--epochs", "0"], ["--epochs", "integer >= 1"]),
    ]
    for args, words in cases:
        try:
            code = main(["retrain", *args, "--storage", storage_url])
        except SystemExit as e:  # argparse's own errors
            code = e.code
        err = capsys.readouterr().err.strip()
        assert code == 2, (args, err)
        assert len(err.splitlines()) == 1 and "Traceback" not in err, (args, err)
        for word in words:
            assert word in err, (args, word, err)
    assert not (tmp_path / "retrain").exists()
    for study in (name, f"{name}-custom"):
        assert RETRAIN_ATTR not in optuna.load_study(study_name=study,
                                                     storage=storage_url).user_attrs


def test_unreadable_storage_is_one_line(tmp_path):
    for url in (f"sqlite:///{tmp_path / 'missing' / 'hpo.db'}",
                "postgresql+psycopg2://postgres:secret@127.0.0.1:1/hpo"):
        result = run_hpo("retrain", "digits", "--storage", url, cwd=tmp_path)
        err = result.stderr.strip()
        assert result.returncode == 2, err
        assert len(err.splitlines()) == 1 and err.startswith("hpo: error: "), err
        assert "secret" not in err
    assert list(tmp_path.iterdir()) == []


def test_data_that_cannot_load_leaves_nothing(tmp_path, capsys, monkeypatch):
    """A study whose image folder is gone: exit 2 after the checks, no folder left behind."""
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    write_pngs(tmp_path / "images", 4)
    spec = parse_spec({"study": {"name": "gone"},
                       "task": {"kind": "image_classification", "model": "resnet18",
                                "dataset": {"image_folder": str(tmp_path / "images")}},
                       "search_space": {"lr": {"type": "float", "low": 1e-4, "high": 1e-1}}},
                      check_environment=False)
    study = create_study(spec, open_storage(url))
    study.add_trial(optuna.trial.create_trial(
        params={"lr": 1e-3}, distributions={"lr": spec.search_space[0].distribution()},
        value=0.5, user_attrs={"best_epoch": 1}))
    import shutil

    shutil.rmtree(tmp_path / "images")
    code = main(["retrain", "gone", "--storage", url, "--out", "deep/er/out"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "no directory" in err, err
    assert not (tmp_path / "deep").exists() and not (tmp_path / "retrain").exists()


def test_help_does_not_import_torch():
    code = ("import sys; from hpo.cli import build_parser\n"
            "try: build_parser().parse_args(['retrain', '--help'])\n"
            "except SystemExit: pass\n"
            "assert 'torch' not in sys.modules and 'optuna' not in sys.modules, 'heavy import'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "--epochs" in r.stdout and "--trial" in r.stdout and "best_epoch" in r.stdout


def test_epochs_default_to_best_epoch_then_the_epochs_param():
    def trial(**attrs):
        return optuna.trial.create_trial(params={}, distributions={}, value=1.0,
                                         user_attrs=attrs)

    assert retrain_epochs(trial(best_epoch=2), {"epochs": 5}) == (2, "best_epoch")
    assert retrain_epochs(trial(), {"epochs": 5}) == (5, "epochs")
    assert retrain_epochs(trial(best_epoch=2), {"epochs": 5}, 7) == (7, "--epochs")


# --------------------------------------------------------------------------------------------
# test_fraction: held out before the train/val split, the same for trials and retrain.

PINNED = {  # sha256 of (train, val) indices of digits before test_fraction existed
    (None, 0.2, 0): "e14b031e2c39bdf2",
    (500, 0.2, 3): "dec3a4d9b4205545",
}


def _digest(*arrays: np.ndarray) -> str:
    return hashlib.sha256(b"".join(np.asarray(a, dtype=np.int64).tobytes()
                                   for a in arrays)).hexdigest()[:16]


def test_without_test_fraction_the_train_val_split_is_unchanged():
    labels = digits_labels()
    for (max_samples, val_fraction, seed), digest in PINNED.items():
        train, val = train_val_indices(labels, None, max_samples, val_fraction, seed)
        assert _digest(train, val) == digest
        assert train_val_indices(labels, None, max_samples, val_fraction, seed,
                                 None)[0].tolist() == train.tolist()
        pool = subsample(labels, max_samples, seed)
        a, b = split(labels[pool], val_fraction, seed)
        assert (pool[a] == train).all() and (pool[b] == val).all()


@pytest.mark.parametrize("max_samples", [None, 500])
def test_test_fraction_splits_train_val_and_test_disjointly(max_samples):
    labels = digits_labels()
    rest, test = heldout_test_indices(labels, 0.2, seed=0)
    train, val = train_val_indices(labels, None, max_samples, 0.2, 0, test_fraction=0.2)
    assert len(test) == 359 and len(rest) == 1797 - 359
    assert not set(train) & set(val) and not set(test) & (set(train) | set(val))
    assert len(train) + len(val) == (max_samples or len(rest))
    # Stratified: every class is in the test part in about its share.
    shares = np.bincount(labels[test], minlength=10) / len(test)
    assert np.abs(shares - np.bincount(labels, minlength=10) / len(labels)).max() < 0.01
    # Seeded: the same again, another with another seed.
    assert heldout_test_indices(labels, 0.2, seed=0)[1].tolist() == test.tolist()
    assert heldout_test_indices(labels, 0.2, seed=1)[1].tolist() != test.tolist()


def test_final_digits_datasets_are_the_trials_train_and_val_and_the_held_out_test():
    task = TaskSpec(kind="image_classification", model="resnet18", dataset={"name": "digits"},
                    image_size=16, max_samples=300, test_fraction=0.25)
    cache: dict = {}
    source = load_images(task.dataset, cache)
    train, val, _ = image_datasets(task, source, None, cache)
    final, test, about, ready = final_image_datasets(task, source, None, cache)
    assert ready and len(final) == len(train) + len(val) == 300
    assert sorted(final.indices) == sorted([*train.indices, *val.indices])
    assert len(test) == round(0.25 * 1797) and not set(test.indices) & set(final.indices)
    assert "test_fraction 0.25" in about
    x, y = test[0]
    assert x.shape == (3, 16, 16) and y == source.train_labels[test.indices[0]]
    # Without test_fraction digits has no test split, and says how to get one.
    plain = TaskSpec(kind="image_classification", model="resnet18", dataset={"name": "digits"},
                     image_size=16, max_samples=300)
    final, test, about, _ = final_image_datasets(plain, source, None, cache)
    assert test is None and "test_fraction" in about and len(final) == 300


def test_image_folder_test_dir(tmp_path):
    write_pngs(tmp_path / "train", 6)
    write_pngs(tmp_path / "val", 2)
    task = TaskSpec(kind="image_classification", model="resnet18", image_size=32,
                    dataset={"image_folder": str(tmp_path)})
    source = load_images(task.dataset, {})
    images, labels, about = load_test_images(task.dataset, source, {})
    assert images is None and "no test/ directory" in about
    write_pngs(tmp_path / "test", 3)
    final, test, about, _ = final_image_datasets(task, source, None, {})
    assert len(final) == 12 + 4 and len(test) == 6 and about.endswith("test")
    assert sorted(int(test[i][1]) for i in range(6)) == [0, 0, 0, 1, 1, 1]
    (tmp_path / "test" / "green").mkdir()
    (tmp_path / "test" / "green" / "0.png").write_bytes((tmp_path / "test" / "red" / "0.png")
                                                        .read_bytes())
    with pytest.raises(JobSetupError, match="classes"):
        load_test_images(task.dataset, source, {})


# --------------------------------------------------------------------------------------------
# Text: a test file beside a CSV, through the final fit.


def _write_reviews(path: Path, rows: list[tuple[str, str]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "sentiment"])
        writer.writerows(rows)


def test_csv_test_file_through_a_final_fit(tiny_bert, reviews_csv, tmp_path):  # noqa: F811
    test_file = tmp_path / "test.csv"
    _write_reviews(test_file, [("the film was great", "pos"), ("my phone was awful", "neg"),
                               ("this book was wonderful", "pos"),
                               ("the hotel was boring", "neg")])
    dataset = {"csv": str(reviews_csv), "test": str(test_file), "text": "review",
               "label": "sentiment"}
    task = TaskSpec(kind="text_classification", model=tiny_bert, max_length=12,
                    dataset=dataset)
    source = load_texts(dataset, {})
    texts, labels, about = load_test_texts(dataset, source, {})
    assert labels.tolist() == [1, 0, 1, 0] and about == f"test file {test_file}"

    trial = FixedTrial(number=7)
    model = tmp_path / "model.pt"
    value = run_job(trial, task, text_params(lr=3e-3, epochs=4, dropout=0.1),
                    JobContext(cache={}, checkpoint_path=model, final=True))
    attrs = trial.attrs
    assert value == float("inf")  # no validation in a final fit
    assert attrs["train_examples"] == 160 and attrs["test_examples"] == 4
    assert attrs["test_accuracy"] >= 0.75 and attrs["epochs_run"] == 4
    assert "val_accuracy" not in attrs and "best_epoch" not in attrs
    assert set(torch.load(model, weights_only=True)) == {"model", "epoch"}

    _write_reviews(test_file, [("the film was great", "meh")])
    with pytest.raises(JobSetupError, match="labels that the training file lacks"):
        load_test_texts(dataset, source, {})
    no_test = {k: v for k, v in dataset.items() if k != "test"}
    assert load_test_texts(no_test, source, {})[0] is None


def test_a_retrain_of_a_val_f1_study_shows_the_loss_and_the_objective_apart():
    """The record's ``val_loss`` is the best evaluation's loss, ``value`` the objective's
    (F1): the terminal shows both under their names, not the F1 as a loss."""
    from hpo.results.retrain import format_retrain

    record = {"study": "f1", "train_examples": 800, "epochs": 3, "epochs_from": "best_epoch",
              "seconds": 2.0, "device": "cpu", "out": "retrain/f1", "test": None,
              "test_split": "no test split: set task.test_fraction",
              "trial": {"number": 4, "metric": "val_f1", "value": 0.91, "val_loss": 0.31,
                        "val_accuracy": 0.92, "best_epoch": 3, "epochs": 3}}
    text = format_retrain(record)
    assert "trial #4 validation: loss 0.3100, accuracy 0.9200, f1 0.9100" in text, text
    old = {**record, "trial": {"number": 4, "val_loss": 0.31, "val_accuracy": None}}
    assert "trial #4 validation: loss 0.3100\n" in format_retrain(old)  # a record of before
