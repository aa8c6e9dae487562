"""Studies of the fast custom job (``fastjob.epochs_job``) for the worker, housekeeping, outage
and chaos tests: a spec, the environment its workers need, and readers of what they did."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from processes import SUPPORT, run_hpo

FAST = """
study: {{name: {name}}}
task: {{kind: custom, entrypoint: "fastjob:epochs_job"}}
search_space:
  lr: {{type: float, low: 1.0e-5, high: 1.0e-1, log: true}}
  epochs: {{type: int, low: {low}, high: {high}}}
sampler: {{name: random, seed: 0}}
pruner: {{name: {pruner}}}
budget: {{n_trials: {n}}}
"""


def fast_env(tmp_path: Path, epoch_seconds: float = 0.0, **extra: str) -> dict[str, str]:
    return {
        "PYTHONPATH": str(SUPPORT),
        "FASTJOB_EPOCH_SECONDS": str(epoch_seconds),
        "FASTJOB_LOG": str(tmp_path / "epochs.log"),
        "HPO_HEARTBEAT_INTERVAL": "1",
        "HPO_GRACE_PERIOD": "3",
        "HPO_CHECKPOINT_DIR": str(tmp_path / "ckpt"),
        **extra,
    }


TASKS = {
    "custom": '{kind: custom, entrypoint: "fastjob:epochs_job"}',
    "script": f'{{kind: script, command: [python, "{SUPPORT / "fastscript.py"}"]}}',
}
"""The fast job as a custom task (in the worker's process) or a script task (its own)."""


def make_study(tmp_path, storage_url, n, low=1, high=3, pruner="none", env=None,
               job="custom") -> str:
    name = f"fast-{time.time_ns()}"
    spec = tmp_path / f"{name}.yaml"
    text = FAST.format(name=name, n=n, low=low, high=high, pruner=pruner)
    spec.write_text(text.replace(TASKS["custom"], TASKS[job]))
    r = run_hpo("create", str(spec), "--storage", storage_url, cwd=tmp_path,
                env=env or fast_env(tmp_path))
    assert r.returncode == 0, r.stderr
    return name


def trials(name, url):
    return optuna.load_study(study_name=name, storage=url).get_trials()


def finished(ts):
    return [t for t in ts if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def epoch_log(tmp_path) -> list[tuple[int, int, int]]:
    path = tmp_path / "epochs.log"
    if not path.exists():
        return []
    return [tuple(map(int, line.split())) for line in path.read_text().splitlines()]


def fast_study(storage_url: str, name: str) -> "optuna.Study":
    """A study of three fast trials, created in this process (no CLI)."""
    import yaml

    from hpo.spec import parse_spec
    from hpo.store.storage import open_storage
    from hpo.search.study import create_study

    spec = parse_spec(yaml.safe_load(FAST.format(name=name, n=3, low=1, high=2,
                                                 pruner="none")), source="<lifecycle>")
    return create_study(spec, open_storage(storage_url))
