"""The benchmarks' smoke mode: every benchmark runs and lands in the results table.

Speed is not asserted here (a shared CI machine says nothing about it); ``python -m
benchmarks.run`` measures it and ``benchmarks/RESULTS.md`` holds the numbers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT


def _benchmark_names():
    from benchmarks.run import BENCHMARKS

    return list(BENCHMARKS)


def run_smoke(name, tmp_path, timeout=600):
    """``benchmarks.run --smoke --only NAME``: the benchmark runs at its tiny budget, every row
    it writes has a value (or says what this machine lacks), and the table printed is the one
    written. Returns the benchmark's result (its rows)."""
    out = tmp_path / "RESULTS.md"
    env = {k: v for k, v in os.environ.items() if k != "HPO_STORAGE"}
    r = subprocess.run([sys.executable, "-m", "benchmarks.run", "--smoke", "--only", name,
                        "--gpu", "--out", str(out), "--workdir", str(tmp_path / "work")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-4000:]

    results = json.loads(out.with_suffix(".json").read_text())["benchmarks"]
    assert list(results) == [name]
    table = out.read_text()
    assert table == r.stdout
    result = results[name]
    assert result["mode"] == "smoke"
    assert result["rows"], name
    for row in result["rows"]:
        line = f"| {row['benchmark']} | {row['case']} | {row['metric']} |"
        assert line in table, line
        if row["skipped"]:
            # Only what this machine lacks may be skipped, never a broken benchmark.
            assert not row["skipped"].startswith("failed"), row
            continue
        assert row["hpo"] is not None and row["hpo"] > 0, row
        if row["goal"]:
            assert row["ratio"] is not None and row["met"] in (True, False), row
    return result


# The schedulers' smoke run is tests/test_benchmarks_schedulers.py's (it reads more of it).
@pytest.mark.parametrize("name", [n for n in _benchmark_names() if n != "schedulers"])
@pytest.mark.slow
def test_smoke_run_writes_a_row_for_each_benchmark(name, tmp_path):
    """Every benchmark's smoke run (``run_smoke``). One test per benchmark, so that they run
    side by side."""
    result = run_smoke(name, tmp_path)
    # Without a GPU, the GPU benchmark says so instead of failing.
    import torch

    if name == "gpu" and not torch.cuda.is_available():
        assert all(row["skipped"] == "no CUDA device here" for row in result["rows"])


def test_the_table_keeps_every_benchmarks_last_results_in_their_order(tmp_path):
    """Benchmarks run one at a time (``--only``) add up: each run replaces its own rows in
    RESULTS.json and the table, keeps the others', and lists them in ``BENCHMARKS``' order."""
    from benchmarks.run import BENCHMARKS, _write, entry
    from benchmarks.table import Row

    out = tmp_path / "RESULTS.md"
    for name in reversed(BENCHMARKS):
        _write(out, {name: entry([Row(name, "case", "metric", hpo=1.0)], "smoke", 1.0)})
    again = _write(out, {"pruning": entry([Row("pruning", "case", "metric", hpo=2.0)],
                                          "smoke", 1.0)})
    results = json.loads(out.with_suffix(".json").read_text())["benchmarks"]
    assert list(results) == list(BENCHMARKS)
    assert results["pruning"]["rows"][0]["hpo"] == 2.0
    assert out.read_text() == again
    positions = [again.index(f"| {name} | case | metric |") for name in BENCHMARKS]
    assert positions == sorted(positions)


@pytest.mark.slow
def test_scale_smoke_measures_each_storage_and_keeps_the_other_sections(tmp_path):
    """``benchmarks.scale --smoke``: 2 workers on direct PostgreSQL, through the proxy and on
    a journal, each a row without errors, written into its own section of the results file."""
    from benchmarks.scale import SECTION

    out = tmp_path / "RESULTS.md"
    others = "# hpo benchmarks\n\n| a | table |\n\n## Chaos: randomized fault injection\n\nkept\n"
    out.write_text(others)
    env = {k: v for k, v in os.environ.items() if k != "HPO_STORAGE"}
    r = subprocess.run([sys.executable, "-m", "benchmarks.scale", "--smoke", "--out", str(out),
                        "--workdir", str(tmp_path / "work")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    text = out.read_text()
    assert text.startswith(others.rstrip("\n"))  # the other sections as they were
    section = text.split(f"## {SECTION}\n", 1)[1]
    rows = [line.split(" | ") for line in section.splitlines()
            if line.startswith("| ") and not line.startswith("| storage")]
    assert [row[0].lstrip("| ") for row in rows] == ["postgresql", "grpc", "journal"]
    for row in rows:
        assert float(row[2]) > 0, row  # trials/s
        assert row[-1].rstrip(" |") == "none", row  # errors
    peak = {row[0].lstrip("| "): int(row[7].split()[0]) for row in rows[:2]}
    assert peak["grpc"] <= 10  # the proxy's threads, whatever the workers


@pytest.mark.slow
def test_headtohead_smoke_gives_hpo_and_ray_the_same_trials(tmp_path):
    """``benchmarks.headtohead --smoke`` of hpo and Ray Tune (2 one-epoch trials, 120 examples)
    writes its section, each tool's wall, best and anytime curve; and Ray's first trial,
    run by hpo's loop on hpo's split with the same sampler seed, has hpo's first trial's
    params and so its very validation loss."""
    from benchmarks.headtohead import SECTION, TOOLS, _missing

    out = tmp_path / "RESULTS.md"
    out.write_text("# hpo benchmarks\n\n## Chaos: randomized fault injection\n\nkept\n")
    env = {k: v for k, v in os.environ.items() if k != "HPO_STORAGE"}
    r = subprocess.run([sys.executable, "-m", "benchmarks.headtohead", "--smoke", "--tools",
                        "hpo", "ray", "--out", str(out), "--workdir", str(tmp_path / "work")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    text = out.read_text()
    assert "## Chaos: randomized fault injection\n\nkept" in text
    section = text.split(f"## {SECTION}\n", 1)[1]
    results = json.loads((tmp_path / "HEADTOHEAD.json").read_text())["minilm"]
    runs = {tool: per_seed["0"] for tool, per_seed in results["runs"].items()}
    for tool, run in runs.items():
        assert f"| {TOOLS[tool]} | " in section
        assert run["trials"] == 2, tool
        assert 0 < run["ready"] < run["last"] <= run["wall"], (tool, run)
        assert run["curve"] and run["curve"][-1][1] == run["best"] < 1.0, (tool, run)
    if _missing("ray"):
        assert results["skipped"] == {"ray": _missing("ray")}
        assert "| Ray Tune + ASHA | skipped: ray is not installed" in section
        return
    events = [json.loads(line) for line in
              (tmp_path / "work" / "ray-seed0" / "events.jsonl").read_text().splitlines()]
    ray_first = events[1]
    assert ray_first["trial"] == 0 and events[0]["event"] == "trial"
    import optuna

    study = optuna.load_study(study_name="h2h-minilm-seed0",
                              storage=f"sqlite:///{tmp_path / 'work' / 'hpo-seed0' / 'hpo.db'}")
    assert ray_first["loss"] == pytest.approx(study.trials[0].intermediate_values[1], rel=1e-4)
    # The configuration Ray's trial event names is the one hpo ran.
    assert {k: events[0]["params"][k] for k in study.trials[0].params} == study.trials[0].params


def test_headtohead_goal_against_the_faster_peer():
    """The goal's arithmetic on made-up runs: the faster peer by median wall, hpo's wall over
    it per seed, wins at or below its best, and when hpo's curve first reached it."""
    from benchmarks.headtohead import rows, section, verdict

    def run(wall, curve):
        return {"wall": wall, "best": curve[-1][1], "curve": curve, "epochs": 10.0,
                "trials": 8, "ready": 5.0, "last": wall - 1}

    results = {"task": "minilm", "n_trials": 8, "seeds": [0, 1, 2], "smoke": False,
               "hpo_pruner": {"name": "median"}, "hpo_sampler": {}, "skipped": {},
               "runs": {
                   "hpo": {0: run(50, [[20, 0.40], [40, 0.28]]),
                           1: run(70, [[30, 0.35], [60, 0.31]]),
                           2: run(40, [[25, 0.29]])},
                   "hf": {0: run(100, [[90, 0.30]]), 1: run(120, [[100, 0.30]]),
                          2: run(110, [[80, 0.29]])},
                   "ray": {0: run(150, [[140, 0.20]]), 1: run(150, [[140, 0.2]]),
                           2: run(150, [[140, 0.2]])}}}
    v = verdict(results)
    assert v["peer"] == "hf"  # the faster peer, though Ray's losses are lower
    assert v["ratios"] == [0.5, 70 / 120, 40 / 110] and v["ratio"] == 0.5 and v["wall_met"]
    assert v["wins"] == 2 and v["loss_met"]  # seed 1: 0.31 > 0.30
    assert v["reach"] == [40, None, 25]
    wall, loss = rows(results)
    assert (wall.hpo, wall.baseline, wall.met) == (50, 110, True)
    assert loss.met and "at or below in 2/3 seeds" in loss.note
    text = section(results)
    assert "| hpo run | 50.0 (40.0-70.0) |" in text and "| 40.0, never, 25.0 |" in text
    assert "median **0.50: met**" in text and "**2 of 3: met**" in text


@pytest.mark.slow
def test_pruning_replay_pauses_by_the_pruners_rule_and_finishes_the_rung_leaders():
    """The promotion pruner replayed on fixed curves (benchmarks/pruning.py): 4 one-worker
    configurations of 2 epochs, 2 evaluations an epoch, first rung at step 1, factor 3 (rungs
    1 and 3). A slow starter that ends best is paused at step 1 and, once enough worse
    configurations arrive, promoted; without them it stays paused."""
    from benchmarks.pruning import replay

    def c(*losses):
        return {"curve": {str(s): v for s, v in enumerate(losses, 1)}, "value": min(losses)}

    curves = [c(1.0, 0.9, 0.8, 0.7), c(2.0, 0.5, 0.3, 0.1), c(1.5, 1.4, 1.3, 1.2),
              c(3.0, 2.9, 2.8, 2.7)]
    got = replay(curves, 0.5, 2)
    # None continues while fewer than 3 reached a rung: 0 and 1 pause at step 1; with 2's
    # arrival 0 (1.0) is the top third and is promoted, and pauses alone at step 3; 3 pauses;
    # the budget is spent: 0 leads rung 3 and finishes. 1 (2.0 at step 1) is never on top.
    assert got["best_rank"] == 3
    assert got["best"] == 0.7
    assert got["epochs"] == (4 * 1 + (3 - 1) + (4 - 3)) / 2
    # Nine configurations: the top third of rung 1 takes 1 too, which then leads rung 3.
    worse = [c(v, v, v, v) for v in (4.0, 5.0, 6.0, 7.0, 8.0)]
    assert replay(curves + worse, 0.5, 2)["best"] == 0.1


def test_pruning_replay_reads_what_tpe_would_learn_from_judged_and_raw_trials():
    """The replay's ``good_set``: before the seventh arrival (after TPE's 6 startup trials) a
    long configuration (0) was promoted at step 1 and paused alone at step 3 at 0.5, and a
    short one (4) completed at 0.8. TPE's good set (one of six) is 0, the best by final value,
    when configurations are judged at the depth they share; from the raw trials it is 4, the
    third (percentile 2/5), as Optuna ranks every complete trial first."""
    from benchmarks.pruning import replay

    def c(*losses):
        return {"curve": {str(s): v for s, v in enumerate(losses, 1)}, "value": min(losses)}

    curves = [c(1.0, 0.8, 0.5, 0.1), c(1.5, 0.9), c(1.6, 1.0), c(3.0, 2.9, 2.8, 2.7),
              c(1.2, 0.8), c(1.9, 1.2, 0.6, 0.3), c(2.5, 2.4)]
    got = replay(curves, 0.5, 2)
    assert got["good_set"] == {"judged": 0.0, "optuna": 0.4}


def test_pruning_reuses_kept_baselines_of_the_same_budget_only(tmp_path, monkeypatch):
    """``$HPO_BENCH_PRUNING_BASELINE``: the studies without pruning that an earlier run kept
    stand in for new ones (epochs and best value from their curves), for the same budget
    and seeds only; any other is refused."""
    from benchmarks.pruning import _baseline

    curves = [{"curve": {"1": 0.9, "2": 0.5}, "value": 0.5},
              {"curve": {"1": 0.8, "2": 0.6, "3": 0.4, "4": 0.3}, "value": 0.3}]
    path = tmp_path / "kept.json"
    path.write_text(json.dumps({"evals_per_epoch": 2, "budget": "2 trials", "seeds": [0, 1],
                                "none": [curves, curves[:1] * 2], "seconds": [10.0, 7.0]}))
    monkeypatch.setenv("HPO_BENCH_PRUNING_BASELINE", str(path))
    kept = _baseline("digits", "2 trials", (0, 1), 2, 2)
    assert kept[0]["epochs"] == (2 + 4) / 2 and kept[0]["best"] == 0.3
    assert kept[1]["epochs"] == 2 and kept[1]["best"] == 0.5 and kept[1]["seconds"] == 7.0
    for budget, seeds, evals, n in (("3 trials", (0,), 2, 2), ("2 trials", (2,), 2, 2),
                                    ("2 trials", (0,), 4, 2), ("2 trials", (0,), 2, 3)):
        with pytest.raises(SystemExit, match="not the baselines of digits"):
            _baseline("digits", budget, seeds, evals, n)
    monkeypatch.delenv("HPO_BENCH_PRUNING_BASELINE")
    assert _baseline("digits", "2 trials", (0,), 2, 2) == {}


@pytest.mark.slow
def test_pruning_trains_a_pruned_studys_unfinished_configurations_to_their_end(tmp_path):
    """``$HPO_BENCH_PRUNING_FINISH`` (benchmarks/pruning.py ``finished``): a real promotion
    study on digits (6 small configurations, 2 epochs, first rung at half an epoch) leaves
    some paused; each of those is trained again to its end, without pruning, and its curve
    reproduces what the pruned study saw of it. The completed ones keep their own curves."""
    from dataclasses import replace

    from benchmarks.pruning import _smoke_spec, _study, finished
    from hpo.spec import ParamSpec, load_spec

    spec = _smoke_spec(load_spec(ROOT / "search_spaces" / "digits.yaml"))
    spec = replace(spec, task=replace(spec.task, max_samples=120, evals_per_epoch=2),
                   search_space=tuple(ParamSpec("epochs", "fixed", value=2)
                                      if p.name == "epochs" else p
                                      for p in spec.search_space)).with_budget(6)
    got = _study(spec, {"name": "promotion", "min_resource": 0.5, "reduction_factor": 3},
                 tmp_path)
    assert len(got["configurations"]) == 6
    unfinished = [c for c in got["configurations"] if c["value"] is None]
    assert unfinished and len(unfinished) == got["pruned"], "nothing stayed paused to finish"
    done = finished(got["configurations"], spec, tmp_path, 2)
    assert done["rerun"] == len(unfinished)
    # Every configuration reached its last step (4: 2 epochs; one of a single batch an
    # epoch reports at epoch ends only).
    assert len(done["curves"]) == 6 and all("4" in c["curve"] for c in done["curves"])
    assert done["prefix_gap"] < 1e-6
    assert done["best"] == min(c["value"] for c in done["curves"]) <= got["best"]
    assert done["epochs"] == 6 * 2


@pytest.mark.slow
def test_gpu_ceiling_smoke_measures_every_model_and_leaves_the_real_results_alone(tmp_path):
    """``python -m benchmarks.gpu --smoke --out FILE``: hpo's fit loop and the ceiling loop run
    for each model (tiny sizes; on the CPU here), a row each with both speeds and their
    ratio, written into FILE's section beside the sections it had; the real
    ``RESULTS-gpu.md`` is not touched."""
    from benchmarks.gpu import CASES, SECTION

    real = ROOT / "benchmarks" / "RESULTS-gpu.md"
    before = real.read_bytes()
    out = tmp_path / "RESULTS-gpu.md"
    out.write_text("# GPU measurements\n\n## Kept\n\nkept\n")
    env = {k: v for k, v in os.environ.items() if k != "HPO_STORAGE"}
    env["PYTHONPATH"] = str(ROOT)
    r = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--smoke", "--out", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    text = out.read_text()
    assert "## Kept\n\nkept\n" in text and f"## {SECTION}\n" in text
    assert real.read_bytes() == before
    for case in CASES:
        row = next(line for line in text.splitlines() if line.startswith(f"| {case.name} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        hpo, ceiling, ratio = (float(c.replace(",", "")) for c in cells[3:6])
        assert hpo > 0 and ceiling > 0 and ratio == pytest.approx(hpo / ceiling, rel=0.02)
        assert cells[1] == f"{case.smoke_size} {'px' if case.kind == 'image' else 'tokens'}"


def test_the_threads_benchmark_compares_the_old_worker_environment_with_the_launchers():
    """``before`` is a worker's environment before issue #30 (thread counts only), ``after``
    what ``Slot.env`` gives now; a user's own settings do not leak into either."""
    from benchmarks.threads import arm_env

    base = {"PATH": "/bin", "OMP_NUM_THREADS": "7", "OMP_WAIT_POLICY": "ACTIVE"}
    before, after = arm_env("before", 2, base), arm_env("after", 2, base)
    assert before["OMP_NUM_THREADS"] == before["MKL_NUM_THREADS"] == "2"
    assert "OMP_WAIT_POLICY" not in before
    assert after["OMP_NUM_THREADS"] == after["MKL_NUM_THREADS"] == "2"
    assert after["GOMP_SPINCOUNT"] == "3000" and "OMP_WAIT_POLICY" not in after


@pytest.mark.slow
def test_threads_benchmark_runs_both_arms_alone_and_beside_a_hog(tmp_path):
    """``python -m benchmarks.threads`` at its smallest (one repeat, 2 batches, one core and
    one hog process): a row per condition and arm, in its own section of the results file."""
    from benchmarks.threads import SECTION

    out = tmp_path / "RESULTS.md"
    out.write_text("# hpo benchmarks\n\n## Kept\n\nkept\n")
    env = {k: v for k, v in os.environ.items() if k != "HPO_STORAGE"}
    r = subprocess.run([sys.executable, "-m", "benchmarks.threads", "--repeats", "1",
                        "--batches", "2", "--cores", "1", "--out", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    text = out.read_text()
    assert "## Kept\n\nkept\n" in text and f"## {SECTION}\n" in text
    for condition in ("alone", "beside a hog"):
        for arm in ("before", "after"):
            assert f"| {condition} | {arm} | " in text


def test_the_imbalance_benchmark_writes_its_medians_and_replaces_its_own_section(tmp_path):
    """``benchmarks.imbalance`` (its run is too long for the suite): the table's medians and
    paired differences of per-seed numbers, and ``--out`` replacing its earlier section in
    place, the others kept."""
    from benchmarks.imbalance import TITLE, arm_spec, table, write_section

    spec = arm_spec("f1", 0, smoke=False)
    assert spec["study"]["metric"] == "val_f1" and spec["task"]["thin_classes"]["3"] == 0.1
    assert arm_spec("loss", 3, smoke=False)["sampler"]["seed"] == 3

    def row(arm, seed, f1, recall):
        return {"arm": arm, "seed": seed, "best": 1, "imbalance": "none", "val_f1": 0.9,
                "test_f1": f1, "test_accuracy": 0.9, "minority_recall": recall,
                "minority_recalls": [recall] * 3, "seconds": 60}

    results = [row("f1", 0, 0.80, 0.5), row("loss", 0, 0.90, 0.7),
               row("f1", 1, 0.93, 0.9), row("loss", 1, 0.92, 0.8),
               row("f1", 2, 0.85, 0.6), row("loss", 2, 0.86, 0.6)]
    text = table(results, spec)
    assert "| val_f1 | 0.8500 (0.8000-0.9300) | 0.600 (0.500-0.900) | 0.9000 |" in text
    assert "| val_loss | 0.9000 (0.8600-0.9200) | 0.700 (0.600-0.800) | 0.9000 |" in text
    assert "median -0.0100 (-0.1000 to +0.0100; higher in 1, lower in 2 of 3)" in text

    out = tmp_path / "RESULTS.md"
    out.write_text("# Results\n\n## Before\n\nkept\n\n## After\n\nkept too\n")
    write_section(out, f"{TITLE}, day 1\n\nfirst\n")
    write_section(out, f"{TITLE}, day 2\n\nsecond\n")
    page = out.read_text()
    assert page.count(TITLE) == 1 and "second" in page and "first" not in page
    assert "## Before\n\nkept\n" in page and "## After\n\nkept too\n" in page


@pytest.mark.slow
def test_step_benchmark_smoke_runs_every_arm(tmp_path):
    """``python -m benchmarks.step --smoke``: hpo's loop at a git revision (HEAD here), this
    tree's and the bare PyTorch loop each train once, a row each with its time a step, in
    its own section of the results file."""
    from benchmarks.step import ARMS, SECTION

    out = tmp_path / "RESULTS.md"
    out.write_text("# hpo benchmarks\n\n## Kept\n\nkept\n")
    env = {k: v for k, v in os.environ.items() if k != "HPO_STORAGE"}
    r = subprocess.run([sys.executable, "-m", "benchmarks.step", "--smoke", "--out", str(out),
                        "--workdir", str(tmp_path / "work")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    text = out.read_text()
    assert "## Kept\n\nkept\n" in text and f"## {SECTION}\n" in text
    for arm in ARMS:
        row = next(line for line in text.splitlines() if line.startswith(f"| {arm} |"))
        assert float(row.split("|")[2].split()[0]) > 0


@pytest.mark.slow
def test_fused_benchmark_smoke_measures_both_arms_for_each_k(tmp_path):
    """``python -m benchmarks.fused --smoke``: fused and sequential, K = 1 and 2, a row each
    with its time a member-step, in its own section of the results file."""
    from benchmarks.fused import ARMS, SECTION

    out = tmp_path / "RESULTS.md"
    out.write_text("# hpo benchmarks\n\n## Kept\n\nkept\n")
    env = {k: v for k, v in os.environ.items() if k != "HPO_STORAGE"}
    r = subprocess.run([sys.executable, "-m", "benchmarks.fused", "--smoke", "--out", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    text = out.read_text()
    assert "## Kept\n\nkept\n" in text and f"## {SECTION}\n" in text
    for k in (1, 2):
        for arm in ARMS:
            row = next(line for line in text.splitlines()
                       if line.startswith(f"| squeezenet | {k} | {arm} |"))
            assert all(float(row.split("|")[c].split()[0]) > 0 for c in (4, 5, 6))
