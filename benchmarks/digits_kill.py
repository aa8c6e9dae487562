"""The trial-lifecycle scenario of issue #11 with the real digits job, repeated.

    python -m benchmarks.digits_kill --rounds 10 [--seed S] [--out benchmarks/RESULTS.md]

Each round, on a fresh PostgreSQL database: ``hpo create search_spaces/digits.yaml``, then
``hpo launch digits --workers 3 --n-trials 12`` (the URL in ``HPO_STORAGE``); at a random moment
after some trial has reported its first epoch, ``kill -9`` the worker process of a random
running trial that has (its ``pid`` attr). The heartbeat grace period stays at its default
(90 s), so only the launcher's hand-on can save the trial before the others finish. Checked:
the launcher exits 0, exactly 12 trials finished, none RUNNING, the killed trial FAIL with
``fail_reason: worker died`` and its retry finished with the killed attempt's validation losses
kept. ``benchmarks/chaos.py`` is the randomized, many-fault version on the fast job.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.databases import fresh_database

ROOT = Path(__file__).resolve().parents[1]
N_TRIALS = 12
ROUND_TIMEOUT = 1800.0


def run_round(index: int, rng: random.Random, workdir: Path) -> dict:
    import optuna
    from optuna.trial import TrialState

    result: dict = {"round": index, "broken": []}
    started = time.monotonic()
    with fresh_database("postgresql", workdir) as url:
        env = {**os.environ, "HPO_STORAGE": url, "HPO_CHECKPOINT_DIR": str(workdir / "ckpt"),
               "PYTHONUNBUFFERED": "1"}
        hpo = [sys.executable, "-m", "hpo"]
        subprocess.run([*hpo, "create", str(ROOT / "search_spaces" / "digits.yaml")], env=env,
                       cwd=workdir, check=True, capture_output=True)
        log = open(workdir / "launch.log", "w")
        launch = subprocess.Popen([*hpo, "launch", "digits", "--workers", "3", "--n-trials",
                                   str(N_TRIALS)], env=env, cwd=workdir, stdout=log,
                                  stderr=subprocess.STDOUT)
        study = optuna.load_study(study_name="digits", storage=url)
        try:
            def reported() -> list:
                return [t for t in study.get_trials(states=(TrialState.RUNNING,))
                        if t.intermediate_values and "pid" in t.user_attrs]
            deadline = time.monotonic() + 600
            while not reported() and time.monotonic() < deadline:
                time.sleep(0.5)
            time.sleep(rng.uniform(0, 20))  # a random moment after the first epoch
            victims = reported() or [t for t in study.get_trials(states=(TrialState.RUNNING,))
                                     if "pid" in t.user_attrs]
            victim = rng.choice(victims)
            os.kill(victim.user_attrs["pid"], signal.SIGKILL)
            result["killed"] = (f"trial {victim.number} after {len(victim.intermediate_values)} "
                                f"report(s), {time.monotonic() - started:.0f}s in")
            result["code"] = launch.wait(timeout=ROUND_TIMEOUT)
        finally:
            launch.kill()
            log.close()
        trials = optuna.load_study(study_name="digits", storage=url).get_trials()
        states = [t.state for t in trials]
        finished = sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states)
        result.update(finished=finished, running=states.count(TrialState.RUNNING),
                      seconds=time.monotonic() - started)
        if result["code"] != 0:
            result["broken"].append(f"launcher exit {result['code']}")
        if finished != N_TRIALS:
            result["broken"].append(f"{finished} finished")
        if result["running"]:
            result["broken"].append(f"{result['running']} RUNNING")
        dead = trials[victim.number]
        retries = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
        if dead.state == TrialState.FAIL:
            if dead.user_attrs.get("fail_reason") != "worker died":
                result["broken"].append(f"fail_reason {dead.user_attrs.get('fail_reason')!r}")
            if len(retries) != 1 or not retries[0].state.is_finished():
                result["broken"].append(f"retries {[(t.number, t.state.name) for t in retries]}")
            elif any(retries[0].intermediate_values.get(k) != v
                     for k, v in dead.intermediate_values.items()):
                result["broken"].append("the retry lost the killed attempt's values")
        else:  # it finished in the moment before the kill
            result["killed"] += f" (it had finished: {dead.state.name})"
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="append the table to this Markdown file")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    rows = []
    for index in range(1, args.rounds + 1):
        with tempfile.TemporaryDirectory(prefix="hpo-digits-kill-") as tmp:
            r = run_round(index, rng, Path(tmp))
        rows.append(r)
        print(f"round {index}: killed {r.get('killed')}; launcher exit {r.get('code')}; "
              f"{r.get('finished')} finished, {r.get('running')} RUNNING; {r['seconds']:.0f}s; "
              + ("ok" if not r["broken"] else "BROKEN: " + ", ".join(r["broken"])), flush=True)
    ok = sum(not r["broken"] for r in rows)
    table = ["| round | killed | launcher exit | finished | RUNNING | seconds | verdict |",
             "|---:|---|---:|---:|---:|---:|---|"]
    table += [f"| {r['round']} | {r.get('killed')} | {r.get('code')} | {r.get('finished')} | "
              f"{r.get('running')} | {r['seconds']:.0f} | "
              f"{'ok' if not r['broken'] else ', '.join(r['broken'])} |" for r in rows]
    print("\n".join(table))
    print(f"{ok}/{len(rows)} rounds ended with {N_TRIALS} finished trials and none RUNNING")
    if args.out:
        with open(args.out, "a") as f:
            f.write(f"\n## Kill -9 during digits (issue #11's scenario), {time.strftime('%Y-%m-%d')}"
                    f"\n\n`python -m benchmarks.digits_kill --rounds {args.rounds} --seed "
                    f"{args.seed}`: PostgreSQL, 3 workers, 12 trials, one worker killed a random "
                    f"moment after a first epoch. {ok}/{len(rows)} rounds ok.\n\n"
                    + "\n".join(table) + "\n")
    return 0 if ok == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
