"""hpo's ``RDBStorage``: atomic claims with the worker's attrs and the budget, several attrs in
one write, a study with its spec, every call retried through a database outage."""

from __future__ import annotations

import copy
import datetime
import json
from typing import Any

import sqlalchemy
from optuna.storages import RDBStorage
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import TrialState

from hpo.records import RESUMED_FROM_ATTR
from hpo.store._optuna._store import STORAGE_CALLS
from hpo.store._optuna._trials import BudgetTaken, claimed
from hpo.store.outage import retrying

# Every storage call, retried through a database outage. Re-running one is harmless: writes
# are upserts or checked state changes (``tell`` recognises its own lost acknowledgement), and
# a trial created twice is one more that goes stale and is retried like any other.
_RETRIED = STORAGE_CALLS + (
    "get_trial_number_from_id",
    "get_trial_param",
    "get_n_trials",
    "get_best_trial",
    "stale_trial_ids",
    # What Optuna's cache of finished trials (``study._storage``) calls on its backend.
    "_create_new_trial",
    "_set_trial_param",
    "_get_best_trial_id",
    "_get_trials",
)


def _taken(session: Any, study_id: int, trial_id: int) -> int:
    """Trials of the study running or finished (complete, pruned), but ``trial_id`` and
    the continuations of paused configurations (``hpo.search.schedulers.continuation``),
    which the budget does not count."""
    t, a = models.TrialModel, models.TrialUserAttributeModel
    continuation = sqlalchemy.exists().where(a.trial_id == t.trial_id, a.key == RESUMED_FROM_ATTR)
    return session.execute(
        sqlalchemy.select(sqlalchemy.func.count(t.trial_id)).where(
            t.study_id == study_id,
            t.trial_id != trial_id,
            t.state.in_([TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED]),
            ~continuation,
        )
    ).scalar()


def _insert_attrs(
    session: Any, model: Any, key_column: str, owner: int, attrs: dict[str, Any]
) -> None:
    # A Core INSERT: the ORM's unit of work costs more than the statement.
    session.execute(
        sqlalchemy.insert(model),
        [
            {key_column: owner, "key": key, "value_json": json.dumps(value)}
            for key, value in attrs.items()
        ],
    )


class HpoRDBStorage(RDBStorage):
    """Optuna's ``RDBStorage`` with hpo's atomic claims, fewer round trips and outage retry
    (see the module docstring)."""

    def _get_prepared_new_trial(self, study_id: int, template_trial: Any, session: Any) -> Any:
        claim = claimed(template_trial)
        if claim is None:  # Optuna's own creation (a plain ask, an enqueued trial)
            return super()._get_prepared_new_trial(study_id, template_trial, session)
        attrs, budget = claim
        template_trial = copy.copy(template_trial)
        template_trial.user_attrs, template_trial.system_attrs = {}, {}
        trial = super()._get_prepared_new_trial(study_id, template_trial, session)
        # Creations of one study are serialized (Optuna locks the study row; SQLite has
        # one writer), so this count is exact: no two workers both take the last trial.
        # Optuna's models declare Column, not Mapped[int]: an instance's trial_id is an int.
        trial_id: int = trial.trial_id  # type: ignore[assignment]
        if budget is not None and _taken(session, study_id, trial_id) >= budget:
            raise BudgetTaken(budget)
        if attrs:
            _insert_attrs(session, models.TrialUserAttributeModel, "trial_id", trial_id, attrs)
        # Stale from its first moment: a trial without a heartbeat row is never found by the
        # stale-trial search. Only hpo's claims get one: nothing beats for a plain ask().
        session.add(models.TrialHeartbeatModel(trial_id=trial_id))
        return trial

    def claim_trial(
        self, study_id: int, trial_id: int, attrs: dict[str, Any], budget: int | None = None
    ) -> bool:
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
            ).rowcount  # type: ignore[attr-defined]  # an UPDATE's result is a CursorResult
            if took != 1:
                return False
            if budget is not None and _taken(session, study_id, trial_id) >= budget:
                raise BudgetTaken(budget)
            for key, value in attrs.items():
                self._set_trial_attr_without_commit(
                    session, models.TrialUserAttributeModel, trial_id, key, value
                )
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
                    session, models.TrialUserAttributeModel, trial_id, key, value
                )

    def create_study_with_attrs(
        self, directions: list[Any], name: str, attrs: dict[str, Any]
    ) -> int:
        """A study and its user attrs in one transaction.

        Raises:
            optuna.exceptions.DuplicatedStudyError: a study of that name exists.
        """
        import optuna

        try:
            with _create_scoped_session(self.scoped_session) as session:
                study = models.StudyModel(
                    study_name=name,
                    directions=[
                        models.StudyDirectionModel(objective=i, direction=d)
                        for i, d in enumerate(directions)
                    ],
                )
                session.add(study)
                session.flush()
                # Optuna's models declare Column, not Mapped[int]: the value is an int.
                study_id: int = study.study_id  # type: ignore[assignment]
                _insert_attrs(session, models.StudyUserAttributeModel, "study_id", study_id, attrs)
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
            now = session.execute(sqlalchemy.func.now()).scalar_one().replace(tzinfo=None)
            rows = session.execute(
                sqlalchemy.select(t.trial_id, beat.heartbeat)
                .join(beat, beat.trial_id == t.trial_id)
                .where(t.study_id == study_id, t.state == TrialState.RUNNING)
            ).all()
        return [
            trial_id
            for trial_id, last in rows
            if now - last > datetime.timedelta(seconds=grace_period)
        ]


for _name in _RETRIED:
    setattr(HpoRDBStorage, _name, retrying(getattr(HpoRDBStorage, _name)))
