"""The one package that touches Optuna's private API.

hpo needs what Optuna does not expose: the storage and ids behind a study and a trial, the
tell of ``study.optimize``, and the ``RDBStorage`` internals through which hpo saves round trips
and makes a claim atomic. Every such name is listed in ``PRIVATE_NAMES`` and checked against the
installed Optuna by ``tests/test_optuna_private.py``, which fails by name the day Optuna renames
one; ``pyproject.toml`` pins the range tested.

``_rdb.HpoRDBStorage`` is Optuna's ``RDBStorage`` (and ``_journal.HpoJournalStorage`` its
``JournalStorage`` on a file, ``_grpc.HpoGrpcStorage`` its ``GrpcStorageProxy`` client of the
proxy that ``_grpc.grpc_server`` runs on ``HpoRDBStorage``) with:

- **atomic claims**: taking a queued trial or creating one writes the worker's attrs and a
  heartbeat in the same transaction (a trial is stale from the moment it is claimed, and never
  carries its previous worker's attrs), and refuses it if the budget is taken (the journal:
  under its file lock; the proxy: in a transaction of the database behind it);
- **heartbeats** where Optuna has none: the journal records them as a trial system attr, the
  proxy passes them to its database;
- **atomic study creation**: a study and its spec in one transaction;
- **database outages retried per call** (``hpo.store.outage``), never the training.

``_store.TrialStore`` states this contract; every storage class implements it.

The storage classes are defined at module level (they pickle, and ``isinstance`` sees them).
Each module imports the Optuna storage it extends, so ``hpo.store.storage`` imports the one a URL
needs when it opens it: a SQLite study never imports gRPC.
"""

from typing import TYPE_CHECKING, Any

from hpo.store._optuna._reap import (
    fail_and_retry,
    fail_stale,
    queue_retry,
    retry_callback,
    tell_queued_pauses,
)
from hpo.store._optuna._store import TrialStore
from hpo.store._optuna._trials import (
    BudgetTaken,
    ask,
    backend_of,
    create_study_with_attrs,
    frozen,
    heartbeat,
    no_experimental_warnings,
    requeue,
    set_intermediate_value,
    set_user_attrs,
    study_view,
    tell,
)

if TYPE_CHECKING:
    from hpo.store._optuna._artifacts import HpoArtifactStore
    from hpo.store._optuna._grpc import HpoGrpcStorage, grpc_server
    from hpo.store._optuna._journal import HpoJournalStorage
    from hpo.store._optuna._rdb import HpoRDBStorage

_STORAGES = {
    "HpoArtifactStore": "hpo.store._optuna._artifacts",
    "HpoRDBStorage": "hpo.store._optuna._rdb",
    "HpoJournalStorage": "hpo.store._optuna._journal",
    "HpoGrpcStorage": "hpo.store._optuna._grpc",
    "grpc_server": "hpo.store._optuna._grpc",
}
"""Imported at first use (``__getattr__``): each module imports the Optuna storage it extends,
gRPC's for the proxy."""


def __getattr__(name: str) -> Any:
    if name in _STORAGES:
        import importlib

        return getattr(importlib.import_module(_STORAGES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


PRIVATE_NAMES = tuple(
    (module, name)
    for module, names in {
        # Everything below that Optuna does not document, by module. Instance attributes
        # (``Study._storage`` ...) are checked on a live study by the test.
        "optuna.storages._rdb.models": "TrialModel StudyModel StudyDirectionModel "
        "StudyUserAttributeModel TrialUserAttributeModel "
        "TrialHeartbeatModel",
        "optuna.storages._rdb.storage": "_create_scoped_session RDBStorage._get_prepared_new_trial "
        "RDBStorage._set_trial_attr_without_commit "
        "RDBStorage._get_stale_trial_ids RDBStorage._create_new_trial "
        "RDBStorage._set_trial_param RDBStorage._get_best_trial_id "
        "RDBStorage._get_trials",
        "optuna.storages._cached_storage": "_CachedStorage._backend "
        "_CachedStorage._trial_id_to_study_id_and_number",
        "optuna.storages._heartbeat": "BaseHeartbeat is_heartbeat_enabled "
        "BaseHeartbeat._get_stale_trial_ids",
        # The journal: its lock, its replay, and the log lines hpo appends under that lock.
        "optuna.storages.journal._storage": "JournalOperation JournalStorage._thread_lock "
        "JournalStorage._sync_with_backend "
        "JournalStorage._replay_result JournalStorage._backend "
        "JournalStorageReplayResult.worker_id "
        "JournalStorageReplayResult._next_study_id "
        "JournalStorageReplayResult."
        "_last_created_trial_id_by_this_process",
        "optuna.storages.journal._file": "JournalFileBackend._file_path",
        # The gRPC proxy: Optuna's service, beside which hpo's runs on the same server.
        "optuna.storages._grpc.servicer": "OptunaStorageProxyService",
        "optuna.storages._grpc.auto_generated.api_pb2_grpc": "add_StorageServiceServicer_to_server",
        "optuna.storages._grpc.client": "GrpcStorageProxy._setup GrpcStorageProxy._channel "
        "GrpcStorageProxy._host GrpcStorageProxy._port",
        "optuna.study._tell": "_tell_with_warning",
        "optuna.study.study": "Study._storage Study._study_id Study._thread_local "
        "Study._get_trials",
        "optuna.trial._trial": "Trial._trial_id Trial._cached_frozen_trial",
        "optuna.trial._frozen": "FrozenTrial._trial_id",
        "optuna.artifacts._filesystem": "FileSystemArtifactStore._get_filepath",
    }.items()
    for name in names.split()
)

__all__ = [
    "HpoArtifactStore",
    "HpoGrpcStorage",
    "HpoJournalStorage",
    "HpoRDBStorage",
    "grpc_server",
    "PRIVATE_NAMES",
    "BudgetTaken",
    "TrialStore",
    "ask",
    "backend_of",
    "create_study_with_attrs",
    "fail_and_retry",
    "fail_stale",
    "tell_queued_pauses",
    "frozen",
    "heartbeat",
    "no_experimental_warnings",
    "queue_retry",
    "requeue",
    "retry_callback",
    "set_intermediate_value",
    "set_user_attrs",
    "study_view",
    "tell",
]
