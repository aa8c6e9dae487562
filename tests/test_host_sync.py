"""A training step never reads the device: losses, counts and predictions stay there until an
evaluation point (issue #30). On the CPU every read of a tensor's value into Python (``item``,
``tolist``, ``float(t)``, ``bool(t)``, ``.cpu()``, ``.numpy()``, ...) is counted between two
evaluation points; on a GPU, CUDA's sync debug mode turns any synchronisation there into an
error. Both run hpo's own job (resnet18 on digits, data on the device), two evaluations an
epoch, over two epochs."""

from __future__ import annotations

import traceback

import pytest
import torch
from torch.overrides import TorchFunctionMode

import hpo.job.fit as fit_module
from hpo.job import JobContext, run_job
from hpo.job.resident import DeviceBatches
from hpo.job.trial import FixedTrial
from hpo.spec import HYPERPARAMETERS, TaskSpec

READS = {"item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__",
         "__complex__", "__array__"}
"""The tensor methods that bring a value to the host."""


class StepWatch(TorchFunctionMode):
    """Counts the host reads made while the fit loop trains, evaluation points left out."""

    def __init__(self, sync_debug: bool) -> None:
        super().__init__()
        self.sync_debug = sync_debug
        self.training = False
        self.steps = 0
        self.reads: list[str] = []
        self.evaluation_reads = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in READS:
            if self.training:
                here = [f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno} {f.name}"
                        for f in traceback.extract_stack()[:-1] if "/hpo/" in f.filename]
                self.reads.append(f"{func.__name__} at {' <- '.join(reversed(here))}")
            else:
                self.evaluation_reads += 1
        return func(*args, **(kwargs or {}))

    def set_training(self, on: bool) -> None:
        self.training = on
        if self.sync_debug:
            torch.cuda.set_sync_debug_mode("error" if on else "default")

    def patch(self, monkeypatch) -> None:
        """Training starts with the first step; each evaluation point (``look``, then
        ``evaluate_and_report``) pauses it, and the end of the epochs ends it."""
        def stepping(real):
            def step(*args, **kwargs):
                self.steps += 1
                self.set_training(True)
                return real(*args, **kwargs)
            return step

        def pausing(real):
            def evaluation(*args, **kwargs):
                self.set_training(False)
                try:
                    return real(*args, **kwargs)
                finally:
                    self.set_training(True)
            return evaluation

        def ending(real):
            def epochs(*args, **kwargs):
                try:
                    return real(*args, **kwargs)
                finally:
                    self.set_training(False)
            return epochs

        monkeypatch.setattr(fit_module, "train_step", stepping(fit_module.train_step))
        monkeypatch.setattr(fit_module, "look", pausing(fit_module.look))
        monkeypatch.setattr(fit_module, "evaluate_and_report",
                            pausing(fit_module.evaluate_and_report))
        monkeypatch.setattr(fit_module, "train_epochs", ending(fit_module.train_epochs))


def _train(monkeypatch, sync_debug: bool) -> tuple[StepWatch, FixedTrial]:
    loaders = []
    real_loaders = fit_module.start_fit

    def start(*args, **kwargs):
        state = real_loaders(*args, **kwargs)
        loaders.append(state.train_loader)
        return state

    monkeypatch.setattr(fit_module, "start_fit", start)
    task = TaskSpec(kind="image_classification", model="resnet18", dataset={"name": "digits"},
                    image_size=16, max_samples=160, evals_per_epoch=2)
    params = {name: hp.default for name, hp in HYPERPARAMETERS.items()}
    params.update(lr=1e-3, batch_size=32, epochs=2, optimizer="adamw", grad_clip=1.0)
    watch = StepWatch(sync_debug)
    watch.patch(monkeypatch)
    trial = FixedTrial()
    try:
        with watch:
            run_job(trial, task, params, JobContext(cache={}))
    finally:
        if sync_debug:
            torch.cuda.set_sync_debug_mode("default")
    assert isinstance(loaders[0], DeviceBatches)  # the data lives on the device
    return watch, trial


def test_a_training_step_reads_nothing_back_from_the_device(monkeypatch):
    watch, trial = _train(monkeypatch, sync_debug=False)
    assert watch.steps == 2 * (128 // 32)  # 128 training examples: 4 steps an epoch
    assert watch.reads == [], "\n".join(watch.reads)  # zero reads per step
    assert watch.evaluation_reads > 0  # the counter sees the reads where they belong
    assert sorted(trial.reports) == [1, 2, 3, 4]
    metrics = trial.attrs["metrics"]
    assert metrics["4"]["train_loss"] > 0 and metrics["4"]["train_accuracy"] is not None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_training_step_on_cuda_never_synchronizes(monkeypatch):
    """CUDA's sync debug mode raises on any synchronisation (a read, a ``bincount``, a
    pageable copy) made between two evaluation points."""
    watch, trial = _train(monkeypatch, sync_debug=True)
    assert watch.reads == [], "\n".join(watch.reads)
    assert sorted(trial.reports) == [1, 2, 3, 4]


@pytest.mark.parametrize("skip", [0, 3])
def test_batches_on_the_device_are_the_data_loaders_in_its_order(skip):
    """Digits on the device are batched as the DataLoader batched them from the same sampler
    (the same examples, the same order: a study's trials are unchanged), an attempt resumed
    after ``skip`` batches of the epoch included, and each rank of two takes its part of each
    global batch as ``RankBatches`` gives it."""
    from torch.utils.data import DataLoader

    from hpo.job.data import EpochShuffle
    from hpo.job.image_data import image_datasets
    from hpo.job.image_source import load_images
    from hpo.job.ranks import RankBatches, Ranks
    from hpo.job.resident import resident

    task = TaskSpec(kind="image_classification", model="resnet18", dataset={"name": "digits"},
                    image_size=16, max_samples=300)
    cache: dict = {}
    train, val, ready = image_datasets(task, load_images(task.dataset, cache), None, cache)
    assert ready
    data, rows = resident(train, torch.device("cpu"))

    def order():
        sampler = EpochShuffle(len(train), seed=5)
        sampler.set_epoch(2, skip * 32)
        return sampler

    loader = list(DataLoader(train, 32, sampler=order(), drop_last=True))
    batches = list(DeviceBatches(data, rows, 32, order=order()))
    assert len(batches) == len(loader) == 240 // 32 - skip
    for (x, y), (dx, dy) in zip(loader, batches):
        assert torch.equal(x, dx) and torch.equal(y, dy)
    rank = Ranks(rank=1, world=2)
    theirs = list(DataLoader(train, batch_sampler=RankBatches(order(), 32, rank)))
    mine = list(DeviceBatches(data, rows, 32, order=order(), part=rank.shard(32)))
    assert len(mine) == len(theirs)
    assert all(torch.equal(x, dx) and torch.equal(y, dy)
               for (x, y), (dx, dy) in zip(theirs, mine))
    # The worker's cache keeps the device copy: a later trial gathers from the same tensors.
    again, _, _ = image_datasets(task, load_images(task.dataset, cache), None, cache)
    assert resident(again, torch.device("cpu"))[0] is data
