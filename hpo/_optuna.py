"""The one module that touches Optuna's private API.

hpo needs what Optuna does not expose: the storage and ids behind a study and a trial, the
tell of ``study.optimize``, and the ``RDBStorage`` internals through which hpo saves round trips
and makes a claim atomic. Every such name is listed in ``PRIVATE_NAMES`` and checked against the
installed Optuna by ``tests/test_optuna_private.py``, which fails by name the day Optuna renames
one; ``pyproject.toml`` pins the range tested.

``storage_class`` is Optuna's ``RDBStorage`` (and ``journal_storage_class`` its
``JournalStorage`` on a file, ``grpc_storage_class`` its ``GrpcStorageProxy`` client of the
proxy that ``grpc_server`` runs on ``storage_class``) with:

- **atomic claims**: taking a queued trial or creating one writes the worker's attrs and a
  heartbeat in the same transaction (a trial is stale from the moment it is claimed, and never
  carries its previous worker's attrs), and refuses it if the budget is taken (the journal:
  under its file lock; the proxy: in a transaction of the database behind it);
- **heartbeats** where Optuna has none: the journal records them as a trial system attr, the
  proxy passes them to its database;
- **atomic study creation**: a study and its spec in one transaction;
- **database outages retried per call** (``hpo.outage``), never the training.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import threading
from typing import TYPE_CHECKING, Any, Iterator

from hpo.outage import first_line, retrying
from hpo.records import FAIL_REASON_ATTR

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

log = logging.getLogger("hpo")

PRIVATE_NAMES = tuple((module, name) for module, names in {
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
    "optuna.storages._heartbeat": "BaseHeartbeat",
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
    "optuna.study.study": "Study._storage Study._study_id Study._thread_local",
    "optuna.trial._trial": "Trial._trial_id Trial._cached_frozen_trial",
    "optuna.trial._frozen": "FrozenTrial._trial_id",
}.items() for name in names.split())


def create_study_with_attrs(storage: Any, directions: list[Any], name: str,
                            attrs: dict[str, Any]) -> int:
    """A study and its user attrs in one transaction on hpo's storage; one after the other on
    any other (in-memory: no other process shares it). Raises ``DuplicatedStudyError``."""
    if hasattr(storage, "create_study_with_attrs"):
        return storage.create_study_with_attrs(directions, name, attrs)
    study_id = storage.create_new_study(directions, study_name=name)
    for key, value in attrs.items():
        storage.set_study_user_attr(study_id, key, value)
    return study_id


def backend_of(study: "optuna.Study") -> Any:
    """hpo's storage under the study's cache, where Optuna put one (``RDBStorage``): its own
    methods are there. The journal and the gRPC proxy are not cached: they are themselves."""
    return _uncached(study._storage)


def _uncached(storage: Any) -> Any:
    from optuna.storages import _CachedStorage

    return storage._backend if isinstance(storage, _CachedStorage) else storage


# --------------------------------------------------------------------------------------------
# The trial lifecycle: claim, heartbeat, tell, re-queue, fail and retry.


def ask(study: "optuna.Study", attrs: dict[str, Any], waiting: "list[FrozenTrial]",
        budget: int | None = None) -> "optuna.Trial | None":
    """``study.ask()`` that claims a trial with ``attrs`` and a heartbeat in one transaction:
    a queued trial of ``waiting`` (the study as read a moment ago) first, as Optuna does, else
    a new one.

    Returns:
        The trial; None if ``budget`` trials are running or finished already (checked in the
        claim's transaction, so several workers asking at once never overshoot it).
    """
    import datetime

    import optuna
    from optuna.trial import FrozenTrial, TrialState

    study._thread_local.cached_all_trials = None  # as ask() does: samplers read afresh
    storage = backend_of(study)
    try:
        for t in waiting:
            if t.state == TrialState.WAITING and storage.claim_trial(
                    study._study_id, t._trial_id, attrs, budget):
                return optuna.Trial(study, t._trial_id)
        # Through Optuna's cache, which must know the new trial (the template's state, attrs
        # and budget reach ``Storage._get_prepared_new_trial``).
        template = FrozenTrial(
            number=0, state=TrialState.RUNNING, value=None,
            datetime_start=datetime.datetime.now(), datetime_complete=None, params={},
            distributions={}, user_attrs=dict(attrs),
            system_attrs={} if budget is None else {_BUDGET: budget}, intermediate_values={},
            trial_id=0)
        return optuna.Trial(study, study._storage.create_new_trial(study._study_id, template))
    except BudgetTaken:
        return None


class BudgetTaken(Exception):
    """The budget's trials are all running or finished: no trial is claimed."""


_BUDGET = "hpo:budget"
"""Carries the budget from ``ask`` into the creating transaction; never stored."""


@contextlib.contextmanager
def heartbeat(study: "optuna.Study", trial: "optuna.Trial") -> Iterator[None]:
    """Record ``trial``'s heartbeat every heartbeat interval while the block runs, as
    ``study.optimize`` does, except that a failed write does not end the thread: a heartbeat
    thread that died in a database outage would let a trial that is still training go stale."""
    storage = study._storage
    interval = storage.get_heartbeat_interval()
    if not interval:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                storage.record_heartbeat(trial._trial_id)
            except Exception as e:
                log.warning("trial %d: heartbeat not recorded: %s", trial.number, first_line(e))
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def tell(study: "optuna.Study", trial: "optuna.Trial", value: float | None,
         state: "optuna.trial.TrialState | None") -> "tuple[optuna.trial.TrialState | None, str]":
    """Finish ``trial`` as ``study.optimize`` does.

    Returns:
        The state it was told and Optuna's message for a failure; ``(None, why)`` if the trial
        had been finished by someone else meanwhile (failed as stale during a long database
        outage: its retry resumes from the checkpoint elsewhere).
    """
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.study._tell import _tell_with_warning
    from optuna.trial import TrialState

    try:
        told, _, message = _tell_with_warning(study, trial, value, state, suppress_warning=True)
        return told, message or ""
    except (UpdateFinishedTrialError, ValueError) as e:
        # ValueError: Optuna's "Cannot tell a FAIL trial" where the trial was finished since.
        now = study._storage.get_trial(trial._trial_id)
        if now.state == TrialState.RUNNING:
            raise  # not a race: a genuine error of the tell
        if now.state == (state or TrialState.COMPLETE) and (
                state is not None or now.value == value):
            return now.state, ""  # our own write landed before a lost connection's retry
        return None, f"trial {trial.number} was already {now.state.name} ({e})"


def requeue(study: "optuna.Study", trial: "optuna.Trial") -> bool:
    """Put a running trial back in the queue: WAITING, same number, params and values kept.
    False if it had finished meanwhile."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    try:
        return bool(study._storage.set_trial_state_values(trial._trial_id, TrialState.WAITING))
    except UpdateFinishedTrialError:
        return False


def fail_and_retry(study: "optuna.Study", trials: "list[FrozenTrial]", reason: str) -> list[int]:
    """Fail running trials whose worker is gone and queue their retries (which resume from
    the checkpoint), as the stale-trial search does, without waiting for the grace period.

    Returns:
        The numbers of the trials failed here (not those finished meanwhile).
    """
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = study._storage
    callback = storage.get_heartbeat_stale_trial_callback()
    failed = []
    for t in trials:
        try:
            storage.set_trial_user_attr(t._trial_id, FAIL_REASON_ATTR, reason)
            if not storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # it finished, or another process failed it first
        failed.append(t.number)
        if callback is not None:
            with no_experimental_warnings():
                callback(study, copy.deepcopy(storage.get_trial(t._trial_id)))
    return failed


def fail_stale(study: "optuna.Study") -> None:
    """Optuna's stale-trial search: fail running trials past the grace period, queue retries."""
    import optuna

    with no_experimental_warnings():
        optuna.storages.fail_stale_trials(study)


def retry_callback(max_retry: int) -> Any:
    """Optuna's retry of a dead trial (values kept), without the dead trial's ``fail_reason``."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    class Retry(RetryHeartbeatStaleTrialCallback):
        def __call__(self, study: "optuna.Study", trial: "FrozenTrial") -> None:
            trial = copy.copy(trial)
            trial.user_attrs = {k: v for k, v in trial.user_attrs.items() if k != FAIL_REASON_ATTR}
            super().__call__(study, trial)

    with no_experimental_warnings():
        return Retry(max_retry=max_retry, inherit_intermediate_values=True)


def set_user_attrs(trial: Any, attrs: dict[str, Any]) -> None:
    """User attrs of a running trial in one transaction on hpo's storage (the job writes eight
    at every evaluation: one commit, not eight stalls), one by one on any other trial."""
    storage = getattr(trial, "storage", None)
    backend = _uncached(storage) if storage is not None else None
    write = getattr(backend, "set_trial_user_attrs", None)
    if write is None or not hasattr(trial, "_cached_frozen_trial"):
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return
    write(trial._trial_id, attrs)
    trial._cached_frozen_trial.user_attrs.update(attrs)  # what Trial.set_user_attr keeps


@contextlib.contextmanager
def no_experimental_warnings() -> Iterator[None]:
    """Silence Optuna's warnings that heartbeat and stale-trial retry are experimental."""
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


# --------------------------------------------------------------------------------------------
# The storage class.

# Every storage call, retried through a database outage. Re-running one is harmless: writes
# are upserts or checked state changes (``tell`` recognises its own lost acknowledgement), and
# a trial created twice is one more that goes stale and is retried like any other.
_RETRIED = (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions",
    "get_study_user_attrs", "get_study_system_attrs", "get_all_studies", "create_new_trial",
    "set_trial_param", "get_trial_id_from_study_id_trial_number", "get_trial_number_from_id",
    "get_trial_param", "set_trial_state_values", "set_trial_intermediate_value",
    "set_trial_user_attr", "set_trial_system_attr", "get_trial", "get_all_trials",
    "get_n_trials", "get_best_trial", "record_heartbeat", "_get_stale_trial_ids",
    "claim_trial", "set_trial_user_attrs", "create_study_with_attrs", "stale_trial_ids",
    # What Optuna's cache of finished trials (``study._storage``) calls on its backend.
    "_create_new_trial", "_set_trial_param", "_get_best_trial_id", "_get_trials",
)

@functools.cache
def storage_class() -> type:
    """Optuna's ``RDBStorage`` with hpo's atomic claims, fewer round trips and outage retry
    (see the module docstring)."""
    import datetime

    import sqlalchemy
    from optuna.storages import RDBStorage
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session
    from optuna.trial import TrialState

    def taken(session: Any, study_id: int, trial_id: int) -> int:
        """Trials of the study running or finished (complete, pruned), but ``trial_id``."""
        t = models.TrialModel
        return session.execute(
            sqlalchemy.select(sqlalchemy.func.count(t.trial_id)).where(
                t.study_id == study_id, t.trial_id != trial_id,
                t.state.in_([TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED]))
        ).scalar()

    def insert_attrs(session: Any, model: Any, key_column: str, owner: int,
                     attrs: dict[str, Any]) -> None:
        # A Core INSERT: the ORM's unit of work costs more than the statement.
        session.execute(sqlalchemy.insert(model), [
            {key_column: owner, "key": key, "value_json": json.dumps(value)}
            for key, value in attrs.items()])

    class Storage(RDBStorage):
        def _get_prepared_new_trial(self, study_id: int, template_trial: Any,
                                    session: Any) -> Any:
            attrs, budget = {}, None
            if template_trial is not None and (template_trial.user_attrs or
                                               _BUDGET in template_trial.system_attrs):
                attrs = template_trial.user_attrs
                template_trial = copy.copy(template_trial)
                template_trial.user_attrs = {}
                template_trial.system_attrs = dict(template_trial.system_attrs)
                budget = template_trial.system_attrs.pop(_BUDGET, None)
            trial = super()._get_prepared_new_trial(study_id, template_trial, session)
            # Creations of one study are serialized (Optuna locks the study row; SQLite has
            # one writer), so this count is exact: no two workers both take the last trial.
            if budget is not None and taken(session, study_id, trial.trial_id) >= budget:
                raise BudgetTaken(budget)
            if attrs:
                insert_attrs(session, models.TrialUserAttributeModel, "trial_id",
                             trial.trial_id, attrs)
            if template_trial is None or template_trial.state == TrialState.RUNNING:
                # Stale from its first moment: a trial without a heartbeat row is never found
                # by the stale-trial search.
                session.add(models.TrialHeartbeatModel(trial_id=trial.trial_id))
            return trial

        def claim_trial(self, study_id: int, trial_id: int, attrs: dict[str, Any],
                        budget: int | None = None) -> bool:
            """Take a queued trial: WAITING -> RUNNING with ``attrs`` and a fresh heartbeat,
            in one transaction. False if another worker took it or it finished.

            Raises:
                BudgetTaken: ``budget`` trials are running or finished already.
            """
            trials = models.TrialModel
            with _create_scoped_session(self.scoped_session) as session:
                if budget is not None:  # serialized with the creations, as they are
                    models.StudyModel.find_or_raise_by_id(study_id, session, for_update=True)
                # One statement checks and takes it: SQLite ignores SELECT ... FOR UPDATE.
                took = session.execute(
                    sqlalchemy.update(trials)
                    .where(trials.trial_id == trial_id, trials.state == TrialState.WAITING)
                    .values(state=TrialState.RUNNING, datetime_start=datetime.datetime.now())
                    .execution_options(synchronize_session=False)
                ).rowcount
                if took != 1:
                    return False
                if budget is not None and taken(session, study_id, trial_id) >= budget:
                    raise BudgetTaken(budget)
                for key, value in attrs.items():
                    self._set_trial_attr_without_commit(
                        session, models.TrialUserAttributeModel, trial_id, key, value)
                beat = models.TrialHeartbeatModel.where_trial_id(trial_id, session, True)
                if beat is None:
                    session.add(models.TrialHeartbeatModel(trial_id=trial_id))
                else:  # a re-queued trial's last heartbeat is old: it would look stale
                    beat.heartbeat = session.execute(sqlalchemy.func.now()).scalar()
            return True

        def set_trial_user_attrs(self, trial_id: int, attrs: dict[str, Any]) -> None:
            """Several user attrs of a running trial in one transaction."""
            with _create_scoped_session(self.scoped_session, True) as session:
                for key, value in attrs.items():
                    self._set_trial_attr_without_commit(
                        session, models.TrialUserAttributeModel, trial_id, key, value)

        def create_study_with_attrs(self, directions: list[Any], name: str,
                                    attrs: dict[str, Any]) -> int:
            """A study and its user attrs in one transaction.

            Raises:
                optuna.exceptions.DuplicatedStudyError: a study of that name exists.
            """
            import optuna

            try:
                with _create_scoped_session(self.scoped_session) as session:
                    study = models.StudyModel(study_name=name, directions=[
                        models.StudyDirectionModel(objective=i, direction=d)
                        for i, d in enumerate(directions)])
                    session.add(study)
                    session.flush()
                    insert_attrs(session, models.StudyUserAttributeModel, "study_id",
                                 study.study_id, attrs)
            except sqlalchemy.exc.IntegrityError:
                raise optuna.exceptions.DuplicatedStudyError(name) from None
            return self.get_study_id_from_name(name)

        def stale_trial_ids(self, study_id: int, grace_period: float) -> list[int]:
            """Running trials of the study whose last heartbeat is older than
            ``grace_period`` seconds by the database's clock (``_get_stale_trial_ids`` with
            the grace period of the asking worker: the gRPC proxy serves workers that may
            set their own)."""
            t, beat = models.TrialModel, models.TrialHeartbeatModel
            with _create_scoped_session(self.scoped_session, True) as session:
                now = session.execute(sqlalchemy.func.now()).scalar().replace(tzinfo=None)
                rows = session.execute(
                    sqlalchemy.select(t.trial_id, beat.heartbeat)
                    .join(beat, beat.trial_id == t.trial_id)
                    .where(t.study_id == study_id, t.state == TrialState.RUNNING)).all()
            return [trial_id for trial_id, last in rows
                    if now - last > datetime.timedelta(seconds=grace_period)]

    for name in _RETRIED:
        setattr(Storage, name, retrying(getattr(Storage, name)))
    return Storage


# --------------------------------------------------------------------------------------------
# Storages without a database of their own: Optuna's journal file, and Optuna's gRPC proxy in
# front of a database. Each gets what hpo's RDB storage has: heartbeats, the stale-trial
# retry, atomic claims with the worker's attrs and the budget, a study created with its spec,
# several attrs in one write.

HEARTBEAT_ATTR = "hpo:heartbeat"
"""A journal trial's last heartbeat: a trial system attr, seconds since the epoch by the
worker's clock (machines that share a study need synchronized clocks, as Slurm's do)."""


def _running_template(template: Any) -> "tuple[dict[str, Any], int | None] | None":
    """``(attrs, budget)`` of a trial to create running: ``ask``'s template or none at all;
    None for any other template (a queued retry, an enqueued or added trial)."""
    from optuna.trial import TrialState

    if template is None:
        return {}, None
    if (template.state != TrialState.RUNNING or template.params or template.distributions
            or template.intermediate_values):
        return None
    system = dict(template.system_attrs)
    budget = system.pop(_BUDGET, None)
    return (dict(template.user_attrs), budget) if not system else None


@functools.cache
def journal_storage_class() -> type:
    """Optuna's ``JournalStorage`` on a ``JournalFileBackend`` with hpo's claims, heartbeats
    and study creation. Every write that must check before it writes (a claim, the budget, a
    study's name) holds the journal's file lock from its read to its append, so it is one
    transaction: every process appends under that lock."""
    import datetime

    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages._heartbeat import BaseHeartbeat
    from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
    from optuna.storages.journal._storage import JournalOperation as Op
    from optuna.trial import TrialState

    class Backend(JournalFileBackend):
        """Optuna's journal file whose lock ``locked`` holds across a read and appends."""

        def __init__(self, path: str) -> None:
            self._hpo_lock = JournalFileSymlinkLock(path)
            self._held = threading.local()
            super().__init__(path, lock_obj=self._hpo_lock)

        @contextlib.contextmanager
        def locked(self) -> Iterator[None]:
            self._hpo_lock.acquire()
            self._held.on = True
            try:
                yield
            finally:
                self._held.on = False
                self._hpo_lock.release()

        def append_logs(self, logs: list[dict[str, Any]]) -> None:
            if not getattr(self._held, "on", False):
                super().append_logs(logs)
                return
            import os

            with open(self._file_path, "ab") as f:  # the lock is ours already
                f.write(("\n".join(json.dumps(log, separators=(",", ":")) for log in logs)
                         + "\n").encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())

    def now_iso() -> str:
        return datetime.datetime.now(tz=datetime.timezone.utc).isoformat(timespec="microseconds")

    class Storage(JournalStorage, BaseHeartbeat):
        def __init__(self, path: str, *, heartbeat_interval: int | None = None,
                     grace_period: int | None = None,
                     heartbeat_stale_trial_callback: Any = None) -> None:
            super().__init__(Backend(path))
            self.path = path
            self.heartbeat_interval = heartbeat_interval
            self.grace_period = grace_period
            self.heartbeat_stale_trial_callback = heartbeat_stale_trial_callback

        @contextlib.contextmanager
        def _transaction(self) -> Iterator[None]:
            """The journal as of now, and nobody else's appends until the block ends."""
            with self._thread_lock, self._backend.locked():
                self._sync_with_backend()
                yield
                self._sync_with_backend()

        def _append(self, logs: list[tuple[int, dict[str, Any]]]) -> None:
            worker = self._replay_result.worker_id
            self._backend.append_logs([{"op_code": op, "worker_id": worker, **fields}
                                       for op, fields in logs])

        def _taken(self, study_id: int, but: int | None = None) -> int:
            return sum(t._trial_id != but for t in self._replay_result.get_all_trials(
                study_id, (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)))

        def create_new_trial(self, study_id: int, template_trial: Any = None) -> int:
            running = _running_template(template_trial)
            if running is None:
                return super().create_new_trial(study_id, template_trial)
            attrs, budget = running
            with self._transaction():
                if budget is not None and self._taken(study_id) >= budget:
                    raise BudgetTaken(budget)
                # With its heartbeat: stale from its first moment.
                self._append([(Op.CREATE_TRIAL, {
                    "study_id": study_id, "datetime_start": now_iso(),
                    "state": TrialState.RUNNING, "value": None, "values": None,
                    "distributions": {}, "params": {}, "user_attrs": attrs,
                    "system_attrs": {HEARTBEAT_ATTR: _now()}, "intermediate_values": {}})])
            return self._replay_result._last_created_trial_id_by_this_process

        def claim_trial(self, study_id: int, trial_id: int, attrs: dict[str, Any],
                        budget: int | None = None) -> bool:
            """As the RDB storage's: WAITING -> RUNNING with ``attrs`` and a heartbeat."""
            with self._transaction():
                trial = self._replay_result.get_trial(trial_id)
                if trial.state != TrialState.WAITING:
                    return False
                if budget is not None and self._taken(study_id, trial_id) >= budget:
                    raise BudgetTaken(budget)
                self._append(
                    [(Op.SET_TRIAL_STATE_VALUES, {"trial_id": trial_id, "values": None,
                                                  "state": TrialState.RUNNING,
                                                  "datetime_start": now_iso()})]
                    + [(Op.SET_TRIAL_USER_ATTR, {"trial_id": trial_id, "user_attr": {k: v}})
                       for k, v in attrs.items()]
                    + [(Op.SET_TRIAL_SYSTEM_ATTR, {"trial_id": trial_id,
                                                   "system_attr": {HEARTBEAT_ATTR: _now()}})])
            return True

        def set_trial_user_attrs(self, trial_id: int, attrs: dict[str, Any]) -> None:
            """Several user attrs of a running trial in one append."""
            with self._thread_lock:
                self._append([(Op.SET_TRIAL_USER_ATTR, {"trial_id": trial_id,
                                                        "user_attr": {k: v}})
                              for k, v in attrs.items()])
                self._sync_with_backend()  # raises as Optuna does if the trial had finished

        def create_study_with_attrs(self, directions: list[Any], name: str,
                                    attrs: dict[str, Any]) -> int:
            with self._transaction():
                if any(s.study_name == name for s in self._replay_result.get_all_studies()):
                    raise optuna.exceptions.DuplicatedStudyError(name)
                study_id = self._replay_result._next_study_id
                self._append([(Op.CREATE_STUDY, {"study_name": name,
                                                 "directions": [int(d) for d in directions]})]
                             + [(Op.SET_STUDY_USER_ATTR, {"study_id": study_id,
                                                          "user_attr": {k: v}})
                                for k, v in attrs.items()])
            return study_id

        def record_heartbeat(self, trial_id: int) -> None:
            self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, _now())

        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            grace = self.grace_period or 2 * (self.heartbeat_interval or 0)
            with self._thread_lock:
                self._sync_with_backend()
                running = self._replay_result.get_all_trials(study_id, (TrialState.RUNNING,))
            now = _now()
            return [t._trial_id for t in running
                    if HEARTBEAT_ATTR in t.system_attrs
                    and now - t.system_attrs[HEARTBEAT_ATTR] > grace]

        def get_heartbeat_interval(self) -> int | None:
            return self.heartbeat_interval

        def get_heartbeat_stale_trial_callback(self) -> Any:
            return self.heartbeat_stale_trial_callback

    return Storage


def _now() -> float:
    import time

    return time.time()


# The gRPC proxy: Optuna's ``StorageService`` for everything Optuna does, and hpo's own
# service beside it on the same port for what hpo adds (a call: JSON in, JSON out), run by
# the proxy on hpo's RDB storage, in one transaction each as they are without the proxy.

def import_grpc() -> Any:
    """``grpc``, without its fork handlers (unless ``$GRPC_ENABLE_FORK_SUPPORT`` says
    otherwise): they run in a child forked with a ``preexec_fn`` (the launcher starts its
    workers so) or without exec (DataLoader workers) while other threads call gRPC, and there
    abort the child now and then (SIGABRT, "epoll_wait error: Bad file descriptor"). No child
    of hpo uses its parent's channel."""
    import os

    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    import grpc

    return grpc


GRPC_SERVICE = "hpo.Storage"
_GRPC_METHOD = f"/{GRPC_SERVICE}/Call"
_RAISED = ("BudgetTaken", "DuplicatedStudyError", "UpdateFinishedTrialError", "KeyError")


def grpc_server(storage: Any, host: str, port: int, threads: int, hello: dict[str, Any]
                ) -> "tuple[Any, int]":
    """A started gRPC server of ``storage`` (hpo's RDB storage): Optuna's proxy service on
    Optuna's cache of it, and hpo's.

    Returns:
        The server and the port it listens on (``port`` 0: a free one).

    Raises:
        OSError: the address cannot be bound.
    """
    from concurrent.futures import ThreadPoolExecutor

    grpc = import_grpc()
    import optuna
    from optuna.storages import _CachedStorage
    from optuna.storages._grpc.auto_generated import api_pb2_grpc
    from optuna.storages._grpc.servicer import OptunaStorageProxyService
    from optuna.trial import FrozenTrial, TrialState

    cached = _CachedStorage(storage)

    def known(study_id: int, trial_id: int) -> None:
        # Optuna's cache must know a trial before it writes its params: a trial claimed here
        # may not have been read through it yet (the proxy restarted since the worker read).
        if trial_id not in cached._trial_id_to_study_id_and_number:
            cached.get_all_trials(study_id, deepcopy=False)

    def create_trial(study_id: int, attrs: dict[str, Any], budget: int | None) -> int:
        import datetime

        template = FrozenTrial(
            number=0, state=TrialState.RUNNING, value=None,
            datetime_start=datetime.datetime.now(), datetime_complete=None, params={},
            distributions={}, user_attrs=attrs,
            system_attrs={} if budget is None else {_BUDGET: budget}, intermediate_values={},
            trial_id=0)
        return cached.create_new_trial(study_id, template)

    def claim(study_id: int, trial_id: int, attrs: dict[str, Any], budget: int | None) -> bool:
        took = storage.claim_trial(study_id, trial_id, attrs, budget)
        if took:
            known(study_id, trial_id)
        return took

    operations = {
        "hello": lambda: hello,
        "create_trial": create_trial,
        "claim_trial": claim,
        "set_trial_user_attrs": storage.set_trial_user_attrs,
        "create_study_with_attrs": lambda directions, name, attrs: storage.create_study_with_attrs(
            [optuna.study.StudyDirection(d) for d in directions], name, attrs),
        "record_heartbeat": storage.record_heartbeat,
        "stale_trial_ids": storage.stale_trial_ids,
    }

    def call(request: bytes, context: Any) -> bytes:
        asked = json.loads(request)
        operation = operations.get(asked.get("op"))
        if operation is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, f"no operation {asked.get('op')!r}")
        try:
            reply = {"result": operation(**asked.get("args", {}))}
        except (BudgetTaken, optuna.exceptions.DuplicatedStudyError,
                optuna.exceptions.UpdateFinishedTrialError, KeyError) as e:
            reply = {"raise": type(e).__name__, "message": str(e)}
        return json.dumps(reply).encode()

    import socket

    # A clear line for an address in use or not this machine's, before gRPC would log the
    # same failure in its own words.
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        # As gRPC binds: a restarted proxy takes its port back from connections closing.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host.strip("[]"), port))
    # Not gRPC's default SO_REUSEPORT: a second proxy on the port would take half the calls.
    server = grpc.server(ThreadPoolExecutor(max_workers=threads, thread_name_prefix="proxy"),
                         options=[("grpc.so_reuseport", 0)])
    api_pb2_grpc.add_StorageServiceServicer_to_server(OptunaStorageProxyService(cached), server)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(GRPC_SERVICE, {
        "Call": grpc.unary_unary_rpc_method_handler(call)}),))
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as e:  # grpc >= 1.60 raises where older ones returned 0
        raise OSError(first_line(e)) from None
    if not bound:
        raise OSError("gRPC could not bind it")
    server.start()
    return server, bound


@functools.cache
def grpc_storage_class() -> type:
    """Optuna's ``GrpcStorageProxy`` with hpo's claims, heartbeats (recorded by the database
    behind the proxy, by its clock) and study creation through hpo's service of the proxy
    (``grpc_server``); every call waits for a proxy that does not answer (a restart) as a
    database call does (``$HPO_OUTAGE_SECONDS``)."""
    grpc = import_grpc()
    import optuna
    from optuna.storages import GrpcStorageProxy
    from optuna.storages._heartbeat import BaseHeartbeat

    raised = {"BudgetTaken": BudgetTaken,
              "DuplicatedStudyError": optuna.exceptions.DuplicatedStudyError,
              "UpdateFinishedTrialError": optuna.exceptions.UpdateFinishedTrialError,
              "KeyError": KeyError}

    class Storage(GrpcStorageProxy, BaseHeartbeat):
        def __init__(self, *, host: str, port: int, heartbeat_interval: int | None = None,
                     grace_period: int | None = None,
                     heartbeat_stale_trial_callback: Any = None) -> None:
            super().__init__(host=host, port=port)
            self.heartbeat_interval = heartbeat_interval
            self.grace_period = grace_period
            self.heartbeat_stale_trial_callback = heartbeat_stale_trial_callback

        def _setup(self) -> None:
            super()._setup()
            self._hpo = self._channel.unary_unary(_GRPC_METHOD)

        def hpo_call(self, op: str, **args: Any) -> Any:
            """An operation of hpo's service of the proxy."""
            reply = json.loads(self._hpo(json.dumps({"op": op, "args": args}).encode()))
            if "raise" in reply:
                raise raised[reply["raise"]](reply["message"])
            return reply["result"]

        def hello(self) -> dict[str, Any]:
            return self.hpo_call("hello")

        def create_new_trial(self, study_id: int, template_trial: Any = None) -> int:
            running = _running_template(template_trial)
            if running is None or template_trial is None:
                return super().create_new_trial(study_id, template_trial)
            attrs, budget = running
            return self.hpo_call("create_trial", study_id=study_id, attrs=attrs, budget=budget)

        def claim_trial(self, study_id: int, trial_id: int, attrs: dict[str, Any],
                        budget: int | None = None) -> bool:
            return self.hpo_call("claim_trial", study_id=study_id, trial_id=trial_id,
                                 attrs=attrs, budget=budget)

        def set_trial_user_attrs(self, trial_id: int, attrs: dict[str, Any]) -> None:
            self.hpo_call("set_trial_user_attrs", trial_id=trial_id, attrs=attrs)

        def create_study_with_attrs(self, directions: list[Any], name: str,
                                    attrs: dict[str, Any]) -> int:
            return self.hpo_call("create_study_with_attrs", directions=[int(d) for d in directions],
                                 name=name, attrs=attrs)

        def record_heartbeat(self, trial_id: int) -> None:
            self.hpo_call("record_heartbeat", trial_id=trial_id)

        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            grace = self.grace_period or 2 * (self.heartbeat_interval or 0)
            return self.hpo_call("stale_trial_ids", study_id=study_id, grace_period=grace)

        def get_heartbeat_interval(self) -> int | None:
            return self.heartbeat_interval

        def get_heartbeat_stale_trial_callback(self) -> Any:
            return self.heartbeat_stale_trial_callback

    def waiting(method: Any) -> Any:
        @functools.wraps(method)
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            if getattr(_grpc_inside, "depth", 0):
                return method(self, *args, **kwargs)
            _grpc_inside.depth = 1
            try:
                return _through_proxy_outage(lambda: method(self, *args, **kwargs), self, grpc)
            finally:
                _grpc_inside.depth = 0
        return call

    for name in _GRPC_RETRIED:
        setattr(Storage, name, waiting(getattr(Storage, name)))
    return Storage


_grpc_inside = threading.local()
_GRPC_RETRIED = (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions",
    "get_study_user_attrs", "get_study_system_attrs", "get_all_studies", "create_new_trial",
    "set_trial_param", "get_trial_id_from_study_id_trial_number", "set_trial_state_values",
    "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr",
    "get_trial", "get_all_trials", "claim_trial", "set_trial_user_attrs",
    "create_study_with_attrs", "record_heartbeat", "_get_stale_trial_ids", "hello")


class ProxyUnavailable(ConnectionError):
    """The gRPC storage proxy did not answer for the outage window."""


def _through_proxy_outage(call: Any, storage: Any, grpc: Any) -> Any:
    """``call``; while the proxy does not answer (a restart), wait and try again for up to
    ``$HPO_OUTAGE_SECONDS`` from the first failure, as a database call does."""
    import time

    from hpo.outage import outage_seconds

    deadline, delay = None, 0.5
    while True:
        try:
            return call()
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            now = time.monotonic()
            if deadline is None:
                deadline = now + outage_seconds()
            if now >= deadline:
                raise ProxyUnavailable(
                    f"the storage proxy grpc://{storage._host}:{storage._port} did not answer "
                    f"for {outage_seconds():g}s: {e.details()}") from None
            log.warning("storage proxy unavailable (%s); retrying in %.1fs", e.details(), delay)
            time.sleep(min(delay, max(0.0, deadline - now)))
            delay = min(delay * 2, 5.0)
