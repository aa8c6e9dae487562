"""What hpo needs of a storage, beyond Optuna's ``BaseStorage``: the trial-store contract.

Every storage ``hpo.store.storage.open_storage`` returns implements it (``HpoRDBStorage``
for SQLite, PostgreSQL and MySQL; ``HpoJournalStorage``; ``HpoGrpcStorage``, whose proxy runs it
on an ``HpoRDBStorage``). ``tests/test_trial_store.py`` runs the contract on all five kinds: a claim
has one winner and writes its attrs and a heartbeat at once; the budget counts
configurations (a continuation takes none of it) and is never overshot; a pause is queued
before its trial is told, and a worker that dies between the two loses nothing (its trial
goes stale and fails without a retry); a continuation is claimed outside the budget, and one
replaced with other params (``hpo.search.schedulers.Resume``) leaves exactly one continuation.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class TrialStore(Protocol):
    """The operations hpo adds to Optuna's storage, each one transaction."""

    def claim_trial(
        self, study_id: int, trial_id: int, attrs: dict[str, Any], budget: int | None = None
    ) -> bool:
        """Take a queued trial: WAITING -> RUNNING with ``attrs`` and a fresh heartbeat. False
        if another worker took it first or it has finished.

        Raises:
            BudgetTaken: ``budget`` configurations are running or finished already (a
                continuation, user attr ``resumed_from``, counts for none).
        """
        ...

    def create_new_trial(self, study_id: int, template_trial: Any = None) -> int:
        """Optuna's, and a claim's creation: with a template that carries hpo's claim (the
        worker's attrs, the budget), the new trial is created RUNNING with them and a
        heartbeat, or refused when the budget is taken. A plain creation starts no heartbeat."""
        ...

    def set_trial_user_attrs(self, trial_id: int, attrs: dict[str, Any]) -> None:
        """Several user attrs of a running trial at once."""
        ...

    def create_study_with_attrs(
        self, directions: list[Any], name: str, attrs: dict[str, Any]
    ) -> int:
        """A study and its user attrs (the spec) at once: no study without its spec."""
        ...

    def record_heartbeat(self, trial_id: int) -> None:
        """The running trial is alive."""
        ...

    def get_heartbeat_interval(self) -> int | None:
        """Seconds between heartbeats."""
        ...


STORAGE_CALLS = (
    "create_new_study",
    "delete_study",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_all_studies",
    "create_new_trial",
    "set_trial_param",
    "get_trial_id_from_study_id_trial_number",
    "set_trial_state_values",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial",
    "get_all_trials",
    "claim_trial",
    "set_trial_user_attrs",
    "create_study_with_attrs",
    "record_heartbeat",
    "_get_stale_trial_ids",
)
"""The calls of a storage that go to its database or proxy: each one is retried through an
outage (``HpoRDBStorage``, ``HpoGrpcStorage``; each adds the calls of its own)."""
