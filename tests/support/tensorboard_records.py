"""TensorBoard's event folders read back with TensorBoard's own reader (``EventAccumulator``):
what ``tracking.tensorboard`` wrote for each trial of a study."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState


def check_tensorboard(folder, trials, metric="val_loss"):
    """Each trial's folder: its metric at every report step, its params as hparams, its
    status at the end."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import api_pb2, metadata
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    assert sorted(p.name for p in folder.iterdir()) == sorted(f"trial-{t.number}" for t in trials)
    for t in trials:
        events = EventAccumulator(str(folder / f"trial-{t.number}"))
        events.Reload()
        scalars = [(e.step, e.value) for e in events.Scalars(metric)]
        expected = sorted(t.intermediate_values.items())
        assert [s for s, _ in scalars] == [s for s, _ in expected]
        assert [v for _, v in scalars] == pytest.approx([v for _, v in expected], rel=1e-5)
        content = events.PluginTagToContent(metadata.PLUGIN_NAME)
        start = HParamsPluginData.FromString(content[metadata.SESSION_START_INFO_TAG])
        hparams = start.session_start_info.hparams
        assert set(hparams) == set(t.params)
        assert hparams["lr"].number_value == pytest.approx(t.params["lr"])
        end = HParamsPluginData.FromString(content[metadata.SESSION_END_INFO_TAG])
        status = api_pb2.Status.Name(end.session_end_info.status)
        assert status == ("STATUS_SUCCESS" if t.state == TrialState.COMPLETE
                          else "STATUS_UNKNOWN")
