"""``hpo report``: the HTML holds every figure, opens with no network, and its numbers match the
database; the same figures and a note land in the study for optuna-dashboard."""

from __future__ import annotations

import json
import math
import re
import uuid

import optuna
import pytest
from optuna.trial import TrialState

from browser import headless_chromium
from conftest import run_hpo
from sample_study import OUTCOMES, build_sample_study

from hpo.records import RETRAIN_ATTR
from hpo.results.classes import CONFUSION_TITLES
from hpo.results.figures import FIGURE_TITLES
from hpo.results.numbers import savings, study_numbers
from hpo.results.report import write_report
from hpo.store.storage import open_storage

STUDY_FIGURES = [k for k in FIGURE_TITLES
                 if k not in ("comparison", "pareto", "population", "test_confusion")]
"""A single-objective study's figures: the Pareto front is a multi-objective study's, the
population a pbt study's (tests/test_pbt.py), the test split's confusion matrix a retrained
study's."""
ON_THE_PAGE = sorted(STUDY_FIGURES, key=lambda k: k not in CONFUSION_TITLES)
"""The figures in the order the page shows them: the confusion matrix beside the per-class
table, above the others."""


def _numbers_in(page: str) -> list[dict]:
    block = re.search(r'<script type="application/json" id="hpo-numbers">(.*?)</script>', page,
                      re.S)
    assert block, "the report has no numbers block"
    return json.loads(block.group(1))


def _expected(study: optuna.Study) -> dict:
    """The report's numbers recomputed straight from the trials in the database."""
    trials = study.get_trials()
    counts = {s.name: sum(t.state == s for t in trials) for s in TrialState}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = min(complete, key=lambda t: t.value)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    seconds_run = sum(t.user_attrs["train_seconds"] for t in finished)
    seconds_planned = sum(t.user_attrs["train_seconds"] / t.user_attrs["epochs_run"]
                          * t.user_attrs["epochs_planned"] for t in finished)
    return {"counts": counts, "best_number": best.number, "best_value": best.value,
            "hours_run": seconds_run / 3600, "hours_planned": seconds_planned / 3600}


@pytest.mark.slow
def test_report_figures_and_numbers_match_the_database(storage_url, tmp_path):
    name = f"sample-{uuid.uuid4().hex[:8]}"
    build_sample_study(storage_url, name, tmp_path / "ckpt")
    out = tmp_path / "report.html"

    result = run_hpo("report", name, "--storage", storage_url, "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"written to {out}" in result.stdout
    page = out.read_text()

    # Every figure, by its title, as a section and inside the plotly figure itself.
    for key in STUDY_FIGURES:
        title = FIGURE_TITLES[key]
        # The confusion matrix sits beside the per-class table, under the table's heading.
        assert key in CONFUSION_TITLES or f"<h2>{title}</h2>" in page, title
        assert f'id="hpo-{key}"' in page, key
        assert f'"text":"{title}"' in page, f"figure {key} lacks its title"
    assert 'id="hpo-pareto"' not in page and 'id="pareto-set"' not in page
    assert 'id="hpo-population"' not in page and 'id="population"' not in page
    # Self-contained: plotly.js inlined exactly once, nothing loaded from elsewhere.
    assert page.count("window.PlotlyConfig") == 1
    assert not re.search(r"<script[^>]*\bsrc=", page)
    assert not re.search(r"<link[^>]*\bhref=", page)

    study = optuna.load_study(study_name=name, storage=storage_url)
    want = _expected(study)
    [numbers] = _numbers_in(page)
    assert numbers["counts"] == want["counts"]
    assert numbers["counts"] == {"COMPLETE": 5, "PRUNED": 3, "FAIL": 1, "RUNNING": 1,
                                 "WAITING": 0}
    assert numbers["best"]["number"] == want["best_number"]
    assert numbers["best"]["value"] == pytest.approx(want["best_value"], rel=1e-12)
    assert numbers["reasons"] == {"PRUNED": {"pruned": 3}, "FAIL": {"oom": 1}}
    s = numbers["savings"]
    finished = [o for o in OUTCOMES if o[0] in ("COMPLETE", "PRUNED")]
    assert s["trials"] == len(finished) == 8
    assert s["epochs_run"] == sum(o[2] for o in finished) == 35
    assert s["epochs_planned"] == sum(o[1] for o in finished) == 51
    assert s["epochs_saved_by_pruning"] == (8 - 2) + (7 - 3) + (6 - 2)
    assert s["epochs_saved_by_early_stopping"] == 5 - 3
    assert s["device_hours_run"] == pytest.approx(want["hours_run"])
    assert s["device_hours_planned"] == pytest.approx(want["hours_planned"])
    assert s["saved_fraction"] == pytest.approx(1 - want["hours_run"] / want["hours_planned"])
    # ... and the same numbers are what a reader sees.
    table = re.search(r'<table id="numbers">(.*?)</table>', page, re.S).group(1)
    for shown in (f"{want['best_value']:.6f}", f"#{want['best_number']}", "35 / 51",
                  f"{want['hours_run']:.3f} / {want['hours_planned']:.3f}"):
        assert f"<td>{shown}</td>" in table, shown

    # The figures and the summary note were saved into the study for optuna-dashboard.
    storage = open_storage(storage_url, create=False)
    attrs = storage.get_study_system_attrs(storage.get_study_id_from_name(name))
    for key in STUDY_FIGURES:
        prefix = f"dashboard:plot_data:hpo-{key}:"
        chunks = sorted((int(k[len(prefix):]), v) for k, v in attrs.items()
                        if k.startswith(prefix))
        assert chunks, f"figure {key} not saved into the study"
        figure = json.loads("".join(v for _, v in chunks))
        assert figure["layout"]["title"]["text"] == FIGURE_TITLES[key]
    from optuna_dashboard import get_note

    note = get_note(study)
    assert f"## hpo report: {name}" in note
    assert f"best: trial {want['best_number']}" in note
    assert "ran 35 of 51 planned epochs" in note


def test_report_opens_with_no_network(tmp_path):
    """The report renders every figure in a browser that can resolve no host at all."""
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    study = build_sample_study(url, "offline", tmp_path / "ckpt")
    out, _, _ = write_report(study, tmp_path / "offline.html", dashboard=False)
    driver = headless_chromium(tmp_path / "profile", offline=True, height=1200)
    shot = tmp_path / "report.png"
    try:
        driver.get(out.as_uri())
        rendered = driver.execute_script(
            "return typeof Plotly === 'object' && Array.from("
            "document.querySelectorAll('.js-plotly-plot')).filter("
            "d => d.querySelector('svg.main-svg')).map(d => d.id)")
        driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    assert rendered == [f"hpo-{k}" for k in ON_THE_PAGE], f"screenshot: {shot}"


def test_the_train_vs_val_figure_shades_the_gap_of_the_best_trials(tmp_path):
    """The best three complete trials, one panel each: training and validation loss from
    their ``metrics`` attr, the area between them filled, drawn in a real browser; the best
    trial's per-class table with its confusion matrix beside it, and after a retrain the
    test split's, both heatmaps drawn."""
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    study = build_sample_study(url, "gap", tmp_path / "ckpt")
    # What hpo retrain keeps in the study (tests/test_retrain.py makes a real one): 3 classes.
    test_matrix = [[9, 1, 0], [0, 4, 2], [1, 0, 11]]
    study.set_user_attr(RETRAIN_ATTR, {
        "trial": 0, "test_accuracy": 0.8571, "test_f1": 0.83, "test_per_class": {
            "classes": ["a", "b", "c"], "precision": [0.9, 0.8, 0.8462],
            "recall": [0.9, 0.6667, 0.9167], "f1": [0.9, 0.7273, 0.88], "examples": [10, 6, 12]},
        "test_confusion": test_matrix})
    out, numbers, figures = write_report(study, tmp_path / "gap.html", dashboard=False)
    best3 = sorted((t for t in study.get_trials() if t.state == TrialState.COMPLETE),
                   key=lambda t: t.value)[:3]
    fig = figures["overfit"]
    assert [a.text for a in fig.layout.annotations] == [f"trial #{t.number}: loss"
                                                        for t in best3]
    for (train, val), t in zip(zip(fig.data[::2], fig.data[1::2]), best3):
        history = t.user_attrs["metrics"]
        assert list(train.x) == list(val.x) == sorted(int(s) for s in history)
        assert list(train.y) == [history[str(s)]["train_loss"] for s in train.x]
        assert list(val.y) == [history[str(s)]["val_loss"] for s in val.x]
        assert val.fill == "tonexty" and train.fill is None
    per = numbers["best"]["per_class"]
    assert per["classes"] == [str(i) for i in range(10)] and len(per["f1"]) == 10
    matrix = best3[0].user_attrs["best_metrics"]["val_confusion"]
    assert numbers["best"]["confusion"] == matrix
    assert per["examples"] == [sum(row) for row in matrix] == [31 - i for i in range(10)]
    page = out.read_text()
    table = re.search(r'<table id="per-class">(.*?)</table>', page, re.S).group(1)
    assert "<th>precision</th><th>recall</th><th>f1</th><th>examples</th>" in table
    assert "<tr><td>3</td><td>0.83</td><td>0.87</td><td>0.835</td><td>28</td></tr>" in table
    # The heatmaps: counts as text, each cell coloured by its share of the true class.
    heat = figures["confusion"].data[0]
    assert [list(r) for r in heat.text] == matrix and list(heat.y) == per["classes"]
    assert heat.z[3][3] == pytest.approx(27 / 28) and heat.z[3][4] == pytest.approx(1 / 28)
    test_heat = figures["test_confusion"].data[0]
    assert [list(r) for r in test_heat.text] == test_matrix
    assert list(test_heat.x) == ["a", "b", "c"]
    assert test_heat.z[1][2] == pytest.approx(2 / 6)
    test_table = re.search(r'<section id="test_confusion">.*?<table id="test-per-class">'
                           r'(.*?)</table>(.*?)</section>', page, re.S)
    assert "<tr><td>b</td><td>0.8</td><td>0.6667</td><td>0.7273</td><td>6</td></tr>" in \
        test_table.group(1)
    assert 'id="hpo-test_confusion"' in test_table.group(2)  # beside its table
    assert re.search(r'<section id="confusion">.*?id="per-class".*?id="hpo-confusion"', page,
                     re.S)

    driver = headless_chromium(tmp_path / "profile", offline=True, height=1200)
    shot = tmp_path / "gap.png"
    try:
        driver.get(out.as_uri())
        drawn = driver.execute_script(
            "const d = document.getElementById('hpo-overfit');"
            "const cell = id => Array.from(document.querySelectorAll("
            " '#' + id + ' g.hm image, #' + id + ' g.heatmaplayer image')).length;"
            "const texts = id => Array.from(document.querySelectorAll("
            " '#' + id + ' g.heatmaplayer text, #' + id + ' g.hm text')).map(t => t.textContent);"
            "const box = id => document.getElementById(id).getBoundingClientRect();"
            "return {fills: d.querySelectorAll('path.js-fill').length,"
            " panels: d.querySelectorAll('g.cartesianlayer > g.subplot').length,"
            " lines: d.querySelectorAll('g.scatterlayer g.trace').length,"
            " heat: cell('hpo-confusion'), test_heat: cell('hpo-test_confusion'),"
            " counts: texts('hpo-confusion'), test_counts: texts('hpo-test_confusion'),"
            " table: box('per-class'), figure: box('hpo-confusion')}")
        driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    assert drawn["panels"] == 3 and drawn["lines"] == 6, (drawn, str(shot))
    assert drawn["fills"] >= 3, (drawn, str(shot))
    assert drawn["heat"] >= 1 and drawn["test_heat"] >= 1, (drawn, str(shot))
    assert sorted(drawn["test_counts"]) == sorted(str(n) for r in test_matrix for n in r), drawn
    assert drawn["counts"].count("1") == 10 and "27" in drawn["counts"], (drawn, str(shot))
    # Beside: the heatmap to the right of the table, their tops level.
    assert drawn["figure"]["left"] >= drawn["table"]["right"], (drawn, str(shot))
    assert abs(drawn["figure"]["top"] - drawn["table"]["top"]) < 60, (drawn, str(shot))


def test_report_of_young_studies(tmp_path):
    """No trial, one complete trial: the report still comes out and says what is missing."""
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    empty = build_sample_study(url, "empty", tmp_path / "ckpt", outcomes=[])
    page = write_report(empty, tmp_path / "empty.html")[0].read_text()
    assert "No complete trial yet." in page
    [numbers] = _numbers_in(page)
    assert numbers["best"] is None and sum(numbers["counts"].values()) == 0
    assert "no complete trial yet" in page

    one = build_sample_study(url, "one", tmp_path / "ckpt",
                             outcomes=[("COMPLETE", 3, 3, 0.4), ("PRUNED", 5, 1, 2.0)])
    page = write_report(one, tmp_path / "one.html")[0].read_text()
    assert "importances need at least 2 complete trials; this study has 1" in page
    [numbers] = _numbers_in(page)
    assert numbers["best"]["number"] == 0
    assert numbers["savings"]["epochs_saved_by_pruning"] == 4


@pytest.mark.slow
def test_compare_two_studies(tmp_path):
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    build_sample_study(url, "median", tmp_path / "ckpt")
    build_sample_study(url, "nopruning", tmp_path / "ckpt", seed=1,
                       outcomes=[("COMPLETE", p, p, 0.2 + 0.01 * p) for p in (3, 5, 8, 4)])
    result = run_hpo("report", "median", "--compare", "nopruning", "--storage", url,
                     "--no-dashboard", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "dashboards" / "median.html").read_text()  # the default place
    assert f"<h2>{FIGURE_TITLES['comparison']}</h2>" in page
    numbers = _numbers_in(page)
    assert [n["study"] for n in numbers] == ["median", "nopruning"]
    assert numbers[1]["savings"]["epochs_run"] == numbers[1]["savings"]["epochs_planned"] == 20
    storage = open_storage(url, create=False)
    attrs = storage.get_study_system_attrs(storage.get_study_id_from_name("median"))
    assert not any(k.startswith("dashboard:") for k in attrs)  # --no-dashboard


def test_savings_without_attrs_fall_back_to_params_and_wall_time():
    """Trials of older workers lack the attrs: the epochs param and the wall time stand in."""
    import datetime as dt

    from optuna.distributions import IntDistribution
    from optuna.trial import create_trial

    t = create_trial(state=TrialState.PRUNED, value=1.0, params={"epochs": 10},
                     distributions={"epochs": IntDistribution(1, 10)},
                     intermediate_values={1: 2.0, 2: 1.5, 3: 1.0})
    t.datetime_start = dt.datetime(2025, 1, 1, 12, 0, 0)
    t.datetime_complete = dt.datetime(2025, 1, 1, 12, 0, 30)
    s = savings([t])
    assert (s["epochs_run"], s["epochs_planned"]) == (3, 10)
    assert s["device_hours_run"] == pytest.approx(30 / 3600)
    assert s["device_hours_planned"] == pytest.approx(100 / 3600)
    assert s["saved_fraction"] == pytest.approx(0.7)


def test_a_trial_on_two_devices_costs_two_device_hours_an_hour():
    from optuna.distributions import IntDistribution
    from optuna.trial import create_trial

    def trial(world_size):
        return create_trial(state=TrialState.COMPLETE, value=1.0, params={"epochs": 2},
                            distributions={"epochs": IntDistribution(1, 4)},
                            intermediate_values={1: 2.0, 2: 1.0},
                            user_attrs={"epochs_run": 2, "epochs_planned": 4,
                                        "train_seconds": 36.0, "world_size": world_size})

    assert savings([trial(2)])["device_hours_run"] == pytest.approx(72 / 3600)
    assert savings([trial(2)])["device_hours_planned"] == pytest.approx(144 / 3600)
    assert savings([trial(1)])["device_hours_run"] == pytest.approx(36 / 3600)


def test_a_paused_and_resumed_configuration_counts_once():
    """The promotion pruner's attempts of one configuration: a trial paused at a quarter
    epoch, and its continuation, whose attrs count from the configuration's start. Savings
    count the configuration once (its last attempt); the anytime curve each attempt's part."""
    import datetime as dt

    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    from hpo.results.numbers import anytime

    start = dt.datetime(2025, 1, 1, 12, 0, 0)

    def trial(state, end, attrs, values):
        t = create_trial(state=state, value=values[max(values)] if state.name == "COMPLETE"
                         else None, params={"lr": 0.01},
                         distributions={"lr": FloatDistribution(1e-5, 1.0, log=True)},
                         intermediate_values=values, user_attrs=attrs)
        t.datetime_start, t.datetime_complete = start, start + dt.timedelta(seconds=end)
        return t

    quarter = {"epochs_run": 1, "epochs_trained": 0.25, "epochs_planned": 3,
               "train_seconds": 5.0}
    study = optuna.create_study()
    study.add_trial(trial(TrialState.PRUNED, 5, {**quarter, "prune_reason": "paused"},
                          {1: 0.9}))  # 0: paused, later resumed
    study.add_trial(trial(TrialState.PRUNED, 10, {**quarter, "epochs_planned": 2,
                                                  "prune_reason": "paused"},
                          {1: 1.2}))  # 1: paused for good
    study.add_trial(trial(TrialState.COMPLETE, 70,
                          {"epochs_run": 3, "epochs_trained": 3.0, "epochs_planned": 3,
                           "train_seconds": 60.0, "resumed_from": 0, "paused_at": 1},
                          {1: 0.9, 4: 0.7, 12: 0.5}))  # 2: resumes 0, completes
    s = savings(study.trials)
    assert s["trials"] == 2
    assert (s["epochs_run"], s["epochs_planned"]) == (3.25, 5)
    assert s["device_hours_run"] == pytest.approx(65 / 3600)
    assert anytime(study)["epochs"] == [3.25]  # 0.25 + 0.25 + the continuation's 2.75
    assert anytime(study)["best"] == [0.5]


@pytest.mark.slow
def test_png_export_through_kaleido(tmp_path):
    """kaleido (in the test extra) renders with Debian's chromium: one PNG per figure."""
    pytest.importorskip("kaleido")
    headless_chromium(tmp_path / "profile").quit()  # skips (or fails under CI) without one
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    build_sample_study(url, "png", tmp_path / "ckpt", outcomes=OUTCOMES[:4])
    result = run_hpo("report", "png", "--storage", url, "--png", "--no-dashboard", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "dashboards" / "png"
    assert f"{len(STUDY_FIGURES)} PNGs written to dashboards/png\n" in result.stdout, result.stdout
    for key in STUDY_FIGURES:
        data = (folder / f"{key}.png").read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000, key


def test_png_export_without_kaleido_says_why(tmp_path, monkeypatch):
    import sys

    from hpo.results.report import write_pngs

    monkeypatch.setitem(sys.modules, "kaleido", None)  # as if not installed
    assert write_pngs({}, tmp_path) == ("kaleido is not installed (pip install kaleido; it "
                                        "needs Chrome)")
    assert not any(tmp_path.iterdir())


def test_report_of_a_missing_study_is_one_line(tmp_path):
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    build_sample_study(url, "there", tmp_path / "ckpt", outcomes=[])
    result = run_hpo("report", "not-there", "--storage", url, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == ("hpo: error: no hpo study named 'not-there'; studies "
                                     "here: there")


def test_study_numbers_without_trials_of_a_kind(tmp_path):
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    study = build_sample_study(url, "ok", tmp_path / "ckpt",
                               outcomes=[("COMPLETE", 2, 2, 0.5), ("COMPLETE", 3, 3, 0.3)])
    numbers = study_numbers(study)
    assert numbers["reasons"] == {"PRUNED": {}, "FAIL": {}}
    assert numbers["savings"]["saved_fraction"] == 0
    assert numbers["best"]["number"] == 1


def test_a_study_name_with_markup_stays_text(tmp_path):
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    name = "a</script><b>x"
    study = build_sample_study(url, name, tmp_path / "ckpt", outcomes=OUTCOMES[:2])
    page = write_report(study, tmp_path / "r.html", dashboard=False)[0].read_text()
    assert "<h1>Study a&lt;/script&gt;&lt;b&gt;x</h1>" in page
    assert _numbers_in(page)[0]["study"] == name


@pytest.mark.slow
def test_anytime_figure_of_a_real_study(tmp_path):
    """``hpo run`` of a small study of the custom epoch job (median pruner), then ``hpo
    report``: the anytime figure's points are, for each finished trial in the order they
    finished, the seconds since the first trial started, the epochs trained by then and the
    best value by then, as the database says."""
    import yaml

    from conftest import SUPPORT

    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    spec = tmp_path / "anytime.yaml"
    spec.write_text(yaml.safe_dump({
        "task": {"kind": "custom", "entrypoint": "fastjob:epochs_job"},
        "search_space": {"lr": {"type": "float", "low": 1.0e-5, "high": 1.0, "log": True},
                         "epochs": {"type": "int", "low": 1, "high": 4}},
        "sampler": {"name": "random", "seed": 2},
        "pruner": {"name": "median", "n_startup_trials": 2},
        "budget": {"n_trials": 7}}))
    env = {"PYTHONPATH": str(SUPPORT), "FASTJOB_EPOCH_SECONDS": "0.05"}
    ran = run_hpo("run", str(spec), "--storage", url, cwd=tmp_path, env=env)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    out = tmp_path / "anytime.html"
    made = run_hpo("report", "anytime", "--storage", url, "--out", str(out), cwd=tmp_path)
    assert made.returncode == 0, made.stdout + made.stderr

    # The points recomputed straight from the trials in the database.
    study = optuna.load_study(study_name="anytime", storage=url)
    first = min(t.datetime_start for t in study.trials)
    finished = sorted((t for t in study.trials
                       if t.state in (TrialState.COMPLETE, TrialState.PRUNED)),
                      key=lambda t: t.datetime_complete)
    assert len(finished) == 7 and finished[0].state == TrialState.COMPLETE
    assert any(t.state == TrialState.PRUNED for t in finished)  # pruned epochs count too
    seconds, epochs, best, trained, low = [], [], [], 0, math.inf
    for t in finished:
        trained += max(t.intermediate_values)  # the job reports epochs 1, 2, ...
        if t.state == TrialState.COMPLETE:
            low = min(low, t.value)
        seconds.append((t.datetime_complete - first).total_seconds())
        epochs.append(trained)
        best.append(low)
    assert best[-1] == study.best_value and trained < sum(t.params["epochs"] for t in finished)

    [numbers] = _numbers_in(out.read_text())
    curve = numbers["anytime"]
    assert curve["trial"] == [t.number for t in finished]
    assert curve["seconds"] == pytest.approx(seconds)
    assert curve["epochs"] == epochs
    assert curve["best"] == best
    # The figure (as saved for optuna-dashboard) draws those points: by time, by epochs.
    storage = open_storage(url, create=False)
    attrs = storage.get_study_system_attrs(storage.get_study_id_from_name("anytime"))
    prefix = "dashboard:plot_data:hpo-anytime:"
    chunks = sorted((int(k[len(prefix):]), v) for k, v in attrs.items() if k.startswith(prefix))
    by_time, by_epochs = json.loads("".join(v for _, v in chunks))["data"]
    assert by_time["x"] == pytest.approx(seconds) and by_time["y"] == best
    assert by_epochs["x"] == epochs and by_epochs["y"] == best


def test_the_report_shows_recall_by_class_for_each_imbalance_remedy(tmp_path):
    """A study that searched ``imbalance``: each remedy's best trial and its validation recall
    by class, side by side (the remedy a rare class needs shows in its row)."""
    import yaml

    from hpo.search.study import create_study
    from hpo.spec import parse_spec

    spec = parse_spec(yaml.safe_load(
        "study: {name: remedies}\n"
        "task: {kind: image_classification, model: resnet18, dataset: {name: digits}}\n"
        "search_space:\n"
        "  lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}\n"
        "  imbalance: {type: categorical, choices: [none, class_weights, sampler]}\n"))
    study = create_study(spec, open_storage(f"sqlite:///{tmp_path / 'hpo.db'}"))
    dists = {p.name: p.distribution() for p in spec.search_space}
    # remedy, val loss, recall of (common, rare); the second class_weights trial is worse.
    for remedy, loss, recall in [("none", 0.30, [0.95, 0.20]), ("class_weights", 0.25, [0.85, 0.70]),
                                 ("sampler", 0.28, [0.80, 0.75]), ("class_weights", 0.40, [0.5, 0.5])]:
        study.add_trial(optuna.trial.create_trial(
            params={"lr": 1e-3, "imbalance": remedy}, distributions=dists, value=loss,
            user_attrs={"class_weights": {"common": 0.6, "rare": 3.0}, "best_metrics": {
                "val_recall_per_class": recall, "val_precision_per_class": recall,
                "val_f1_per_class": recall}}))
    numbers = study_numbers(study)
    assert numbers["by_remedy"] == {
        "class_weights": {"trial": 1, "value": 0.25, "classes": ["common", "rare"],
                          "recall": [0.85, 0.70]},
        "sampler": {"trial": 2, "value": 0.28, "classes": ["common", "rare"],
                    "recall": [0.80, 0.75]},
        "none": {"trial": 0, "value": 0.30, "classes": ["common", "rare"],
                 "recall": [0.95, 0.20]},
    }
    out, _, _ = write_report(study, tmp_path / "report.html", dashboard=False)
    table = re.search(r'<table id="remedy-recall">(.*?)</table>', out.read_text(), re.S).group(1)
    assert "<th>class_weights (#1)</th><th>sampler (#2)</th><th>none (#0)</th>" in table
    assert "<tr><td>rare</td><td>0.7</td><td>0.75</td><td>0.2</td></tr>" in table, table
    # The digits sample study searched no remedy: no such table.
    assert "by_remedy" not in study_numbers(build_sample_study(
        f"sqlite:///{tmp_path / 's.db'}", "plain", tmp_path / "ckpt"))
