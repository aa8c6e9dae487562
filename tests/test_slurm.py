"""A real Slurm cluster runs the job array that ``hpo template slurm`` prints.

Where no controller answers, ``tests/support/slurm.py`` starts a one-node cluster on this
machine (Debian's slurm-wlm and munge); without those packages the test is skipped with the
reason, or fails under ``CI=true``.
"""

from __future__ import annotations

import socket

from hpo.worker import WORKER_INDEX_VAR, worker_identity


def test_a_worker_in_a_slurm_array_is_named_and_seeded_by_its_array_task(monkeypatch):
    host = socket.gethostname()
    monkeypatch.setenv(WORKER_INDEX_VAR, "1")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    assert worker_identity() == (f"{host}:w1", 1)

    # Every array task's launcher numbers its workers from 0: the array task tells them apart,
    # in the name and in the sampler seed (or every task would draw the same parameters).
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4242")
    seen = {}
    for task in ("0", "1", "2"):
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", task)
        name, offset = worker_identity()
        assert name == f"{host}:4242_{task}:w1"
        seen[name] = offset
    assert len(set(seen.values())) == 3

    monkeypatch.delenv(WORKER_INDEX_VAR)  # a worker started by hand inside an array task
    name, _ = worker_identity()
    assert name.startswith(f"{host}:4242_2:") and name.rsplit(":", 1)[1].isdigit()
