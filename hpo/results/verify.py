"""``hpo verify``: rerun a recorded trial and say how far its curve is from the recorded one.

A trial of the built-in job is a function of its params, its task (with the seed: ``task.seed``,
or a repeat's own) and the machine's arithmetic. The one part of that a record could miss is
the arithmetic: the number of CPU threads changes how sums are split, and so the last bits of
every loss, which training amplifies (a digits trial at 1 and at 2 threads: validation losses
of 414 and 574 after one epoch at a high learning rate), and which steer the sampler to other
params for every later trial. Each trial records its thread count (``threads``); ``verify``
reruns with that count, in this process, on this machine's device, and compares each recorded
evaluation with the rerun's.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpo.errors import HpoError
from hpo.job.trial import FixedTrial
from hpo.records import THREADS_ATTR

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from hpo.spec import Spec

TOLERANCE = 1e-6
"""Relative difference below which a rerun's value counts as the recorded one."""


@dataclass
class Verification:
    """A rerun against its record: the recorded and rerun value at each recorded step."""

    study: str
    trial: int
    steps: list[int]
    recorded: list[float]
    rerun: list[float]
    threads: tuple[int | None, int]
    """Recorded (None: not recorded) and rerun thread counts."""
    device: tuple[str | None, str | None]
    tolerance: float = TOLERANCE
    notes: list[str] = field(default_factory=list)

    @property
    def max_abs(self) -> float:
        return max((abs(a - b) for a, b in zip(self.recorded, self.rerun)), default=0.0)

    @property
    def max_rel(self) -> float:
        return max(
            (abs(a - b) / max(abs(a), 1e-12) for a, b in zip(self.recorded, self.rerun)),
            default=0.0,
        )

    @property
    def verdict(self) -> str:
        if len(self.rerun) < len(self.recorded):
            return "differs"
        if self.recorded == self.rerun:
            return "identical"
        return "within tolerance" if self.max_rel <= self.tolerance else "differs"

    def as_dict(self) -> dict[str, Any]:
        return {
            "study": self.study,
            "trial": self.trial,
            "verdict": self.verdict,
            "max_abs_diff": self.max_abs,
            "max_rel_diff": self.max_rel,
            "tolerance": self.tolerance,
            "steps": [
                {"step": s, "recorded": a, "rerun": b}
                for s, a, b in zip(self.steps, self.recorded, self.rerun)
            ],
            "threads": {"recorded": self.threads[0], "rerun": self.threads[1]},
            "device": {"recorded": self.device[0], "rerun": self.device[1]},
            "notes": self.notes,
        }


def recorded_curve(study: optuna.Study, trial: FrozenTrial) -> dict[int, float]:
    """The trial's reported values by step, with those of the attempts before it where it
    continued a paused configuration (``promotion``): the configuration's whole curve."""
    from hpo.search.schedulers.continuation import configuration
    from hpo.search.schedulers.pbt import LINEAGE_ATTR

    config = configuration(trial)
    attempts = [t for t in study.get_trials(deepcopy=False) if configuration(t) == config]
    if any(t.user_attrs.get(LINEAGE_ATTR) for t in attempts):
        raise HpoError(
            f"trial #{trial.number} of study {study.study_name!r} took over another "
            "member's weights and params during training (pbt): no one set of params "
            "reproduces its curve; verify a trial that trained with its own"
        )
    curve: dict[int, float] = {}
    for t in sorted(attempts, key=lambda t: t.number):
        if t.number <= trial.number:
            curve.update(t.intermediate_values)
    return dict(sorted(curve.items()))


class _Rerun(FixedTrial):
    """The rerun's trial: keeps each report and the attrs (``FixedTrial``), and stops the fit
    after the last recorded step (a trial that stopped early, or paused)."""

    def __init__(self, number: int, last_step: int) -> None:
        super().__init__(number)
        self.last_step = last_step

    def should_prune(self) -> bool:
        return bool(self.reports) and max(self.reports) >= self.last_step


def verify(
    study: optuna.Study,
    spec: Spec,
    trial_number: int | None = None,
    *,
    threads: int | None = None,
    tolerance: float = TOLERANCE,
) -> Verification:
    """Rerun trial ``trial_number`` (default: the best) from its recorded params, seed and
    thread count, and compare its curve with the recorded one.

    Args:
        threads: CPU threads for the rerun (default: the trial's recorded count).
        tolerance: the relative difference a step may have and still count as reproduced.

    Raises:
        HpoError: a script or custom task, no such complete trial, a trial without
            reports, or one whose params changed during training (pbt).
    """
    import optuna as _optuna

    from hpo.run.slots import wait_briefly

    # As a worker's and a retrain's: OpenMP threads that spin briefly when they wait, set before
    # torch loads it (the policy changes no arithmetic, only how long a loaded machine takes).
    wait_briefly(os.environ)
    import torch

    from hpo.job import JobContext
    from hpo.run.worker import run_on_devices
    from hpo.search.convergence import repeat_task
    from hpo.search.study import pick_trial
    from hpo.spec import suggest

    if spec.task.kind in ("custom", "script"):
        raise HpoError(
            f"study {study.study_name!r} runs your own code (task.kind {spec.task.kind}); "
            "hpo verify reruns the built-in fine-tuning job: rerun your code with the "
            "params and seed of hpo best"
        )
    trial = pick_trial(study, trial_number, "verify")
    curve = recorded_curve(study, trial)
    if not curve:
        raise HpoError(f"trial #{trial.number} of study {study.study_name!r} reported nothing")
    recorded_threads = trial.user_attrs.get(THREADS_ATTR)
    use = threads or (int(recorded_threads) if recorded_threads else torch.get_num_threads())
    before = torch.get_num_threads()
    torch.set_num_threads(use)
    params = suggest(_optuna.trial.FixedTrial(dict(trial.params), number=trial.number), spec)
    rerun = _Rerun(trial.number, max(curve))
    try:
        with tempfile.TemporaryDirectory(prefix="hpo-verify-") as work:
            context = JobContext(
                checkpoint_path=Path(work) / "trial.pt",
                metric=spec.study.metric,
                maximize=spec.study.maximize,
            )
            try:
                run_on_devices(
                    rerun,
                    repeat_task(trial, spec.task),
                    params,
                    context,
                    spec.resources.devices_per_trial,
                )
            except _optuna.TrialPruned:
                pass  # stopped at the last recorded step, or as the trial was (NaN)
    finally:
        torch.set_num_threads(before)
    steps = sorted(curve)
    result = Verification(
        study=study.study_name,
        trial=trial.number,
        steps=steps,
        recorded=[float(curve[s]) for s in steps],
        rerun=[float(rerun.reports[s]) for s in steps if s in rerun.reports],
        threads=(int(recorded_threads) if recorded_threads else None, use),
        device=(trial.user_attrs.get("device"), rerun.attrs.get("device")),
        tolerance=tolerance,
    )
    if recorded_threads is None:
        result.notes.append(
            "the trial recorded no thread count (recorded before hpo kept it): the rerun "
            f"used {use}; a different count changes the last bits of every loss"
        )
    elif threads and threads != int(recorded_threads):
        result.notes.append(f"--threads {threads} instead of the recorded {recorded_threads}")
    if result.device[0] != result.device[1]:
        result.notes.append(
            f"the trial ran on {result.device[0]}, the rerun on {result.device[1]}: "
            "other devices give other arithmetic"
        )
    return result


def format_verification(v: Verification) -> str:
    """The lines ``hpo verify`` prints: a line per step, the largest difference, the verdict."""
    lines = [f"trial #{v.trial} of {v.study}: {len(v.steps)} recorded evaluation(s)"]
    lines.append(f"  {'step':>6}  {'recorded':>14}  {'rerun':>14}  {'difference':>11}")
    for s, a, b in zip(v.steps, v.recorded, v.rerun):
        lines.append(f"  {s:>6}  {a:>14.8g}  {b:>14.8g}  {b - a:>11.3g}")
    for s in v.steps[len(v.rerun) :]:
        lines.append(f"  {s:>6}  {'':>14}  {'(not reached)':>14}")
    threads = "not recorded" if v.threads[0] is None else f"recorded {v.threads[0]}"
    lines.append(f"  threads: {threads}, rerun {v.threads[1]}")
    largest = f"{v.max_abs:.3g}" + (
        f" ({v.max_rel:.3g} relative)" if math.isfinite(v.max_rel) else ""
    )
    lines.append(f"  largest difference: {largest}; tolerance {v.tolerance:g} relative")
    lines += [f"  note: {n}" for n in v.notes]
    lines.append(f"hpo: {v.verdict}")
    return "\n".join(lines)
