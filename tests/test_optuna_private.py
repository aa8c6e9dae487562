"""Optuna's private API goes through one package, hpo/store/_optuna/, and is checked by name.

The day an Optuna release renames something hpo relies on, ``test_every_private_name_exists``
fails naming it; the pin in pyproject.toml keeps users on the range tested here.
"""

from __future__ import annotations

import importlib
import re
from importlib.metadata import version
from pathlib import Path

import optuna
import pytest

from hpo.store import _optuna
from hpo.records import FAIL_REASON_ATTR

ROOT = Path(__file__).resolve().parents[1]
PRIVATE = re.compile(
    r"optuna(\.\w+)*\._\w+"  # a private Optuna module, e.g. optuna.storages._heartbeat
    r"|\.(_storage|_study_id|_trial_id|_thread_local|_cached_frozen_trial|_backend)\b"
    r"|\b(_get_prepared_new_trial|_set_trial_attr_without_commit|_create_scoped_session"
    r"|_tell_with_warning|_get_stale_trial_ids|_get_trials|_get_filepath)\b")


@pytest.mark.parametrize("module,path", _optuna.PRIVATE_NAMES,
                         ids=[f"{m}:{p}" for m, p in _optuna.PRIVATE_NAMES])
def test_every_private_name_exists(module, path, tmp_path):
    owner = importlib.import_module(module)
    head, *rest = path.split(".")
    obj = getattr(owner, head)
    if not rest:
        return
    attr = rest[0]
    if hasattr(obj, attr):
        return
    # An instance attribute: look on a live object of that class.
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'p.db'}")
    trial = study.ask()
    journal = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "p.log")))
    optuna.create_study(storage=journal).ask()
    live = {"Study": study, "Trial": trial, "FrozenTrial": study.trials[0],
            "_CachedStorage": study._storage, "JournalStorage": journal,
            "JournalStorageReplayResult": journal._replay_result,
            "JournalFileBackend": journal._backend,
            # No server needed: the channel connects on the first call.
            "GrpcStorageProxy": optuna.storages.GrpcStorageProxy(host="127.0.0.1", port=1),
            }[head]
    assert hasattr(live, attr), f"optuna {optuna.__version__}: {module}.{path} is gone"


def test_no_other_module_uses_optuna_private_api():
    offenders = []
    for path in sorted((ROOT / "hpo").rglob("*.py")):
        if path.relative_to(ROOT / "hpo").parts[:2] == ("store", "_optuna"):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if PRIVATE.search(code):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


def test_optuna_is_pinned_to_the_tested_range():
    text = (ROOT / "pyproject.toml").read_text()
    pin = re.search(r'"optuna>=([\d.]+),<([\d.]+)"', text)
    assert pin, "pyproject.toml must pin optuna to a range (>=X,<Y)"
    low, high = (tuple(int(x) for x in v.split(".")) for v in pin.groups())
    installed = tuple(int(x) for x in version("optuna").split(".")[:2])
    assert low[:2] <= installed < high[:2]


def test_heartbeat_and_fail_and_retry_take_a_storage_without_heartbeats():
    # Optuna's in-memory storage has no heartbeat (it is no BaseHeartbeat): hpo's heartbeat
    # thread has nothing to beat and a gone trial is failed with nothing to retry it, as
    # Optuna's is_heartbeat_enabled would have it, instead of an AttributeError.
    study = optuna.create_study()
    trial = study.ask()
    with _optuna.heartbeat(study, trial):
        pass
    assert _optuna.fail_and_retry(study, [trial], "worker died") == [trial.number]
    (failed,) = study.get_trials()
    assert failed.state == optuna.trial.TrialState.FAIL
    assert failed.user_attrs[FAIL_REASON_ATTR] == "worker died"
