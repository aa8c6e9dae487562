"""Samplers and pruners: a spec's ``sampler`` / ``pruner`` (``ComponentSpec``), and the
options each takes: name -> {option: expected type}; the checks of hpo's schedulers
(``SCHEDULER_CHECKS``). ``hpo.search.study`` and ``hpo.search.schedulers`` build them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hpo.spec._checks import _BOOL, _FLOAT, _INT, _NUM, _STR
from hpo.spec._keypath import _At, _show


@dataclass(frozen=True)
class ComponentSpec:
    """A sampler or pruner: its name and keyword options."""

    name: str
    """Which one: a key of ``SAMPLER_OPTIONS`` or ``PRUNER_OPTIONS``."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """Its keyword options, written beside ``name`` in the same mapping."""


SAMPLER_OPTIONS: dict[str, dict[str, str]] = {
    "tpe": {
        "seed": _INT,
        "n_startup_trials": _INT,
        "n_ei_candidates": _INT,
        "multivariate": _BOOL,
        "group": _BOOL,
        "constant_liar": _BOOL,
    },
    "random": {"seed": _INT},
    "gp": {"seed": _INT, "n_startup_trials": _INT, "deterministic_objective": _BOOL},
    "cmaes": {
        "seed": _INT,
        "n_startup_trials": _INT,
        "sigma0": _FLOAT,
        "consider_pruned_trials": _BOOL,
        "with_margin": _BOOL,
        "lr_adapt": _BOOL,
        "warn_independent_sampling": _BOOL,
    },
    "qmc": {"seed": _INT, "qmc_type": _STR, "scramble": _BOOL},
    "grid": {"seed": _INT},
    "nsga2": {
        "seed": _INT,
        "population_size": _INT,
        "mutation_prob": _FLOAT,
        "crossover_prob": _FLOAT,
        "swapping_prob": _FLOAT,
    },
}

"""Sampler name -> its options and their types. ``tpe`` is Optuna's ``TPESampler``, ``random``
``RandomSampler``, ``gp`` ``GPSampler``, ``cmaes`` ``CmaEsSampler``, ``qmc`` ``QMCSampler``,
``grid`` ``GridSampler`` (over every searched parameter, which must be finite), ``nsga2``
``NSGAIISampler``; each option is the constructor argument of the same name, and an option
left out keeps Optuna's default. The options:

- ``seed``: the random seed. Each worker adds its own index to it (and 7919 times the trials
  the study already has when it joins a study under way; 1000 per machine of a Slurm array or
  Kubernetes Job), so that workers do not repeat each other's trials. Default: none (random).
- ``n_startup_trials``: trials sampled at random before the model-based search starts. For a
  new ``tpe`` study of at most 12 trials that sets none, hpo writes ``max(2, n_trials // 4)``
  into the stored spec instead of Optuna's 10.
- ``n_ei_candidates``: candidates TPE scores by expected improvement for each parameter.
- ``multivariate``: TPE models the parameters jointly instead of one by one.
- ``group``: with ``multivariate``, TPE models each set of parameters that appear together
  (conditional parameters) apart.
- ``constant_liar``: TPE treats running trials as bad ones, so that parallel workers spread
  out.
- ``deterministic_objective``: the GP assumes the objective has no noise.
- ``sigma0``: CMA-ES's initial step size.
- ``consider_pruned_trials``: CMA-ES learns from pruned trials too.
- ``with_margin``: CMA-ES with margin, for integer and discrete parameters.
- ``lr_adapt``: CMA-ES adapts its learning rate (for noisy or multimodal objectives).
- ``warn_independent_sampling``: warn when a parameter is sampled independently.
- ``qmc_type``: the low-discrepancy sequence: ``sobol`` (default) or ``halton``.
- ``scramble``: scramble the QMC sequence.
- ``population_size``: NSGA-II's individuals per generation.
- ``mutation_prob``: NSGA-II's probability that a parameter mutates.
- ``crossover_prob``: NSGA-II's probability of a crossover.
- ``swapping_prob``: NSGA-II's probability that a child takes each parameter from the other
  parent.
"""

_STEPS = {
    "n_startup_trials": _INT,
    "n_warmup_steps": _INT,
    "interval_steps": _INT,
    "n_min_trials": _INT,
}
PRUNER_OPTIONS: dict[str, dict[str, str]] = {
    "median": dict(_STEPS),
    "percentile": {"percentile": _FLOAT, **_STEPS},
    "successive_halving": {
        "min_resource": _INT,
        "reduction_factor": _INT,
        "min_early_stopping_rate": _INT,
        "bootstrap_count": _INT,
    },
    "hyperband": {
        "min_resource": _INT,
        "max_resource": _INT,
        "reduction_factor": _INT,
        "bootstrap_count": _INT,
    },
    "patient": {"patience": _INT, "min_delta": _FLOAT, "wrapped": "pruner"},
    "promotion": {"min_resource": _NUM, "reduction_factor": _INT},
    "pbt": {"interval": _NUM, "quantile": _FLOAT, "resample_probability": _FLOAT},
    "threshold": {"lower": _FLOAT, "upper": _FLOAT, "n_warmup_steps": _INT, "interval_steps": _INT},
    "none": {},
}
"""Pruner name -> its options and their types. ``median``, ``percentile``,
``successive_halving``, ``hyperband``, ``threshold`` and ``patient`` are Optuna's pruners of
those names (``PatientPruner`` wrapping another); ``none`` never prunes. ``promotion`` and
``pbt`` are hpo's schedulers (``hpo.search.schedulers``): ``promotion`` pauses a trial that falls
behind at a rung and resumes it later (with several objectives too); once the budget is spent
and nothing runs, it promotes each rung's first non-dominated front all the same (one
objective: the rung's leader; several: every configuration no other dominates there); ``pbt`` is
population-based training: the ``budget.n_trials`` configurations train side by side,
pausing every ``interval`` epochs, and those in the bottom ``quantile`` go on from the
checkpoint of one in the top ``quantile`` with its params perturbed. A
step is one evaluation: the epoch with ``task.evals_per_epoch: 1``, else
``(epoch - 1) * evals_per_epoch + j``. Each option is the constructor argument of the same
name, and an option left out keeps Optuna's default. The options:

- ``n_startup_trials``: trials that finish before this pruner prunes any.
- ``n_warmup_steps``: steps of a trial before it can be pruned.
- ``interval_steps``: steps between two pruning checks.
- ``n_min_trials``: trials that reported a step before a trial is pruned at it.
- ``percentile``: prune a trial below this percentile (0-100) of the trials at its step;
  required.
- ``min_resource``: steps of a trial before its first rung.
- ``promotion.min_resource``: epochs before the first rung (default 1); a fraction puts it
  inside an epoch, on the ``task.evals_per_epoch`` grid (``0.25`` with ``evals_per_epoch: 4``).
- ``max_resource``: hyperband's largest steps of a trial; default (or ``auto``): the largest
  ``epochs`` in the search space times ``task.evals_per_epoch``.
- ``reduction_factor``: a rung keeps the top ``1 / reduction_factor`` of the trials that
  reached it (promotion: default 3, at least 2).
- ``min_early_stopping_rate``: successive halving's first rung is at ``min_resource *
  reduction_factor ** min_early_stopping_rate`` steps.
- ``bootstrap_count``: trials that reach a rung before it prunes anyone.
- ``patience``: evaluations without improvement before ``patient`` asks its wrapped pruner
  (or prunes, without one); required.
- ``min_delta``: the least change that counts as an improvement for ``patient``.
- ``wrapped``: the pruner ``patient`` asks once its patience runs out, as a mapping
  ``{name: median, ...}`` (not ``promotion``).
- ``lower``: ``threshold`` prunes a trial whose value falls below this.
- ``upper``: ``threshold`` prunes a trial whose value rises above this.
- ``threshold.n_warmup_steps``: steps before ``threshold`` checks a trial.
- ``interval``: ``pbt``'s epochs between two exploit steps (default 1; a fraction on the
  ``task.evals_per_epoch`` grid).
- ``quantile``: ``pbt``'s share of the population at each end (default 0.25, at most 0.5):
  the bottom one's configurations exploit the top one's.
- ``resample_probability``: the chance that ``pbt``'s explore draws a float param anew from
  its range, instead of multiplying it by 0.8 or 1.25 (default 0.25).
"""
_REQUIRED_OPTIONS = {
    ("pruner", "percentile"): ("percentile",),
    ("pruner", "patient"): ("patience",),
}


def _check_rung(option: str, spec: Any, at: _At) -> None:
    """An option in epochs must fall on an evaluation (the ``task.evals_per_epoch`` grid)."""
    given = spec.pruner.options.get(option, 1)
    if given <= 0:
        raise (at / "pruner" / option).error(f"expected epochs > 0, got {_show(given)}")
    steps = given * spec.task.evals_per_epoch
    if abs(steps - round(steps)) > 1e-9:
        raise (at / "pruner" / option).error(
            f"must fall on an evaluation: {given} epochs is not a multiple of "
            f"1/{spec.task.evals_per_epoch} (task.evals_per_epoch {spec.task.evals_per_epoch})"
        )


def _check_promotion(spec: Any, at: _At) -> None:
    """Rungs at ``min_resource`` epochs, then ``min_resource * reduction_factor``, ..."""
    _check_rung("min_resource", spec, at)
    if spec.pruner.options.get("reduction_factor", 3) < 2:
        raise (at / "pruner" / "reduction_factor").error(
            f"expected an integer >= 2, got {spec.pruner.options['reduction_factor']}"
        )


def _check_pbt(spec: Any, at: _At) -> None:
    """A population (``budget.n_trials``) of at least 2; a quantile that leaves someone to
    copy; a probability."""
    _check_rung("interval", spec, at)
    options = spec.pruner.options
    if not 0 < options.get("quantile", 0.25) <= 0.5:
        raise (at / "pruner" / "quantile").error(
            f"expected a fraction in (0, 0.5], got {options['quantile']}"
        )
    if not 0 <= options.get("resample_probability", 0.25) <= 1:
        raise (at / "pruner" / "resample_probability").error(
            f"expected a probability in [0, 1], got {options['resample_probability']}"
        )
    n = spec.budget.n_trials
    if n is None or n < 2:
        raise (at / "budget" / "n_trials").error(
            f"pbt's population is budget.n_trials: expected at least 2, got {_show(n)}"
        )


# ``spec``: the ``Spec`` (whose module imports this one).
SCHEDULER_CHECKS = {"promotion": _check_promotion, "pbt": _check_pbt}
"""hpo's schedulers (``hpo.search.schedulers``), each with its checks of the whole spec (``at``: the
spec file's top). They pause trials, so no ``patient`` pruner wraps one."""
