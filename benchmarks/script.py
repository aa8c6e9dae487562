"""Script tasks against the in-process custom job (issue #28): what a report costs the user's
code, how long a trial waits for its first step, and what a Trainer loses under hpo.

- **Report cost:** one trial of a job that reports ``--reports`` times in a loop (no work
  between), each call timed where the user's code makes it: ``trial.report`` +
  ``trial.should_prune`` in a custom job (the worker's process), ``hpo.session.report`` in a
  script (a socket round trip to the worker, which does the same two calls). The pruner is
  ``median``, so every report asks a scheduler. Median and p99 per call.
- **Start to first step:** from the trial's start (``datetime_start``, its claim) to the first
  report's call, for the same two jobs (the script pays a process start and its imports: here
  the stdlib and ``hpo.session`` alone).
- **Trainer throughput** (``--trainer``): ``examples/hf_trainer/train.py`` (MiniLM on VADER,
  ``$EXAMPLE_SAMPLES`` words, 2 epochs) alone and as one trial under ``hpo run``; samples/s as
  the Trainer itself reports it (``train_samples_per_second``), interleaved, ``--repeats`` each.

Each measure runs ``--repeats`` times, the arms interleaved. SQLite storage in a temp folder.

    .venv/bin/python -m benchmarks.script [--reports 300] [--repeats 3] [--trainer]
                                          [--out benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SECTION = "Script tasks: report cost and start (issue #28)"
ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """\
import json, os, sys, time
from hpo import session
n = int(os.environ["BENCH_REPORTS"])
times = []
for step in range(1, n + 1):
    t0 = time.time()
    session.report({"val_loss": 1.0 / step}, step=step)
    times.append((t0, time.time() - t0))
with open(os.environ["BENCH_OUT"], "w") as f:
    json.dump(times, f)
"""

CUSTOM = """\
import json, os, time

def job(trial, params, context):
    n = int(os.environ["BENCH_REPORTS"])
    times = []
    for step in range(1, n + 1):
        t0 = time.time()
        trial.report(1.0 / step, step)
        trial.should_prune()
        times.append((t0, time.time() - t0))
    with open(os.environ["BENCH_OUT"], "w") as f:
        json.dump(times, f)
    return 1.0 / n
"""

SPEC = """\
study: {{name: {name}}}
task: {task}
search_space:
  lr: {{type: float, low: 1.0e-4, high: 1.0e-1, log: true}}
  epochs: {{type: int, low: {reports}, high: {reports}}}
sampler: {{name: random, seed: 0}}
pruner: {{name: median, n_startup_trials: 0, n_warmup_steps: 0}}
budget: {{n_trials: 1}}
"""


def one_trial(arm: str, reports: int, work: Path) -> dict:
    """One study of one trial of ``arm`` (``custom`` or ``script``): per-report seconds and
    the seconds from the trial's start to its first report."""
    import optuna

    work.mkdir(parents=True)
    (work / "benchjob.py").write_text(CUSTOM)
    (work / "benchscript.py").write_text(SCRIPT)
    task = ('{kind: custom, entrypoint: "benchjob:job"}' if arm == "custom"
            else f'{{kind: script, command: [python, "{work / "benchscript.py"}"]}}')
    name = f"bench-{arm}"
    spec = work / "spec.yaml"
    spec.write_text(SPEC.format(name=name, task=task, reports=reports))
    url = f"sqlite:///{work / 'hpo.db'}"
    out = work / "times.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(work), str(ROOT)]),
           "BENCH_REPORTS": str(reports), "BENCH_OUT": str(out),
           "HPO_CHECKPOINT_DIR": str(work / "ckpt")}
    env.pop("HPO_STORAGE", None)
    r = subprocess.run([sys.executable, "-m", "hpo", "run", str(spec), "--storage", url],
                       cwd=work, env=env, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise SystemExit(f"{arm}: hpo run failed: {r.stderr[-2000:]}")
    times = json.loads(out.read_text())
    (trial,) = optuna.load_study(study_name=name, storage=url).get_trials()
    start = trial.datetime_start.timestamp()
    return {"calls": [t for _, t in times], "first": times[0][0] - start}


def trainer_run(under_hpo: bool, samples: int, work: Path) -> float:
    """``examples/hf_trainer/train.py`` once, alone or as a one-trial study: samples/s."""
    work.mkdir(parents=True)
    env = {**os.environ, "EXAMPLE_SAMPLES": str(samples), "HPO_CHECKPOINT_DIR": str(work)}
    env.pop("HPO_STORAGE", None)
    script = ROOT / "examples" / "hf_trainer" / "train.py"
    if under_hpo:
        spec = work / "spec.yaml"
        spec.write_text(
            "study: {name: trainer, metric: eval_loss}\n"
            f'task: {{kind: script, command: [python, "{script}"]}}\n'
            "search_space:\n"
            "  lr: {type: float, low: 5.0e-5, high: 5.0e-5}\n"
            "  batch_size: {type: categorical, choices: [32]}\n"
            "  epochs: {type: int, low: 2, high: 2}\n"
            "sampler: {name: random, seed: 0}\npruner: {name: none}\nbudget: {n_trials: 1}\n")
        cmd = [sys.executable, "-m", "hpo", "run", str(spec), "--storage",
               f"sqlite:///{work / 'hpo.db'}"]
    else:
        cmd = [sys.executable, str(script)]
    r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=1200)
    found = re.search(r"([\d.]+) samples/s", r.stdout + r.stderr)
    if r.returncode != 0 or not found:
        raise SystemExit(f"trainer ({'hpo' if under_hpo else 'alone'}) failed: "
                         f"{(r.stdout + r.stderr)[-2000:]}")
    return float(found.group(1))


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 2 else values[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.script", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reports", type=int, default=300, help="reports per trial")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each arm")
    parser.add_argument("--trainer", action="store_true", help="also the Trainer's samples/s")
    parser.add_argument("--trainer-samples", type=int, default=600)
    parser.add_argument("--out", type=Path, nargs="?", const=ROOT / "benchmarks" / "RESULTS.md")
    args = parser.parse_args(argv)

    calls: dict[str, list[float]] = {"custom": [], "script": []}
    firsts: dict[str, list[float]] = {"custom": [], "script": []}
    trainer: dict[str, list[float]] = {"alone": [], "hpo": []}
    with tempfile.TemporaryDirectory(prefix="hpo-bench-script-") as tmp:
        for i in range(args.repeats):
            for arm in ("custom", "script") if i % 2 == 0 else ("script", "custom"):
                got = one_trial(arm, args.reports, Path(tmp) / f"{arm}-{i}")
                calls[arm] += got["calls"][1:]  # the first opens the connection
                firsts[arm].append(got["first"])
                print(f"{arm} #{i}: median {statistics.median(got['calls']) * 1e3:.2f} ms, "
                      f"first step after {got['first']:.2f} s", file=sys.stderr)
            if args.trainer:
                for arm in ("alone", "hpo") if i % 2 == 0 else ("hpo", "alone"):
                    sps = trainer_run(arm == "hpo", args.trainer_samples,
                                      Path(tmp) / f"trainer-{arm}-{i}")
                    trainer[arm].append(sps)
                    print(f"trainer {arm} #{i}: {sps:.1f} samples/s", file=sys.stderr)

    from benchmarks.table import machine, revision, write_section

    lines = [
        f"## {SECTION}",
        "",
        f"- measured {time.strftime('%Y-%m-%d %H:%M')} on {machine()}, hpo at {revision()}: "
        f"`python -m benchmarks.script {' '.join(argv if argv is not None else sys.argv[1:])}`",
        f"- one trial of {args.reports} reports per run, {args.repeats} runs per arm, "
        "interleaved; SQLite; pruner `median` (each report asks it)",
        "",
        "| job | per report: median ms | p99 ms | start to first step: median s (min-max) |",
        "|---|---|---|---|",
    ]
    for arm, label in (("custom", "custom (in the worker's process)"),
                       ("script", "script (hpo.session, its own process)")):
        f = firsts[arm]
        lines.append(f"| {label} | {statistics.median(calls[arm]) * 1e3:.2f} | "
                     f"{p99(calls[arm]) * 1e3:.2f} | {statistics.median(f):.2f} "
                     f"({min(f):.2f}-{max(f):.2f}) |")
    if args.trainer:
        alone, hpo = statistics.median(trainer["alone"]), statistics.median(trainer["hpo"])
        # A repeat's two runs ran side by side, under the same load: their ratio is the
        # measure; the machine's drift between repeats moves both arms of a repeat alike.
        paired = [h / a for h, a in zip(trainer["hpo"], trainer["alone"])]
        ratio = statistics.median(paired)
        lines += [
            "",
            f"Trainer example (MiniLM on {args.trainer_samples} VADER words, 2 epochs), "
            "samples/s as the Trainer reports it: alone "
            f"{alone:.1f} ({', '.join(f'{v:.1f}' for v in trainer['alone'])}), under hpo "
            f"{hpo:.1f} ({', '.join(f'{v:.1f}' for v in trainer['hpo'])}); under hpo / alone "
            f"of each repeat's two runs: {', '.join(f'{r:.3f}' for r in paired)}, median "
            f"**{ratio:.3f}** ({min(paired):.3f}-{max(paired):.3f}; goal at least 0.97: "
            f"{'met' if ratio >= 0.97 else 'missed'}); the ratio of the arms' medians "
            f"{hpo / alone:.3f}.",
        ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        write_section(args.out, SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
