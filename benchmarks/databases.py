"""Fresh study databases for one measurement: a SQLite file, or a new PostgreSQL database.

Each measurement gets an empty database and drops it afterwards, so runs never see each
other's studies. PostgreSQL is the one at ``$HPO_BENCH_POSTGRES`` (an admin URL), by default
``postgresql+psycopg2://postgres@127.0.0.1:5432/postgres``.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Iterator

POSTGRES_ADMIN = os.environ.get("HPO_BENCH_POSTGRES",
                                "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
BACKENDS = ("sqlite", "postgresql")


def unavailable(backend: str) -> str:
    """Why ``backend`` cannot be used here ('' if it can)."""
    if backend == "sqlite":
        return ""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(POSTGRES_ADMIN, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
    except Exception as e:  # noqa: BLE001 - any failure means: no server here
        return f"no PostgreSQL server ({str(e).splitlines()[0][:80]})"
    return ""


@contextlib.contextmanager
def fresh_database(backend: str, workdir: Path) -> Iterator[str]:
    """Yield the URL of a new, empty database of ``backend``; drop it afterwards."""
    name = f"hpo_bench_{uuid.uuid4().hex[:10]}"
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

    admin = sqlalchemy.create_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as con:
        con.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    try:
        yield make_url(POSTGRES_ADMIN).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as con:
            con.execute(sqlalchemy.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"))
            con.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()
