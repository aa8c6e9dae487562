"""Warm start: a new study's first trials, enqueued once when the study is created.

``warm_start.defaults`` enqueues the model family's known-good configuration
(``hpo.spec.FAMILIES``) as trial 0; ``warm_start.from`` enqueues the best ``top_k`` distinct
configurations of an earlier study after it. Each is a real trial of the new study (it runs on
the new task and counts in its budget) and carries the trial user attr ``first_guess`` saying
where it came from; the study user attr ``hpo.first_guesses`` lists them all.

The earlier study's trials are enqueued, not imported: an imported trial would count as a
finished trial of the new budget, and its value was measured on another task (another model,
data or seed) that the new study's values must not be compared with.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hpo.errors import SpecError
from hpo.records import FIRST_GUESS_ATTR, FIRST_GUESSES_ATTR, format_value, rank_key
from hpo.spec import ParamSpec, Spec, family_of

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("hpo")


@dataclass(frozen=True)
class Guess:
    """A first trial: its params (searched ones only) and where it came from."""

    params: dict[str, Any]
    origin: str


def plan_first_guesses(
    spec: Spec, storage: optuna.storages.BaseStorage, source: str = "<spec>"
) -> list[Guess]:
    """The first trials the spec's ``warm_start`` asks for, in the order they will run.

    Incompatible trials of the earlier study (a value outside this search space) are skipped
    with a warning naming them.

    Args:
        spec: the new study's spec (``spec.warm_start`` set).
        storage: the new study's storage, where ``warm_start.from`` is read unless
            ``warm_start.storage`` names another.
        source: the spec file, named in errors.

    Raises:
        SpecError: the earlier study is missing, has several objectives, has no
            complete trial, or none of its best trials fits this search space.
    """
    warm = spec.warm_start
    assert warm is not None
    guesses = []
    if warm.defaults:
        family = family_of(spec.task)
        assert family is not None  # parse_spec refuses defaults for a custom job
        params = fit_to_space(family.params, spec)
        if params:
            guesses.append(Guess(params, f"defaults ({family.name})"))
        else:  # an empty guess would be one more sampled trial under a misleading name
            log.warning("warm start: none of the %s defaults fits this search space", family.name)
    if warm.source is not None:
        guesses += _from_study(spec, storage, source)
    return guesses


def enqueue_first_guesses(study: optuna.Study, guesses: list[Guess]) -> None:
    """Enqueue ``guesses`` and record them on the study (``hpo.first_guesses``)."""
    for guess in guesses:
        study.enqueue_trial(guess.params, user_attrs={FIRST_GUESS_ATTR: guess.origin})
    study.set_user_attr(FIRST_GUESSES_ATTR, [g.origin for g in guesses])
    for guess in guesses:
        log.info("first guess from %s: %s", guess.origin, guess.params)


def fit_to_space(values: Mapping[str, Any], spec: Spec) -> dict[str, Any]:
    """``values`` clipped into the spec's search space: numbers into their range (and onto
    their step), a categorical value kept only where it is a choice. Only searched parameters
    whose ``when`` holds are set; the rest are sampled (or fixed by the spec)."""
    out: dict[str, Any] = {}
    for p in _applicable(spec, values):
        v = values.get(p.name)
        if v is None:
            continue
        if p.type == "categorical":
            if v in p.choices:
                out[p.name] = v
            continue
        v = min(max(v, p.low), p.high)
        if p.step is not None:
            v = min(p.low + round((v - p.low) / p.step) * p.step, p.high)
        out[p.name] = int(round(v)) if p.type == "int" else float(v)
    return out


def _applicable(spec: Spec, values: Mapping[str, Any]) -> Iterator[ParamSpec]:
    """Each searched parameter whose ``when`` holds given ``values``, the spec's fixed values
    and the defaults (a parent that is neither set nor fixed leaves its children sampled)."""
    known: dict[str, Any] = {p.name: p.value for p in spec.search_space if not p.searched}
    for p in spec.search_space:
        if not p.searched:
            continue
        if p.name in values:
            known[p.name] = values[p.name]
        if all(k in known and known[k] in vs for k, vs in p.when):
            yield p
        else:
            known.pop(p.name, None)


def _problem(p: ParamSpec, v: Any) -> str | None:
    """Why ``v`` is not a value of ``p``'s distribution, or None."""
    if p.type == "categorical":
        return (
            None
            if v in p.choices
            else f"{p.name}={format_value(v)} is not among "
            f"{', '.join(map(format_value, p.choices))}"
        )
    assert p.low is not None and p.high is not None  # the parser sets both for float and int
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not p.low <= v <= p.high:
        return (
            f"{p.name}={format_value(v)} is outside [{format_value(p.low)}, {format_value(p.high)}]"
        )
    if p.step is not None and abs((v - p.low) / p.step - round((v - p.low) / p.step)) > 1e-9:
        return f"{p.name}={format_value(v)} is not on the step {format_value(p.step)}"
    return None


def _from_study(spec: Spec, storage: optuna.storages.BaseStorage, source: str) -> list[Guess]:
    import optuna
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    warm = spec.warm_start
    assert warm is not None and warm.source is not None  # warm_start_guesses checked both
    at = f"{source}: warm_start.from"
    if warm.storage is not None:
        from hpo.store.storage import open_storage

        storage = open_storage(warm.storage, create=False)
    where = "warm_start.storage" if warm.storage else "this storage"
    try:
        earlier = optuna.load_study(study_name=warm.source, storage=storage)
    except KeyError:
        raise SpecError(f"{at}: no study named {warm.source!r} in {where}") from None
    if len(earlier.directions) != 1:
        raise SpecError(
            f"{at}: study {warm.source!r} has several objectives; its best trials are those "
            "of one objective"
        )
    key = rank_key(earlier.direction == StudyDirection.MAXIMIZE)  # its best first
    complete = sorted(
        earlier.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
        key=lambda t: (key(t), t.number),
    )
    if not complete:
        raise SpecError(f"{at}: study {warm.source!r} has no complete trial yet")
    searched = {p.name for p in spec.search_space if p.searched}
    guesses: list[Guess] = []
    skipped: list[str] = []
    seen: list[dict[str, Any]] = []
    for t in complete:
        if len(guesses) == warm.top_k:
            break
        given = {k: v for k, v in t.params.items() if k in searched}
        params = {}
        problems = []
        for p in _applicable(spec, given):
            if p.name in given:
                problem = _problem(p, given[p.name])
                if problem:
                    problems.append(problem)
                params[p.name] = given[p.name]
        if problems:
            skipped.append(f"#{t.number} ({'; '.join(problems)})")
            continue
        if params and params not in seen:  # a repeat of a configuration is one guess
            seen.append(params)
            guesses.append(Guess(params, f"study {warm.source} #{t.number}"))
    if not guesses:
        raise SpecError(
            f"{at}: none of the best trials of study {warm.source!r} fits this "
            f"search space: {', '.join(skipped) or 'no searched parameter'}"
        )
    dropped = sorted({k for t in complete for k in t.params if k not in searched})
    if dropped:
        log.warning(
            "warm start from %s: %s not searched here; the spec's value or default is used",
            warm.source,
            ", ".join(dropped),
        )
    if skipped:
        log.warning(
            "warm start from %s: skipped trial(s) outside this search space: %s",
            warm.source,
            ", ".join(skipped),
        )
    return guesses
