"""TPE's random startup trials on a small budget: Optuna's default (10) against fewer.

Does a small study (12-30 trials) find a better configuration when TPE starts modelling after
``max(2, n_trials // 4)`` random trials instead of Optuna's 10? Measured on a cheap real
objective, so that many seeds fit on a shared 2-core machine: a logistic regression trained
by SGD on scikit-learn's digits (the data hpo's digits studies use), its validation log loss
as the objective, over a search space shaped like hpo's (a log-scaled learning rate and weight
decay, epochs, a schedule). The same seeds run every setting, interleaved (seed by seed), and
each study's best value is compared seed by seed.

    .venv/bin/python -m benchmarks.startup                # prints the table
    .venv/bin/python -m benchmarks.startup --out benchmarks/RESULTS.md   # and writes its section
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

SECTION = "TPE startup trials on a small budget (issue #16)"


def _data():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    return train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)


def objective(data):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import SGDClassifier
    from sklearn.metrics import log_loss

    x_train, x_val, y_train, y_val = data

    def f(trial) -> float:
        clf = SGDClassifier(
            loss="log_loss",
            learning_rate=trial.suggest_categorical("schedule", ["constant", "invscaling",
                                                                 "adaptive"]),
            eta0=trial.suggest_float("lr", 1e-5, 1.0, log=True),
            alpha=trial.suggest_float("weight_decay", 1e-7, 1e-1, log=True),
            max_iter=trial.suggest_int("epochs", 1, 12),
            tol=None, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(x_train, y_train)
        return float(log_loss(y_val, clf.predict_proba(x_val), labels=list(range(10))))

    return f


def run(budgets=(12, 20, 30), seeds=range(10)) -> list[dict]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    f = objective(_data())
    rows = []
    for n in budgets:
        settings = {"10 (Optuna's default)": 10, f"max(2, n//4) = {max(2, n // 4)}":
                    max(2, n // 4)}
        best: dict[str, list[float]] = {k: [] for k in settings}
        started = time.monotonic()
        for seed in seeds:  # interleaved: every setting on this seed before the next seed
            for label, startup in settings.items():
                sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)
                study = optuna.create_study(sampler=sampler)
                study.optimize(f, n_trials=n)
                best[label].append(study.best_value)
        default, fewer = best.values()
        wins = sum(b < a for a, b in zip(default, fewer))
        for label, values in best.items():
            q = statistics.quantiles(values, n=4)
            rows.append({"n_trials": n, "startup": label, "median": statistics.median(values),
                         "q1": q[0], "q3": q[2], "seeds": len(values),
                         "fewer_wins": wins if values is fewer else None,
                         "seconds": time.monotonic() - started})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| n_trials | TPE n_startup_trials | best val log loss: median [q1, q3] | "
             "seeds where fewer startup trials won |", "|---|---|---|---|"]
    for r in rows:
        won = "" if r["fewer_wins"] is None else f"{r['fewer_wins']}/{r['seeds']}"
        lines.append(f"| {r['n_trials']} | {r['startup']} | {r['median']:.4f} "
                     f"[{r['q1']:.4f}, {r['q3']:.4f}] | {won} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the section into this results file")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--budgets", default="12,20,30", help="n_trials values, e.g. 8,12,16")
    args = parser.parse_args()
    rows = run(budgets=[int(b) for b in args.budgets.split(",")], seeds=range(args.seeds))
    print(table(rows))
    if args.out:
        from benchmarks.table import revision, write_section

        write_section(args.out, SECTION, f"## {SECTION}\n\n`python -m benchmarks.startup` at "
                      f"{revision()}, {time.strftime('%Y-%m-%d')}: {args.seeds} seeds per "
                      f"setting, interleaved.\n\n{table(rows)}\n")


if __name__ == "__main__":
    main()
