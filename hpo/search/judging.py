"""What a sampler learns from under the ``promotion`` pruner: each configuration once, judged
where it stopped (``JudgingSampler``).

Optuna's TPE ranks every pruned trial below every complete one. Under the promotion pruner a
paused configuration is a pruned trial for a while, and the short schedules complete first
(one rung to pass, not two), so TPE turned away from the long schedules
(``benchmarks/RESULTS.md``). A TPE sampler of a promotion study samples through
``JudgingSampler``, which shows it each configuration once, ranked by ``judged_order``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import optuna

from hpo.search.schedulers.continuation import configuration, configurations

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial


def judged_order(
    configs: dict[int, tuple[dict[int, float], float | None]], maximize: bool = False
) -> list[int]:
    """The configurations best first, each judged at the depth it shares with the other.

    ``configs`` maps a configuration to its learning curve (report step -> validation loss)
    and its final value (None while it has not completed: paused, or pruned). Two
    configurations are compared at the shallower of their depths (a paused one's last step;
    a complete one has all depths): by the best value each had reached by that step, a
    complete configuration that ended sooner by its final value. So a configuration paused at
    1.5 epochs ranks by how it stood at 1.5 epochs against one that completed 1 epoch, not
    below it because it has not completed: Optuna's TPE ranks every pruned trial below every
    complete one, and with the ``promotion`` pruner the short schedules complete first (one
    rung to pass, not two), so TPE turned away from the long schedules (benchmarks/RESULTS.md).
    Ties: the deeper first, then the earlier."""
    from functools import cmp_to_key

    sign = -1.0 if maximize else 1.0
    depth = {
        c: math.inf if final is not None else max(curve, default=0)
        for c, (curve, final) in configs.items()
    }

    def at(c: int, step: float) -> float:
        curve, final = configs[c]
        if final is not None and step >= max(curve, default=0):
            return sign * final
        seen = [sign * v for s, v in curve.items() if s <= step and math.isfinite(v)]
        return min(seen, default=math.inf)

    def compare(a: int, b: int) -> int:
        step = min(depth[a], depth[b])
        key_a = (at(a, step), -depth[a], a)
        key_b = (at(b, step), -depth[b], b)
        return -1 if key_a < key_b else 1 if key_a > key_b else 0

    return sorted(configs, key=cmp_to_key(compare))


def judged_trials(trials: list[FrozenTrial], maximize: bool = False) -> list[FrozenTrial]:
    """``trials`` as the sampler should learn from them: each configuration that has paused,
    been pruned or completed once, as a COMPLETE copy of its latest such attempt whose value
    is its place in ``judged_order`` (0 the best; negated when maximizing), with the curve of
    all its attempts. A TPE sampler splits its trials by that order alone. Waiting and failed
    trials, and running ones of a configuration not judged yet, are kept as they are; a
    superseded attempt (a pause that a continuation took over) and a running continuation
    are not shown apart from their configuration."""
    import copy

    from optuna.trial import TrialState

    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    found = configurations(trials)
    configs = {c: (curve, final) for c, (_, curve, final) in found.items()}
    latest = {c: attempt for c, (attempt, _, _) in found.items()}
    judged = []
    for place, config in enumerate(judged_order(configs, maximize)):
        view = copy.copy(latest[config])
        view.state = TrialState.COMPLETE
        view.values = [-float(place) if maximize else float(place)]
        view.intermediate_values = configs[config][0]
        judged.append(view)
    kept = [
        t
        for t in trials
        if t.state not in finished
        and not (t.state == TrialState.RUNNING and configuration(t) in configs)
    ]
    return sorted(judged + kept, key=lambda t: t.number)


def completed_trials(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """``trials`` as a sampler of several objectives should learn from them: without the
    pruned ones (a pause, a stop). Optuna's TPE ranks a pruned trial by its last value in the
    study's one direction, which a study of several objectives has not (it raised, and every
    trial after TPE's random start failed); a paused configuration counts once it completes."""
    from optuna.trial import TrialState

    return [t for t in trials if t.state != TrialState.PRUNED]


class JudgingSampler(optuna.samplers.BaseSampler):
    """Samples as ``inner`` (a TPE sampler) does, from ``judged_trials`` instead of the raw
    trials (with several objectives: ``completed_trials``): a study with the ``promotion``
    pruner gets it (``hpo.search.study.make_sampler``)."""

    def __init__(self, inner: optuna.samplers.BaseSampler) -> None:
        self.inner = inner
        self._cache: dict[tuple[str, int], list[FrozenTrial]] = {}

    def _judged(self, study: optuna.Study, trial: FrozenTrial) -> Any:
        """The study as ``inner`` sees it while sampling ``trial``: judged once per trial,
        not for each parameter (an independent TPE asks for the trials several times a
        parameter)."""
        from hpo.store._optuna import study_view

        several = len(study.directions) > 1
        maximize = not several and study.direction == optuna.study.StudyDirection.MAXIMIZE

        def trials_of(trials: list[FrozenTrial]) -> list[FrozenTrial]:
            key = (study.study_name, trial.number)
            if key not in self._cache:
                self._cache.clear()
                judged = completed_trials(trials) if several else judged_trials(trials, maximize)
                self._cache[key] = judged
            return self._cache[key]

        return study_view(study, trials_of)

    def infer_relative_search_space(self, study, trial):
        return self.inner.infer_relative_search_space(self._judged(study, trial), trial)

    def sample_relative(self, study, trial, search_space):
        return self.inner.sample_relative(self._judged(study, trial), trial, search_space)

    def sample_independent(self, study, trial, name, dist):
        return self.inner.sample_independent(self._judged(study, trial), trial, name, dist)

    def before_trial(self, study, trial):
        self.inner.before_trial(study, trial)

    def after_trial(self, study, trial, state, values):
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()
