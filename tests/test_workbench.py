"""The test run's own arrangement, tested as it runs: a ``serial`` test runs alone while the
others run side by side, a passing test's temp folder goes, a failing one's stays, and the
quick tier leaves out the slow and serial tests."""

from __future__ import annotations

import json
import tomllib

import pytest

from conftest import ROOT, SUPPORT

pytest_plugins = ["pytester"]

INI = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]

CONFTEST = f"""
import sys
sys.path.insert(0, {str(SUPPORT)!r})
from workbench import pytest_collection_modifyitems, serial_lock
"""

TIMED = """
import json, os, time
import pytest

def _timed(name, tmp_path_factory, seconds=0.6):
    start = time.monotonic()
    time.sleep(seconds)
    log = tmp_path_factory.getbasetemp().parent / "spans.jsonl"
    with open(log, "a") as f:
        f.write(json.dumps([name, start, time.monotonic()]) + "\\n")

@pytest.mark.parametrize("i", range(6))
def test_side_by_side(i, tmp_path_factory):
    _timed(f"plain{i}", tmp_path_factory)

@pytest.mark.serial
@pytest.mark.parametrize("i", range(2))
def test_alone(i, tmp_path_factory):
    _timed(f"serial{i}", tmp_path_factory)
"""


def _ini(pytester) -> None:
    """The inner run's ini: this project's markers and temp-folder retention."""
    markers = "\n    ".join(INI["markers"])
    pytester.makeini(f"[pytest]\n"
                     f"tmp_path_retention_policy = {INI['tmp_path_retention_policy']}\n"
                     f"markers =\n    {markers}\n")


@pytest.mark.slow
def test_a_serial_test_runs_alone_and_the_rest_side_by_side(pytester):
    pytest.importorskip("xdist")
    _ini(pytester)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_timed=TIMED)
    base = pytester.path / "base"
    result = pytester.runpytest_subprocess("-n", "4", f"--basetemp={base}")
    result.assert_outcomes(passed=8)
    spans = [json.loads(line) for line in (base / "spans.jsonl").read_text().splitlines()]
    serial = [s for s in spans if s[0].startswith("serial")]
    plain = [s for s in spans if s[0].startswith("plain")]
    assert len(serial) == 2 and len(plain) == 6
    for name, start, end in serial:
        overlapping = [o[0] for o in spans if o[0] != name and o[1] < end and start < o[2]]
        assert overlapping == [], (name, overlapping)
    # The plain tests did run side by side (else the check above proves nothing).
    assert any(a[1] < b[2] and b[1] < a[2] for a in plain for b in plain if a is not b)


def test_a_passing_tests_temp_folder_is_removed_a_failing_ones_kept(pytester):
    _ini(pytester)
    pytester.makepyfile(test_inner="""
def test_passes(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"x" * 1_000_000)

def test_fails(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"x" * 1_000_000)
    assert False
""")
    base = pytester.path / "base"
    result = pytester.runpytest_subprocess("-p", "no:xdist", f"--basetemp={base}")
    result.assert_outcomes(passed=1, failed=1)
    left = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.is_symlink())
    assert left == ["test_fails0"], left


def test_the_quick_tier_leaves_out_slow_and_serial_tests(pytester):
    _ini(pytester)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_tiers="""
import pytest

def test_fast():
    pass

@pytest.mark.slow
def test_slow():
    pass

@pytest.mark.serial
def test_serial():
    pass
""")
    result = pytester.runpytest_subprocess("-p", "no:xdist", "-m", "quick", "-v")
    result.assert_outcomes(passed=1, deselected=2)
    result.stdout.fnmatch_lines(["*test_fast PASSED*"])


def test_the_slow_tests_are_handed_out_first(pytester):
    """A minute-long test handed out last runs alone at the end of the run: the slow tests
    go first, each group in its order."""
    _ini(pytester)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_order="""
import pytest

def test_a():
    pass

@pytest.mark.slow
def test_b():
    pass

def test_c():
    pass

@pytest.mark.slow
def test_d():
    pass
""")
    result = pytester.runpytest_subprocess("-p", "no:xdist", "--collect-only", "-q")
    names = [line.split("::")[-1] for line in result.outlines if "::" in line]
    assert names == ["test_b", "test_d", "test_a", "test_c"], result.outlines
