"""``benchmarks/schedulers.py``: PBT against the same population without it, and promotion on
two objectives against no pruning. The smoke run's rows and raw studies; the hypervolume."""

from __future__ import annotations

import json
import math

import pytest


def test_hypervolume_of_two_minimized_objectives():
    from benchmarks.schedulers import hypervolume, hypervolumes

    ref = (1.0, 1.0)
    assert hypervolume([], ref) == 0
    assert hypervolume([(0.0, 0.0)], ref) == pytest.approx(1.0)
    # A staircase: (0, .5) and (.5, 0) dominate 1 - .5 * .5; a dominated point adds nothing,
    # nor does one beyond the reference.
    stairs = [(0.0, 0.5), (0.5, 0.0)]
    assert hypervolume(stairs, ref) == pytest.approx(0.75)
    assert hypervolume(stairs + [(0.6, 0.6), (1.2, -1.0)], ref) == pytest.approx(0.75)
    # Scaled per seed over both arms: the arm holding the utopia point gets 1; the other's
    # point at the worst corner keeps only the margin to the reference point (0.1 x 0.1).
    best, worst = hypervolumes([(0.2, 10.0)], [(0.5, 100.0)])
    assert best == pytest.approx(1.0)
    assert worst == pytest.approx(0.01 / 1.21)


@pytest.mark.slow
def test_smoke_run_measures_both_schedulers_against_their_baselines(tmp_path):
    """``benchmarks.run --smoke --only schedulers`` on digits: six rows with values; PBT
    trains exactly the epochs of its baseline, from the same initial configurations, and
    exploits; promotion trains fewer epochs than no pruning; the hypervolumes are in (0, 1]."""
    from test_benchmarks import run_smoke

    work = tmp_path / "work"
    rows = run_smoke("schedulers", tmp_path, timeout=300)["rows"]
    by = {(row["case"].split(",")[1].strip().split()[0], row["metric"]): row for row in rows}
    assert sorted(by) == sorted([("pbt", m) for m in ("best val loss", "epochs trained",
                                                      "wall s")]
                                + [("promotion", m) for m in ("hypervolume", "epochs trained",
                                                              "wall s")])
    for row in rows:
        assert not row["skipped"], row
        assert row["hpo"] > 0 and row["baseline"] > 0 and math.isfinite(row["ratio"]), row
        if row["goal"]:
            assert row["met"] in (True, False), row
    assert by["pbt", "epochs trained"]["ratio"] == 1.0
    assert by["pbt", "epochs trained"]["hpo"] == 4 * 2  # population 4, 2 epochs
    assert 0 < by["promotion", "hypervolume"]["hpo"] <= 1
    assert 0 < by["promotion", "hypervolume"]["baseline"] <= 1
    assert by["promotion", "epochs trained"]["hpo"] < by["promotion", "epochs trained"][
        "baseline"]

    runs = json.loads((work / "schedulers" / "schedulers-runs.json").read_text())["runs"]
    pbt, none = runs["pbt"][0]["trials"], runs["pbt-none"][0]["trials"]
    assert [t["params"] for t in pbt[:4]] == [t["params"] for t in none]
    assert all(t["state"] == "COMPLETE" for t in none)
    exploited = [t for t in pbt if t["attrs"].get("prune_reason") == "exploited"]
    assert exploited and any(t["attrs"].get("pbt_lineage") for t in pbt)
    assert sum(t["state"] == "COMPLETE" for t in pbt) == 4  # each member ends once
    assert (work / "schedulers" / "schedulers.md").read_text().count("| 0 |") == 2
