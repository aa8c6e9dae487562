"""Coordination overhead: ms per trial of an ``hpo worker`` whose job does nothing, next to
plain Optuna's ``study.optimize`` with the same objective, sampler and storage backend.

Plain Optuna runs twice: on the storage hpo opens (``hpo.store.storage.open_storage``: heartbeat and
stale-trial retry on, pre-ping), the goal's baseline, since that is the fault tolerance a
user of Optuna alone would have to configure to match; and on a bare URL (no heartbeat), what
a user writes first, for reference. Every side runs as a fresh process on a new empty
database, the sides alternating over rounds; the medians are reported. The time per trial is
read from the trials themselves (first start to last completion), so process start-up is left
out of it and reported apart; each process also counts the SQL statements and commits it sends.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from benchmarks import studies
from benchmarks.databases import BACKENDS, fresh_database, unavailable
from benchmarks.table import Row, judged

GOAL = 1.1
SIDES = ("optuna-storage", "optuna", "hpo")
"""Plain Optuna on hpo's storage (heartbeat), plain Optuna on a bare URL, the hpo worker."""


def run(smoke: bool, workdir: Path, say) -> list[Row]:
    n = 10 if smoke else 1000
    rounds = 1 if smoke else 3
    rows = []
    for backend in ("sqlite",) if smoke else BACKENDS:
        case = f"{backend}, {n} trials"
        why = unavailable(backend)
        if why:
            rows.append(Row("overhead", case, "ms/trial", goal=f"<= {GOAL}", skipped=why))
            continue
        runs: dict[str, list[dict]] = {side: [] for side in SIDES}
        for r in range(rounds):
            for side in SIDES:
                say(f"overhead: {case}: {side}, round {r + 1} of {rounds}")
                runs[side].append(_measure(side, backend, n, workdir))
        med = {side: {k: statistics.median(m[k] for m in ms) for k in ms[0]}
               for side, ms in runs.items()}
        hpo_side = med["hpo"]
        for side, label, goal in (("optuna-storage", "Optuna, same storage", True),
                                  ("optuna", "Optuna, bare URL", False)):
            base = med[side]
            note = (f"median of {rounds}; SQL statements/trial {hpo_side['statements'] / n:.1f} "
                    f"vs {base['statements'] / n:.1f}, commits/trial "
                    f"{hpo_side['commits'] / n:.1f} vs {base['commits'] / n:.1f}; process start "
                    f"to exit {hpo_side['wall']:.1f} s vs {base['wall']:.1f} s")
            if not goal:
                note += "; no heartbeat, so no fault tolerance: for reference"
            row = Row("overhead", f"{case} vs {label}", "ms/trial", hpo=hpo_side["ms"],
                      baseline=base["ms"], baseline_name="Optuna",
                      ratio=hpo_side["ms"] / base["ms"], goal=f"<= {GOAL}" if goal else "",
                      note=note)
            rows.append(judged(row, lambda r: r <= GOAL))
    return rows


def _measure(side: str, backend: str, n: int, workdir: Path) -> dict:
    """Run one side in a fresh process; return ms/trial, statements, commits, wall time."""
    import optuna

    counts = workdir / f"counts-{side}.json"
    with fresh_database(backend, workdir) as url:
        name = f"overhead-{side}"
        if side == "hpo":
            studies.create(studies.custom_spec(name, "noop_job", n), url)
            args = ["-m", "benchmarks.overhead", side, url, name, str(counts)]
        else:
            args = ["-m", "benchmarks.overhead", side, url, name, str(counts), str(n)]
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


def _plain_optuna(url: str, name: str, n: int, same_storage: bool) -> None:
    """What a user of Optuna alone writes: the same objective, sampler and storage URL, on
    the storage hpo opens (heartbeat) or on the bare URL."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = url
    if same_storage:
        from hpo.store.storage import open_storage

        storage = open_storage(url)
    study = optuna.create_study(study_name=name, storage=storage,
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
    _plain_optuna(url, name, int(rest[0]), same_storage=side == "optuna-storage")
