"""The ``tracking`` section: where trials are recorded besides the study, in the tools teams
keep their experiments in (MLflow, TensorBoard). ``hpo.run.tracking`` writes the records."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from hpo.spec._checks import _STR
from hpo.spec._keypath import _At

_KEYS = ("mlflow", "experiment", "tensorboard")


@dataclass(frozen=True)
class TrackingSpec:
    """The ``tracking`` section: MLflow, TensorBoard or both. A tracking server that cannot
    be reached is a warning in the worker's log, never a failed trial."""

    mlflow: str | None = None
    """An MLflow tracking URI (``http://mlflow.example:5000``, ``sqlite:///mlflow.db``,
    ``file:./mlruns``, ``databricks``). The study is one run (named after the study, tag
    ``hpo.study``), found again by every worker on every machine; each trial is a run nested
    under it (``trial-N``) with its params, its metrics at every report step, its final
    state and its prune, pause or fail reason; ``hpo export`` adds the exported model to the
    study's run. Credentials go in MLflow's environment variables
    (``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` / ``MLFLOW_TRACKING_TOKEN``),
    not in the URI: the spec is stored in the study."""
    experiment: str | None = None
    """The MLflow experiment the study's runs go in (created if missing); default: the
    study's name."""
    tensorboard: str | None = None
    """A folder of TensorBoard event files: each trial writes ``DIR/STUDY/trial-N`` (its
    metrics as scalars at every report step, its params as hparams with the trial's final
    status); ``tensorboard --logdir DIR/STUDY`` shows them. A relative folder is the
    worker's working directory's; workers on several machines need it on a shared
    filesystem to see each other's trials in one place."""

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _parse_tracking(raw: Any, at: _At) -> TrackingSpec:
    d = at.mapping(raw, _KEYS)
    if "experiment" in d and "mlflow" not in d:
        raise (at / "experiment").error("names an MLflow experiment; set tracking.mlflow too")
    if "mlflow" not in d and "tensorboard" not in d:
        raise at.error("expected mlflow (a tracking URI), tensorboard (a folder) or both")
    given = {key: (at / key).typed(value, _STR) for key, value in d.items()}
    uri = given.get("mlflow")
    if uri is not None and re.match(r"^[a-z][\w+.-]*://[^/@\s]*:[^/@\s]*@", uri, re.I):
        raise (at / "mlflow").error(
            "a password in the URI would be stored with the study's spec; give the URI "
            "without it and set MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD "
            "on the workers"
        )
    return TrackingSpec(**given)
