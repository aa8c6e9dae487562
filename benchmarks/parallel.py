"""Parallel efficiency: ``hpo launch --workers N`` on a job that only waits (as a GPU-bound
trial does for its CPU), N = 1, 2, 4, 8, on PostgreSQL and SQLite.

Throughput is finished trials per second between the first trial's start and the last one's
end (the study's steady state); efficiency is throughput(N) / (N x throughput(1)), both
measured in the same command. The launch's whole wall time (process start-up included) is in
the notes.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks import studies
from benchmarks.databases import fresh_database, unavailable
from benchmarks.jobs import SLEEP_VAR
from benchmarks.table import Row, judged

GOAL = 0.9


def run(smoke: bool, workdir: Path, say) -> list[Row]:
    sleep, per_worker = (0.1, 1) if smoke else (1.0, 10)
    counts = (1, 2) if smoke else (1, 2, 4, 8)
    backends = ("sqlite",) if smoke else ("postgresql", "sqlite")
    rows = []
    for backend in backends:
        why = unavailable(backend)
        if why:
            rows += [Row("parallel", f"{backend}, {n} workers", "trials/s", goal=f">= {GOAL}",
                         skipped=why) for n in counts]
            continue
        single = None
        for n in counts:
            case = f"{backend}, {n} workers"
            say(f"parallel: {case}, {n * per_worker} trials of {sleep:g} s")
            steady, launched = _measure(backend, n, n * per_worker, sleep, workdir)
            single = single or (steady, launched)
            note = (f"{n * per_worker} trials of {sleep:g} s; with process start-up "
                    f"{launched:.2f} trials/s, efficiency "
                    f"{launched / (n * single[1]):.2f}")
            rows.append(judged(Row(
                "parallel", case, "trials/s", hpo=steady, baseline=n * single[0],
                baseline_name=f"{n} x 1 worker", ratio=steady / (n * single[0]),
                goal=f">= {GOAL}", note=note), lambda r: r >= GOAL))
    return rows


def _measure(backend: str, workers: int, n_trials: int, sleep: float,
             workdir: Path) -> tuple[float, float]:
    """(steady-state trials/s, trials/s over the launch's wall time)."""
    import optuna
    from optuna.trial import TrialState

    with fresh_database(backend, workdir) as url:
        name = f"parallel-{workers}"
        studies.create(studies.custom_spec(name, "sleep_job", n_trials), url)
        env = studies.environment(**{SLEEP_VAR: str(sleep),
                                     "HPO_CHECKPOINT_DIR": str(workdir / "checkpoints")})
        wall = studies.run_hpo(["launch", name, "--storage", url, "--workers", str(workers)],
                               cwd=workdir, env=env, log=workdir / f"parallel-{workers}.log")
        trials = optuna.load_study(study_name=name, storage=url).get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    if len(trials) != n_trials:
        raise RuntimeError(f"parallel: {len(trials)} of {n_trials} trials finished")
    span = (max(t.datetime_complete for t in trials)
            - min(t.datetime_start for t in trials)).total_seconds()
    return n_trials / span, n_trials / wall
