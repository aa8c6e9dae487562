"""The heartbeat settings of a storage that keeps heartbeats of its own (the journal, the
proxy's client): held, checked as Optuna's ``RDBStorage`` checks them, and read back."""

from __future__ import annotations

from typing import Any

from optuna.storages._heartbeat import BaseHeartbeat


class OwnHeartbeat(BaseHeartbeat):
    """Optuna's ``BaseHeartbeat`` settings for a storage that records beats itself."""

    def _set_heartbeat(
        self, interval: int | None, grace_period: int | None, stale_callback: Any
    ) -> None:
        """Refuse what Optuna's ``RDBStorage`` refuses (with its words), then keep them."""
        if interval is not None and interval <= 0:
            raise ValueError("The value of `heartbeat_interval` should be a positive integer.")
        if grace_period is not None and grace_period <= 0:
            raise ValueError("The value of `grace_period` should be a positive integer.")
        self.heartbeat_interval = interval
        self.grace_period = grace_period
        self.heartbeat_stale_trial_callback = stale_callback

    def grace_seconds(self) -> float:
        """Seconds without a beat before a trial is stale (Optuna's default: two intervals)."""
        return self.grace_period or 2 * (self.heartbeat_interval or 0)

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Any:
        return self.heartbeat_stale_trial_callback
