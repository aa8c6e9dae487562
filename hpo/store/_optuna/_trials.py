"""A trial's life through Optuna's private API: claim (``ask``), heartbeat, tell, re-queue,
fail and retry, several attrs in one write, a study created with its attrs."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from hpo.store.outage import first_line

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

log = logging.getLogger("hpo")


def create_study_with_attrs(
    storage: Any, directions: list[Any], name: str, attrs: dict[str, Any]
) -> int:
    """A study and its user attrs in one transaction on hpo's storage; one after the other on
    any other (in-memory: no other process shares it). Raises ``DuplicatedStudyError``."""
    if hasattr(storage, "create_study_with_attrs"):
        return storage.create_study_with_attrs(directions, name, attrs)
    study_id = storage.create_new_study(directions, study_name=name)
    for key, value in attrs.items():
        storage.set_study_user_attr(study_id, key, value)
    return study_id


def backend_of(study: optuna.Study) -> Any:
    """hpo's storage under the study's cache, where Optuna put one (``RDBStorage``): its own
    methods are there. The journal and the gRPC proxy are not cached: they are themselves."""
    return _uncached(study._storage)


def _uncached(storage: Any) -> Any:
    from optuna.storages import _CachedStorage

    return storage._backend if isinstance(storage, _CachedStorage) else storage


# --------------------------------------------------------------------------------------------
# The trial lifecycle: claim, heartbeat, tell, re-queue, fail and retry.


def ask(
    study: optuna.Study,
    attrs: dict[str, Any],
    waiting: list[FrozenTrial],
    budget: int | None = None,
    create: bool = True,
) -> optuna.Trial | None:
    """``study.ask()`` that claims a trial with ``attrs`` and a heartbeat in one transaction:
    a queued trial of ``waiting`` (the study as read a moment ago) first, as Optuna does, else
    a new one (unless ``create`` is false).

    Returns:
        The trial; None if ``budget`` trials are running or finished already (checked in the
        claim's transaction, so several workers asking at once never overshoot it), or if
        ``create`` is false and every trial of ``waiting`` was taken by another worker.
    """
    import optuna
    from optuna.trial import TrialState

    study._thread_local.cached_all_trials = None  # as ask() does: samplers read afresh
    storage = backend_of(study)
    try:
        for t in waiting:
            if t.state == TrialState.WAITING and storage.claim_trial(
                study._study_id, t._trial_id, attrs, budget
            ):
                return optuna.Trial(study, t._trial_id)
        if not create:
            return None
        # Through Optuna's cache, which must know the new trial (the template's state, attrs
        # and budget reach ``HpoRDBStorage._get_prepared_new_trial``).
        template = claim_template(attrs, budget)
        return optuna.Trial(study, study._storage.create_new_trial(study._study_id, template))
    except BudgetTaken:
        return None


class BudgetTaken(Exception):
    """The budget's trials are all running or finished: no trial is claimed."""


_BUDGET = "hpo:budget"
"""Carries the budget from ``ask`` into the creating transaction; never stored."""
_CLAIM = "hpo:claim"
"""Marks ``ask``'s creation as hpo's claim (a heartbeat, the budget); never stored."""


@contextlib.contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
    """Record ``trial``'s heartbeat every heartbeat interval while the block runs, as
    ``study.optimize`` does, except that a failed write does not end the thread: a heartbeat
    thread that died in a database outage would let a trial that is still training go stale."""
    from optuna.storages._heartbeat import BaseHeartbeat

    storage = study._storage
    # As Optuna's is_heartbeat_enabled: a storage without heartbeats (in memory) has none.
    interval = storage.get_heartbeat_interval() if isinstance(storage, BaseHeartbeat) else None
    if not interval or not isinstance(storage, BaseHeartbeat):
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


def tell(
    study: optuna.Study,
    trial: optuna.Trial,
    value: float | list[float] | None,
    state: optuna.trial.TrialState | None,
) -> tuple[optuna.trial.TrialState | None, str]:
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
            state is not None or now.values == _as_list(value)
        ):
            return now.state, ""  # our own write landed before a lost connection's retry
        return None, f"trial {trial.number} was already {now.state.name} ({e})"


def _as_list(value: float | list[float] | None) -> list[float] | None:
    return None if value is None else value if isinstance(value, list) else [value]


def frozen(study: optuna.Study, trial: optuna.Trial) -> FrozenTrial:
    """The trial as stored now (one read of that trial alone)."""
    return study._storage.get_trial(trial._trial_id)


def requeue(study: optuna.Study, trial: optuna.Trial) -> bool:
    """Put a running trial back in the queue: WAITING, same number, params and values kept.
    False if it had finished meanwhile."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    try:
        return bool(study._storage.set_trial_state_values(trial._trial_id, TrialState.WAITING))
    except UpdateFinishedTrialError:
        return False


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


def set_intermediate_value(trial: optuna.Trial, value: float, step: int) -> None:
    """``trial.report`` without its refusal of several objectives: the learning curve of a
    multi-objective trial (which no pruner reads)."""
    trial.storage.set_trial_intermediate_value(trial._trial_id, step, float(value))
    trial._cached_frozen_trial.intermediate_values[step] = float(value)


@contextlib.contextmanager
def no_experimental_warnings() -> Iterator[None]:
    """Silence Optuna's warnings that heartbeat and stale-trial retry are experimental."""
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def claim_template(attrs: dict[str, Any], budget: int | None) -> FrozenTrial:
    """The template of a trial that hpo creates for a worker: running, with the worker's
    ``attrs``, marked as hpo's claim (``_CLAIM``: it gets a heartbeat, and ``budget`` is
    checked in the creating transaction). Neither mark is stored."""
    import datetime

    from optuna.trial import FrozenTrial, TrialState

    system: dict[str, Any] = {_CLAIM: True}
    if budget is not None:
        system[_BUDGET] = budget
    return FrozenTrial(
        number=0,
        state=TrialState.RUNNING,
        value=None,
        datetime_start=datetime.datetime.now(),
        datetime_complete=None,
        params={},
        distributions={},
        user_attrs=dict(attrs),
        system_attrs=system,
        intermediate_values={},
        trial_id=0,
    )


def claimed(template: Any) -> tuple[dict[str, Any], int | None] | None:
    """``(attrs, budget)`` of a trial that hpo creates for a worker (``claim_template``); None
    for any other creation (a plain ``study.ask()``, a queued retry, an enqueued or added
    trial), which Optuna's own code creates as it would: no heartbeat, the template's
    times."""
    if template is None or not template.system_attrs.get(_CLAIM):
        return None
    return dict(template.user_attrs), template.system_attrs.get(_BUDGET)


def study_view(
    study: optuna.Study, trials_of: Callable[[list[FrozenTrial]], list[FrozenTrial]]
) -> optuna.Study:
    """``study`` as a sampler should see it: every attribute the study's, except its trials,
    which are ``trials_of`` the study's (Optuna's samplers read them through the private
    ``Study._get_trials``)."""

    class StudyView:
        def __getattr__(self, name: str) -> Any:
            return getattr(study, name)

        def _get_trials(
            self, deepcopy: bool = True, states: Any = None, use_cache: bool = False
        ) -> list[FrozenTrial]:
            trials = trials_of(study._get_trials(deepcopy=False, use_cache=use_cache))
            return [t for t in trials if states is None or t.state in states]

        def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[FrozenTrial]:
            return self._get_trials(deepcopy, states)

        @property
        def trials(self) -> list[FrozenTrial]:
            return self._get_trials()

    return StudyView()  # type: ignore[return-value]
