"""The param ``imbalance``: the remedy for imbalanced classes as a searchable choice (none,
class weights in the loss, a balanced sampler). What a user would check: the sampler draws
every class about equally often, the same draws for the same seed and epoch; each remedy
trains as it says; whichever one a trial trains with, its val loss is weighted alike, so the
trials of a study that searches it compare."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hpo.job.fit as fit_module
from hpo.errors import SpecError
from hpo.job import JobContext, run_job
from hpo.job.data import EpochBalanced, EpochShuffle
from hpo.job.loss import ClassWeighted, Remedy, remedy
from hpo.job.trial import FixedTrial
from hpo.spec import HYPERPARAMETERS, IMBALANCE_REMEDIES, TaskSpec, parse_spec

LABELS = np.array([0] * 900 + [1] * 90 + [2] * 10)


def test_the_sampler_draws_every_class_about_equally_often():
    """900 / 90 / 10 examples: each epoch's 1,000 draws give each class a third, within 4
    standard deviations of the binomial (±60); over 5 epochs within ±2%."""
    sampler = EpochBalanced(LABELS, seed=3)
    totals = np.zeros(3)
    for epoch in range(1, 6):
        sampler.set_epoch(epoch)
        drawn = list(sampler)
        assert len(drawn) == len(sampler) == 1000
        counts = np.bincount(LABELS[drawn], minlength=3)
        assert np.all(np.abs(counts - 1000 / 3) < 60), counts
        totals += counts
    assert np.all(np.abs(totals / totals.sum() - 1 / 3) < 0.02), totals
    # The rare class's 10 examples are drawn again and again; the common one's some not at all.
    assert len(set(drawn) & set(range(990, 1000))) == 10


def test_the_sampler_repeats_for_a_seed_and_epoch_and_resumes_inside_one():
    a, b, other = EpochBalanced(LABELS, 3), EpochBalanced(LABELS, 3), EpochBalanced(LABELS, 4)
    for s in (a, b, other):
        s.set_epoch(2)
    first = list(a)
    assert first == list(b) and first != list(other)
    a.set_epoch(3)
    assert list(a) != first
    b.set_epoch(2, skip=64)  # an attempt resumed after 64 examples of epoch 2
    assert list(b) == first[64:]
    keyed = EpochBalanced(LABELS, 3, keyed=True)
    keyed.set_epoch(2)
    assert list(keyed) == [i + 2 * 1000 for i in first]


def test_each_remedy_and_what_it_weighs():
    assert remedy(None, None) == Remedy(None, weighted=True, sampler=False)
    assert remedy([1, 2], None) == Remedy([1, 2], weighted=True, sampler=False)
    assert remedy(None, "none") == Remedy("balanced", weighted=False, sampler=False)
    assert remedy(None, "class_weights") == Remedy("balanced", weighted=True, sampler=False)
    assert remedy({"rare": 3.0}, "class_weights").class_weights == {"rare": 3.0}
    assert remedy(None, "sampler") == Remedy("balanced", weighted=False, sampler=True)
    with pytest.raises(ValueError, match="imbalance"):
        remedy(None, "oversample")


def test_a_study_may_search_the_remedy():
    task = {"kind": "image_classification", "model": "resnet18", "dataset": {"name": "digits"}}
    spec = parse_spec({"study": {"name": "imb"}, "task": task, "search_space": {
        "imbalance": {"type": "categorical", "choices": list(IMBALANCE_REMEDIES)}}})
    (param,) = spec.search_space
    assert param.name == "imbalance" and param.choices == IMBALANCE_REMEDIES
    with pytest.raises(SpecError, match="imbalance.*one of none, class_weights, sampler"):
        parse_spec({"study": {"name": "imb"}, "task": task, "search_space": {
            "lr": {"type": "float", "low": 1e-4, "high": 1e-2}, "imbalance": "smote"}})


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from test_class_weights import write_imbalanced_folder

    root = tmp_path_factory.mktemp("imbalanced")
    write_imbalanced_folder(root / "train", {"common": 90, "rare": 10}, seed=0)
    write_imbalanced_folder(root / "val", {"common": 20, "rare": 20}, seed=1)
    return root


@pytest.mark.parametrize("imbalance", IMBALANCE_REMEDIES)
def test_a_trial_trains_with_its_remedy_and_weighs_its_val_loss_alike(folder, monkeypatch,
                                                                      imbalance):
    """90 common and 10 rare training images, 2 epochs of 5 batches of 20: the sampler's
    batches are about half rare, the others a tenth; only ``class_weights`` weighs the
    training loss; every remedy weighs the val loss by the balanced weights."""
    states, seen = [], []
    real_start, real_step = fit_module.start_fit, fit_module.train_step

    def keep_state(*args, **kwargs):
        states.append(real_start(*args, **kwargs))
        return states[-1]

    def count(model, inputs, labels, *args, **kwargs):
        seen.append(labels.clone())
        return real_step(model, inputs, labels, *args, **kwargs)

    monkeypatch.setattr(fit_module, "start_fit", keep_state)
    monkeypatch.setattr(fit_module, "train_step", count)
    task = TaskSpec(kind="image_classification", model="resnet18",
                    dataset={"image_folder": str(folder)}, image_size=16, augment=False)
    params = {name: hp.default for name, hp in HYPERPARAMETERS.items()}
    params.update(epochs=2, batch_size=20, lr=1e-2, imbalance=imbalance)
    trial = FixedTrial()
    run_job(trial, task, params, JobContext(cache={}))
    (state,) = states
    rare = torch.cat(seen).float().mean().item()  # "rare" is class 1
    if imbalance == "sampler":
        assert isinstance(state.order, EpochBalanced) and 0.35 <= rare <= 0.65, rare
    else:
        assert type(state.order) is EpochShuffle and rare == pytest.approx(0.1, abs=0.02)
    assert isinstance(state.criterion, ClassWeighted) == (imbalance == "class_weights")
    # The val loss of every remedy is weighted alike: by the balanced weights.
    assert trial.attrs["class_weights"] == {"common": pytest.approx(100 / 180),
                                            "rare": pytest.approx(100 / 20)}
    assert state.weight is not None and "val_balanced_accuracy" in trial.attrs


def test_without_the_param_the_task_decides_as_before(folder, monkeypatch):
    task = TaskSpec(kind="image_classification", model="resnet18",
                    dataset={"image_folder": str(folder)}, image_size=16, augment=False)
    params = {name: hp.default for name, hp in HYPERPARAMETERS.items()}
    params.update(epochs=1, batch_size=20)
    assert params["imbalance"] is None
    trial = FixedTrial()
    run_job(trial, task, params, JobContext(cache={}))
    assert "class_weights" not in trial.attrs and "val_balanced_accuracy" not in trial.attrs


def test_the_shipped_imbalanced_spec_thins_its_classes_reproducibly():
    """``search_spaces/digits_imbalanced.yaml``: the trials' examples (train + val) hold
    round(0.1 x n) of the 3s, 5s and 8s left after the test hold-out and every example of the
    other digits; the same draw each time and in the final fit; another thin_seed draws
    other examples, as many; the test split keeps every class whole (35 to 37 each)."""
    from dataclasses import replace

    from conftest import ROOT

    from hpo.job.data import heldout_test_indices
    from hpo.job.errors import JobSetupError
    from hpo.job.image_data import final_image_datasets, image_datasets
    from hpo.job.image_source import load_images
    from hpo.spec import load_spec

    task = load_spec(ROOT / "search_spaces" / "digits_imbalanced.yaml").task
    assert task.thin_classes == {"3": 0.1, "5": 0.1, "8": 0.1} and task.thin_seed == 0
    cache: dict = {}
    source = load_images(task.dataset, cache)
    labels = source.train_labels
    rest, test = heldout_test_indices(labels, task.test_fraction, task.seed)
    before = np.bincount(labels[rest], minlength=10)

    def seen(t) -> np.ndarray:  # the indices the trials train and validate on
        train, val = image_datasets(t, source, None, cache)[:2]
        return np.sort(np.concatenate([train.indices, val.indices]))

    first = seen(task)
    counts = np.bincount(labels[first], minlength=10)
    thinned = {int(c) for c in task.thin_classes}
    assert counts.tolist() == [round(0.1 * n) if c in thinned else n
                               for c, n in enumerate(before)]
    assert counts[3] == 15 and counts[0] == before[0]  # 146 3s left: 15 kept
    assert np.array_equal(seen(task), first)  # reproducible
    assert not np.intersect1d(first, test).size  # the test split stays out
    final_train, final_test = final_image_datasets(task, source, None, cache)[:2]
    assert np.array_equal(np.sort(final_train.indices), first)  # retrain: the same examples
    assert np.bincount(labels[final_test.indices], minlength=10).min() >= 35
    other = seen(replace(task, thin_seed=1))
    assert np.bincount(labels[other], minlength=10).tolist() == counts.tolist()
    assert not np.array_equal(other, first)
    with pytest.raises(JobSetupError, match="thin_classes: no class 'ten'; the classes are 0, 1"):
        seen(replace(task, thin_classes={"ten": 0.5}))
