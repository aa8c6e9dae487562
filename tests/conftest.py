"""Shared fixtures: every storage test runs on SQLite, PostgreSQL and MariaDB.

PostgreSQL and MariaDB run on every machine of this project (CI's too). Each test session makes
its own empty database on each server and drops it at the end. Where a server does not answer
the tests for it are skipped with the reason -- except under CI=true, where they fail.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

SUPPORT = Path(__file__).resolve().parent / "support"
"""The tests' shared helpers (small specs, the custom job, the database proxy, ...); on the
path of the tests, and of the workers they start (PYTHONPATH), so that ``fastjob:epochs_job``
imports there."""
if str(SUPPORT) not in sys.path:
    sys.path.insert(0, str(SUPPORT))

from processes import ROOT, run_hpo  # noqa: E402,F401  (tests import them from here)
SERVERS = {
    "postgresql": "postgresql+psycopg2://postgres@127.0.0.1:5432/{db}",
    "mariadb": "mysql+pymysql://root@127.0.0.1:3306/{db}",
}
ADMIN_DB = {"postgresql": "postgres", "mariadb": "test"}
STORAGE_MODES = ["sqlite", "postgresql", "mariadb"]


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


def server_url(server_urls: dict, kind: str) -> str:
    """The session's database on server ``kind``; without that server the test is skipped
    with the reason, or fails under ``CI=true`` (there the storage tests must run)."""
    url = server_urls[kind]
    if isinstance(url, Exception):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{url} (CI=true: the storage tests must run, not skip)")
        pytest.skip(str(url))
    return url
