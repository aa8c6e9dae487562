"""The classification metrics of every evaluation (``hpo.job.metrics``): each one is
scikit-learn's on the same predictions, and a real fit records them, on training and on
validation, at every epoch."""

from __future__ import annotations

import pytest
import torch
from sklearn import metrics as sk

from hpo.job import JobContext, run_job
from hpo.job.metrics import Tally, auroc, prefixed
from hpo.records import HISTORY_STEPS, add_to_history
from hpo.job.trial import FixedTrial
from hpo.spec import HYPERPARAMETERS, TaskSpec


def _tally(logits: torch.Tensor, labels: torch.Tensor, batch: int = 7) -> dict:
    tally = Tally(logits.shape[1], "cpu")
    for start in range(0, len(labels), batch):  # in batches, as a loader gives them
        tally.add(logits[start : start + batch], labels[start : start + batch])
    return tally.read()


def _sklearn(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    y, p = labels.numpy(), logits.argmax(dim=1).numpy()
    out = {
        "accuracy": sk.accuracy_score(y, p),
        "balanced_accuracy": sk.balanced_accuracy_score(y, p),
    }
    for name, score in (("precision", sk.precision_score), ("recall", sk.recall_score),
                        ("f1", sk.f1_score)):
        out[name] = score(y, p, average="macro", zero_division=0)
        out[f"{name}_per_class"] = list(
            score(y, p, average=None, labels=range(logits.shape[1]), zero_division=0))
    return out


@pytest.mark.parametrize("classes, skew", [(2, 0.0), (3, 0.0), (5, 2.0), (10, 0.5)])
def test_every_metric_is_scikit_learns(classes, skew):
    """Random logits, some leaning towards the true class; ``skew`` makes a few classes rare
    and some never predicted (their precision is 0, as scikit-learn's with zero_division=0)."""
    g = torch.Generator().manual_seed(classes)
    n = 203
    rates = torch.exp(-skew * torch.arange(classes, dtype=torch.float))
    labels = torch.multinomial(rates, n, replacement=True, generator=g)
    logits = torch.randn(n, classes, generator=g)
    logits[torch.arange(n), labels] += torch.rand(n, generator=g) * 2
    logits[:, -1] -= 3 * skew  # the last class is rarely predicted
    ours, theirs = _tally(logits, labels), _sklearn(logits, labels)
    for name, value in theirs.items():
        assert ours[name] == pytest.approx(value, abs=1e-12), name
    assert ours["confusion"] == sk.confusion_matrix(
        labels.numpy(), logits.argmax(dim=1).numpy(), labels=range(classes)).tolist()
    if classes == 2:
        scores = torch.softmax(logits, dim=1)[:, 1].numpy()
        assert ours["auroc"] == pytest.approx(sk.roc_auc_score(labels.numpy(), scores), abs=1e-9)
    else:
        assert "auroc" not in ours


def test_a_class_neither_held_nor_predicted_is_left_out_of_the_macro_averages():
    labels = torch.tensor([0, 0, 1, 1, 1, 0])
    logits = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 1, 0, 0]), 4).float()
    ours, theirs = _tally(logits, labels), _sklearn(logits, labels)
    for name, value in theirs.items():
        assert ours[name] == pytest.approx(value), name
    assert ours["f1"] == pytest.approx(sk.f1_score([0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 0, 0],
                                                   average="macro"))
    assert ours["f1_per_class"][2:] == [0.0, 0.0]


def test_a_confusion_matrix_is_kept_up_to_fifty_classes_and_not_by_training():
    from hpo.job.metrics import CONFUSION_CLASSES

    labels = torch.arange(60) % 60
    logits = torch.nn.functional.one_hot(labels, 60).float()
    assert "confusion" not in _tally(logits, labels)  # 60 x 60 would outgrow an attr
    labels = labels % CONFUSION_CLASSES
    logits = torch.nn.functional.one_hot(labels, CONFUSION_CLASSES).float()
    assert len(_tally(logits, labels)["confusion"]) == CONFUSION_CLASSES
    no = Tally(3, "cpu", confusion=False)
    no.add(torch.eye(3), torch.arange(3))
    assert "confusion" not in no.read()


def test_auroc_counts_ties_half_as_scikit_learn_does():
    labels = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1, 1, 0, 1])
    scores = torch.tensor([0.1, 0.4, 0.4, 0.4, 0.9, 0.1, 0.9, 0.2, 0.4, 0.2, 0.9])
    assert float(auroc(scores, labels)) == pytest.approx(sk.roc_auc_score(labels, scores))
    # As a tally sees them: logits whose difference is the score.
    logits = torch.stack([torch.zeros_like(scores), scores], dim=1)
    assert _tally(logits, labels, batch=3)["auroc"] == pytest.approx(
        sk.roc_auc_score(labels, scores))


def test_auroc_of_one_class_is_none():
    assert auroc(torch.tensor([0.2, 0.7]), torch.tensor([1, 1])) is None
    assert _tally(torch.randn(4, 2), torch.tensor([0, 0, 0, 0]))["auroc"] is None


def test_the_loss_is_its_sum_over_its_weight_and_a_read_starts_afresh():
    tally = Tally(3, "cpu")
    tally.add_loss(torch.tensor(6.0), 4)
    tally.add_loss(torch.tensor(2.0), 1)
    tally.add(torch.eye(3), torch.tensor([0, 1, 1]))
    first = tally.read()
    assert first["loss"] == pytest.approx(8 / 5) and first["accuracy"] == pytest.approx(2 / 3)
    tally.add(torch.eye(3), torch.tensor([0, 1, 2]))
    second = tally.read()
    assert second["loss"] is None and second["accuracy"] == 1.0
    nothing = tally.read()
    assert nothing["accuracy"] is None and nothing["f1"] is None


@pytest.mark.parametrize("device", [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device")]),
])
def test_the_tally_stays_on_the_device(device):
    tally = Tally(2, device)
    logits = torch.randn(9, 2, device=device)
    tally.add(logits, torch.tensor([0, 1] * 4 + [1], device=device))
    assert tally.confusion.device.type == device and tally.scores[0].device.type == device
    assert tally.read()["accuracy"] >= 0


def _params(**overrides):
    params = {name: hp.default for name, hp in HYPERPARAMETERS.items()}
    params.update(lr=1e-3, batch_size=32, epochs=2, optimizer="adamw")
    params.update(overrides)
    return params


def _digits(**overrides) -> TaskSpec:
    fields = dict(kind="image_classification", model="resnet18", dataset={"name": "digits"},
                  image_size=16, max_samples=200)
    fields.update(overrides)
    return TaskSpec(**fields)


SCALARS = ["loss", "accuracy", "balanced_accuracy", "precision", "recall", "f1"]


def test_a_real_fit_records_train_and_val_metrics_each_epoch(monkeypatch):
    """Digits, 2 epochs: the ``metrics`` attr has both epochs' train and val numbers; the val
    numbers are scikit-learn's on the model's own val predictions after the last epoch, the
    train numbers those of the batches as they trained (no second pass)."""
    import hpo.job.fit as fit_module

    kept = {}
    real = fit_module.evaluate_or_fail

    def keep(trial, record, model, loader, *args, **kwargs):
        with torch.no_grad():
            model.eval()
            xs, ys = zip(*loader)
            kept["logits"] = model(torch.cat(xs)).float()
            kept["labels"] = torch.cat(ys)
        return real(trial, record, model, loader, *args, **kwargs)

    monkeypatch.setattr(fit_module, "evaluate_or_fail", keep)
    real_step = fit_module.train_step
    seen = {"examples": 0}

    def count(model, inputs, labels, *args, **kwargs):
        seen["examples"] += len(labels)
        return real_step(model, inputs, labels, *args, **kwargs)

    monkeypatch.setattr(fit_module, "train_step", count)
    trial = FixedTrial()
    run_job(trial, _digits(), _params(epochs=2), JobContext(cache={}))
    history = trial.attrs["metrics"]
    assert sorted(history) == ["1", "2"]
    for step in history.values():
        for name in SCALARS:
            assert 0 <= step[f"train_{name}"] and 0 <= step[f"val_{name}"]
        assert "val_auroc" not in step  # ten classes
        assert not any(k.endswith("_per_class") for k in step)
    assert history["2"]["val_loss"] == pytest.approx(trial.reports[2], rel=1e-5)
    theirs = _sklearn(kept["logits"], kept["labels"])
    for name in ("accuracy", "balanced_accuracy", "precision", "recall", "f1"):
        assert history["2"][f"val_{name}"] == pytest.approx(theirs[name], abs=1e-5), name
    # 160 training examples in 5 batches of 32 an epoch; training counts each epoch's own.
    assert seen["examples"] == 2 * 160
    best = trial.attrs["best_metrics"]
    assert len(best["val_f1_per_class"]) == 10 and len(best["train_recall_per_class"]) == 10
    # The validation confusion matrix of the best evaluation (training keeps none: small attrs).
    assert sum(map(sum, best["val_confusion"])) == 40 and "train_confusion" not in best
    assert not any("confusion" in k for k in history["2"])
    matrix = best["val_confusion"]
    assert sum(matrix[i][i] for i in range(10)) / 40 == pytest.approx(best["val_accuracy"])
    assert [matrix[i][i] / sum(matrix[i]) if sum(matrix[i]) else 0.0 for i in range(10)] == \
        pytest.approx(best["val_recall_per_class"], abs=1e-5)
    assert best["val_accuracy"] == pytest.approx(trial.attrs["val_accuracy"], abs=1e-6)
    assert best == {**best, **history[str(trial.attrs["best_epoch"])]}


def test_training_counts_each_example_it_trained_on_once_per_evaluation(monkeypatch):
    """The train confusion matrix of an evaluation sums to the examples trained since the
    one before: 2 evaluations an epoch of 5 steps of 32."""
    import hpo.job.metrics as metrics_module

    totals = []
    real = metrics_module.from_confusion

    def keep(matrix):
        totals.append(sum(map(sum, matrix)))
        return real(matrix)

    monkeypatch.setattr(metrics_module, "from_confusion", keep)
    trial = FixedTrial()
    run_job(trial, _digits(evals_per_epoch=2), _params(epochs=1), JobContext(cache={}))
    # Each evaluation: the 40 val examples, then training's batches since the last one
    # (batches 1-2, then 3-5, of 32).
    assert totals == [40, 64, 40, 96]
    assert sorted(trial.attrs["metrics"]) == ["1", "2"]


def test_a_final_fit_records_train_metrics_each_epoch_and_test_metrics():
    trial = FixedTrial()
    run_job(trial, _digits(test_fraction=0.2), _params(epochs=2),
            JobContext(cache={}, final=True))
    assert sorted(trial.attrs["metrics"]) == ["1", "2"]
    assert "train_f1" in trial.attrs["metrics"]["2"]
    test = trial.attrs["test_metrics"]
    assert test["test_accuracy"] == pytest.approx(trial.attrs["test_accuracy"], abs=1e-6)
    assert len(test["test_precision_per_class"]) == 10
    assert len(test["test_confusion"]) == 10 and trial.attrs["test_classes"][3] == "3"
    assert sum(map(sum, test["test_confusion"])) == trial.attrs["test_examples"]


def test_two_classes_record_auroc_on_train_and_val(tmp_path):
    """A two-class image folder: every evaluation has ``train_auroc`` and ``val_auroc``."""
    from test_class_weights import write_imbalanced_folder

    write_imbalanced_folder(tmp_path / "train", {"common": 40, "rare": 24}, seed=0)
    write_imbalanced_folder(tmp_path / "val", {"common": 12, "rare": 12}, seed=1)
    task = TaskSpec(kind="image_classification", model="resnet18",
                    dataset={"image_folder": str(tmp_path)}, image_size=16, augment=False)
    trial = FixedTrial()
    run_job(trial, task, _params(epochs=2, batch_size=16), JobContext(cache={}))
    for step in trial.attrs["metrics"].values():
        assert 0 <= step["train_auroc"] <= 1 and 0 <= step["val_auroc"] <= 1
    assert len(trial.attrs["best_metrics"]["val_f1_per_class"]) == 2


def _rank_reads(rank: int, world: int, store: str, out: str) -> None:
    """Rank ``rank`` of ``world`` (gloo on the CPU): its part of the data into a tally, read
    over the ranks."""
    import json

    import torch.distributed as dist

    from hpo.job.ranks import Ranks

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(0)
        logits, labels = torch.randn(31, 2, generator=g), torch.randint(0, 2, (31,), generator=g)
        part = Ranks(rank, world).shard(31)
        tally = Tally(2, "cpu")
        tally.add(logits[part], labels[part])
        tally.add_loss(torch.tensor(float(part.stop - part.start)), part.stop - part.start)
        metrics = tally.read(Ranks(rank, world))
        with open(f"{out}.{rank}", "w") as f:
            json.dump(metrics, f)
        dist.barrier()  # leave together: a rank torn down while another talks may abort
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_read_the_metrics_of_all_their_examples(tmp_path):
    """Two gloo ranks, 16 and 15 examples: each reads the metrics (AUROC included) of all 31,
    as one tally of them all does."""
    import json

    import torch.multiprocessing as mp

    mp.spawn(_rank_reads, args=(2, str(tmp_path / "store"), str(tmp_path / "out")), nprocs=2)
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(31, 2, generator=g), torch.randint(0, 2, (31,), generator=g)
    alone = _tally(logits, labels)
    for rank in (0, 1):
        ranked = json.loads((tmp_path / f"out.{rank}").read_text())
        assert ranked["loss"] == 1.0
        for name in ("accuracy", "f1", "auroc", "recall_per_class"):
            assert ranked[name] == pytest.approx(alone[name]), name


@pytest.mark.slow
def test_a_gang_of_two_ranks_records_the_metrics_one_rank_records():
    """Two gloo ranks of one trial (the gang harness of test_gang): the reads at each
    evaluation line up on both ranks (no rank waits), and each epoch's train and val metrics
    match one rank's to a flipped argmax or two, the losses to float noise. (That a read
    counts every rank's examples is ``test_two_ranks_read_the_metrics_of_all_their_examples``.)"""
    from test_gang import EQUAL, _params, _run, _task

    task, params = _task(**EQUAL), _params(batch_size=64, epochs=2)
    _, alone = _run(1, task, params)
    _, gang = _run(2, task, params)
    assert sorted(gang.attrs["metrics"]) == sorted(alone.attrs["metrics"]) == ["1", "2"]
    for step, numbers in alone.attrs["metrics"].items():
        for name, value in numbers.items():
            tolerance = 1e-4 if name.endswith("_loss") else 0.02
            assert gang.attrs["metrics"][step][name] == pytest.approx(value, abs=tolerance), (
                step, name)


def test_the_history_stays_small_enough_for_one_database_value():
    """1,000 evaluations: the attr keeps at most ``HISTORY_STEPS``, spread over the whole fit
    (the first and the latest among them), and with two classes' metrics, every number at
    full length, it fits MySQL's TEXT (64 KiB) with room to spare."""
    import json

    numbers = {**prefixed("train", _tally(torch.randn(50, 2), torch.randint(0, 2, (50,)))),
               **prefixed("val", _tally(torch.randn(50, 2), torch.randint(0, 2, (50,))))}
    numbers = {k: (v if isinstance(v, list) else 0.123456789) for k, v in numbers.items()}
    history: dict = {}
    stride = 1
    for step in range(1, 1001):
        stride = add_to_history(history, step, numbers, stride)
        assert len(history) <= HISTORY_STEPS
        if step <= HISTORY_STEPS:
            assert len(history) == step
    kept = [int(s) for s in history]
    # Every 16th of the 1,000 (62 of them), the first and the latest: even over the fit.
    assert kept == [1] + list(range(16, 1001, 16)) + [1000]
    assert not any(k.endswith("_per_class") for k in history["1"])
    assert len(json.dumps(history)) < 0.8 * 65535
