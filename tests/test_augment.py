"""Augmentation as a searchable choice (params ``augment``, ``augment_magnitude``): each kind
does what it says to the training split alone, the same images for the same seed; the old
boolean ``task.augment`` still means flip and crop; a study may search both params."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2

from hpo.errors import SpecError
from hpo.job import JobContext, run_job
from hpo.job.image_data import Augmentation, augmentation, image_datasets, train_transform
from hpo.job.image_source import load_images
from hpo.job.trial import FixedTrial
from hpo.spec import AUGMENTATIONS, HYPERPARAMETERS, TaskSpec, parse_spec


def _digits(**overrides) -> TaskSpec:
    fields = dict(kind="image_classification", model="resnet18", dataset={"name": "digits"},
                  image_size=16, max_samples=100)
    fields.update(overrides)
    return TaskSpec(**fields)


@pytest.fixture(scope="module")
def source():
    return load_images({"name": "digits"}, {})


def _sets(source, task=None, **params):
    return image_datasets(task or _digits(), source, None, {}, params)


def _draws(dataset, seed: int, n: int = 6) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.stack([dataset[i][0] for i in range(n)])


@pytest.mark.parametrize("kind", AUGMENTATIONS)
def test_each_kind_augments_the_training_split_alone_and_a_seed_repeats_it(source, kind):
    plain_train, plain_val, _ = _sets(source, augment="none")
    train, val, ready = _sets(source, augment=kind, augment_magnitude=0.5)
    # Validation is never augmented, whatever the kind.
    assert torch.equal(torch.stack([val[i][0] for i in range(6)]),
                       torch.stack([plain_val[i][0] for i in range(6)]))
    plain = torch.stack([plain_train[i][0] for i in range(6)])
    if kind == "none":
        assert ready and torch.equal(_draws(train, 0), plain)
        return
    assert not ready
    first, again, other = _draws(train, 0), _draws(train, 0), _draws(train, 1)
    assert torch.equal(first, again)  # the same seed, the same images
    assert not torch.equal(first, other)
    assert not torch.equal(first, plain)
    assert first.shape == plain.shape


def test_flip_crop_without_magnitude_only_flips(source):
    """Magnitude 0: no padding to crop from, so each image is itself or its mirror."""
    plain_train, _, _ = _sets(source, augment="none")
    train, _, _ = _sets(source, augment="flip_crop", augment_magnitude=0.0)
    torch.manual_seed(0)
    flipped = 0
    for i in range(20):
        x, original = train[i][0], plain_train[i][0]
        assert torch.allclose(x, original, atol=1e-6) or torch.allclose(
            x, original.flip(-1), atol=1e-6)
        flipped += not torch.allclose(x, original, atol=1e-6)
    assert 3 <= flipped <= 17


def _steps(kind: str, magnitude: float, size: int = 32):
    from hpo.job.image_data import Preset

    return train_transform(Preset(crop=size, resize=size), size, size,
                           Augmentation(kind, magnitude)).transforms


@pytest.mark.parametrize("size", [16, 28, 32, 224])
def test_flip_crop_pads_an_eighth_of_the_side_at_the_default_as_before(size):
    (crop,) = [s for s in _steps("flip_crop", HYPERPARAMETERS["augment_magnitude"].default, size)
               if isinstance(s, v2.RandomCrop)]
    assert crop.padding == [size // 8] * 4
    (crop,) = [s for s in _steps("flip_crop", 0.6, 32) if isinstance(s, v2.RandomCrop)]
    assert crop.padding == [8] * 4


def test_randaugment_magnitude_and_trivialaugment():
    (ra,) = [s for s in _steps("randaugment", 0.3) if isinstance(s, v2.RandAugment)]
    assert (ra.magnitude, ra.num_ops, ra.num_magnitude_bins) == (9, 2, 31)
    (ra,) = [s for s in _steps("randaugment", 0.9) if isinstance(s, v2.RandAugment)]
    assert ra.magnitude == 27
    steps = _steps("trivialaugment", 0.9)
    assert any(isinstance(s, v2.TrivialAugmentWide) for s in steps)
    (crop,) = [s for s in steps if isinstance(s, v2.RandomCrop)]
    assert crop.padding == [4] * 4  # its flip and crop stay at the default


def test_randaugment_changes_images_more_at_a_higher_magnitude(source):
    """The mean change from the unaugmented image, over the same draws (seeds)."""
    plain_train, _, _ = _sets(source, task=_digits(image_size=32), augment="none")
    plain = torch.stack([plain_train[i][0] for i in range(40)])

    def change(magnitude):
        train, _, _ = _sets(source, task=_digits(image_size=32), augment="randaugment",
                            augment_magnitude=magnitude)
        return (_draws(train, 3, 40) - plain).abs().mean().item()

    assert change(0.9) > 1.2 * change(0.05)


def test_the_old_boolean_still_works(source):
    assert augmentation(_digits(), {}, source) == Augmentation("none")  # digits: off
    assert augmentation(_digits(augment=True), {}, source).kind == "flip_crop"
    assert augmentation(_digits(augment=False), {"augment": None}, source).kind == "none"
    # The param, where set, decides.
    assert augmentation(_digits(augment=False), {"augment": "randaugment"}, source).kind == (
        "randaugment")
    old, _, _ = _sets(source, task=_digits(augment=True))
    new, _, _ = _sets(source, augment="flip_crop")
    assert torch.equal(_draws(old, 5), _draws(new, 5))


def _spec(kind="image_classification", **space):
    task = {"kind": kind, "model": "resnet18", "dataset": {"name": "digits"}}
    if kind == "text_classification":
        task = {"kind": kind, "model": "bert", "dataset": {"name": "vader"}}
    space = {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}, **space}
    return parse_spec({"study": {"name": "aug"}, "task": task, "search_space": space})


def test_a_study_may_search_the_kind_and_the_magnitude():
    spec = _spec(augment={"type": "categorical", "choices": list(AUGMENTATIONS)},
                 augment_magnitude={"type": "float", "low": 0.1, "high": 0.9,
                                    "when": {"augment": ["flip_crop", "randaugment"]}})
    names = {p.name: p for p in spec.search_space}
    assert names["augment"].choices == AUGMENTATIONS
    assert names["augment_magnitude"].when == (("augment", ("flip_crop", "randaugment")),)
    with pytest.raises(SpecError, match="augment.*one of none, flip_crop"):
        _spec(augment="cutout")
    with pytest.raises(SpecError, match=r"augment_magnitude.*\[0, 1\)"):
        _spec(augment_magnitude=1.5)
    with pytest.raises(SpecError, match="augmentation is of images"):
        _spec("text_classification", augment="flip_crop")


def test_a_trial_with_randaugment_trains_the_same_for_the_same_seed():
    params = {name: hp.default for name, hp in HYPERPARAMETERS.items()}
    params.update(epochs=1, batch_size=32, augment="randaugment", augment_magnitude=0.5)
    values = []
    for _ in range(2):
        trial = FixedTrial()
        values.append(run_job(trial, _digits(), params, JobContext(cache={})))
    assert values[0] == values[1]
