"""TensorBoard: one event folder per trial, ``DIR/STUDY/trial-N``, written with
tensorboard's own writer (no TensorFlow, no torch): the trial's metrics as scalars at each
report step, its params as the HParams dashboard's session (started when its first report
is written, ended with its status). An attempt that resumes a re-queued trial adds an event
file to the same folder."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from hpo.records import safe_name
from hpo.run.tracking._sink import Steps, TrialEnd
from hpo.store.outage import first_line

log = logging.getLogger("hpo")

STATUS = {"COMPLETE": "STATUS_SUCCESS", "FAIL": "STATUS_FAILURE"}
"""A trial's state -> the HParams session's status (a pruned, paused or re-queued trial's is
``STATUS_UNKNOWN``: TensorBoard has no word for it)."""


class TensorBoardSink:
    """The study's trials as TensorBoard event folders (``spec.tracking.tensorboard``)."""

    def __init__(self, folder: str, study_name: str) -> None:
        self.root = Path(folder) / safe_name(study_name)
        self._broken = False

    def _warn(self, what: str, e: Exception) -> None:
        if not self._broken:
            log.warning(
                "tracking: TensorBoard in %s: %s failed (%s); the trials go on",
                self.root,
                what,
                first_line(e),
            )
        self._broken = True

    def open(self, number: int, params: dict[str, Any], tags: dict[str, str]) -> Any | None:
        try:
            from tensorboard.summary.writer.event_file_writer import EventFileWriter

            writer = EventFileWriter(str(self.root / f"trial-{number}"))
            writer.add_event(_event(_session_start(params)))
            return writer
        except Exception as e:  # ImportError included: no tensorboard on this worker
            self._warn(f"opening trial {number}'s folder", e)
            return None

    def log(self, handle: Any, steps: Steps) -> bool:
        from tensorboard.compat.proto.summary_pb2 import Summary

        try:
            for step, values in steps:
                summary = Summary(
                    value=[Summary.Value(tag=k, simple_value=v) for k, v in values.items()]
                )
                handle.add_event(_event(summary, step))
            handle.flush()
            return True
        except Exception as e:
            self._warn("writing scalars", e)
            return False

    def end(self, handle: Any, end: TrialEnd) -> None:
        try:
            handle.add_event(_event(_session_end(STATUS.get(end.state, "STATUS_UNKNOWN"))))
            handle.close()
        except Exception as e:
            self._warn("ending a trial", e)

    def close(self, study_over: bool) -> None:
        pass


def _event(summary: Any, step: int = 0) -> Any:
    from tensorboard.compat.proto.event_pb2 import Event

    return Event(wall_time=time.time(), step=step, summary=summary)


def _hparams_summary(tag: str, **data: Any) -> Any:
    """A summary of the HParams plugin (what its ``session_start_pb`` writes, without
    TensorFlow)."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import metadata
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    content = HParamsPluginData(version=metadata.PLUGIN_DATA_VERSION, **data)
    meta = SummaryMetadata(
        plugin_data=SummaryMetadata.PluginData(
            plugin_name=metadata.PLUGIN_NAME, content=content.SerializeToString()
        )
    )
    return Summary(value=[Summary.Value(tag=tag, metadata=meta)])


def _session_start(params: dict[str, Any]) -> Any:
    from tensorboard.plugins.hparams import metadata
    from tensorboard.plugins.hparams.plugin_data_pb2 import SessionStartInfo

    info = SessionStartInfo(start_time_secs=time.time())
    for name, value in params.items():
        if isinstance(value, bool):
            info.hparams[name].bool_value = value
        elif isinstance(value, (int, float)):
            info.hparams[name].number_value = value
        else:
            info.hparams[name].string_value = str(value)
    return _hparams_summary(metadata.SESSION_START_INFO_TAG, session_start_info=info)


def _session_end(status: str) -> Any:
    from tensorboard.plugins.hparams import api_pb2, metadata
    from tensorboard.plugins.hparams.plugin_data_pb2 import SessionEndInfo

    info = SessionEndInfo(status=api_pb2.Status.Value(status), end_time_secs=time.time())
    return _hparams_summary(metadata.SESSION_END_INFO_TAG, session_end_info=info)
