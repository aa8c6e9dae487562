"""Study: create from a spec or load by name; sampler and pruner built from the stored spec.

The whole spec is stored in the study's user attrs (``hpo.spec``) together with the service
version (``hpo.version``), so a worker on another machine needs only the study name and the
storage URL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpo import __version__
from hpo.errors import HpoError, SpecError, StudyNotFoundError
from hpo.records import SPEC_ATTR, VERSION_ATTR, best_or_none, pareto_trials
from hpo.search.schedulers import make_pruner
from hpo.spec import Spec, parse_spec
from hpo.store._optuna import create_study_with_attrs

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial


def create_study(
    spec: Spec, storage: optuna.storages.BaseStorage, source: str = "<spec>"
) -> optuna.Study:
    """Create the spec's study, or load it if it exists with the same spec.

    Safe when many workers call it at once: the loser of the creation race loads the study.
    A study that exists with another spec is an error, except for the budget, which a rerun
    may change. The ``warm_start`` trials are enqueued by the creator alone, so once however
    many machines run the spec.

    Args:
        spec: the study spec.
        storage: from ``hpo.store.storage.open_storage``.
        source: the spec file, named in errors.

    Raises:
        HpoError: the study exists with a different spec.
        SpecError: ``warm_start`` names a study that is missing or does not fit (checked
            before the new study is written).
    """
    import optuna

    from hpo.search.warm_start import enqueue_first_guesses, plan_first_guesses

    name = spec.study.name
    guesses = []
    if spec.warm_start is not None and not _exists(storage, name):
        guesses = plan_first_guesses(spec, storage, source)
    given, spec = spec, with_sampler_defaults(spec)  # stored: the study stays reproducible
    try:
        # The study and its spec in one transaction: a concurrent create of the same name
        # either loses here and compares specs below, or finds the winner's spec stored.
        create_study_with_attrs(
            storage,
            [optuna.study.StudyDirection[d.upper()] for d in spec.study.directions],
            name,
            {SPEC_ATTR: spec.to_dict(), VERSION_ATTR: __version__},
        )
    except optuna.exceptions.DuplicatedStudyError:
        stored = _stored_spec(storage, name)
        spec = _with_stored_defaults(given, stored)
        _check_same(stored, spec)
        assert stored is not None  # _check_same raised otherwise
        if stored.budget != spec.budget:
            storage.set_study_user_attr(
                storage.get_study_id_from_name(name), SPEC_ATTR, spec.to_dict()
            )
        return load_study(name, storage)[0]
    study = load_study(name, storage)[0]
    if guesses:
        enqueue_first_guesses(study, guesses)
    return study


def _with_stored_defaults(spec: Spec, stored: Spec | None) -> Spec:
    """``spec`` with the sampler defaults its study was created with, where ``spec`` leaves
    them to hpo (a rerun with another budget keeps the study's sampler)."""
    from dataclasses import replace

    if (
        stored is None
        or stored.sampler.name != spec.sampler.name
        or "n_startup_trials" in spec.sampler.options
        or "n_startup_trials" not in stored.sampler.options
    ):
        return spec
    startup = stored.sampler.options["n_startup_trials"]
    return replace(
        spec,
        sampler=replace(
            spec.sampler, options={**spec.sampler.options, "n_startup_trials": startup}
        ),
    )


def _exists(storage: optuna.storages.BaseStorage, name: str) -> bool:
    try:
        storage.get_study_id_from_name(name)
    except KeyError:
        return False
    return True


def load_study(
    name: str, storage: optuna.storages.BaseStorage, *, seed_offset: int = 0
) -> tuple[optuna.Study, Spec]:
    """Load a study by name with the sampler and pruner its stored spec asks for.

    Args:
        name: the study name.
        storage: from ``hpo.store.storage.open_storage``.
        seed_offset: added to the sampler's seed so that each worker samples differently.

    Raises:
        StudyNotFoundError: no such study (the message lists the ones there are).
    """
    import optuna

    spec = _stored_spec(storage, name)
    if spec is None:
        names = sorted(s.study_name for s in storage.get_all_studies())
        have = f"; studies here: {', '.join(names)}" if names else "; the storage has none"
        raise StudyNotFoundError(f"no hpo study named {name!r}{have}")
    study = optuna.load_study(
        study_name=name,
        storage=storage,
        sampler=make_sampler(spec, seed_offset),
        pruner=make_pruner(spec),
    )
    return study, spec


def _stored_spec(storage: optuna.storages.BaseStorage, name: str) -> Spec | None:
    """The spec stored in study ``name``; None if there is no such study.

    Raises:
        HpoError: the study exists but was not made by hpo (it has no spec). hpo stores the
            spec in the transaction that creates the study, so it is never missing briefly.
    """
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return None
    attrs = storage.get_study_user_attrs(study_id)
    if SPEC_ATTR not in attrs:
        raise HpoError(f"study {name!r} was not made by hpo (it has no {SPEC_ATTR} attribute)")
    return parse_spec(attrs[SPEC_ATTR], source=f"study {name}", check_environment=False)


def _check_same(stored: Spec | None, spec: Spec) -> None:
    if stored is None:  # deleted since the create that found it
        raise HpoError(f"study {spec.study.name!r} was deleted while being created; try again")
    old, new = stored.to_dict(), spec.to_dict()
    old.pop("budget"), new.pop("budget")
    if old == new:
        return
    key, was, given = _first_difference(old, new)
    raise SpecError(
        f"study {spec.study.name!r} already exists with a different {key} (stored: {was!r}, "
        f"this spec: {given!r}); give the spec a new study.name to start a new study"
    )


def _first_difference(old: Any, new: Any, path: str = "") -> tuple[str, Any, Any]:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            if old.get(key) != new.get(key):
                return _first_difference(old.get(key), new.get(key), f"{path}.{key}".lstrip("."))
    return path or "spec", old, new


def pick_trial(study: optuna.Study, number: int | None, purpose: str) -> FrozenTrial:
    """The best complete trial, or trial ``number``, which must be complete.

    Args:
        study: the study.
        number: the trial (``--trial``); None: the best, which a study of several objectives
            does not have (the user picks one of its Pareto set).
        purpose: what the trial is for (``export``, ``retrain``), for the messages.

    Raises:
        HpoError: no complete trial, several objectives and no ``number``, no such trial, or
            it did not complete.
    """
    from optuna.trial import TrialState

    name = study.study_name
    if number is None:
        best = best_or_none(study)
        if best is None:
            raise HpoError(f"study {name!r} has no complete trial to {purpose}")
        if len(study.directions) > 1:
            front = ", ".join(f"#{t.number}" for t in pareto_trials(study))
            raise HpoError(
                f"study {name!r} has several objectives and no one best trial; "
                f"give --trial N, one of its Pareto set: {front}"
            )
        return best
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in trials:
        raise HpoError(
            f"study {name!r} has no trial #{number}"
            + (f" (its trials are #0-#{max(trials)})" if trials else "")
        )
    trial = trials[number]
    if trial.state != TrialState.COMPLETE:
        raise HpoError(
            f"trial #{number} of study {name!r} is {trial.state.name}, not "
            f"COMPLETE; {purpose} a complete trial (leave out --trial for the best)"
        )
    return trial


# --------------------------------------------------------------------------------------------
# Factories.


SMALL_BUDGET = 12
"""A new TPE study of at most this many trials whose spec sets no ``n_startup_trials`` starts
modelling after ``max(2, n_trials // 4)`` random trials, not Optuna's 10, which leave TPE
almost none of such a budget (measured: benchmarks/startup.py, benchmarks/RESULTS.md)."""


def with_sampler_defaults(spec: Spec) -> Spec:
    """The spec with hpo's sampler defaults for its budget written in (``SMALL_BUDGET``), as a
    new study stores it; unchanged where the spec sets them or the budget is larger."""
    from dataclasses import replace

    n = spec.budget.n_trials
    if (
        spec.sampler.name != "tpe"
        or "n_startup_trials" in spec.sampler.options
        or n is None
        or n > SMALL_BUDGET
    ):
        return spec
    options = {**spec.sampler.options, "n_startup_trials": max(2, n // 4)}
    return replace(spec, sampler=replace(spec.sampler, options=options))


def make_sampler(spec: Spec, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler the spec names, seeded with ``seed + seed_offset`` where a seed is given.
    TPE under the ``promotion`` pruner learns from each configuration judged where it stopped
    (``hpo.search.judging.JudgingSampler``), not from its paused attempts as pruned trials
    (with several objectives: from the configurations that completed)."""
    import optuna

    options = dict(spec.sampler.options)
    if options.get("seed") is not None:
        options["seed"] = options["seed"] + seed_offset
    name = spec.sampler.name
    if name == "grid":
        from hpo.search.grid import GridSampler

        space = {p.name: p.grid() for p in spec.search_space if p.searched}
        return GridSampler(space, **options)
    cls = {
        "tpe": optuna.samplers.TPESampler,
        "random": optuna.samplers.RandomSampler,
        "gp": optuna.samplers.GPSampler,
        "cmaes": optuna.samplers.CmaEsSampler,
        "qmc": optuna.samplers.QMCSampler,
        "nsga2": optuna.samplers.NSGAIISampler,
    }[name]
    sampler = cls(**options)
    if name == "tpe" and spec.pruner.name == "promotion":
        from hpo.search.judging import JudgingSampler

        return JudgingSampler(sampler)
    return sampler
