"""hpo's ``JournalStorage`` on a file: claims, the budget and study creation under the
journal's file lock, heartbeats as a trial system attr."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.storages.journal._storage import JournalOperation as Op
from optuna.trial import TrialState

from hpo.records import is_continuation
from hpo.store._optuna._heartbeat import OwnHeartbeat
from hpo.store._optuna._trials import BudgetTaken, claimed

# A storage without a database (the gRPC proxy, ``_grpc``, is the other): it gets what hpo's
# RDB storage has: heartbeats, the stale-trial retry, atomic claims with the worker's attrs and
# the budget, a study created with its spec, several attrs in one write.

HEARTBEAT_ATTR = "hpo:heartbeat"
"""A journal trial's last heartbeat: a trial system attr, seconds since the epoch by the
worker's clock (machines that share a study need synchronized clocks, as Slurm's do)."""


class _LockingBackend(JournalFileBackend):
    """Optuna's journal file whose lock ``locked`` holds across a read and appends."""

    def __init__(self, path: str) -> None:
        self._hpo_lock = JournalFileSymlinkLock(path)
        self._held = threading.local()
        super().__init__(path, lock_obj=self._hpo_lock)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_held"]  # a thread's own flag: a copy in another process holds nothing
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._held = threading.local()

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
        with open(self._file_path, "ab") as f:  # the lock is ours already
            f.write(
                ("\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n").encode(
                    "utf-8"
                )
            )
            f.flush()
            os.fsync(f.fileno())


def _now_iso() -> str:
    return datetime.datetime.now(tz=datetime.timezone.utc).isoformat(timespec="microseconds")


class HpoJournalStorage(JournalStorage, OwnHeartbeat):
    """Optuna's ``JournalStorage`` on a ``JournalFileBackend`` with hpo's claims, heartbeats
    and study creation. Every write that must check before it writes (a claim, the budget, a
    study's name) holds the journal's file lock from its read to its append, so it is one
    transaction: every process appends under that lock."""

    _backend: _LockingBackend  # what __init__ gives JournalStorage

    def __init__(
        self,
        path: str,
        *,
        heartbeat_interval: int | None = None,
        grace_period: int | None = None,
        heartbeat_stale_trial_callback: Any = None,
    ) -> None:
        # Checked first: a bad value opens no file and no channel.
        self._set_heartbeat(heartbeat_interval, grace_period, heartbeat_stale_trial_callback)
        super().__init__(_LockingBackend(path))
        self.path = path

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """The journal as of now, and nobody else's appends until the block ends."""
        with self._thread_lock, self._backend.locked():
            self._sync_with_backend()
            yield
            self._sync_with_backend()

    def _append(self, logs: Sequence[tuple[int, Mapping[str, Any]]]) -> None:
        worker = self._replay_result.worker_id
        self._backend.append_logs(
            [{"op_code": op, "worker_id": worker, **fields} for op, fields in logs]
        )

    def _taken(self, study_id: int, but: int | None = None) -> int:
        return sum(
            t._trial_id != but and not is_continuation(t)
            for t in self._replay_result.get_all_trials(
                study_id, (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
            )
        )

    def create_new_trial(self, study_id: int, template_trial: Any = None) -> int:
        claim = claimed(template_trial)
        if claim is None:
            return super().create_new_trial(study_id, template_trial)
        attrs, budget = claim
        with self._transaction():
            if budget is not None and self._taken(study_id) >= budget:
                raise BudgetTaken(budget)
            # With its heartbeat: stale from its first moment.
            self._append(
                [
                    (
                        Op.CREATE_TRIAL,
                        {
                            "study_id": study_id,
                            "datetime_start": _now_iso(),
                            "state": TrialState.RUNNING,
                            "value": None,
                            "values": None,
                            "distributions": {},
                            "params": {},
                            "user_attrs": attrs,
                            "system_attrs": {HEARTBEAT_ATTR: _now()},
                            "intermediate_values": {},
                        },
                    )
                ]
            )
        return self._replay_result._last_created_trial_id_by_this_process

    def claim_trial(
        self, study_id: int, trial_id: int, attrs: dict[str, Any], budget: int | None = None
    ) -> bool:
        """As the RDB storage's: WAITING -> RUNNING with ``attrs`` and a heartbeat."""
        with self._transaction():
            trial = self._replay_result.get_trial(trial_id)
            if trial.state != TrialState.WAITING:
                return False
            if budget is not None and self._taken(study_id, trial_id) >= budget:
                raise BudgetTaken(budget)
            self._append(
                [
                    (
                        Op.SET_TRIAL_STATE_VALUES,
                        {
                            "trial_id": trial_id,
                            "values": None,
                            "state": TrialState.RUNNING,
                            "datetime_start": _now_iso(),
                        },
                    )
                ]
                + [
                    (Op.SET_TRIAL_USER_ATTR, {"trial_id": trial_id, "user_attr": {k: v}})
                    for k, v in attrs.items()
                ]
                + [
                    (
                        Op.SET_TRIAL_SYSTEM_ATTR,
                        {"trial_id": trial_id, "system_attr": {HEARTBEAT_ATTR: _now()}},
                    )
                ]
            )
        return True

    def set_trial_user_attrs(self, trial_id: int, attrs: dict[str, Any]) -> None:
        """Several user attrs of a running trial in one append."""
        with self._thread_lock:
            self._append(
                [
                    (Op.SET_TRIAL_USER_ATTR, {"trial_id": trial_id, "user_attr": {k: v}})
                    for k, v in attrs.items()
                ]
            )
            self._sync_with_backend()  # raises as Optuna does if the trial had finished

    def create_study_with_attrs(
        self, directions: list[Any], name: str, attrs: dict[str, Any]
    ) -> int:
        with self._transaction():
            if any(s.study_name == name for s in self._replay_result.get_all_studies()):
                raise optuna.exceptions.DuplicatedStudyError(name)
            study_id = self._replay_result._next_study_id
            self._append(
                [
                    (
                        Op.CREATE_STUDY,
                        {"study_name": name, "directions": [int(d) for d in directions]},
                    )
                ]
                + [
                    (Op.SET_STUDY_USER_ATTR, {"study_id": study_id, "user_attr": {k: v}})
                    for k, v in attrs.items()
                ]
            )
        return study_id

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, _now())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        grace = self.grace_seconds()
        with self._thread_lock:
            self._sync_with_backend()
            running = self._replay_result.get_all_trials(study_id, (TrialState.RUNNING,))
        now = _now()
        return [
            t._trial_id
            for t in running
            if HEARTBEAT_ATTR in t.system_attrs and now - t.system_attrs[HEARTBEAT_ATTR] > grace
        ]


def _now() -> float:
    import time

    return time.time()
