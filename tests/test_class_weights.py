"""``task.class_weights``: the loss weighted by class, for imbalanced data.

What a user would check: ``balanced`` gives scikit-learn's weights from the training split;
a batch cut into micro-batches (after an out-of-memory error) still trains on the batch's
weighted mean; the val loss is weighted as training is; on an imbalanced image folder the
rare class is found more often than without weights, and the trial shows the weights and the
balanced accuracy; bad weights are one line, exit 2.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

import hpo.job.step as step_module
from hpo.errors import SpecError
from hpo.job import JobContext, JobSetupError
from hpo.job.device import pick_device
from hpo.job.loss import ClassWeighted, class_weights
from hpo.spec import TaskSpec, parse_spec

from conftest import run_hpo
from processes import one_line_error
from test_job import make_params, run_one
from test_job_text import tiny_bert  # noqa: F401 - fixture

NAMES = ["common", "rare"]


def write_imbalanced_folder(root, counts: dict[str, int], seed: int, side: int = 8) -> None:
    """PNGs of two overlapping classes: grey squares whose brightness is drawn around 0.4
    (``common``) or 0.6 (``rare``), so that where they overlap the class prior decides."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    centre = {"common": 0.4, "rare": 0.6}
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            level = rng.normal(centre[name], 0.08)
            pixels = np.clip(level + rng.normal(0, 0.05, (side, side, 3)), 0, 1) * 255
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")


# --------------------------------------------------------------------------------------------
# The weights.


def test_balanced_weights_are_scikit_learns():
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.array([0] * 90 + [1] * 10 + [2] * 20)
    names = ["a", "b", "c"]
    ours = class_weights("balanced", labels, names)
    theirs = compute_class_weight("balanced", classes=np.arange(3), y=labels)
    assert list(ours) == names and list(ours.values()) == pytest.approx(theirs.tolist())
    assert ours["b"] == pytest.approx(120 / (3 * 10))
    assert class_weights(None, labels, names) is None
    assert class_weights([1, 2, 3], labels, names) == {"a": 1.0, "b": 2.0, "c": 3.0}
    assert class_weights({"b": 4}, labels, names) == {"a": 1.0, "b": 4.0, "c": 1.0}
    with pytest.raises(JobSetupError, match=r"^class_weights: 2 weights for 3 classes "
                                            r"\(a, b, c\)$"):
        class_weights([1, 2], labels, names)
    with pytest.raises(JobSetupError, match=r"^class_weights: no class 'd'; the classes are "
                                            r"a, b, c$"):
        class_weights({"d": 2}, labels, names)
    with pytest.raises(JobSetupError, match=r"class 'c' has no training examples"):
        class_weights("balanced", labels[labels < 2], names)


def test_the_spec_key():
    def task(value):
        raw = {"study": {"name": "s"},
               "task": {"kind": "image_classification", "model": "resnet18",
                        "dataset": {"name": "digits"}, "class_weights": value},
               "search_space": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2}}}
        spec = parse_spec(raw, source="s.yaml", check_environment=False)
        assert parse_spec(spec.to_dict(), check_environment=False) == spec  # as stored
        return spec

    assert task("balanced").task.class_weights == "balanced"
    assert task([1, 2.5]).task.class_weights == [1.0, 2.5]
    assert task({0: 2, "1": 3}).task.class_weights == {"0": 2.0, "1": 3.0}  # YAML's 0 is 0
    for unset in ("none", None):  # not written to the stored spec: as before the key existed
        assert "class_weights" not in task(unset).to_dict()["task"]
    for value, message in [
        ([1, -1], r"task.class_weights: expected a number > 0, got -1$"),
        ({"rare": 0}, r"task.class_weights.rare: expected a number > 0, got 0$"),
        ([2], r"task.class_weights: a list has one weight per class \(2 or more\), got 1$"),
        ("equal", r"task.class_weights: expected none, balanced, a list of weights > 0 \(one "
                  r"per class\) or a mapping class name -> weight > 0, got 'equal'$"),
    ]:
        with pytest.raises(SpecError, match="^s.yaml: " + message):
            task(value)


@pytest.mark.slow
def test_bad_weights_are_one_line_through_hpo_create(tmp_path):
    """Their form when the spec is read; their length and class names against the image
    folder (or digits' ten classes) by preflight, before a study is written."""
    write_imbalanced_folder(tmp_path / "images", {"common": 3, "rare": 2}, seed=0)
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    folder = {"image_folder": str(tmp_path / "images")}
    for value, dataset, words in [
        ([1, 2, 3], folder, ["task.class_weights:", "3 weights for 2 classes (common, rare)"]),
        ({"rar": 5}, folder, ["task.class_weights:",
                              "no class 'rar'; the classes are common, rare"]),
        ({"rare": -5}, folder, ["task.class_weights.rare:", "expected a number > 0, got -5"]),
        ([1, 2, 3], {"name": "digits"}, ["task.class_weights:", "3 weights for 10 classes"]),
        ({"10": 2}, {"name": "digits"}, ["task.class_weights:", "no class '10'"]),
    ]:
        spec = tmp_path / "bad.yaml"
        spec.write_text(yaml.safe_dump({
            "task": {"kind": "image_classification", "model": "resnet18",
                     "dataset": dataset, "class_weights": value},
            "search_space": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2}}}))
        one_line_error(run_hpo("create", str(spec), "--storage", url, cwd=tmp_path), spec,
                       *words)


# --------------------------------------------------------------------------------------------
# The loss of a batch, whole or in micro-batches, and of a validation set.


def _linear_step(labels, micro_batch, criterion):
    """One SGD step of a fixed linear classifier on a fixed batch: the batch's training loss
    and the weights after the step."""
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 2)
    x = torch.randn(len(labels), 6)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    loss = step_module.train_step(
        model, x, labels, micro_batch, criterion, pick_device(amp=False),
        torch.amp.GradScaler("cpu", enabled=False), opt, sched, list(model.parameters()), 0.0)
    return float(loss), torch.cat([p.detach().flatten() for p in model.parameters()]), model, x


def test_micro_batches_keep_the_batchs_weighted_mean():
    """A batch of 12 (10 common, 2 rare, both rare in the first third) in 3 micro-batches of
    4 trains exactly as the whole batch: each micro-batch counts by its weight sum (6.4, 2.0
    and 2.0 of 10.4), not by its 4 of 12 examples."""
    labels = torch.tensor([1, 1, 0, 0] + [0] * 8)
    weight = torch.tensor([0.6, 5.0])
    criterion = ClassWeighted(weight)
    whole, after_whole, model, x = _linear_step(labels, 12, criterion)
    parts, after_parts, _, _ = _linear_step(labels, 4, criterion)
    torch.manual_seed(0)
    reference = torch.nn.CrossEntropyLoss(weight=weight)(torch.nn.Linear(6, 2)(x), labels)
    assert whole == pytest.approx(reference.item(), rel=1e-6)
    assert parts == pytest.approx(whole, rel=1e-6)
    assert torch.allclose(after_parts, after_whole, rtol=1e-5, atol=1e-7)
    # Counting examples instead (each micro-batch's weighted mean times 4/12) is 4% off,
    # far outside the tolerance above.
    from functools import partial

    naive, after_naive, _, _ = _linear_step(
        labels, 4, partial(torch.nn.functional.cross_entropy, weight=weight))
    assert abs(naive - whole) > 0.02 * whole
    assert not torch.allclose(after_naive, after_whole, rtol=1e-3)


def test_label_smoothing_with_class_weights_is_torchs():
    labels = torch.tensor([1, 0, 0, 0, 0, 1, 0, 0])
    weight = torch.tensor([0.7, 3.0])
    loss, _, _, x = _linear_step(labels, 3, ClassWeighted(weight, label_smoothing=0.2))
    torch.manual_seed(0)
    reference = torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=0.2)(
        torch.nn.Linear(6, 2)(x), labels)
    assert loss == pytest.approx(reference.item(), rel=1e-6)


def test_the_val_loss_is_weighted_and_the_balanced_accuracy_is_scikit_learns():
    from sklearn.metrics import balanced_accuracy_score

    torch.manual_seed(1)
    model = torch.nn.Linear(6, 3)
    x, y = torch.randn(50, 6), torch.tensor([0] * 30 + [1] * 15 + [2] * 5)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    weight = torch.tensor([0.5, 1.0, 4.0])
    dev = pick_device(amp=False)
    metrics = step_module.evaluate(model, loader, dev, 7, False, num_classes=3, weight=weight)
    loss, accuracy, balanced = (metrics[k] for k in ("loss", "accuracy", "balanced_accuracy"))
    with torch.no_grad():
        logits = model(x)
    predicted = logits.argmax(dim=1)
    assert loss == pytest.approx(torch.nn.CrossEntropyLoss(weight=weight)(logits, y).item(),
                                 rel=1e-6)
    assert accuracy == pytest.approx((predicted == y).float().mean().item())
    assert balanced == pytest.approx(balanced_accuracy_score(y, predicted))
    plain = step_module.evaluate(model, loader, dev, 7, False, num_classes=3)["loss"]
    assert plain == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(),
                                  rel=1e-6)


# --------------------------------------------------------------------------------------------
# A real imbalanced image folder.


@pytest.mark.slow
def test_balanced_weights_find_the_rare_class_of_an_imbalanced_image_folder(tmp_path):
    """90 common and 10 rare training images, a balanced val folder (30 + 30, so that val
    accuracy is the balanced accuracy). Trained alike on the same seed (resnet18's head on its
    fixed random features: a logistic regression, whose threshold the class prior moves),
    the unweighted trial calls the overlapping images common; ``balanced`` finds the rare
    ones. Measured (4 epochs): balanced accuracy 0.50 unweighted (every val image called
    common), 0.83 balanced; 0.62 and 0.83 after 5 epochs."""
    write_imbalanced_folder(tmp_path / "train", {"common": 90, "rare": 10}, seed=0)
    write_imbalanced_folder(tmp_path / "val", {"common": 30, "rare": 30}, seed=1)
    params = make_params(epochs=4, batch_size=20, lr=1e-2, freeze="head_only")
    cache: dict = {}
    trials = {}
    for weights in (None, "balanced"):
        task = TaskSpec(kind="image_classification", model="resnet18",
                        dataset={"image_folder": str(tmp_path)}, image_size=16,
                        augment=False, freeze="head_only", class_weights=weights)
        trials[weights] = run_one(task, params, JobContext(cache=cache))
    plain, weighted = trials[None].user_attrs, trials["balanced"].user_attrs
    assert "class_weights" not in plain and "val_balanced_accuracy" not in plain
    assert weighted["class_weights"] == {"common": pytest.approx(100 / (2 * 90)),
                                         "rare": pytest.approx(100 / (2 * 10))}
    assert weighted["val_balanced_accuracy"] == pytest.approx(weighted["val_accuracy"])
    assert weighted["val_balanced_accuracy"] >= plain["val_accuracy"] + 0.1, (plain, weighted)


@pytest.mark.slow
def test_text_classes_are_weighted_by_their_label_names(tiny_bert, tmp_path):
    """A csv dataset's labels are its classes' names; ``balanced`` counts the training split
    that the trial's setup holds (not the val split)."""
    from test_data_files import reviews, write_table

    from hpo.job.data import dataset_labels
    from hpo.job.text import build_text

    rows = reviews(80, 0)
    write_table(tmp_path / "train.csv", [r for r in rows if r[1] == "pos"][:28]
                + [r for r in rows if r[1] == "neg"][:12])
    task = TaskSpec(kind="text_classification", model=tiny_bert, val_fraction=0.25,
                    dataset={"csv": str(tmp_path / "train.csv"), "text": "review",
                             "label": "sentiment"})
    setup = build_text(task, make_params(), {})
    labels = dataset_labels(setup.train_set)
    assert setup.class_names == ["neg", "pos"] and len(labels) == 30
    counts = np.bincount(labels)
    assert counts.tolist() == [9, 21]  # the stratified split's training part of 12 / 28
    assert class_weights("balanced", labels, setup.class_names) == {
        "neg": pytest.approx(30 / (2 * counts[0])), "pos": pytest.approx(30 / (2 * counts[1]))}
    assert class_weights({"pos": 3}, labels, setup.class_names) == {"neg": 1.0, "pos": 3.0}
