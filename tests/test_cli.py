"""The CLI end to end, run as a user runs it: real trials of a real fine-tuning job, on every
storage backend."""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time

import optuna
import pytest

from conftest import ROOT, run_hpo, server_url
from specs import write_tiny_spec

SIX = {"lr", "batch_size", "epochs", "optimizer", "dropout", "weight_decay"}
ATTRS = {"val_accuracy", "best_epoch", "epochs_run", "epochs_planned", "train_seconds",
         "samples_per_second", "device", "host", "worker", "peak_memory_mb"}


def reopen(name: str, url: str) -> optuna.Study:
    """The study as another process sees it (any storage URL hpo takes, grpc and journal
    included)."""
    from hpo.store.storage import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(url, create=False))


@pytest.mark.slow
def test_run_then_best_status_studies(tmp_path):
    """A real fine-tuning study through the CLI (on SQLite). The same commands on PostgreSQL,
    MariaDB, through the gRPC proxy and on a journal file are
    ``test_every_command_works_on_every_storage`` (the fast job's study: the training is the
    same whatever the storage)."""
    storage_url = f"sqlite:///{tmp_path / 'hpo.db'}"
    name = f"tiny-{time.time_ns()}"
    spec = tmp_path / "tiny.yaml"
    write_tiny_spec(spec, name)
    created = run_hpo("create", str(spec), "--storage", storage_url, cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    # A known good trial first, then one that cannot learn: the median pruner must stop it at
    # epoch 2 (the first it may prune at), when the good one has learned.
    study = reopen(name, storage_url)
    good = {"lr": 1e-3, "batch_size": 32, "epochs": 3, "optimizer": "adam", "dropout": 0.1,
            "weight_decay": 1e-4}
    study.enqueue_trial(good)
    study.enqueue_trial({**good, "lr": 1e-8})

    run = run_hpo("run", str(spec), "--storage", storage_url, "--checkpoint-dir",
                  str(tmp_path / "ckpt"), cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    assert "[  4/4]" in run.stdout  # the progress display counts finished trials

    trials = reopen(name, storage_url).get_trials()
    states = [t.state for t in trials]
    assert len(trials) == 4
    assert set(states) <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    assert states[0] == optuna.trial.TrialState.COMPLETE
    assert states[1] == optuna.trial.TrialState.PRUNED
    assert trials[1].user_attrs["prune_reason"] == "pruned"
    for t in trials:
        assert SIX <= set(t.params)
        assert ("momentum" in t.params) == (t.params["optimizer"] == "sgd")
        assert ATTRS <= set(t.user_attrs), set(t.user_attrs)
        steps = sorted(t.intermediate_values)
        assert steps == list(range(1, t.user_attrs["epochs_run"] + 1))
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert t.value == pytest.approx(min(t.intermediate_values.values()))
            assert t.user_attrs["epochs_run"] == t.params["epochs"]
    first = trials[0]
    assert first.intermediate_values[3] < first.intermediate_values[1]  # it learned

    best = run_hpo("best", name, "--json", "--storage", storage_url, cwd=tmp_path)
    assert best.returncode == 0, best.stderr
    record = json.loads(best.stdout)
    expected = reopen(name, storage_url).best_trial
    assert record["number"] == expected.number and record["value"] == expected.value
    assert SIX <= set(record["params"]) and len(record["intermediate_values"]) >= 2
    assert "checkpoint_artifact" in record["user_attrs"]  # the best checkpoint, for the dashboard

    status = run_hpo("status", name, "--storage", storage_url, cwd=tmp_path)
    assert status.returncode == 0 and "complete" in status.stdout and "best" in status.stdout
    listed = run_hpo("studies", "--json", "--storage", storage_url, cwd=tmp_path)
    assert name in [r["study"] for r in json.loads(listed.stdout)]

    # Resuming a finished study runs nothing more; a bigger budget on the command line runs more.
    again = run_hpo("worker", name, "--storage", storage_url, "--n-trials", "5", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert len(reopen(name, storage_url).get_trials()) == 5


@pytest.mark.slow
def test_a_study_of_val_f1_maximizes_it_through_the_cli(tmp_path):
    """``study.metric: val_f1`` and no direction: the study maximizes macro F1. Each trial
    reports its validation F1 at every epoch, its value is the highest of them (the best
    epoch's, the F1 of ``best_metrics``), and ``hpo best`` / ``hpo status`` name the metric
    and show the highest trial."""
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    name = f"f1-{time.time_ns()}"
    spec = write_tiny_spec(tmp_path / "f1.yaml", name, study={"metric": "val_f1"},
                           budget={"n_trials": 5})
    assert run_hpo("create", str(spec), "--storage", url, cwd=tmp_path).returncode == 0
    good = {"lr": 1e-3, "batch_size": 32, "epochs": 3, "optimizer": "adam", "dropout": 0.1,
            "weight_decay": 1e-4}
    study = reopen(name, url)
    study.enqueue_trial(good)
    study.enqueue_trial({**good, "lr": 1e-8})  # learns nothing: the lowest F1
    run = run_hpo("run", str(spec), "--storage", url, "--checkpoint-dir",
                  str(tmp_path / "ckpt"), cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "val_f1 " in run.stdout  # the progress lines name the objective

    study = reopen(name, url)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    trials = study.get_trials()
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == 5 and len(complete) >= 2
    for t in complete:
        f1s = [t.user_attrs["metrics"][str(s)]["val_f1"] for s in sorted(t.intermediate_values)]
        assert list(t.intermediate_values.values()) == pytest.approx(f1s, rel=1e-5)
        assert t.value == pytest.approx(max(t.intermediate_values.values()))
        best_step = t.user_attrs["best_epoch"]
        assert t.intermediate_values[best_step] == t.value
        assert t.user_attrs["best_metrics"]["val_f1"] == pytest.approx(t.value, rel=1e-5)
        assert 0.0 <= t.value <= 1.0
    top = max(complete, key=lambda t: t.value)
    assert top.value > 0.5 and complete[0].number == 0  # the good trial learned
    if trials[1].state == optuna.trial.TrialState.COMPLETE:  # the lr=1e-8 one, unless pruned
        assert trials[1].value < top.value

    best = run_hpo("best", name, "--json", "--storage", url, cwd=tmp_path)
    assert best.returncode == 0, best.stderr
    record = json.loads(best.stdout)
    assert record["number"] == top.number and record["value"] == top.value
    assert record["metric"] == "val_f1" and record["direction"] == "maximize"
    text = run_hpo("best", name, "--storage", url, cwd=tmp_path).stdout
    assert f"#{top.number}" in text and "val_f1" in text and "maximized" in text
    status = run_hpo("status", name, "--storage", url, cwd=tmp_path).stdout
    assert f"best     #{top.number} val_f1 {top.value:.4f}" in status, status

    # hpo best shows the train vs val gap of the best evaluation: accuracy, loss and F1 (the
    # objective's training counterpart), from best_metrics, flagged past --overfit-gap.
    metrics = top.user_attrs["best_metrics"]
    assert record["best_metrics"] == metrics
    # ... and the validation confusion matrix of that evaluation: its diagonal is the recall.
    matrix = record["best_metrics"]["val_confusion"]
    assert len(matrix) == 10 and all(len(row) == 10 for row in matrix)
    assert [row[i] / sum(row) if sum(row) else 0.0 for i, row in enumerate(matrix)] == \
        pytest.approx(metrics["val_recall_per_class"], abs=1e-5)
    over = record["overfitting"]
    assert set(over["gaps"]) == {"accuracy", "loss", "f1"} and over["threshold"] == 0.1
    for key in ("accuracy", "f1"):
        assert over["gaps"][key]["gap"] == pytest.approx(
            metrics[f"train_{key}"] - metrics[f"val_{key}"], abs=1e-6)
    assert over["gaps"]["loss"]["gap"] == pytest.approx(
        metrics["val_loss"] - metrics["train_loss"], abs=1e-6)
    assert over["flagged"] == any(over["gaps"][k]["gap"] > 0.1 for k in ("accuracy", "f1"))
    assert "train vs val" in text and ("OVERFITTING" in text) == over["flagged"]
    loose = json.loads(run_hpo("best", name, "--json", "--overfit-gap", "1", "--storage", url,
                               cwd=tmp_path).stdout)
    assert loose["overfitting"]["threshold"] == 1 and not loose["overfitting"]["flagged"]

    # A best evaluation that trained to 0.99 accuracy and validated at 0.80: flagged in
    # accuracy at the default gap, not at 0.25; F1 within 0.1 is not.
    # (Optuna updates no finished trial: the attr is rewritten in the database.)
    import sqlite3

    crafted = {**metrics, "train_accuracy": 0.99, "val_accuracy": 0.8, "train_f1": 0.85,
               "val_f1": 0.8}
    with sqlite3.connect(tmp_path / "hpo.db") as db:
        db.execute("UPDATE trial_user_attributes SET value_json = ? WHERE key = 'best_metrics' "
                   "AND trial_id = ?", (json.dumps(crafted), top._trial_id))
    flagged = run_hpo("best", name, "--storage", url, cwd=tmp_path)
    assert flagged.returncode == 0, flagged.stderr
    assert "OVERFITTING: training beats validation by more than 0.1 in accuracy" in (
        flagged.stdout), flagged.stdout
    assert "accuracy       train 0.9900  val 0.8000  gap +0.1900" in flagged.stdout
    calm = run_hpo("best", name, "--overfit-gap", "0.25", "--storage", url, cwd=tmp_path)
    assert "OVERFITTING" not in calm.stdout and "gap +0.1900" in calm.stdout
    bad = run_hpo("best", name, "--overfit-gap", "-1", "--storage", url, cwd=tmp_path)
    assert bad.returncode == 2 and "--overfit-gap" in bad.stderr and "a number >= 0" in bad.stderr

    # The report names the metric; its train vs val figure draws F1 (the objective's training
    # counterpart) of the best trials; the best trial's per-class table has the ten digits.
    page = tmp_path / "f1.html"
    report = run_hpo("report", name, "--out", str(page), "--no-dashboard", "--storage", url,
                     cwd=tmp_path)
    assert report.returncode == 0, report.stdout + report.stderr
    html = page.read_text()
    assert f"Best trial #{top.number}: val f1 {top.value:.6f}" in html
    assert f"trial #{top.number}: f1" in html and 'id="hpo-overfit"' in html
    table = html.split('<table id="per-class">', 1)[1].split("</table>", 1)[0]
    assert table.count("<tr>") == 1 + 10
    assert 'id="hpo-confusion"' in html.split('<section id="confusion">', 1)[1]
    row = table.split("<tr><td>3</td>", 1)[1].split("</tr>", 1)[0]
    assert row.endswith(f"<td>{sum(matrix[3])}</td>"), row  # the 3s it validated on


def test_storage_from_environment_and_default(tmp_path):
    from workers import FAST, fast_env

    spec = tmp_path / "fast.yaml"
    spec.write_text(FAST.format(name="envstudy", n=1, low=1, high=2, pruner="none"))
    env_db = tmp_path / "env.db"
    env = fast_env(tmp_path)
    r = run_hpo("create", str(spec), cwd=tmp_path,
                env={**env, "HPO_STORAGE": f"sqlite:///{env_db}"})
    assert r.returncode == 0, r.stderr
    assert env_db.exists() and not (tmp_path / "hpo.db").exists()
    r = run_hpo("create", str(spec), cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "hpo.db").exists()  # the default: sqlite:///hpo.db in the cwd


@pytest.fixture(scope="module")
def envstudy(tmp_path_factory):
    """A folder with ``tiny.yaml`` and the ``hpo.db`` that ``hpo create`` made of it (study
    ``envstudy``), made once: each bad-input case copies it."""
    folder = tmp_path_factory.mktemp("envstudy")
    write_tiny_spec(folder / "tiny.yaml", "envstudy")
    created = run_hpo("create", str(folder / "tiny.yaml"), cwd=folder)
    assert created.returncode == 0, created.stderr
    return folder


@pytest.mark.parametrize("args,words", [
    (["best", "nosuch"], ["no hpo study named 'nosuch'", "envstudy"]),
    (["status", "nosuch"], ["no hpo study named 'nosuch'"]),
    (["worker", "nosuch"], ["no hpo study named 'nosuch'"]),
    (["run", "missing.yaml"], ["missing.yaml: no such spec file"]),
    (["run", "tiny.yaml", "--n-trials", "0"], ["--n-trials", "integer >= 1"]),
    (["run", "tiny.yaml", "--bogus"], ["unrecognized arguments: --bogus"]),
    (["best", "envstudy", "--storage", "postgresql://bob:pa55word@127.0.0.1:5999/x"],
     ["cannot connect", "bob:***@"]),
    (["best", "envstudy", "--storage", "mysql+pymysql://bob:pa55word@127.0.0.1:3399/x"],
     ["cannot connect", "bob:***@"]),
    (["best", "envstudy", "--storage", "sqlite:///no/such/dir/x.db"], ["no database at"]),
    (["best", "envstudy", "--storage", "oracle://x"], ["unsupported storage backend"]),
])
@pytest.mark.xdist_group("envstudy")  # one process creates the study they copy
def test_bad_input_is_one_line_exit_2(args, words, tmp_path, envstudy):
    import shutil

    for made in envstudy.iterdir():  # tiny.yaml and the hpo.db that `hpo create` wrote of it
        shutil.copy(made, tmp_path / made.name)
    before = (tmp_path / "hpo.db").read_bytes()
    started = time.monotonic()
    r = run_hpo(*args, cwd=tmp_path)
    assert time.monotonic() - started < 15
    err = r.stderr.strip()
    assert r.returncode == 2, (r.returncode, r.stdout, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, (word, err)
    assert "pa55word" not in r.stdout + r.stderr
    assert (tmp_path / "hpo.db").read_bytes() == before  # nothing written


def test_help_is_instant_and_does_not_import_torch():
    code = ("import sys; from hpo.cli import build_parser\n"
            "for cmd in ([], ['run'], ['worker'], ['status'], ['best'], ['studies'], ['create']):\n"
            "    try: build_parser().parse_args(cmd + ['--help'])\n"
            "    except SystemExit: pass\n"
            "assert 'torch' not in sys.modules and 'optuna' not in sys.modules, 'heavy import'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "hpo run SPEC" not in r.stderr
    assert "create or resume" in r.stdout and "--storage" in r.stdout


@pytest.mark.slow
def test_minilm_on_vader_through_the_cli(tmp_path):
    """The shipped text default, shortened: real MiniLM weights, real VADER ratings."""
    import yaml

    spec = yaml.safe_load((ROOT / "search_spaces" / "vader_minilm.yaml").read_text())
    spec["study"]["name"] = "vader-short"
    spec["task"]["max_samples"] = 600
    spec["search_space"] = {"lr": {"type": "float", "low": 1e-4, "high": 2e-4, "log": True},
                            "batch_size": 32, "epochs": 2, "optimizer": "adamw"}
    path = tmp_path / "vader.yaml"
    path.write_text(yaml.safe_dump(spec))
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    r = run_hpo("run", str(path), "--storage", url, "--n-trials", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    # No third-party progress bars or warnings between hpo's own lines (they need -v).
    assert "Loading weights" not in r.stdout + r.stderr
    assert "Warning" not in r.stdout + r.stderr, r.stdout + r.stderr
    (trial,) = optuna.load_study(study_name="vader-short", storage=url).get_trials()
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert sorted(trial.intermediate_values) == [1, 2]
    # Positive vs negative words: the majority class is about 56% of the lexicon.
    assert trial.user_attrs["val_accuracy"] > 0.65, trial.user_attrs


@pytest.mark.parametrize("fmt", ["csv", "json"])
@pytest.mark.slow
def test_printing_into_a_closed_pipe_is_quiet_and_exit_0(fmt, tmp_path):
    """``hpo trials S | head``: the reader stops early; hpo stops as Unix tools do."""
    from workers import FAST, fast_env

    url = f"sqlite:///{tmp_path / 'pipe.db'}"
    spec = tmp_path / "pipe.yaml"
    spec.write_text(FAST.format(name="pipe", n=1, low=1, high=2, pruner="none"))
    created = run_hpo("create", str(spec), "--storage", url, cwd=tmp_path,
                      env=fast_env(tmp_path))
    assert created.returncode == 0, created.stderr
    study = optuna.load_study(study_name="pipe", storage=url)
    dist = optuna.distributions.FloatDistribution(1e-8, 1e-1, log=True)
    for i in range(600):  # far more than a pipe buffer
        study.add_trial(optuna.trial.create_trial(
            params={"lr": 1e-3}, distributions={"lr": dist}, value=float(i),
            user_attrs={"note": "x" * 100}))
    cmd = (f"set -o pipefail; {sys.executable} -m hpo trials pipe --format {fmt} "
           f"--storage {url} | head -n 2")
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, cwd=tmp_path,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert len(r.stdout.splitlines()) == 2


def test_the_readme_main_command_prints_the_best_trial_once():
    """``hpo run`` ends with the best trial's block: the README's main command must not ask
    for it again (``&& hpo best``) and print it twice."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Run the main job", 1)[1].split("## ", 1)[0]
    command = next(line for line in section.splitlines() if "hpo run" in line)
    assert "hpo best" not in command, command


# --------------------------------------------------------------------------------------------
# The command table and the handle: one entry per command, the storage and study opened once.


@pytest.fixture
def in_process(monkeypatch, tmp_path):
    """``main`` in this process, in ``tmp_path``: what it sets in the environment is undone."""
    from hpo.cli import main

    monkeypatch.chdir(tmp_path)
    for var in ("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY", "PYTHONWARNINGS",
                "OPTUNA_VERBOSITY", "HPO_VERBOSE"):
        monkeypatch.setenv(var, "")  # so that its value before is restored afterwards
        monkeypatch.delenv(var)
    monkeypatch.delenv("HPO_STORAGE", raising=False)
    return main


def test_every_command_of_the_table_is_in_the_help_with_its_flags(capsys):
    from hpo.cli import COMMANDS, SHARED, build_parser

    def words(text):  # as argparse wraps them: at spaces, and after hyphens
        return "".join(text.split())

    top = words(build_parser().format_help())
    for command in COMMANDS:
        assert words(f"{command.name} {command.help}") in top, command.name
        with pytest.raises(SystemExit):
            build_parser().parse_args([command.name, "--help"])
        text = words(capsys.readouterr().out)
        assert words(command.description) in text, command.name
        flags = ["--storage"] + (["STUDY"] if command.study else [])
        for name in command.shared:
            probe = argparse.ArgumentParser(add_help=False)
            SHARED[name](probe)
            flags += [flag for action in probe._actions for flag in action.option_strings]
        for flag in flags:
            assert flag in text, (command.name, flag)


def test_adding_a_command_is_one_entry_of_the_table(in_process, monkeypatch, tmp_path):
    import hpo.cli._main
    from hpo.cli import COMMANDS, Command

    seen = []

    def hello(h):
        seen.append((h.args.study, h.args.json, str(h.url)))
        return 0

    entry = Command("hello", "greet a study", "Greet STUDY.", hello, shared=("json",))
    monkeypatch.setattr(hpo.cli._main, "COMMANDS", COMMANDS + (entry,))
    monkeypatch.setenv("HPO_STORAGE", "sqlite:///from-env.db")
    assert in_process(["hello", "s", "--json"]) == 0
    assert seen == [("s", True, "sqlite:///from-env.db")]
    assert not (tmp_path / "from-env.db").exists()  # the storage is opened only when used


def _study_commands():
    from hpo.cli import COMMANDS

    return [c.name for c in COMMANDS if c.study]


@pytest.mark.parametrize("command", _study_commands())
def test_a_command_on_a_study_that_does_not_exist_is_one_line_exit_2(
        command, in_process, server_urls, tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    if command == "template":  # a cluster needs a database server
        url = server_url(server_urls, "postgresql")
    spec = tmp_path / "tiny.yaml"
    write_tiny_spec(spec, "there")
    assert in_process(["create", str(spec), "--storage", url, "--no-preflight"]) == 0
    before = _written(tmp_path)
    capsys.readouterr()
    argv = [command] + (["slurm"] if command == "template" else []) + ["nosuch"]
    assert in_process(argv + ["--storage", url]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no hpo study named 'nosuch'" in err, err
    assert "there" in err.split("studies here: ")[1], err
    # Nothing written: no report, export, retrain folder; the database as it was.
    assert _written(tmp_path) == before


def _written(folder) -> dict:
    """What a folder holds: its files' bytes, and a SQLite database's rows (its -wal and -shm
    files change when SQLite checkpoints a closing connection's log: not a write)."""
    import sqlite3

    found = {}
    for p in folder.iterdir():
        if p.name.endswith(("-wal", "-shm")):
            continue
        if p.suffix == ".db":
            with contextlib.closing(sqlite3.connect(p)) as db:
                found[p.name] = "\n".join(db.iterdump())
        else:
            found[p.name] = p.read_bytes() if p.is_file() else "folder"
    return found


def test_the_handle_resolves_the_url_and_opens_the_storage_and_study_once(tmp_path,
                                                                           monkeypatch):
    import hpo.store.storage
    from hpo.cli import Handle
    from specs import make_spec

    url = f"sqlite:///{tmp_path / 'h.db'}"
    Handle(argparse.Namespace(storage=url)).create(make_spec("h"))
    opened = []
    real = hpo.store.storage.open_storage
    monkeypatch.setattr(hpo.store.storage, "open_storage",
                        lambda *a, **k: opened.append((a, k)) or real(*a, **k))
    monkeypatch.setenv("HPO_STORAGE", url)
    h = Handle(argparse.Namespace(storage=None, study="h"))
    assert str(h.url) == url  # the flag, else $HPO_STORAGE, else the default
    monkeypatch.setenv("HPO_STORAGE", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    study, spec = h.load()
    assert h.study is study and h.spec is spec and h.storage() is h.storage()
    assert study.study_name == "h" and spec.study.name == "h" and str(h.url) == url
    assert opened == [((h.url,), {"create": False, "outage": 0.0})]
    assert str(Handle(argparse.Namespace(storage="sqlite:///flag.db")).url) == "sqlite:///flag.db"
    monkeypatch.delenv("HPO_STORAGE")
    assert str(Handle(argparse.Namespace(storage=None)).url) == "sqlite:///hpo.db"


def test_no_command_opens_the_storage_or_a_study_its_own_way():
    for path in (ROOT / "hpo" / "cli").glob("*.py"):
        if path.name != "_handle.py":
            text = path.read_text(encoding="utf-8")
            for call in ("open_storage(", "load_study(", "create_study("):
                assert call not in text, (path.name, call)


# --------------------------------------------------------------------------------------------
# Through the gRPC proxy and on a journal file: every command works, or says why not.


@pytest.mark.parametrize("kind", ["postgresql", "mariadb", "grpc", "journal"])
@pytest.mark.slow
def test_every_command_works_on_every_storage(kind, request, tmp_path):
    """The fast custom job's study through ``hpo run`` (two workers) on each storage but
    SQLite (``test_run_then_best_status_studies``), then each command that reads or writes it:
    status, best, studies, trials, report (its figures into the study), export (the
    checkpoint), reap, and the dashboard serving the study and an uploaded checkpoint from the
    artifact store."""
    import re
    import urllib.request

    from workers import FAST, fast_env

    if kind == "grpc":
        url = request.getfixturevalue("storage_proxy")
    elif kind == "journal":
        url = f"journal://{tmp_path / 'study.log'}"
    else:
        url = server_url(request.getfixturevalue("server_urls"), kind)
    name = f"every-{time.time_ns()}"
    spec = tmp_path / "fast.yaml"
    spec.write_text(FAST.format(name=name, n=6, low=1, high=3, pruner="none"))
    env = {**fast_env(tmp_path, epoch_seconds=0.05), "HPO_ARTIFACTS": str(tmp_path / "art")}

    def hpo(*args):
        r = run_hpo(*args, "--storage", url, cwd=tmp_path, env=env)
        assert r.returncode == 0, (args, r.stdout[-2000:], r.stderr[-2000:])
        assert "Traceback" not in r.stdout + r.stderr
        return r.stdout

    assert "[  6/6]" in hpo("run", str(spec), "--workers", "2")
    study = reopen(name, url)
    assert len(study.trials) == 6 and {t.state for t in study.trials} == {
        optuna.trial.TrialState.COMPLETE}
    assert "complete 6" in hpo("status", name)
    best = json.loads(hpo("best", name, "--json"))
    assert best["number"] == study.best_trial.number
    assert best["user_attrs"]["checkpoint_artifact"]  # the best checkpoint, uploaded
    assert name in [r["study"] for r in json.loads(hpo("studies", "--json"))]
    assert len(json.loads(hpo("trials", name, "--format", "json"))) == 6
    hpo("report", name, "--out", str(tmp_path / "r.html"))
    assert (tmp_path / "r.html").stat().st_size > 0
    storage = reopen(name, url)._storage
    attrs = storage.get_study_system_attrs(storage.get_study_id_from_name(name))
    assert any(k.startswith("dashboard:plot_data:hpo-") for k in attrs)  # for the dashboard
    hpo("export", name, "--out", str(tmp_path / "exp"))
    assert (tmp_path / "exp" / "spec.yaml").is_file()
    assert (tmp_path / "exp" / "record.json").is_file()
    assert "reaped 0 trial(s)" in hpo("reap", name)

    dashboard = subprocess.Popen(
        [sys.executable, "-m", "hpo", "dashboard", "--storage", url, "--port", "0",
         "--artifacts", str(tmp_path / "art")], cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        address = None
        for line in dashboard.stdout:
            found = re.search(r"open (http://\S+)/dashboard/", line)
            if found:
                address = found.group(1)
                break
        assert address, "the dashboard did not start"
        with urllib.request.urlopen(f"{address}/api/studies", timeout=30) as r:
            summaries = json.load(r)["study_summaries"]
        study_id = next(s["study_id"] for s in summaries if s["study_name"] == name)
        trial_id = reopen(name, url).trials[best["number"]]._trial_id
        artifact = f"{address}/artifacts/{study_id}/{trial_id}/" \
                   f"{best['user_attrs']['checkpoint_artifact']}"
        with urllib.request.urlopen(artifact, timeout=30) as r:
            assert r.status == 200 and r.read()
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=20)

    # Resuming a finished study runs nothing more; a bigger budget on the command line runs
    # more.
    hpo("worker", name, "--n-trials", "7")
    assert len(reopen(name, url).get_trials()) == 7


@pytest.mark.slow
def test_the_storage_proxy_serves_a_database_and_says_why_not_otherwise(tmp_path, server_urls):
    """A journal or another proxy behind the proxy, a port in use, a database that does not
    answer: one line each, exit 2, no password shown."""
    import socket

    cases = [
        (["--storage", f"journal://{tmp_path / 'x.log'}"], "not a journal file"),
        (["--storage", "grpc://127.0.0.1:13000"], "not another proxy"),
        (["--storage", "postgresql://bob:pa55word@127.0.0.1:5999/x"], "cannot connect"),
    ]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        cases.append((["--storage", f"sqlite:///{tmp_path / 'p.db'}", "--port",
                       str(busy.getsockname()[1])], "cannot listen on 127.0.0.1:"))
        for args, words in cases:
            r = run_hpo("storage-proxy", *args, cwd=tmp_path)
            err = r.stderr.strip()
            assert r.returncode == 2, (args, r.stdout, err)
            assert len(err.splitlines()) == 1 and words in err, (args, err)
            assert "pa55word" not in r.stdout + r.stderr
    assert not (tmp_path / "x.log").exists()


def test_a_cluster_template_takes_a_journal_or_a_proxy(in_process, storage_proxy, tmp_path,
                                                      capsys):
    """A journal's relative path, a proxy on this machine's loopback: one warning each, naming
    what to give instead; an absolute journal path none. The URL goes into the job as is."""
    name = f"tmpl-{time.time_ns()}"
    spec = write_tiny_spec(tmp_path / "tiny.yaml", name)
    journal = tmp_path / "t.log"
    for url in (f"journal://{journal}", storage_proxy):
        assert in_process(["create", str(spec), "--storage", url, "--no-preflight"]) == 0
    capsys.readouterr()
    cases = [(f"journal://{journal}", None),
             ("journal://t.log", "the journal path 't.log' is relative"),
             (storage_proxy, "give the storage proxy's network name")]
    for url, warning in cases:
        assert in_process(["template", "slurm", name, "--storage", url]) == 0
        out, err = capsys.readouterr()
        assert f"export HPO_STORAGE={url}" in out
        assert (warning in err) if warning else not err, (url, err)


def test_version_is_the_installed_distributions(tmp_path):
    # One source: pyproject reads the version from hpo.__version__, which --version prints.
    from importlib.metadata import version

    r = run_hpo("--version", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"hpo {version('hpo-finetune')}"
