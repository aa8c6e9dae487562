"""Benchmark studies: their specs, and the ``hpo`` command run as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CUSTOM_SPEC = """
study: {{name: {name}}}
task: {{kind: custom, entrypoint: "benchmarks.jobs:{job}"}}
search_space:
  lr: {{type: float, low: 1.0e-5, high: 1.0e-1, log: true}}
  epochs: {{type: int, low: 1, high: 3}}
sampler: {{name: random, seed: 0}}
pruner: {{name: none}}
budget: {{n_trials: {n}}}
"""


def custom_spec(name: str, job: str, n_trials: int):
    """The spec of a study whose trials run ``benchmarks.jobs.<job>``."""
    from hpo.spec import parse_spec
    import yaml

    text = CUSTOM_SPEC.format(name=name, job=job, n=n_trials)
    return parse_spec(yaml.safe_load(text), source=f"<{name}>")


def create(spec, url: str) -> None:
    """Create the spec's study in ``url`` (as ``hpo create`` does)."""
    from hpo.store.storage import open_storage
    from hpo.search.study import create_study

    create_study(spec, open_storage(url))


def environment(**extra: str) -> dict[str, str]:
    """The environment of an ``hpo`` child: this repository importable (benchmarks.jobs),
    no inherited ``HPO_STORAGE``."""
    env = {k: v for k, v in os.environ.items() if k != "HPO_STORAGE"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_hpo(args: list[str], *, cwd: Path, env: dict[str, str], log: Path,
            timeout: float = 3600) -> float:
    """Run ``python -m hpo ARGS``; return its wall time in seconds.

    Raises:
        RuntimeError: it failed (the end of its output in the message).
    """
    return run_python(["-m", "hpo", *args], cwd=cwd, env=env, log=log, timeout=timeout)


def run_python(args: list[str], *, cwd: Path, env: dict[str, str], log: Path,
               timeout: float = 3600) -> float:
    """Run ``python ARGS`` with its output in ``log``; return its wall time in seconds."""
    start = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.run([sys.executable, *args], cwd=cwd, env=env, stdout=out,
                              stderr=subprocess.STDOUT, timeout=timeout).returncode
    seconds = time.perf_counter() - start
    if code != 0:
        tail = log.read_text()[-2000:]
        raise RuntimeError(f"python {' '.join(args)} exited {code}:\n{tail}")
    return seconds
