"""Run the benchmarks and write the results table.

    python -m benchmarks.run [--smoke] [--only NAME ...] [--gpu] [--out benchmarks/RESULTS.md]

Every benchmark measures hpo next to its baseline in the same command and reports their ratio
against the goal of issue #6. Results are kept per benchmark in ``OUT.json`` beside the table:
``--only`` re-measures some and keeps the others' last results (each with its own date).
``--smoke`` runs everything at a tiny budget (seconds; what CI runs) and changes nothing
unless ``--out`` is given. The table is rewritten from the stored results; the ``## ``
sections of the file that it does not write (the chaos runner's, ``benchmarks.digits_kill``'s)
are kept after it, as they were.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import re
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from benchmarks.table import Row, machine, render

BENCHMARKS = {
    "overhead": "coordination overhead: hpo worker vs plain Optuna, no-op trials",
    "parallel": "parallel efficiency: hpo launch --workers N, a sleep-bound job",
    "pruning": "pruning efficiency: median / hyperband vs none, same sampler seed",
    "throughput": "training-loop throughput: hpo's fit vs HF Trainer vs a minimal loop",
    "warm": "warm worker: trial start to first optimizer step, warm vs cold",
    "disk": "disk: checkpoints + artifact store after the digits study vs its best-3 weights",
    "ranks": "a trial on 2 ranks vs 1: training samples/s, same global batch",
    "headtohead": "hpo run vs HF Trainer.hyperparameter_search vs Ray Tune + ASHA, MiniLM / VADER",
    "gpu": "GPU: AMP / channels_last speedup on resnet18, GPU busy fraction (--gpu)",
    "lora": "LoRA vs full fine-tuning of MiniLM on VADER, the same budget",
    "schedulers": "schedulers: pbt vs the same population without it; promotion on two "
                  "objectives vs none",
}
DEFAULT_OUT = Path(__file__).resolve().parent / "RESULTS.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny budgets: checks that every benchmark runs, in seconds")
    parser.add_argument("--only", action="append", choices=list(BENCHMARKS), metavar="NAME",
                        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}")
    parser.add_argument("--gpu", action="store_true",
                        help="also run the GPU benchmark (skipped with a note without CUDA)")
    parser.add_argument("--out", type=Path, metavar="FILE",
                        help="the markdown table (default: benchmarks/RESULTS.md; with --smoke "
                             "nothing is written unless given)")
    parser.add_argument("--workdir", type=Path, metavar="DIR",
                        help="scratch directory (default: a temporary one, removed)")
    args = parser.parse_args(argv)
    names = args.only or [n for n in BENCHMARKS if n != "gpu" or args.gpu]
    out = args.out or (None if args.smoke else DEFAULT_OUT)

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="hpo-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    mode = "smoke" if args.smoke else "full"
    measured: dict = {}
    text = ""
    try:
        for name in names:
            start = time.perf_counter()
            say(f"== {name}: {BENCHMARKS[name]} ({mode})")
            scratch = workdir / name
            scratch.mkdir(exist_ok=True)
            try:
                rows = importlib.import_module(f"benchmarks.{name}").run(args.smoke, scratch,
                                                                         say)
            except Exception as e:  # one broken benchmark must not hide the others' results
                traceback.print_exc()
                rows = [Row(name, "", "", skipped=f"failed: {type(e).__name__}: "
                                                  f"{str(e).splitlines()[0][:120]}")]
            measured[name] = entry(rows, mode, time.perf_counter() - start)
            say(f"== {name}: {measured[name]['seconds']:.0f} s")
            text = _write(out, measured)  # after each benchmark: a long run keeps its results
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(text, end="")
    failed = [n for n, r in measured.items()
              if any(row["skipped"].startswith("failed:") for row in r["rows"])]
    return 1 if failed else 0


def entry(rows: list[Row], mode: str, seconds: float) -> dict:
    """One benchmark's stored results: its rows, with the date, machine, mode and time."""
    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="minutes"),
            "machine": machine(), "mode": mode, "seconds": round(seconds, 1),
            "rows": [asdict(r) for r in rows]}


def store(out: Path, name: str, rows: list[Row], mode: str, seconds: float) -> None:
    """Put one benchmark's rows into the table of ``out`` (a benchmark run on its own, e.g.
    ``python -m benchmarks.headtohead --out``), keeping the others' last results."""
    _write(out, {name: entry(rows, mode, seconds)})


def _write(out: Path | None, measured: dict) -> str:
    """Write the table (and its JSON) with ``measured`` merged in, followed by the file's
    sections that are not the table's own; return the table."""
    results = _merge(out, measured)
    text = _table(results)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        old = out.read_text() if out.is_file() else ""
        out.write_text(_with_other_sections(text, old))
        out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    return text


SECTION_START = re.compile(r"^## ", re.M)


def _with_other_sections(text: str, old: str) -> str:
    """``text`` followed by the ``## `` sections of ``old`` whose heading ``text`` lacks, in
    their order (what other commands put in the results file). What ``old`` has before its
    first ``## `` heading is the table's, replaced by ``text``."""
    own = {line for line in text.splitlines() if line.startswith("## ")}
    starts = [m.start() for m in SECTION_START.finditer(old)]
    sections = [old[a:b].strip("\n") for a, b in zip(starts, starts[1:] + [len(old)])]
    kept = [s for s in sections if s.splitlines()[0] not in own]
    return "\n\n".join([text.rstrip("\n"), *kept]) + "\n"


def _merge(out: Path | None, measured: dict) -> dict:
    """The stored results of ``out`` (if any) with ``measured`` replacing its benchmarks."""
    results: dict = {}
    if out is not None and out.with_suffix(".json").is_file():
        results = json.loads(out.with_suffix(".json").read_text()).get("benchmarks", {})
    results.update(measured)
    return {"benchmarks": {n: results[n] for n in BENCHMARKS if n in results}}


def _table(results: dict) -> str:
    rows, context = [], []
    for name, result in results["benchmarks"].items():
        rows += [Row(**r) for r in result["rows"]]
        context.append(f"{name}: measured {result['date']} on {result['machine']} "
                       f"({result['mode']} run, {result['seconds']:.0f} s)")
    return render(rows, title="hpo benchmarks", context=context)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
