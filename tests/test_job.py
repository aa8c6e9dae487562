"""The job layer on images: real fine-tuning runs on small data, on CPU (and CUDA if present)."""

from __future__ import annotations

import gc
import math
import struct
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

import hpo.job.fit as fit_module
import hpo.job.step as step_module
from hpo.job import JobContext, JobSetupError, run_job
from hpo.job.data import split, train_val_indices
from hpo.job.device import pick_device
from hpo.job.image_data import image_datasets
from hpo.job.image_source import load_images
from hpo.job.optim import freeze, lr_factor, make_optimizer
from hpo.job.trial import FixedTrial
from hpo.job.vision import build_vision, pretrained_model, replace_head
from hpo.spec import HYPERPARAMETERS, TaskSpec
from hpo.run.worker import StudyTrial


def make_params(**overrides):
    params = {name: hp.default for name, hp in HYPERPARAMETERS.items()}
    params.update(lr=1e-3, batch_size=32, epochs=2, optimizer="adamw")
    params.update(overrides)
    return params


def digits(**overrides) -> TaskSpec:
    """A small, fast digits task (resnet18 at 16x16, 300 examples) unless overridden."""
    fields = dict(kind="image_classification", model="resnet18", dataset={"name": "digits"},
                  image_size=16, max_samples=300)
    fields.update(overrides)
    return TaskSpec(**fields)


def new_study(pruner=None) -> optuna.Study:
    return optuna.create_study(storage=optuna.storages.InMemoryStorage(), pruner=pruner)


def run_one(task, params, context=None, pruner=None, catch=()):
    """Run one trial of a fresh in-memory study; return its FrozenTrial."""
    study = new_study(pruner)
    context = context or JobContext(cache={})
    study.optimize(lambda t: run_job(StudyTrial(t), task, params, context), n_trials=1,
                   catch=catch)
    return study.trials[0]


# ------------------------------------------------------------------------------------------
# Fine-tuning, reporting, attrs


@pytest.mark.slow
def test_digits_fine_tune_learns_and_reports_each_epoch():
    trial = run_one(digits(image_size=None, max_samples=600), make_params(epochs=3))
    values = trial.intermediate_values
    assert sorted(values) == [1, 2, 3]
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert trial.value == min(values.values())
    assert values[3] < values[1]
    attrs = trial.user_attrs
    assert attrs["val_accuracy"] > 0.6  # the majority class is ~0.1
    assert attrs["epochs_run"] == 3 and attrs["epochs_planned"] == 3
    assert values[attrs["best_epoch"]] == trial.value
    assert attrs["device"] == ("cpu" if not torch.cuda.is_available() else attrs["device"])
    assert attrs["train_seconds"] > 0 and attrs["samples_per_second"] > 0
    assert attrs["peak_memory_mb"] > 0
    assert "checkpoint" not in attrs and "prune_reason" not in attrs


def test_the_fit_loop_runs_on_a_fixed_trial_alone():
    """No study and no database: the loop sees only the trial interface (report,
    should_prune, set_attrs), and a FixedTrial keeps what it is told."""
    trial = FixedTrial(number=4)
    value = run_job(trial, digits(max_samples=200), make_params(epochs=2),
                    JobContext(cache={}))
    assert sorted(trial.reports) == [1, 2]  # one report per epoch
    assert value == min(trial.reports.values())
    attrs = trial.attrs
    assert attrs["epochs_run"] == 2 and attrs["epochs_planned"] == 2
    assert trial.reports[attrs["best_epoch"]] == value
    assert 0 <= attrs["val_accuracy"] <= 1 and attrs["device"]
    assert "prune_reason" not in attrs and "checkpoint" not in attrs


@pytest.mark.parametrize("batch_size", [16, 64])
def test_evals_per_epoch_steps_are_fractions_of_the_data(batch_size):
    trial = run_one(digits(evals_per_epoch=2, max_samples=200),
                    make_params(batch_size=batch_size, epochs=2))
    assert sorted(trial.intermediate_values) == [1, 2, 3, 4]


@pytest.mark.slow
def test_val_subset_inside_an_epoch_the_whole_val_set_at_its_end():
    """``val_subset``: the evaluations inside an epoch read a fixed subset (training is the
    same, so the epoch-end values equal those of a run without it, and those inside differ),
    and the trial's value is the best epoch-end value, whatever the subset's were."""
    params = make_params(epochs=2, lr=1e-3)
    whole = run_one(digits(evals_per_epoch=2, max_samples=200), params)
    part = run_one(digits(evals_per_epoch=2, max_samples=200, val_subset=8), params)
    assert sorted(part.intermediate_values) == [1, 2, 3, 4]
    for step in (2, 4):
        assert part.intermediate_values[step] == pytest.approx(whole.intermediate_values[step],
                                                               rel=1e-6)
    for step in (1, 3):
        assert part.intermediate_values[step] != pytest.approx(
            whole.intermediate_values[step], rel=1e-6)
    assert part.value == min(part.intermediate_values[2], part.intermediate_values[4])
    assert part.user_attrs["val_subset"] == 8 and "val_subset" not in whole.user_attrs
    assert part.user_attrs["best_epoch"] in (1, 2)
    # A subset as large as the val set is the val set: nothing changes.
    same = run_one(digits(evals_per_epoch=2, max_samples=200, val_subset=10_000), params)
    assert same.intermediate_values == pytest.approx(whole.intermediate_values, rel=1e-6)
    assert "val_subset" not in same.user_attrs


def test_pruner_prunes_with_reason_and_attrs():
    # Every validation loss is above 0, so the threshold pruner stops the trial at step 1.
    trial = run_one(digits(), make_params(epochs=3),
                    pruner=optuna.pruners.ThresholdPruner(upper=0.0))
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert trial.user_attrs["prune_reason"] == "pruned"
    assert trial.user_attrs["pruned_at_step"] == 1
    assert trial.user_attrs["epochs_run"] == 1 and trial.user_attrs["epochs_planned"] == 3
    assert "val_accuracy" in trial.user_attrs
    assert sorted(trial.intermediate_values) == [1]


@pytest.mark.parametrize("evals", [1, 2])
def test_the_last_report_completes_the_trial_instead_of_pruning_it(evals):
    """A pruner that would stop every trial: the trial's last evaluation cannot prune it (all
    its epochs have run; pruning then saves nothing and throws the result away)."""
    trial = run_one(digits(evals_per_epoch=evals, max_samples=200), make_params(epochs=1),
                    pruner=optuna.pruners.ThresholdPruner(upper=0.0))
    if evals == 1:
        assert trial.state == optuna.trial.TrialState.COMPLETE, trial.user_attrs
        assert "prune_reason" not in trial.user_attrs
    else:  # pruned at its first evaluation, half-way: that one saves half the epoch
        assert trial.state == optuna.trial.TrialState.PRUNED
        assert trial.user_attrs["pruned_at_step"] == 1
    trial = run_one(digits(evals_per_epoch=evals, max_samples=200), make_params(epochs=1),
                    pruner=optuna.pruners.ThresholdPruner(upper=0.0, n_warmup_steps=evals))
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert sorted(trial.intermediate_values) == list(range(1, evals + 1))


def test_nan_loss_prunes_at_the_next_evaluation_point(monkeypatch):
    """The loop looks at the losses where it evaluates (a step reads nothing back from the
    device): a NaN in the third step prunes after the epoch's seventh and last, before the
    evaluation, at the report step the NaN step counts towards."""
    real = step_module.forward_backward
    calls = []

    def nan_on_third(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * math.nan if len(calls) == 3 else loss

    monkeypatch.setattr(step_module, "forward_backward", nan_on_third)
    trial = run_one(digits(), make_params(epochs=3))
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert trial.user_attrs["prune_reason"] == "nan"
    assert trial.user_attrs["pruned_at_step"] == 1
    assert len(calls) == 240 // 32  # the steps up to the evaluation point, no more
    assert trial.intermediate_values == {}


def test_huge_learning_rate_is_pruned_as_nan_or_diverged():
    trial = run_one(digits(), make_params(optimizer="sgd", lr=1e8, momentum=0.9, epochs=3))
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert trial.user_attrs["prune_reason"] in ("nan", "diverged")
    assert trial.user_attrs["pruned_at_step"] == 1


def test_early_stopping_after_patience_evaluations(monkeypatch):
    losses = iter([1.0, 2.0, 3.0, 4.0])
    monkeypatch.setattr(step_module, "evaluate",
                        lambda *a, **k: {"loss": next(losses), "accuracy": 0.5,
                                         "balanced_accuracy": 0.5})
    trial = run_one(digits(early_stopping_patience=2, max_samples=100), make_params(epochs=4))
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert trial.intermediate_values == {1: 1.0, 2: 2.0, 3: 3.0}
    assert trial.value == 1.0 and trial.user_attrs["best_epoch"] == 1
    assert trial.user_attrs["epochs_run"] == 3
    assert trial.user_attrs["stopped_early_at_step"] == 3


def test_a_maximized_metric_is_reported_and_picks_the_best_epoch_and_early_stopping(
        monkeypatch):
    """``study.metric: val_f1`` (maximized): each evaluation reports the F1, the best epoch
    and the value are the highest F1's, and early stopping waits for a higher one (the
    loss, rising all along, would have stopped it at epoch 3)."""
    evals = iter([(1.0, 0.5), (2.0, 0.7), (3.0, 0.6), (4.0, 0.65), (5.0, 0.9)])

    def evaluate(*a, **k):
        loss, f1 = next(evals)
        return {"loss": loss, "accuracy": f1, "balanced_accuracy": f1, "f1": f1}

    monkeypatch.setattr(step_module, "evaluate", evaluate)
    trial = run_one(digits(early_stopping_patience=2, max_samples=100), make_params(epochs=5),
                    JobContext(cache={}, metric="val_f1", maximize=True))
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert trial.intermediate_values == {1: 0.5, 2: 0.7, 3: 0.6, 4: 0.65}
    assert trial.value == 0.7 and trial.user_attrs["best_epoch"] == 2
    assert trial.user_attrs["best_metrics"]["val_f1"] == 0.7
    assert trial.user_attrs["best_metrics"]["val_loss"] == 2.0
    assert trial.user_attrs["stopped_early_at_step"] == 4


@pytest.mark.parametrize(("value", "outcome"), [(None, "fails"), (float("nan"), "nan")])
def test_a_metric_the_task_does_not_record_fails_and_its_nan_prunes(monkeypatch, value,
                                                                     outcome):
    """``val_auroc`` of ten classes is not recorded: the trial fails saying so; a NaN of the
    objective prunes as a NaN loss does."""
    monkeypatch.setattr(step_module, "evaluate", lambda *a, **k: {
        "loss": 0.5, "accuracy": 0.5, "balanced_accuracy": 0.5, "auroc": value})
    trial = run_one(digits(max_samples=100), make_params(epochs=2),
                    JobContext(cache={}, metric="val_auroc", maximize=True), catch=(ValueError,))
    if outcome == "fails":
        assert trial.state == optuna.trial.TrialState.FAIL
    else:
        assert trial.state == optuna.trial.TrialState.PRUNED
        assert trial.user_attrs["prune_reason"] == "nan"


# ------------------------------------------------------------------------------------------
# Optimizer, schedule, clipping, freezing, head


def test_lr_schedule_warmup_then_decay():
    assert lr_factor(0, 100, 0.1, "constant") == pytest.approx(1 / 11)
    assert lr_factor(9, 100, 0.1, "constant") == pytest.approx(10 / 11)
    assert lr_factor(50, 100, 0.1, "constant") == 1.0
    assert lr_factor(10, 100, 0.1, "cosine") == pytest.approx(1.0)
    assert lr_factor(55, 100, 0.1, "cosine") == pytest.approx(0.5)
    assert lr_factor(99, 100, 0.1, "cosine") < 0.001
    assert lr_factor(55, 100, 0.1, "linear") == pytest.approx(0.5)
    assert lr_factor(0, 100, 0.0, "linear") == 1.0


def test_optimizer_groups_backbone_lr_and_decay():
    model, _ = pretrained_model("resnet18", None)
    head = replace_head(model, 10, 0.2)
    params = make_params(lr=0.01, backbone_lr_mult=0.1, weight_decay=0.05, optimizer="sgd",
                         momentum=0.8)
    opt = make_optimizer(model, list(head.parameters()), params)
    assert isinstance(opt, torch.optim.SGD)
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    assert by_param[id(head[1].weight)]["lr"] == 0.01
    assert by_param[id(model.conv1.weight)]["lr"] == pytest.approx(0.001)
    assert by_param[id(model.conv1.weight)]["weight_decay"] == 0.05
    assert by_param[id(model.bn1.weight)]["weight_decay"] == 0.0  # norms and biases: none
    assert by_param[id(head[1].bias)]["weight_decay"] == 0.0
    assert all(g["momentum"] == 0.8 for g in opt.param_groups)
    rms = make_optimizer(model, list(head.parameters()), {**params, "optimizer": "rmsprop"})
    assert isinstance(rms, torch.optim.RMSprop) and rms.param_groups[0]["momentum"] == 0.8


def test_grad_clip_bounds_the_update():
    def update_norm(grad_clip):
        torch.manual_seed(0)
        model = torch.nn.Linear(8, 3)
        before = [p.detach().clone() for p in model.parameters()]
        params = make_params(optimizer="sgd", lr=1.0, momentum=0.0, grad_clip=grad_clip)
        opt = make_optimizer(model, list(model.parameters()), params)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        dev = pick_device(amp=False)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        x, y = torch.randn(16, 8) * 10, torch.randint(0, 3, (16,))
        step_module.train_step(model, x, y, 16, torch.nn.functional.cross_entropy, dev,
                               scaler, opt, sched, list(model.parameters()), grad_clip)
        with torch.no_grad():
            return float(torch.sqrt(sum(((p - b) ** 2).sum()
                                        for p, b in zip(model.parameters(), before))))

    assert update_norm(0.01) == pytest.approx(0.01, rel=1e-3)
    assert update_norm(0.0) > 0.1


def trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_freeze_policies_count_trainable_parameters():
    task = digits()
    cache = {}
    counts = {}
    for policy, k in [("none", 0), ("head_only", 0), ("first_k", 2), ("first_k", 99)]:
        setup = build_vision(task, make_params(freeze=policy, freeze_k=k), cache)
        frozen = freeze(setup.model, setup.head, setup.blocks, policy, k)
        counts[policy, k] = (trainable(setup.model), frozen, setup.model)
    total = sum(p.numel() for p in counts["none", 0][2].parameters())
    head = 512 * 10 + 10
    conv1_bn1 = 64 * 3 * 7 * 7 + 2 * 64
    assert counts["none", 0][0] == total
    assert counts["head_only", 0][0] == head
    assert counts["first_k", 2][0] == total - conv1_bn1
    assert counts["first_k", 99][0] == head
    model = counts["first_k", 2][2]
    assert counts["first_k", 2][1] == [model.conv1, model.bn1]  # kept in eval mode


def test_head_only_trains_the_head_alone(tmp_path):
    ckpt = tmp_path / "trial.pt"
    task = digits(max_samples=100)
    run_one(task, make_params(freeze="head_only", epochs=1, lr=0.01),
            JobContext(cache={}, checkpoint_path=ckpt))
    torch.manual_seed(task.seed)  # the job's initial model, again
    fresh = build_vision(task, make_params(), {}).model.state_dict()
    trained = torch.load(ckpt, map_location="cpu", weights_only=True)["model"]
    assert torch.equal(trained["layer3.0.conv1.weight"], fresh["layer3.0.conv1.weight"])
    # frozen batch norm stays in eval mode: its running statistics do not move either
    assert torch.equal(trained["bn1.running_mean"], fresh["bn1.running_mean"])
    assert not torch.equal(trained["fc.1.weight"], fresh["fc.1.weight"])


def test_first_k_opens_a_single_features_container():
    model, _ = pretrained_model("mobilenet_v3_small", None)
    from hpo.job.vision import _blocks

    blocks = _blocks(model)
    assert len(blocks) == len(model.features)


def test_replace_head_puts_dropout_in_front_and_drops_the_old_one():
    model, _ = pretrained_model("mobilenet_v3_small", None)
    head = replace_head(model, 7, 0.3)
    assert isinstance(model.classifier[2], torch.nn.Identity)  # was Dropout(0.2)
    assert model.classifier[3] is head
    assert head[0].p == 0.3 and head[1].out_features == 7
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_squeezenet_conv_head_is_replaced():
    model, _ = pretrained_model("squeezenet1_1", None)
    head = replace_head(model, 5, 0.1)
    assert isinstance(head[1], torch.nn.Conv2d) and head[1].out_channels == 5
    assert isinstance(model.classifier[0], torch.nn.Identity)
    assert model.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 5)


# ------------------------------------------------------------------------------------------
# Weights


def test_weights_from_a_local_checkpoint(tmp_path):
    torch.manual_seed(123)
    source = pretrained_model("resnet18", None)[0]
    source.fc = torch.nn.Linear(512, 7)  # another task's head: its shape does not fit
    path = tmp_path / "resnet18-mine.pt"
    torch.save({"state_dict": source.state_dict(), "epoch": 3}, path)

    model, preset = pretrained_model("resnet18", str(path))
    assert preset is None
    assert torch.equal(model.layer2[0].conv1.weight, source.layer2[0].conv1.weight)
    assert model.fc.out_features == 1000  # the mismatched head was skipped

    trial = run_one(digits(weights=str(path), max_samples=100), make_params(epochs=1))
    assert trial.state == optuna.trial.TrialState.COMPLETE


def test_unusable_weights_file_is_a_clear_error(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"something.else": torch.zeros(3)}, path)
    with pytest.raises(JobSetupError, match="none of its 1 tensors fits"):
        pretrained_model("resnet18", str(path))
    with pytest.raises(JobSetupError, match="neither a weights name"):
        pretrained_model("resnet18", str(tmp_path / "missing.pt"))


def test_default_weights_without_internet_fail_clearly(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # nothing cached

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "urlopen", offline)
    with pytest.raises(JobSetupError) as info:
        pretrained_model("resnet18", "DEFAULT")
    message = str(info.value)
    assert "download" in message and "resnet18-f37072fd.pth" in message
    assert "local checkpoint path" in message


def test_weights_by_name_from_the_hub_cache_use_their_preset(tmp_path, monkeypatch):
    # What a machine with internet would have downloaded once: the file in torch's hub cache.
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    torch.manual_seed(5)
    cached = pretrained_model("resnet18", None)[0].state_dict()
    (tmp_path / "checkpoints").mkdir()
    torch.save(cached, tmp_path / "checkpoints" / "resnet18-f37072fd.pth")

    model, preset = pretrained_model("resnet18", "IMAGENET1K_V1")
    assert torch.equal(model.conv1.weight, cached["conv1.weight"])
    assert (preset.crop, preset.resize) == (224, 256)
    assert preset.mean == (0.485, 0.456, 0.406) and preset.weights.name == "IMAGENET1K_V1"

    task = digits(weights="DEFAULT", image_size=24, max_samples=100)
    train, val, _ = image_datasets(task, load_images(task.dataset, {}), preset, {})
    assert train[0][0].shape == val[0][0].shape == (3, 24, 24)  # the preset, at the task's size
    trial = run_one(task, make_params(epochs=1))
    assert trial.state == optuna.trial.TrialState.COMPLETE


# ------------------------------------------------------------------------------------------
# Datasets


def test_split_is_seeded_and_stratified():
    labels = np.repeat(np.arange(4), [50, 30, 10, 10])
    train, val = split(labels, 0.2, seed=7)
    again = split(labels, 0.2, seed=7)
    assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])
    assert sorted(set(train) | set(val)) == list(range(100)) and not set(train) & set(val)
    assert np.bincount(labels[val]).tolist() == [10, 6, 2, 2]
    other = split(labels, 0.2, seed=8)[1]
    assert not np.array_equal(val, other)


def test_max_samples_caps_both_splits():
    labels = np.arange(1000) % 10
    train, val = train_val_indices(labels, None, 100, 0.2, seed=0)
    assert len(train) + len(val) == 100 and len(val) == 20
    train, val = train_val_indices(labels, labels[:300], 100, 0.2, seed=0)
    assert len(train) == 80 and len(val) == 20


def test_digits_are_scikit_learns_without_importing_it():
    """The digits are read from the file scikit-learn ships, not through its (slow) import:
    the same images and labels as ``load_digits``, and no ``sklearn`` module loaded."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    from hpo.job.digits import digits_arrays

    images, labels = digits_arrays()
    reference = load_digits()
    assert images.shape == (1797, 8, 8) and labels.dtype == np.int64
    assert np.array_equal(images, reference.images)
    assert np.array_equal(labels, reference.target)
    probe = ("import sys; from hpo.job.digits import digits_arrays; digits_arrays(); "
             "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sklearn'))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]", out


def test_digits_images_are_rgb_resized_and_not_augmented_by_default():
    task = digits(image_size=None, max_samples=None)
    source = load_images(task.dataset, {})
    train, val, ready = image_datasets(task, source, None, {})
    assert ready and len(train) + len(val) == 1797
    x, y = train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert torch.equal(train[0][0], x)  # no augmentation for digits
    augmented, _, ready = image_datasets(digits(augment=True), source, None, {})
    assert not ready
    assert any(not torch.equal(augmented[0][0], augmented[0][0]) for _ in range(10))


def write_pngs(root: Path, per_class: int, size: int = 20) -> None:
    from PIL import Image

    colors = {"red": (220, 30, 30), "blue": (30, 30, 220)}
    rng = np.random.default_rng(0)
    for name, color in colors.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.array(color) + rng.normal(0, 20, (size, size, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")


@pytest.mark.slow
def test_image_folder_with_train_and_val_dirs(tmp_path):
    write_pngs(tmp_path / "train", 24)
    write_pngs(tmp_path / "val", 6)
    task = TaskSpec(kind="image_classification", model="resnet18",
                    dataset={"image_folder": str(tmp_path)}, image_size=32)
    source = load_images(task.dataset, {})
    assert source.num_classes == 2 and len(source.val) == 12
    train, val, _ = image_datasets(task, source, None, {})
    assert len(train) == 48 and len(val) == 12
    trial = run_one(task, make_params(epochs=5, batch_size=8, lr=1e-3))
    assert trial.user_attrs["val_accuracy"] >= 0.9


def test_image_folder_without_val_dir_is_split(tmp_path):
    write_pngs(tmp_path, 10)
    task = TaskSpec(kind="image_classification", model="resnet18",
                    dataset={"image_folder": str(tmp_path)}, val_fraction=0.2)
    train, val, _ = image_datasets(task, load_images(task.dataset, {}), None, {})
    assert len(train) == 16 and len(val) == 4
    x, _ = train[0]
    assert x.shape == (3, 32, 32)  # the data's own 20 px, raised to the minimum of 32


def write_idx(root: Path, folder: str, n_train: int = 60, n_test: int = 10) -> None:
    """MNIST's raw idx files: class k is a bright bar in row band k."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n, dtype=np.uint8) % 10
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        for i, k in enumerate(labels):
            images[i, 2 + 2 * k: 4 + 2 * k, 4:24] = 255
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 2049, n) + labels.tobytes())


@pytest.mark.parametrize("name", ["MNIST", "FashionMNIST"])
def test_torchvision_dataset_by_name_from_local_files(tmp_path, name):
    write_idx(tmp_path, name)
    task = TaskSpec(kind="image_classification", model="resnet18",
                    dataset={"name": name, "root": str(tmp_path)})
    source = load_images(task.dataset, {})
    assert len(source.train) == 60 and source.num_classes == 10  # the test split stays out
    assert source.handwriting == (name == "MNIST")
    trial = run_one(task, make_params(epochs=1, batch_size=16))
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert sorted(trial.intermediate_values) == [1]


def test_missing_torchvision_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(JobSetupError, match="hpo never downloads"):
        load_images({"name": "CIFAR10", "root": str(tmp_path)}, {})


# ------------------------------------------------------------------------------------------
# Checkpoint and resume, out of memory, memory hygiene


@pytest.mark.parametrize("workers, augment", [(0, False), (2, False), (0, True), (2, True)])
@pytest.mark.slow
def test_resume_continues_at_the_next_epoch(tmp_path, monkeypatch, workers, augment):
    """Resumed after epoch 2, epoch 3 is as if the trial had never stopped, augmentation drawn
    in loader processes included."""
    task = digits(max_samples=120, num_workers=workers, augment=augment)
    params = make_params(epochs=3, batch_size=32, schedule="cosine", warmup_fraction=0.1,
                         dropout=0.2)
    whole = run_one(task, params).intermediate_values

    ckpt = tmp_path / "trial-7.pt"
    real_save = fit_module.save_checkpoint

    def crash_after_epoch_2(path, **kwargs):
        real_save(path, **kwargs)
        if kwargs["epoch"] == 2:
            raise RuntimeError("the worker died")

    monkeypatch.setattr(fit_module, "save_checkpoint", crash_after_epoch_2)
    crashed = run_one(task, params, JobContext(cache={}, checkpoint_path=ckpt),
                      catch=(RuntimeError,))
    assert crashed.state == optuna.trial.TrialState.FAIL
    assert sorted(crashed.intermediate_values) == [1, 2]
    assert crashed.user_attrs["checkpoint"] == str(ckpt)
    monkeypatch.setattr(fit_module, "save_checkpoint", real_save)

    resumed = run_one(task, params, JobContext(cache={}, checkpoint_path=ckpt, resume_path=ckpt))
    assert sorted(resumed.intermediate_values) == [3]
    # as if it had never stopped
    assert resumed.intermediate_values[3] == pytest.approx(whole[3], rel=1e-4)
    assert resumed.value == pytest.approx(min(whole.values()), rel=1e-4)
    assert resumed.user_attrs["epochs_run"] == 3
    assert torch.load(ckpt, weights_only=True)["epoch"] == 3


def test_final_checkpoint_is_the_weights_and_a_resume_from_it_finishes_at_once(tmp_path,
                                                                                monkeypatch):
    """After the last epoch the checkpoint keeps the model, the epoch and the progress, not the
    optimizer (a third of the size with AdamW); a worker that dies between the last epoch and
    the tell leaves a trial whose retry resumes from it and returns the result untrained."""
    task = digits(max_samples=120)
    params = make_params(epochs=2, batch_size=32, optimizer="adamw")
    ckpt = tmp_path / "trial-3.pt"
    sizes = {}
    real_save = fit_module.save_checkpoint

    def die_after_the_last_epoch(path, **kwargs):
        real_save(path, **kwargs)
        sizes[kwargs["epoch"]] = path.stat().st_size
        if kwargs["epoch"] == 2:
            raise RuntimeError("the worker died before the tell")

    monkeypatch.setattr(fit_module, "save_checkpoint", die_after_the_last_epoch)
    died = run_one(task, params, JobContext(cache={}, checkpoint_path=ckpt),
                   catch=(RuntimeError,))
    monkeypatch.setattr(fit_module, "save_checkpoint", real_save)
    assert died.state == optuna.trial.TrialState.FAIL and sorted(died.intermediate_values) == [1, 2]
    state = torch.load(ckpt, weights_only=True)
    assert set(state) == {"epoch", "model", "progress", "final"} and state["epoch"] == 2
    weights = sum(t.numel() * t.element_size() for t in state["model"].values())
    assert sizes[2] < 1.05 * weights  # the weights alone ...
    assert sizes[2] < 0.4 * sizes[1]  # ... where epoch 1's checkpoint had AdamW's moments too

    def no_training(*args, **kwargs):
        raise AssertionError("a resume from the final checkpoint trained again")

    monkeypatch.setattr(fit_module, "train_step", no_training)
    retry = run_one(task, params, JobContext(cache={}, checkpoint_path=tmp_path / "trial-4.pt",
                                             resume_path=ckpt))
    assert retry.state == optuna.trial.TrialState.COMPLETE
    assert retry.value == pytest.approx(min(died.intermediate_values.values()))
    assert retry.user_attrs["epochs_run"] == 2
    assert retry.user_attrs["best_epoch"] == min(died.intermediate_values,
                                                 key=died.intermediate_values.get)


def test_a_final_checkpoint_with_epochs_left_is_refused(tmp_path):
    """A final checkpoint has no optimizer state to train on with: a resume that would train
    more epochs from it fails clearly instead of training on with a fresh optimizer."""
    from hpo.job.checkpoint import restore_checkpoint, save_checkpoint

    model = torch.nn.Linear(2, 2)
    save_checkpoint(tmp_path / "c.pt", model=model, optimizer=None, scheduler=None, scaler=None,
                    epoch=1, progress={"stopped_early": False}, final=True)
    restored = torch.nn.Linear(2, 2)
    assert restore_checkpoint(tmp_path / "c.pt", model=restored, optimizer=None, scheduler=None,
                              scaler=None, epochs=1) == (1, {"stopped_early": False})
    assert torch.equal(restored.weight, model.weight)
    with pytest.raises(JobSetupError, match="final .* plans 3 epochs"):
        restore_checkpoint(tmp_path / "c.pt", model=restored, optimizer=None, scheduler=None,
                           scaler=None, epochs=3)


def test_out_of_memory_halves_the_micro_batch(monkeypatch, tmp_path):
    real = step_module.forward_backward
    sizes = []

    def small_memory(model, inputs, labels, *args, **kwargs):
        if len(labels) > 4:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        sizes.append(len(labels))
        return real(model, inputs, labels, *args, **kwargs)

    monkeypatch.setattr(step_module, "forward_backward", small_memory)
    steps = []
    real_save = fit_module.save_checkpoint

    def save(path, **kwargs):  # the scheduler's steps, which the final checkpoint leaves out
        steps.append(kwargs["scheduler"].last_epoch)
        real_save(path, **kwargs)

    monkeypatch.setattr(fit_module, "save_checkpoint", save)
    ckpt = tmp_path / "t.pt"
    task = digits(max_samples=100)  # 80 train examples: 5 steps of 16
    trial = run_one(task, make_params(batch_size=16, epochs=1),
                    JobContext(cache={}, checkpoint_path=ckpt))
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert trial.user_attrs["micro_batch_size"] == 4
    assert trial.user_attrs["grad_accumulation"] == 4
    assert set(sizes) == {4} and len(sizes) == 5 * 4  # every batch in 4 micro-batches
    # the same effective batch: one optimizer (and scheduler) step per batch of 16
    assert steps == [5]


def test_out_of_memory_at_micro_batch_one_fails_with_reason(monkeypatch):
    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    monkeypatch.setattr(step_module, "forward_backward", no_memory)
    trial = run_one(digits(max_samples=100), make_params(batch_size=16, epochs=1),
                    catch=(torch.OutOfMemoryError,))
    assert trial.state == optuna.trial.TrialState.FAIL
    assert trial.user_attrs["fail_reason"] == "oom"
    assert trial.user_attrs["micro_batch_size"] == 1
    assert trial.user_attrs["grad_accumulation"] == 16


def test_out_of_memory_in_evaluation_halves_its_micro_batch(monkeypatch):
    real = step_module.logits
    sizes = []

    def small_memory_without_grad(model, inputs):
        if not torch.is_grad_enabled():
            if len(inputs) > 4:
                raise torch.OutOfMemoryError("CUDA out of memory (injected)")
            sizes.append(len(inputs))
        return real(model, inputs)

    monkeypatch.setattr(step_module, "logits", small_memory_without_grad)
    task = digits(max_samples=100, evals_per_epoch=2)  # 20 val examples, 2 evals an epoch
    trial = run_one(task, make_params(batch_size=16, epochs=2))
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert sorted(trial.intermediate_values) == [1, 2, 3, 4]
    assert trial.user_attrs["eval_micro_batch_size"] == 4
    assert "micro_batch_size" not in trial.user_attrs  # training kept its batch of 16
    # Each of the 4 evaluations saw the 20 val examples once, in passes of at most 4 (the
    # attempts at 16 and 8 failed before any pass completed).
    assert sum(sizes) == 4 * 20 and max(sizes) == 4


@pytest.mark.slow
def test_out_of_memory_in_evaluation_at_one_example_fails_with_reason(monkeypatch):
    real = step_module.logits

    def no_memory_without_grad(model, inputs):
        if not torch.is_grad_enabled():
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(model, inputs)

    monkeypatch.setattr(step_module, "logits", no_memory_without_grad)
    trial = run_one(digits(max_samples=100), make_params(batch_size=16, epochs=1),
                    catch=(torch.OutOfMemoryError,))
    assert trial.state == optuna.trial.TrialState.FAIL
    assert trial.user_attrs["fail_reason"] == "oom"
    assert trial.user_attrs["eval_micro_batch_size"] == 1
    assert trial.user_attrs["epochs_run"] == 1


def live_tensor_bytes() -> int:
    gc.collect()
    seen, total = set(), 0
    with warnings.catch_warnings():  # isinstance on torch.distributed's deprecated names
        warnings.simplefilter("ignore")
        objects = gc.get_objects()
        tensors = [o for o in objects if isinstance(o, torch.Tensor)]
    for obj in tensors:
        if obj.device.type != "meta":
            storage = obj.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
    return total


def rss_mb() -> float:
    """This process's resident memory in MB, of live objects: collected garbage and the heap's
    free pages handed back first (``malloc_trim``), so that what the allocator keeps for later
    (which varies with what ran before in the test process) does not count as held."""
    import ctypes
    import gc
    import os

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.slow
def test_memory_returns_to_baseline_and_the_cache_is_reused(monkeypatch):
    import hpo.job.image_source as image_data

    loads = []
    real_load = image_data.digits_arrays
    monkeypatch.setattr(image_data, "digits_arrays",
                        lambda *a, **k: loads.append(1) or real_load(*a, **k))
    context = JobContext(cache={})
    # Two evaluations an epoch: the first one prunes (a trial's last report never does).
    task = digits(max_samples=200, evals_per_epoch=2)
    study = new_study(optuna.pruners.ThresholdPruner(upper=0.0))  # every trial is pruned...
    held = []

    def objective(trial):
        try:
            return run_job(StudyTrial(trial), task,
                           make_params(epochs=1, lr=1e-3 * (1 + trial.number)), context)
        except optuna.TrialPruned as e:
            held.append(e)  # ...and its traceback, with the fit loop's frames, is kept alive
            raise

    study.optimize(objective, n_trials=1)
    baseline_tensors, baseline_rss = live_tensor_bytes(), rss_mb()
    cached = dict(context.cache)
    study.optimize(objective, n_trials=3)
    grown = rss_mb() - baseline_rss
    assert len(loads) == 1  # loaded once, then taken from the cache
    assert context.cache.keys() == cached.keys()
    assert all(context.cache[k] is v for k, v in cached.items())
    assert all(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    assert live_tensor_bytes() - baseline_tensors < 2**20  # resnet18 alone is 45 MB
    assert grown < 30  # one leaked resnet18 is 45 MB


# ------------------------------------------------------------------------------------------
# GPU: the same job on CUDA, where the machine has one


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("bf16", [True, False], ids=["bf16", "fp16-with-scaler"])
def test_cuda_fine_tune_with_mixed_precision(monkeypatch, bf16):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    trial = run_one(digits(image_size=None, max_samples=None),
                    make_params(epochs=3, batch_size=64, grad_clip=1.0))
    attrs = trial.user_attrs
    assert attrs["device"].startswith("cuda:")
    assert attrs["val_accuracy"] > 0.6
    assert 0 < attrs["peak_memory_mb"] < 4000


def test_untrained_batch_norm_averages_its_first_batches_then_resumes_the_count():
    """A from-scratch BatchNorm's running statistics are the plain average of the batches seen
    (not 0.9^k of PyTorch's made-up mean 0 / variance 1) until the usual window, and a model
    loaded from a checkpoint counts on from where it stopped."""
    from hpo.job.vision import average_first_batch_norm_stats

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.BatchNorm1d(3))
    average_first_batch_norm_stats(model)
    model.train()
    batches = [torch.randn(16, 3) * 2 + 5 for _ in range(4)]
    for batch in batches:
        model(batch)
    expected = torch.stack([b.mean(0) for b in batches]).mean(0)
    assert torch.allclose(model[0].running_mean, expected, atol=1e-5)

    resumed = torch.nn.Sequential(torch.nn.BatchNorm1d(3))
    average_first_batch_norm_stats(resumed)
    resumed.load_state_dict(model.state_dict())
    resumed.train()
    resumed(torch.randn(16, 3))
    assert resumed[0].momentum == pytest.approx(1 / 5)  # the 5th batch, not a first one

    model.eval()
    model(batches[0])  # evaluation neither counts nor changes the momentum
    assert model[0]._hpo_batches == 4
    model.train()
    for _ in range(10):
        model(torch.randn(16, 3))
    assert model[0].momentum == 0.1 and not model[0]._forward_pre_hooks  # the usual EMA
