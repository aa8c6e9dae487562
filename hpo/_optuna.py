"""The one module that touches Optuna's private API.

hpo needs what Optuna does not expose: the storage and ids behind a study and a trial, the
tell of ``study.optimize``, and the ``RDBStorage`` internals through which hpo saves round trips
and makes a claim atomic. Every such name is listed in ``PRIVATE_NAMES`` and checked against the
installed Optuna by ``tests/test_optuna_private.py``, which fails by name the day Optuna renames
one; ``pyproject.toml`` pins the range tested.

``storage_class`` is Optuna's ``RDBStorage`` with:

- **atomic claims**: taking a queued trial or creating one writes the worker's attrs and a
  heartbeat in the same transaction (a trial is stale from the moment it is claimed, and never
  carries its previous worker's attrs), and refuses it if the budget is taken;
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
    "optuna.storages._cached_storage": "_CachedStorage._backend",
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
    """hpo's ``storage_class`` instance under the study's cache (its own methods are there)."""
    return getattr(study._storage, "_backend", study._storage)


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
    backend = getattr(storage, "_backend", storage)  # under Optuna's cache of finished trials
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
    "claim_trial", "set_trial_user_attrs", "create_study_with_attrs",
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

    for name in _RETRIED:
        setattr(Storage, name, retrying(getattr(Storage, name)))
    return Storage
