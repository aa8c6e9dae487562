"""The shared trial records: a trial as JSON-ready data, the best trial or none, counts by state,
how a value is shown, a study's name as a file name, and the attribute names studies hold."""

from __future__ import annotations

import datetime as dt
import json

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from hpo import records


def _trial(state=TrialState.COMPLETE, value=0.5):
    return create_trial(
        state=state, value=value if state == TrialState.COMPLETE else None,
        params={"lr": 0.001}, distributions={"lr": FloatDistribution(1e-5, 1e-1, log=True)},
        intermediate_values={2: 0.7, 1: 0.9, 10: 0.5}, user_attrs={"device": "cpu"})


def test_trial_record_is_json_ready_with_epochs_in_order():
    trial = _trial()
    start = dt.datetime(2025, 3, 1, 12, 0, 0, 654321)
    trial.number = 4
    trial.datetime_start, trial.datetime_complete = start, start + dt.timedelta(seconds=90)

    record = records.trial_record(trial)

    assert record == {
        "number": 4, "state": "COMPLETE", "value": 0.5, "params": {"lr": 0.001},
        "intermediate_values": {"1": 0.9, "2": 0.7, "10": 0.5},  # steps as JSON keys
        "user_attrs": {"device": "cpu"},
        "datetime_start": "2025-03-01T12:00:00",  # to the second
        "datetime_complete": "2025-03-01T12:01:30",
    }
    assert list(record["intermediate_values"]) == ["1", "2", "10"]  # in epoch order
    assert json.loads(json.dumps(record)) == record


def test_best_or_none():
    study = optuna.create_study()
    assert records.best_or_none(study) is None  # no trial
    study.add_trial(_trial(TrialState.PRUNED))
    assert records.best_or_none(study) is None  # none complete
    study.add_trial(_trial(value=0.3))
    study.add_trial(_trial(value=0.2))
    study.add_trial(_trial(value=0.4))
    assert records.best_or_none(study).number == 2


def test_state_counts_names_every_state_and_the_paused_apart():
    trials = [_trial(), _trial(), _trial(TrialState.PRUNED), _trial(TrialState.FAIL)]

    counts = records.state_counts(trials)

    assert counts == {"RUNNING": 0, "COMPLETE": 2, "PRUNED": 1, "FAIL": 1, "WAITING": 0}
    assert records.state_counts([]) == {s.name: 0 for s in TrialState}
    paused = _trial(TrialState.WAITING)
    paused.user_attrs.update({"resumed_from": 0, "paused_at": 2})
    assert records.state_counts([*trials, paused, _trial(TrialState.WAITING)])["PAUSED"] == 1


def test_format_value_shows_floats_to_four_digits():
    assert records.format_value(0.000123456) == "0.0001235"
    assert records.format_value(3e-6) == "3e-06"
    assert records.format_value(0.5) == "0.5"
    assert records.format_value(64) == "64"
    assert records.format_value("adamw") == "adamw"
    assert records.format_value(None) == "None"


def test_safe_name_keeps_letters_digits_and_dots():
    assert records.safe_name("digits-resnet18_v2.1") == "digits-resnet18_v2.1"
    assert records.safe_name("team/digits: lr sweep") == "team_digits__lr_sweep"
    assert records.safe_name("../etc") == ".._etc"  # no folder separator survives


def test_iso_to_the_second():
    assert records.iso(dt.datetime(2025, 3, 1, 12, 0, 5, 999999)) == "2025-03-01T12:00:05"
    assert records.iso(None) is None


def test_attribute_names_are_those_existing_studies_hold():
    """Studies in users' databases carry these names: renaming one loses their data."""
    assert (records.SPEC_ATTR, records.VERSION_ATTR, records.RETRAIN_ATTR) == (
        "hpo.spec", "hpo.version", "hpo.results.retrain")
    assert (records.CHECKPOINT_ATTR, records.CHECKPOINT_ARTIFACT_ATTR,
            records.FAIL_REASON_ATTR) == ("checkpoint", "checkpoint_artifact", "fail_reason")


def test_complete_val_loss_ranks_complete_trials_and_refuses_others():
    assert records.complete_val_loss(_trial(value=0.25)) == 0.25
    with pytest.raises(ValueError, match="PRUNED"):
        records.complete_val_loss(_trial(state=TrialState.PRUNED))


def test_the_best_follows_the_studys_direction_and_metric():
    """``study.metric: val_f1`` maximized: ``rank_key`` sorts the highest first, ``better``
    compares upwards, ``metric`` and ``maximizes`` read the study; a loss study as before."""
    for direction, metric, first in (("maximize", "val_f1", 0.9), ("minimize", None, 0.1)):
        study = optuna.create_study(direction=direction)
        study.set_user_attr(records.SPEC_ATTR, {"study": {"metric": metric} if metric else {}})
        for value in (0.5, 0.9, 0.1):
            study.add_trial(_trial(value=value))
        maximize = records.maximizes(study)
        assert maximize == (direction == "maximize")
        assert records.metric(study) == (metric or "val_loss")
        ranked = sorted(study.get_trials(), key=records.rank_key(maximize))
        assert ranked[0].value == first == records.best_or_none(study).value
        assert records.better(0.6, 0.5, maximize) == maximize
        assert records.better(0.6, None, maximize)
    several = optuna.create_study(directions=["minimize", "minimize"])
    assert not records.maximizes(several)
