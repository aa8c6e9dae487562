"""The end of a final fit (``hpo retrain``): the model alone to the checkpoint path, then the
test split evaluated once (``final_test``, called by ``hpo.job.fit.fit``)."""

from __future__ import annotations

import logging

from hpo.job.checkpoint import save_model
from hpo.job.data import dataset_size
from hpo.job.loaders import eval_loader
from hpo.job.metrics import prefixed
from hpo.job.state import FitState
from hpo.job.step import evaluate_or_fail
from hpo.job.trial import Trial
from hpo.records import CHECKPOINT_ATTR

log = logging.getLogger(__name__)


def final_test(state: FitState, trial: Trial, train_loss: float) -> None:
    """The end of a final fit: the model alone to the checkpoint path (nothing to resume),
    then the test split's loss and accuracy, as attrs, and its every metric (per class and
    the confusion matrix included) in ``test_metrics``, with the class names in
    ``test_classes``."""
    setup, progress = state.setup, state.progress
    if state.checkpoint is not None:
        save_model(state.checkpoint, model=state.model, epoch=progress.epochs_run)
        trial.set_attrs({CHECKPOINT_ATTR: str(state.checkpoint)})
    trial.set_attrs(
        {
            "train_examples": dataset_size(setup.train_set),
            "train_loss": train_loss,
            "test_split": setup.test_about,
        }
    )
    if setup.test_set is None or dataset_size(setup.test_set) == 0:
        return
    loader = eval_loader(
        setup, setup.test_set, state.task, state.dev, state.batch_size, state.ranks
    )
    test, _ = evaluate_or_fail(
        trial,
        lambda **attrs: trial.set_attrs(attrs),
        state.net,
        loader,
        state.dev,
        progress.micro_batch,
        state.channels_last,
        state.ranks,
        num_classes=setup.num_classes,
        weight=state.weight,
    )
    test_loss, accuracy = test["loss"], test["accuracy"]
    log.info(
        "final fit: test loss %.4f, test accuracy %.3f on %d examples",
        test_loss,
        accuracy,
        dataset_size(setup.test_set),
    )
    trial.set_attrs(
        {
            "test_loss": test_loss,
            "test_accuracy": accuracy,
            "test_examples": dataset_size(setup.test_set),
            **(
                {"test_balanced_accuracy": test["balanced_accuracy"]}
                if state.weight is not None
                else {}
            ),
            "test_metrics": prefixed("test", test),
            "test_classes": list(setup.class_names) or [str(i) for i in range(setup.num_classes)],
        }
    )
