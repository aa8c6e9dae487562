"""Shared fixtures: every storage test runs on SQLite, PostgreSQL and MariaDB; the tests of
hpo's storage itself and the end-to-end CLI test also through the gRPC proxy and on a journal
file (``all_storage_url``).

PostgreSQL and MariaDB run on every machine of this project (CI's too). Each test session makes
its own empty database on each server and drops it at the end. Where a server does not answer
the tests for it are skipped with the reason -- except under CI=true, where they fail. The
proxy is a real ``hpo storage-proxy`` process in front of the session's PostgreSQL database.
"""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from pathlib import Path

import pytest

SUPPORT = Path(__file__).resolve().parent / "support"
"""The tests' shared helpers (small specs, the custom job, the database proxy, ...); on the
path of the tests, and of the workers they start (PYTHONPATH), so that ``fastjob:epochs_job``
imports there."""
# One intra-op thread in the tests and the workers they start: several tests run at once on a
# few cores, and torch's threads spin waiting on each other when the cores are oversubscribed.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", os.environ["OMP_NUM_THREADS"])  # torch takes the larger
if str(SUPPORT) not in sys.path:
    sys.path.insert(0, str(SUPPORT))

from processes import ROOT, run_hpo  # noqa: E402,F401  (tests import them from here)
from workbench import (  # noqa: E402,F401  (pytest finds them here)
    pytest_collection_modifyitems,
    pytest_runtest_protocol,
    serial_lock,
)

SERVERS = {
    "postgresql": "postgresql+psycopg2://postgres@127.0.0.1:5432/{db}",
    "mariadb": "mysql+pymysql://root@127.0.0.1:3306/{db}",
}
ADMIN_DB = {"postgresql": "postgres", "mariadb": "test"}
STORAGE_MODES = ["sqlite", "postgresql", "mariadb"]
ALL_STORAGE_MODES = STORAGE_MODES + ["grpc", "journal"]


def _server_database(kind: str):
    """Create a fresh database on the server; return (url, drop) or raise with the reason."""
    import sqlalchemy

    name = f"hpo_test_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(
        SERVERS[kind].format(db=ADMIN_DB[kind]),
        isolation_level="AUTOCOMMIT",
        pool_pre_ping=True,  # survives the server restart of the restart test
        connect_args={"connect_timeout": 5},
    )
    with admin.connect() as con:
        con.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))

    def drop() -> None:
        import sqlalchemy.orm

        sqlalchemy.orm.close_all_sessions()
        with admin.connect() as con:
            if kind == "postgresql":
                con.execute(sqlalchemy.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"))
                con.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name}"))
            else:
                con.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()

    return SERVERS[kind].format(db=name), drop


@contextlib.contextmanager
def fresh_server_database(kind: str):
    """An empty database of its own on server ``kind`` (its URL), dropped afterwards; without
    the server the test is skipped with the reason, or fails under ``CI=true``."""
    try:
        url, drop = _server_database(kind)
    except Exception as e:  # no server: say why
        server_url({kind: RuntimeError(f"{kind} server not reachable: "
                                       f"{str(e).splitlines()[0]}")}, kind)
        raise
    try:
        yield url
    finally:
        drop()


@pytest.fixture(scope="session")
def server_urls():
    """{kind: url or skip reason} for the database servers, each a fresh database."""
    urls, drops = {}, []
    for kind in SERVERS:
        try:
            url, drop = _server_database(kind)
        except Exception as e:  # no server: the reason goes into the skip message
            urls[kind] = RuntimeError(f"{kind} server not reachable: {str(e).splitlines()[0]}")
            continue
        urls[kind] = url
        drops.append(drop)
    yield urls
    for drop in drops:
        drop()


@pytest.fixture(params=STORAGE_MODES)
def storage_url(request, tmp_path, server_urls):
    """A storage URL for each backend: a fresh SQLite file, or the session's server database."""
    kind = request.param
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'hpo.db'}"
    return server_url(server_urls, kind)


@pytest.fixture(autouse=True)
def _close_dropped_connections(request):
    """After a test on a database server, the engines of the storages it dropped close their
    connections now, not at some later garbage collection: four test processes holding on to
    theirs ran PostgreSQL out of its 100 connections."""
    yield
    if "server_urls" in request.fixturenames:
        import gc

        gc.collect()


@pytest.fixture
def private_postgresql():
    """A PostgreSQL server of the test's own (``pgcluster.PrivateCluster``), for a test that
    restarts it: the machine's server, which the other tests share, stays up. Skipped where it
    cannot run, with the reason (under ``CI=true`` it fails)."""
    import pgcluster

    why = pgcluster.why_not()
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why} (CI=true: the restart tests must run, not skip)")
        pytest.skip(why)
    cluster = pgcluster.PrivateCluster()
    try:
        yield cluster
    finally:
        cluster.close()


def server_url(server_urls: dict, kind: str) -> str:
    """The session's database on server ``kind``; without that server the test is skipped
    with the reason, or fails under ``CI=true`` (there the storage tests must run)."""
    url = server_urls[kind]
    if isinstance(url, Exception):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{url} (CI=true: the storage tests must run, not skip)")
        pytest.skip(str(url))
    return url


@pytest.fixture(params=ALL_STORAGE_MODES)
def all_storage_url(request, tmp_path, server_urls):
    """``storage_url``'s kinds, and the gRPC proxy (in front of PostgreSQL) and a fresh
    journal file: the URL of each. Open it with ``hpo.store.storage.open_storage`` (Optuna's own
    ``load_study`` takes a database URL only)."""
    kind = request.param
    if kind == "grpc":
        return request.getfixturevalue("storage_proxy")
    if kind == "journal":
        return f"journal://{tmp_path / 'hpo.log'}"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'hpo.db'}"
    return server_url(server_urls, kind)


@pytest.fixture(scope="session")
def storage_proxy(server_urls, tmp_path_factory):
    """``hpo storage-proxy`` in front of the session's PostgreSQL database, for the session:
    its ``grpc://`` URL."""
    import subprocess

    from processes import SUPPORT

    database = server_url(server_urls, "postgresql")
    env = {k: v for k, v in os.environ.items() if k != "HPO_STORAGE"}
    env.update(PYTHONUNBUFFERED="1", PYTHONPATH=str(SUPPORT))
    log = tmp_path_factory.mktemp("proxy") / "proxy.log"
    with open(log, "w") as out:
        proxy = subprocess.Popen(
            [sys.executable, "-m", "hpo", "storage-proxy", "--storage", database, "--port", "0"],
            env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        url = _proxy_url(proxy, log)
        yield url
    finally:
        proxy.terminate()
        try:
            proxy.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.wait()


def _proxy_url(proxy, log: Path, timeout: float = 60.0) -> str:
    """The ``grpc://`` URL the proxy prints once it listens."""
    import re
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"--storage (grpc://\S+)", log.read_text())
        if found:
            return found.group(1)
        if proxy.poll() is not None:
            break
        time.sleep(0.1)
    pytest.fail(f"hpo storage-proxy did not start: {log.read_text()[-2000:]}")

