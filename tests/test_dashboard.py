"""``hpo dashboard``: optuna-dashboard on a study the test made, checked in a real headless
browser; checkpoints uploaded to the artifact store are served by it."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import optuna
import pytest
from browser import headless_chromium
from conftest import run_hpo
from sample_study import OUTCOMES, build_sample_study

from hpo.store.artifacts import ARTIFACTS_VAR, artifact_dir, upload_checkpoint
from hpo.records import CHECKPOINT_ARTIFACT_ATTR
from hpo.results.report import write_report
from hpo.store.storage import open_storage


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_dashboard(*args: str, cwd: Path) -> tuple[subprocess.Popen, str, str]:
    """Start ``hpo dashboard ARGS``; return it, the URL it says to open and what it printed."""
    env = {k: v for k, v in os.environ.items() if k not in ("HPO_STORAGE", ARTIFACTS_VAR)}
    proc = subprocess.Popen([sys.executable, "-m", "hpo", "dashboard", *args], cwd=cwd,
                            env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        found = re.search(r"open (http://\S+)", line)
        if found:
            return proc, found.group(1), "".join(lines)
    proc.kill()
    raise AssertionError("the dashboard did not say where to open it:\n" + "".join(lines))


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def _body(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def _wait_for(driver, text: str, timeout: float = 30) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: text in _body(d))


@pytest.mark.slow
def test_dashboard_shows_the_study_and_its_trials_in_a_browser(storage_url, tmp_path):
    name = f"sample-{uuid.uuid4().hex[:8]}"
    study = build_sample_study(storage_url, name, tmp_path / "ckpt")
    write_report(study, tmp_path / "report.html")  # its figures and note go into the study
    port = _free_port()
    proc, url, _ = _start_dashboard("--storage", storage_url, "--port", str(port), cwd=tmp_path)
    driver = None
    shots = []
    try:
        assert url == f"http://127.0.0.1:{port}/dashboard/"  # localhost unless told otherwise
        driver = headless_chromium(tmp_path / "profile")
        driver.get(url)
        shots.append(tmp_path / "studies.png")
        try:
            _wait_for(driver, name)
        finally:
            driver.save_screenshot(str(shots[-1]))

        study_id = open_storage(storage_url, create=False).get_study_id_from_name(name)
        driver.get(f"{url}studies/{study_id}/trials")
        shots.append(tmp_path / "trials.png")
        try:
            _wait_for(driver, f"Trial {len(OUTCOMES) - 1}")
        finally:
            driver.save_screenshot(str(shots[-1]))
        page = _body(driver)
        for number in range(len(OUTCOMES)):
            assert f"Trial {number}\n" in page, f"trial {number} missing; screenshot: {shots}"
        for state in ("Complete", "Pruned", "Fail", "Running"):
            assert state in page, f"{state} missing; screenshot: {shots}"
        assert "worker node-a:w0" in page and "epochs_planned" in page, shots

        # The report's figures, saved into the study, show on its page; its note on the next.
        driver.get(f"{url}studies/{study_id}")
        shots.append(tmp_path / "study.png")
        try:
            _wait_for(driver, "Pruning savings")
            _wait_for(driver, "Confusion matrix of the best trial")  # the heatmap, drawn
        finally:
            driver.save_screenshot(str(shots[-1]))
        driver.get(f"{url}studies/{study_id}/note")
        shots.append(tmp_path / "note.png")
        try:
            _wait_for(driver, f"hpo report: {name}")
        finally:
            driver.save_screenshot(str(shots[-1]))
        print("screenshots:", *shots)
    finally:
        if driver is not None:
            driver.quit()
        _stop(proc)
    assert all(p.stat().st_size > 10_000 for p in shots), shots


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # study.ask without optimize
@pytest.mark.slow
def test_uploaded_checkpoint_is_served_by_the_dashboard(tmp_path):
    """A worker uploads a trial's checkpoint; the dashboard lists it and serves its bytes."""
    db = tmp_path / "hpo.db"
    url = f"sqlite:///{db}"
    study = build_sample_study(url, "artifacts", tmp_path / "ckpt", outcomes=[])
    checkpoint = tmp_path / "trial-0.pt"
    checkpoint.write_bytes(os.urandom(4096))
    trial = study.ask()
    artifact_id = upload_checkpoint(trial, checkpoint, url)  # what a worker does
    study.tell(trial, 0.5)
    assert study.trials[0].user_attrs[CHECKPOINT_ARTIFACT_ATTR] == artifact_id
    assert (tmp_path / "hpo-artifacts" / artifact_id).read_bytes() == checkpoint.read_bytes()

    proc, address, _ = _start_dashboard("--storage", url, "--port", "0", cwd=tmp_path)
    try:
        root = address.removesuffix("dashboard/")
        trial_id = study.trials[0]._trial_id
        with urllib.request.urlopen(f"{root}artifacts/{study._study_id}/{trial_id}/"
                                    f"{artifact_id}", timeout=30) as r:
            assert r.read() == checkpoint.read_bytes()
        driver = headless_chromium(tmp_path / "profile")
        try:
            driver.get(f"{address}studies/{study._study_id}/trials")
            shot = tmp_path / "artifact.png"
            try:
                _wait_for(driver, "trial-0.pt")
            finally:
                driver.save_screenshot(str(shot))
        finally:
            driver.quit()
    finally:
        _stop(proc)


def test_artifact_dir_defaults(tmp_path, monkeypatch):
    monkeypatch.delenv(ARTIFACTS_VAR, raising=False)
    assert artifact_dir(f"sqlite:///{tmp_path}/studies.db") == tmp_path / "studies-artifacts"
    assert artifact_dir("postgresql+psycopg2://u:secret@db/x") == Path("hpo-artifacts")
    assert artifact_dir(f"sqlite:///{tmp_path}/a.db", tmp_path / "mine") == tmp_path / "mine"
    monkeypatch.setenv(ARTIFACTS_VAR, str(tmp_path / "shared"))
    assert artifact_dir(f"sqlite:///{tmp_path}/a.db") == tmp_path / "shared"


def test_port_in_use_is_one_line(tmp_path):
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    optuna.create_study(study_name="x", storage=url)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = run_hpo("dashboard", "--storage", url, "--port", str(port), cwd=tmp_path,
                         timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == f"hpo: error: port {port} on 127.0.0.1 is in use; pass " \
                                    "another --port"


def test_dashboard_without_a_database_is_one_line(tmp_path):
    result = run_hpo("dashboard", "--storage", f"sqlite:///{tmp_path / 'none.db'}",
                     cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("hpo: error: no database at ")
    assert not (tmp_path / "none.db").exists()


def test_dashboard_open_to_the_network_warns(tmp_path):
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    optuna.create_study(study_name="x", storage=url)
    proc, address, output = _start_dashboard("--storage", url, "--host", "0.0.0.0", "--port",
                                             "0", cwd=tmp_path)
    _stop(proc)
    assert address.startswith(f"http://{socket.gethostname()}:")
    assert "warning: listening on 0.0.0.0: anyone who reaches this port" in output
