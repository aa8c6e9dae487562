"""Coordination overhead: ms per trial of an ``hpo worker`` whose job does nothing, next to
plain Optuna's ``study.optimize`` with the same objective, sampler and storage backend.

Both run as fresh processes, one after the other, each on a new empty database. The time per
trial is read from the trials themselves (first start to last completion, over the trials), so
process start-up is left out of it and reported apart; each process also counts the SQL
statements and commits it sends.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmarks import studies
from benchmarks.databases import BACKENDS, fresh_database, unavailable
from benchmarks.table import Row, judged

GOAL = 1.1


def run(smoke: bool, workdir: Path, say) -> list[Row]:
    n = 10 if smoke else 1000
    rows = []
    for backend in ("sqlite",) if smoke else BACKENDS:
        case = f"{backend}, {n} trials"
        why = unavailable(backend)
        if why:
            rows.append(Row("overhead", case, "ms/trial", goal=f"<= {GOAL}", skipped=why))
            continue
        say(f"overhead: {case}: plain Optuna")
        optuna_side = _measure("optuna", backend, n, workdir)
        say(f"overhead: {case}: hpo worker")
        hpo_side = _measure("hpo", backend, n, workdir)
        note = (f"SQL statements/trial {hpo_side['statements'] / n:.1f} vs "
                f"{optuna_side['statements'] / n:.1f}, commits/trial "
                f"{hpo_side['commits'] / n:.1f} vs {optuna_side['commits'] / n:.1f}; process "
                f"start to exit {hpo_side['wall']:.1f} s vs {optuna_side['wall']:.1f} s")
        rows.append(judged(Row(
            "overhead", case, "ms/trial", hpo=hpo_side["ms"], baseline=optuna_side["ms"],
            baseline_name="Optuna", ratio=hpo_side["ms"] / optuna_side["ms"], goal=f"<= {GOAL}",
            note=note), lambda r: r <= GOAL))
    return rows


def _measure(side: str, backend: str, n: int, workdir: Path) -> dict:
    """Run one side in a fresh process; return ms/trial, statements, commits, wall time."""
    import optuna

    counts = workdir / f"counts-{side}.json"
    with fresh_database(backend, workdir) as url:
        name = f"overhead-{side}"
        if side == "hpo":
            studies.create(studies.custom_spec(name, "noop_job", n), url)
            args = ["-m", "benchmarks.overhead", "hpo", url, name, str(counts)]
        else:
            args = ["-m", "benchmarks.overhead", "optuna", url, name, str(counts), str(n)]
        wall = studies.run_python(args, cwd=workdir, env=studies.environment(),
                                  log=workdir / f"overhead-{side}.log")
        trials = optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
    finished = [t for t in trials if t.datetime_complete is not None]
    if len(finished) != n:
        raise RuntimeError(f"overhead {side}: {len(finished)} of {n} trials finished")
    span = (max(t.datetime_complete for t in finished)
            - min(t.datetime_start for t in finished)).total_seconds()
    result = json.loads(counts.read_text())
    return {"ms": 1000 * span / n, "wall": wall, **result}


# --------------------------------------------------------------------------------------------
# The child processes.


def _count_sql(path: str) -> None:
    """Count this process's SQL statements and commits; write them to ``path`` at exit."""
    import atexit

    import sqlalchemy

    counts = {"statements": 0, "commits": 0}

    def statement(*args) -> None:
        counts["statements"] += 1

    def commit(*args) -> None:
        counts["commits"] += 1

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", statement)
    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "commit", commit)
    atexit.register(lambda: Path(path).write_text(json.dumps(counts)))


def _plain_optuna(url: str, name: str, n: int) -> None:
    """What a user of Optuna alone writes: the same objective, sampler and storage URL."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=url,
                                sampler=optuna.samplers.RandomSampler(seed=0))

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
        trial.suggest_int("epochs", 1, 3)
        return lr

    study.optimize(objective, n_trials=n)


if __name__ == "__main__":
    side, url, name, counts_path, *rest = sys.argv[1:]
    _count_sql(counts_path)
    if side == "hpo":
        from hpo.cli import main

        sys.exit(main(["worker", name, "--storage", url]))
    _plain_optuna(url, name, int(rest[0]))
