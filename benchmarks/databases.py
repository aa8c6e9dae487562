"""Fresh study databases for one measurement: a SQLite file, or a new server database.

Each measurement (a benchmark's, a chaos round's) gets an empty database and drops it
afterwards, so runs never see each other's studies. The servers are the ones at the admin URLs
``$HPO_BENCH_POSTGRES`` (default ``postgresql+psycopg2://postgres@127.0.0.1:5432/postgres``)
and ``$HPO_BENCH_MARIADB`` (default ``mysql+pymysql://root@127.0.0.1:3306/test``).

Dropping a server database first ends the sessions still on it (a killed worker's, one a
restart left half-open) and is retried for a while: the server may be restarting (the chaos
runner restarts PostgreSQL). A database that still cannot be dropped is reported on stderr,
never raised, so that it does not hide the measurement's own result.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

ADMIN_URLS = {
    "postgresql": os.environ.get("HPO_BENCH_POSTGRES",
                                 "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"),
    "mariadb": os.environ.get("HPO_BENCH_MARIADB", "mysql+pymysql://root@127.0.0.1:3306/test"),
}
"""Admin URL of each server backend: a database on it to connect to for CREATE / DROP."""
SERVER_NAMES = {"postgresql": "PostgreSQL", "mariadb": "MariaDB"}
BACKENDS = ("sqlite", "postgresql")
"""The backends the benchmarks of ``benchmarks.run`` measure (``fresh_database`` and
``unavailable`` also serve ``mariadb``, for the chaos runner)."""
DROP_ATTEMPTS = 20
"""Tries to drop a server database, 0.5 s to 3 s apart (about 45 s in all)."""


def unavailable(backend: str) -> str:
    """Why ``backend`` cannot be used here ('' if it can)."""
    if backend == "sqlite":
        return ""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(ADMIN_URLS[backend],
                                          connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
    except Exception as e:  # noqa: BLE001 - any failure means: no server here
        return f"no {SERVER_NAMES[backend]} server ({str(e).splitlines()[0][:80]})"
    return ""


@contextlib.contextmanager
def fresh_database(backend: str, workdir: Path, prefix: str = "hpo_bench") -> Iterator[str]:
    """Yield the URL of a new, empty database of ``backend`` named ``<prefix>_<hex>`` (a
    SQLite file in ``workdir``); drop it afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    if backend == "sqlite":
        path = workdir / f"{name}.db"
        try:
            yield f"sqlite:///{path}"
        finally:
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    import sqlalchemy
    from sqlalchemy.engine import make_url

    admin_url = ADMIN_URLS[backend]
    # Pre-ping: a connection the pool kept across a server restart is replaced, not used.
    admin = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT",
                                     pool_pre_ping=True, connect_args={"connect_timeout": 5})
    try:
        with admin.connect() as con:
            con.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
        try:
            yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        finally:
            drop_database(admin, backend, name)
    finally:
        admin.dispose()


def drop_database(admin, backend: str, name: str, attempts: int = DROP_ATTEMPTS) -> bool:
    """Drop database ``name`` through the AUTOCOMMIT engine ``admin``, ending its leftover
    sessions first; retried while the server does not answer (restarting). False, with a
    line on stderr, if it could not be dropped."""
    import sqlalchemy

    last: Exception | None = None
    for attempt in range(attempts):
        try:
            with admin.connect() as con:
                if backend == "postgresql":
                    con.execute(sqlalchemy.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"))
                else:
                    ids = con.execute(sqlalchemy.text(
                        "SELECT id FROM information_schema.processlist "
                        f"WHERE db = '{name}' AND id <> CONNECTION_ID()")).scalars().all()
                    for i in ids:
                        with contextlib.suppress(Exception):  # it ended meanwhile
                            con.execute(sqlalchemy.text(f"KILL {int(i)}"))
                con.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name}"))
            return True
        except Exception as e:  # noqa: BLE001 - the server may be restarting: try again
            last = e
            if attempt + 1 < attempts:
                time.sleep(min(0.5 * (attempt + 1), 3.0))
    print(f"benchmarks: could not drop database {name}: {last}", file=sys.stderr)
    return False
