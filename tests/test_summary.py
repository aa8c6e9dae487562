"""hpo status / best / studies as plain records and as text, read from a real database (SQLite,
PostgreSQL, MariaDB): the recorded digits study of ``sample_study``."""

from __future__ import annotations

import uuid

import optuna
from optuna.trial import TrialState
import pytest
from sample_study import OUTCOMES, build_sample_study

from hpo.records import RETRAIN_ATTR
from hpo.store.storage import open_storage
from hpo.results.summary import (best_record, format_best, format_status, format_studies, format_trial,
                         status_record, studies_records)

BEST = 3
"""The sample study's best trial: 8 epochs, its lowest validation loss at epoch 6."""


@pytest.fixture
def sample(storage_url, tmp_path) -> optuna.Study:
    return build_sample_study(storage_url, f"sample-{uuid.uuid4().hex[:8]}", tmp_path / "ck")


def test_status_counts_the_trials_and_shows_the_running_one(sample):
    record = status_record(sample)

    assert record["study"] == sample.study_name
    assert record["counts"] == {"RUNNING": 1, "COMPLETE": 5, "PRUNED": 3, "FAIL": 1,
                                "WAITING": 0}
    best = sample.trials[BEST]
    assert record["best"] == {"number": BEST, "value": best.value}
    [running] = record["running"]
    assert running["number"] == 9 and running["step"] == 2 and running["epochs_planned"] == 8
    assert running["worker"] == "node-a:w1"
    assert running["val_loss"] == pytest.approx(sample.trials[9].intermediate_values[2])
    assert 13 * 60 < running["seconds"] < 60 * 60  # it started 14 minutes ago
    assert record["retrain"] is None

    lines = format_status(record, gpus={"node-a:w1": "1"}).splitlines()
    assert lines[:4] == [
        f"study {sample.study_name}",
        "  trials   running 1  complete 5  pruned 3  fail 1",
        f"  best     #{BEST} val_loss {best.value:.4f}",
        "  running",
    ]
    assert lines[4].split()[:6] == ["#9", "epoch", "2/8", "val_loss",
                                    f"{running['val_loss']:.4f}", "node-a:w1"]
    assert lines[4].split()[6:8] == ["gpu", "1"]
    assert len(lines) == 5
    # A gang's trial, seen from another shell (no launcher to say the GPUs): its devices as it
    # recorded them.
    gang = dict(running, device="cuda:NVIDIA H200", world_size=2)
    line = format_status(dict(record, running=[gang])).splitlines()[4]
    assert "node-a:w1 cuda:NVIDIA H200 x2" in line
    assert "gpu 0,1" in format_status(dict(record, running=[gang]),
                                      gpus={"node-a:w1": "0,1"}).splitlines()[4]


def test_status_shows_the_latest_retrain(sample):
    sample.set_user_attr(RETRAIN_ATTR, {
        "trial": BEST, "epochs": 6, "train_examples": 1437, "test_loss": 0.0812,
        "test_accuracy": 0.9761, "test_examples": 360, "test_split": "test_fraction 0.2",
        "out": "/runs/retrain/digits", "retrained": "2025-01-01T00:00:00", "device": "cpu"})

    record = status_record(sample)

    assert record["retrain"]["test_accuracy"] == 0.9761
    assert format_status(record).splitlines()[-1] == (
        f"  retrain  #{BEST} for 6 epochs: test_loss 0.0812 acc 0.976 on 360 -> "
        "/runs/retrain/digits")


def test_best_is_the_lowest_complete_trial_with_its_curve(sample):
    record = best_record(sample)
    trial = sample.trials[BEST]

    assert record["study"] == sample.study_name
    assert record["number"] == BEST and record["state"] == "COMPLETE"
    assert record["value"] == trial.value == min(t.value for t in sample.trials
                                                 if t.state.name == "COMPLETE")
    assert record["params"] == trial.params
    assert list(record["intermediate_values"]) == [str(e) for e in range(1, 9)]
    assert record["user_attrs"]["best_epoch"] == 6

    text = format_best(record)
    lines = text.splitlines()
    assert lines[:2] == [f"best trial of {sample.study_name}: #{BEST}",
                         f"  val_loss      {trial.value:.6f}"]
    assert "  best_epoch    6" in lines and "  device        cpu" in lines
    assert f"    batch_size     {trial.params['batch_size']}" in lines
    assert f"    lr             {trial.params['lr']:.4g}" in lines  # 4 significant digits
    curve = lines[-1].split()
    assert curve[:3] == ["val_loss", "by", "epoch"] and len(curve) == 3 + 8
    assert float(curve[3 + 5]) == pytest.approx(trial.value, abs=5e-5)  # epoch 6, the best


def test_no_best_before_a_trial_completes(storage_url, tmp_path):
    study = build_sample_study(storage_url, f"running-{uuid.uuid4().hex[:8]}", tmp_path / "ck",
                               outcomes=[("RUNNING", 4, 1, None)])

    assert best_record(study) is None
    record = status_record(study)
    assert record["best"] is None
    assert format_status(record).splitlines()[2] == "  best     none yet (no complete trial)"


def test_studies_lists_each_study_with_its_counts_and_best(storage_url, tmp_path):
    suffix = uuid.uuid4().hex[:8]
    full = build_sample_study(storage_url, f"digits-{suffix}", tmp_path / "a")
    running = build_sample_study(storage_url, f"new-{suffix}", tmp_path / "b",
                                 outcomes=[("RUNNING", 4, 1, None)])

    # The server databases hold the other tests' studies too: keep this test's.
    records = [r for r in studies_records(open_storage(storage_url))
               if r["study"].endswith(suffix)]

    by_name = {r["study"]: r for r in records}
    assert set(by_name) == {full.study_name, running.study_name}
    assert by_name[full.study_name]["counts"] == {"RUNNING": 1, "COMPLETE": 5, "PRUNED": 3,
                                                  "FAIL": 1}
    assert by_name[full.study_name]["best_value"] == full.best_value
    assert by_name[running.study_name] == {**by_name[running.study_name], "best_value": None,
                                           "counts": {"RUNNING": 1}}
    assert all(len(r["created"]) == len("2025-01-01T00:00:00") for r in records)

    lines = format_studies(sorted(records, key=lambda r: r["study"])).splitlines()
    width = len(full.study_name)  # the longer name sets the column
    assert lines == [
        f"{full.study_name:<{width}}  {f'best {full.best_value:.4f}':<12}  "
        "running 1  complete 5  pruned 3  fail 1",
        f"{running.study_name:<{width}}  {'best -':<12}  running 1",
    ]
    assert format_studies([]) == "no studies"


def test_one_progress_line_per_finished_trial(sample):
    trials = sample.trials
    done = [t for t in trials if t.state.is_finished()]
    assert len(done) == len(OUTCOMES) - 1

    complete = format_trial(trials[BEST], 4, 10, 0.1)
    assert complete.startswith(f"[  4/10] trial {BEST}    COMPLETE epochs 8/8     32.0s  "
                               f"val_loss {trials[BEST].value:.4f}  acc 0.958")
    assert "best 0.1000" in complete and "optimizer=sgd" in complete
    assert f"lr={trials[BEST].params['lr']:.4g}" in complete

    pruned = format_trial(trials[2], 3, None, None)
    assert pruned.startswith("[  3] trial 2    PRUNED   epochs 2/8      8.0s  pruned at step 2 ")
    assert "best -" in pruned

    failed = format_trial(trials[5], 6, 10, 0.1)
    assert "FAIL     epochs 1/5" in failed and "failed: oom" in failed


def test_with_evals_per_epoch_the_lines_show_epochs_not_steps(sample):
    """Four evaluations an epoch: a trial paused at step 1 trained a quarter epoch; a running
    one at step 6 trains its second epoch (the job's attrs say so, not the step)."""
    from optuna.trial import create_trial

    paused = create_trial(state=TrialState.PRUNED, intermediate_values={1: 0.5},
                          user_attrs={"epochs_run": 1, "epochs_trained": 0.25,
                                      "epochs_planned": 3, "prune_reason": "paused"})
    assert " epochs 0.25/3 " in format_trial(paused, 1, 8, None)
    record = status_record(sample)
    running = dict(record["running"][0], step=6, epoch=2)
    assert format_status(dict(record, running=[running])).splitlines()[4].split()[:3] == [
        "#9", "epoch", "2/8"]


def test_overfitting_compares_train_and_val_of_the_best_evaluation():
    """Scores' gap is train - val, the loss's val - train; a score's gap past the threshold
    flags the trial, a loss's never does (its scale is the task's)."""
    from hpo.results.summary import format_overfitting, overfitting

    best = {"train_accuracy": 0.98, "val_accuracy": 0.9, "train_loss": 0.05, "val_loss": 0.9,
            "train_f1": 0.97, "val_f1": 0.8, "val_auroc": 0.9}
    over = overfitting(best, "val_f1")
    assert over["gaps"] == {
        "accuracy": {"train": 0.98, "val": 0.9, "gap": pytest.approx(0.08)},
        "loss": {"train": 0.05, "val": 0.9, "gap": pytest.approx(0.85)},
        "f1": {"train": 0.97, "val": 0.8, "gap": pytest.approx(0.17)},
    }
    assert over["flagged"] and over["over"] == ["f1"]
    assert overfitting(best, "val_loss")["flagged"] is False  # accuracy's 0.08 is within 0.1
    assert overfitting(best, "val_loss", gap=0.05)["over"] == ["accuracy"]
    assert set(overfitting(best, "val_auroc")["gaps"]) == {"accuracy", "loss"}  # no train_auroc
    assert overfitting({"val_loss": 0.3}, "val_loss") is None  # nothing of training recorded
    lines = format_overfitting(over)
    assert "    f1             train 0.9700  val 0.8000  gap +0.1700 (train - val)" in lines
    assert lines[-1].startswith("  OVERFITTING: training beats validation by more than 0.1 in f1")
    assert format_overfitting(None) == []


def test_progress_and_the_anytime_curve_follow_a_maximized_metric():
    """The best so far of a study that maximizes rises: it is the highest value by then."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    from hpo.results.numbers import anytime, progress

    study = optuna.create_study(direction="maximize")
    for value in (0.5, 0.3, 0.8, 0.6):
        study.add_trial(create_trial(value=value, params={"lr": 0.1},
                                     distributions={"lr": FloatDistribution(0, 1)}))
    assert progress(study)["best"] == [0.5, 0.5, 0.8, 0.8]
    assert anytime(study)["best"] == [0.5, 0.5, 0.8, 0.8]
