"""How the test run itself is arranged: parallel processes, tests that must run alone, the
quick tier. ``tests/conftest.py`` imports both names, so pytest sees them there; the tests of
this arrangement (``tests/test_workbench.py``) load it into a pytest run of their own.

Tests run in parallel (pytest-xdist, ``-n`` in pyproject.toml). A test marked ``serial`` (one
that would break the others, e.g. by restarting a shared server) runs alone: it takes the run's lock exclusively, every other test
takes it shared. A second lock, the gate, is held by a serial test while it waits, so that new
tests queue behind it instead of starving it.
"""

from __future__ import annotations

import fcntl
import os

import pytest


@pytest.fixture(autouse=True)
def serial_lock(request, tmp_path_factory):
    """Hold the run's lock around each test: exclusively for ``serial`` tests, shared for the
    rest. Without xdist there is one process, and no lock to take."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        yield
        return
    root = tmp_path_factory.getbasetemp().parent  # the run's folder, every worker's parent
    serial = request.node.get_closest_marker("serial") is not None
    with open(root / "serial.gate", "a") as gate, open(root / "serial.lock", "a") as lock:
        fcntl.flock(gate, fcntl.LOCK_EX)
        if serial:
            fcntl.flock(lock, fcntl.LOCK_EX)  # waits for the running tests; the gate is held
        else:
            fcntl.flock(lock, fcntl.LOCK_SH)
            fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            fcntl.flock(gate, fcntl.LOCK_UN)


def pytest_collection_modifyitems(config, items):
    """The ``quick`` tier (``pytest -m quick``, for the edit-test loop) is every test that is
    neither ``slow`` nor ``serial``. The ``slow`` tests go first (in their order): xdist hands
    tests out in order, and a minute-long test handed out last would run alone at the end
    while the other processes have nothing left to do."""
    for item in items:
        if not (item.get_closest_marker("slow") or item.get_closest_marker("serial")):
            item.add_marker(pytest.mark.quick)
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """With ``$HPO_TEST_CPU_LOG`` set, append each test's CPU seconds (its process and the
    subprocesses it waited for: setup, call and teardown) and wall seconds to that file, a
    JSON line each: on a machine of few cores the run's length is its CPU time."""
    import json
    import resource
    import time

    log = os.environ.get("HPO_TEST_CPU_LOG")
    if not log:
        return (yield)

    def cpu() -> float:
        own, children = (resource.getrusage(w)
                         for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    cpu0, wall0 = cpu(), time.monotonic()
    try:
        return (yield)
    finally:
        with open(log, "a") as f:
            f.write(json.dumps({"test": item.nodeid, "cpu": round(cpu() - cpu0, 2),
                                "wall": round(time.monotonic() - wall0, 2)}) + "\n")
