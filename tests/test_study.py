"""Creating a study: concurrent creates of one name with different specs, on every backend."""

from __future__ import annotations

import threading
import time

import pytest

from conftest import ROOT, run_hpo
from hpo.errors import SpecError
from hpo.storage import open_storage
from hpo.study import create_study, load_study
from test_storage import make_spec


@pytest.mark.parametrize("rounds", [12])
def test_concurrent_creates_with_different_specs_one_wins_the_other_is_refused(
        rounds, storage_url):
    storages = [open_storage(storage_url), open_storage(storage_url)]
    for r in range(rounds):
        name = f"both-{r}-{time.time_ns()}"
        specs = [make_spec(name), make_spec(name, **{"high: 1.0e-1": "high: 1.0e-2"})]
        barrier = threading.Barrier(2)
        outcome: list = [None, None]

        def create(i: int) -> None:
            barrier.wait()
            try:
                create_study(specs[i], storages[i])
                outcome[i] = "created"
            except SpecError as e:
                outcome[i] = e

        threads = [threading.Thread(target=create, args=(i,)) for i in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(map(type, outcome), key=str) == sorted([str, SpecError], key=str), outcome
        winner = outcome.index("created")
        error = str(outcome[1 - winner])
        assert "search_space.lr.high" in error and "\n" not in error
        _, stored = load_study(name, open_storage(storage_url, create=False))
        assert stored == specs[winner], f"round {r}: the loser overwrote the winner's spec"


def test_create_with_another_spec_is_exit_2_naming_the_difference(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    spec = tmp_path / "s.yaml"
    text = ("task: {kind: custom, entrypoint: 'fastjob:epochs_job'}\n"
            "search_space: {lr: {type: float, low: 1.0e-5, high: 1.0e-1, log: true}}\n")
    spec.write_text(text)
    env = {"PYTHONPATH": str(ROOT / "tests")}
    assert run_hpo("create", str(spec), "--storage", url, cwd=tmp_path, env=env).returncode == 0
    spec.write_text(text.replace("high: 1.0e-1", "high: 0.5"))
    r = run_hpo("create", str(spec), "--storage", url, cwd=tmp_path, env=env)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "search_space.lr.high (stored: 0.1, this spec: 0.5)" in r.stderr
