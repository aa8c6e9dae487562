"""MLflow: the study as one run, each trial a run nested under it.

The study's run is found by its tags (``hpo.study``, ``hpo.role: study``) in the experiment,
so that every worker on every machine logs under the same one. A worker that finds none
creates it, waits ``SETTLE_SECONDS`` for workers that started at the same moment to create
theirs, and all of them keep the oldest (by start time, then id); the others delete theirs
before any trial is logged under them. A trial's run (``trial-N``, tags ``hpo.study`` and
``hpo.trial``) is found again the same way by the attempt that resumes a re-queued trial.

A call that fails (the server is down, refuses a write) is one warning; MLflow is then left
alone for ``RETRY_SECONDS``, so that a trial waits on it at most once a while, and the steps
it missed are logged once it answers. Each call gets a short timeout and one retry
(``_quick_http``) and no retry of its own: MLflow's default retries for minutes on a server
that is down, and a report that misses MLflow is caught up by a later one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from hpo.run.tracking._sink import Steps, TrialEnd
from hpo.store.outage import first_line

if TYPE_CHECKING:
    from hpo.spec import Spec

log = logging.getLogger("hpo")
T = TypeVar("T")

RETRY_SECONDS = 60.0
"""After a failed call, MLflow is left alone this long (a later report catches up)."""
SETTLE_SECONDS = 0.5
"""A worker that created the study's run waits this long before it looks for older ones."""
HTTP_SETTINGS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
"""MLflow's settings for hpo's calls, where the worker's environment does not set them."""
MAX_BATCH = 1000
"""Metrics MLflow takes in one ``log_batch``."""
STATUS = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED", "WAITING": "KILLED"}
"""A trial's state -> its run's MLflow status (tag ``hpo.state`` keeps the state)."""


@contextlib.contextmanager
def _quick_http() -> Iterator[None]:
    """``HTTP_SETTINGS`` for the calls inside (MLflow reads them at each request), the
    environment as it was afterwards: a script's own MLflow keeps its settings."""
    given = {k: v for k, v in HTTP_SETTINGS.items() if k not in os.environ}
    os.environ.update(given)
    try:
        yield
    finally:
        for k in given:
            os.environ.pop(k, None)


def _why(e: Exception) -> str:
    """A failed call's reason in a few words: the socket's error where there is one
    (``[Errno 111] Connection refused``), else the exception's first line, cut short."""
    found = re.search(r"\[Errno -?\d+\] [^'\")(]+", str(e))
    return found.group(0).strip() if found else first_line(e)[:300]


def _quoted(value: str) -> str:
    """A string for MLflow's search filter."""
    return f'"{value}"' if "'" in value else f"'{value}'"


class MlflowSink:
    """The study's runs in MLflow (``spec.tracking.mlflow``)."""

    def __init__(self, spec: Spec, study_name: str) -> None:
        assert spec.tracking is not None and spec.tracking.mlflow is not None
        self.uri = spec.tracking.mlflow
        self.experiment = spec.tracking.experiment or study_name
        self.study = study_name
        self.spec = spec
        self._client: Any = None
        self._experiment_id: str | None = None
        self._parent: str | None = None
        self._down_until = 0.0
        self._down = False
        self._missing = False

    # ----------------------------------------------------------------------------------------
    # Each call guarded.

    def _call(self, what: str, call: Callable[[], T]) -> T | None:
        """``call``'s result, or None where MLflow is left alone or the call failed (a
        warning at the first failure of an outage)."""
        if self._missing or time.monotonic() < self._down_until:
            return None
        try:
            with _quick_http():
                if self._client is None:
                    from mlflow import MlflowClient

                    self._client = MlflowClient(tracking_uri=self.uri)
                result = call()
        except ImportError as e:
            self._missing = True
            log.warning(
                "tracking: mlflow cannot be imported here (%s; pip install mlflow): trials "
                "are not recorded in MLflow by this worker",
                first_line(e),
            )
            return None
        except Exception as e:
            self._down_until = time.monotonic() + RETRY_SECONDS
            if not self._down:
                log.warning(
                    "tracking: MLflow at %s: %s failed (%s); the trials go on, and are "
                    "recorded there once it answers (tried again every %.0f s)",
                    self.uri,
                    what,
                    _why(e),
                    RETRY_SECONDS,
                )
            self._down = True
            return None
        if self._down:
            log.warning("tracking: MLflow at %s answers again", self.uri)
            self._down = False
        return result

    # ----------------------------------------------------------------------------------------
    # The study's run.

    def _experiment_of(self) -> str:
        if self._experiment_id is None:
            client = self._client
            found = client.get_experiment_by_name(self.experiment)
            if found is None:
                try:
                    self._experiment_id = client.create_experiment(self.experiment)
                except Exception:  # created by another worker a moment ago
                    found = client.get_experiment_by_name(self.experiment)
                    if found is None:
                        raise
            if found is not None:
                if found.lifecycle_stage != "active":
                    raise RuntimeError(
                        f"experiment {self.experiment!r} is deleted: restore it, or name "
                        "another in tracking.experiment"
                    )
                self._experiment_id = found.experiment_id
        assert self._experiment_id is not None
        return self._experiment_id

    def _study_runs(self) -> list[Any]:
        """The study's runs (not deleted), oldest first."""
        runs = self._client.search_runs(
            [self._experiment_of()],
            filter_string=f"tags.`hpo.study` = {_quoted(self.study)} AND tags.`hpo.role` = 'study'",
            max_results=100,
        )
        return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))

    def _parent_run(self) -> str:
        """The study's run: found, or created (see the module's docstring)."""
        if self._parent is not None:
            return self._parent
        client = self._client
        runs = self._study_runs()
        if not runs:
            mine = client.create_run(
                self._experiment_of(),
                run_name=self.study,
                tags={"hpo.study": self.study, "hpo.role": "study", **self._study_tags()},
            )
            time.sleep(SETTLE_SECONDS)
            runs = self._study_runs()
            if runs and runs[0].info.run_id != mine.info.run_id:
                client.delete_run(mine.info.run_id)  # another worker's is older
            else:
                self._describe(mine.info.run_id)
            runs = runs or [mine]
        chosen = runs[0]
        if chosen.info.status != "RUNNING":  # the study goes on (its budget was raised)
            client.update_run(chosen.info.run_id, status="RUNNING")
        self._parent = str(chosen.info.run_id)
        return self._parent

    def _study_tags(self) -> dict[str, str]:
        study = self.spec.study
        return {
            "hpo.metric": study.metric,
            "hpo.direction": ",".join(study.directions),
            "hpo.task": self.spec.task.kind,
        }

    def _describe(self, run_id: str) -> None:
        """The study's run: the search's settings as params, the whole spec as ``spec.yaml``."""
        import yaml
        from mlflow.entities import Param

        spec = self.spec
        params = {
            "sampler": spec.sampler.name,
            "pruner": spec.pruner.name,
            "n_trials": spec.budget.n_trials,
            "timeout": spec.budget.timeout,
            "task.model": spec.task.model,
        }
        self._client.log_batch(
            run_id, params=[Param(k, str(v)) for k, v in params.items() if v is not None]
        )
        text = yaml.safe_dump(spec.to_dict(), sort_keys=False)
        self._client.log_text(run_id, text, "spec.yaml")

    # ----------------------------------------------------------------------------------------
    # A trial's run.

    def open(self, number: int, params: dict[str, Any], tags: dict[str, str]) -> str | None:
        def call() -> str:
            from mlflow.entities import Param

            client = self._client
            parent = self._parent_run()
            found = client.search_runs(
                [self._experiment_of()],
                filter_string=f"tags.`mlflow.parentRunId` = '{parent}' "
                f"AND tags.`hpo.trial` = '{number}'",
                max_results=1,
            )
            if found:  # a re-queued trial's next attempt
                run_id = found[0].info.run_id
                client.update_run(run_id, status="RUNNING")
                client.set_tag(run_id, "hpo.state", "RUNNING")
                return str(run_id)
            run = client.create_run(
                self._experiment_of(),
                run_name=f"trial-{number}",
                tags={
                    "mlflow.parentRunId": parent,
                    "hpo.study": self.study,
                    "hpo.trial": str(number),
                    "hpo.state": "RUNNING",
                    **tags,
                },
            )
            client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
            return str(run.info.run_id)

        return self._call(f"opening trial {number}'s run", call)

    def log(self, handle: str, steps: Steps) -> bool:
        def call() -> bool:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            metrics = [
                Metric(name, value, now, step)
                for step, values in steps
                for name, value in values.items()
            ]
            for i in range(0, len(metrics), MAX_BATCH):
                self._client.log_batch(handle, metrics=metrics[i : i + MAX_BATCH])
            return True

        return bool(self._call("logging metrics", call))

    def end(self, handle: str, end: TrialEnd) -> None:
        def call() -> None:
            from mlflow.entities import Metric, RunTag

            tags = [RunTag("hpo.state", end.state)]
            if end.reason:
                key = "hpo.fail_reason" if end.state == "FAIL" else "hpo.prune_reason"
                tags.append(RunTag(key, end.reason[:5000]))
            now = int(time.time() * 1000)
            metrics = [Metric(name, value, now, 0) for name, value in end.values.items()]
            self._client.log_batch(handle, metrics=metrics, tags=tags)
            self._client.set_terminated(handle, STATUS.get(end.state, "FINISHED"))

        self._call("ending a trial's run", call)

    def close(self, study_over: bool) -> None:
        if study_over and self._parent is not None:
            parent = self._parent
            self._call("ending the study's run", lambda: self._client.set_terminated(parent))

    # ----------------------------------------------------------------------------------------
    # hpo export.

    def log_export(self, out: Path, trial_number: int) -> tuple[bool, str]:
        """``out`` (what ``hpo export`` wrote) into the study's run, under ``export/``."""

        def call() -> str:
            client = self._client
            parent = self._parent_run()
            client.log_artifacts(parent, str(out), "export")
            client.set_tag(parent, "hpo.exported_trial", str(trial_number))
            for run in client.search_runs(
                [self._experiment_of()],
                filter_string=f"tags.`mlflow.parentRunId` = '{parent}' "
                f"AND tags.`hpo.trial` = '{trial_number}'",
                max_results=1,
            ):
                client.set_tag(run.info.run_id, "hpo.exported", "true")
            return parent

        parent = self._call("logging the export", call)
        if parent is None:
            return False, f"the export is not in MLflow at {self.uri} (the reason is above)"
        return True, (
            f"hpo: MLflow: the export is in run {parent} (study {self.study}, experiment "
            f"{self.experiment}) under export/"
        )
