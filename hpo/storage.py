"""Storage: one factory from a SQLAlchemy URL to an Optuna ``RDBStorage``.

SQLite (the default, one machine) gets WAL and a busy timeout so that several local workers do
not fail with "database is locked"; PostgreSQL and MySQL/MariaDB (several machines) get
pre-ping and a connect timeout. Heartbeat is on: a trial whose worker stopped beating is failed
after the grace period and re-queued (``RetryHeartbeatStaleTrialCallback``), its intermediate
values kept.

The storage is Optuna's ``RDBStorage`` as ``hpo._optuna.storage_class`` extends it: atomic
claims (a claimed trial has its worker's attrs and a heartbeat from its first moment), the
study and its spec created in one transaction, fewer round trips where hpo writes on every
trial (``set_user_attrs``: several attrs of a running trial in one transaction), and every call
retried through a database outage of up to ``$HPO_OUTAGE_SECONDS`` (default 300).

A password in a URL is never shown: every message goes through ``redact``.
"""

from __future__ import annotations

import os
import random
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpo._optuna import no_experimental_warnings, retry_callback, storage_class
from hpo.errors import StorageError
from hpo.outage import with_outage_retry

if TYPE_CHECKING:
    import optuna

DEFAULT_URL = "sqlite:///hpo.db"
ENV_VAR = "HPO_STORAGE"
HEARTBEAT_INTERVAL = int(os.environ.get("HPO_HEARTBEAT_INTERVAL", "30"))
"""Seconds between heartbeats of a running trial."""
GRACE_PERIOD = int(os.environ.get("HPO_GRACE_PERIOD", str(3 * HEARTBEAT_INTERVAL)))
"""Seconds without a heartbeat after which a running trial counts as dead."""
MAX_RETRY = 3
"""How many times a trial whose worker died is re-queued."""
CONNECT_TIMEOUT = 10
"""Seconds to wait for a database server to answer."""
SQLITE_BUSY_TIMEOUT = 60
"""Seconds a SQLite writer waits for the lock before giving up."""

_CREATE_ATTEMPTS = 5

_DRIVERS = {
    "sqlite": None,
    "postgresql": "psycopg2",
    "mysql": "pymysql",
}


def resolve_url(url: str | None = None) -> str:
    """The storage URL: the flag, else ``$HPO_STORAGE``, else ``sqlite:///hpo.db``."""
    return url or os.environ.get(ENV_VAR) or DEFAULT_URL


def redact(text: str, url: str | None = None) -> str:
    """Remove passwords of URLs from ``text`` (``user:secret@`` -> ``user:***@``)."""
    text = re.sub(r"(\w+(?:\+\w+)?://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)
    if url:
        password = _password(url)
        if password:
            text = text.replace(password, "***")
    return text


def _password(url: str) -> str | None:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).password
    except Exception:
        return None


def open_storage(url: str | None = None, *, create: bool = True,
                 outage: float = 0.0) -> "optuna.storages.RDBStorage":
    """Open the study database.

    Args:
        url: a SQLAlchemy URL (``sqlite:///PATH``, ``postgresql+psycopg2://...``,
            ``mysql+pymysql://...``); ``None`` resolves as ``resolve_url`` says.
        create: create the database file / tables if missing. Read-only commands pass
            ``False`` so that a typo in a URL does not leave an empty database behind.
        outage: seconds to wait for a server that does not answer (a restart) before giving
            up; 0 (commands a person types): fail at once. A worker that its launcher
            restarts waits, as its storage calls do once it runs.

    Returns:
        An ``RDBStorage`` with heartbeat and stale-trial retry.

    Raises:
        StorageError: a malformed URL, an unknown backend, or a database that cannot be
            reached (answered within ``CONNECT_TIMEOUT`` seconds).
    """
    import sqlalchemy
    from sqlalchemy.engine import make_url

    url = resolve_url(url)
    shown = redact(url, url)
    try:
        parsed = make_url(url)
    except Exception:
        raise StorageError(f"malformed storage URL {shown!r}; expected e.g. sqlite:///hpo.db "
                           "or postgresql+psycopg2://user@host/db") from None
    backend = parsed.get_backend_name()
    if backend not in _DRIVERS:
        raise StorageError(f"unsupported storage backend {backend!r} in {shown}; "
                           "expected sqlite, postgresql or mysql")
    if backend != "sqlite" and parsed.drivername == backend:
        # Pin the drivers the project installs (SQLAlchemy's defaults may be missing).
        parsed = parsed.set(drivername=f"{backend}+{_DRIVERS[backend]}")
        url = parsed.render_as_string(hide_password=False)

    engine_kwargs: dict[str, Any] = {}
    if backend == "sqlite":
        _prepare_sqlite(parsed.database, shown, create)
        engine_kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT}
    else:
        engine_kwargs["pool_pre_ping"] = True
        engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT}
        _check_server(url, shown, engine_kwargs, create, outage)

    # Workers starting together on a new database race to create its tables: the losers see
    # "already exists" / duplicate-key errors and simply try again.
    def build() -> "optuna.storages.RDBStorage":
        with no_experimental_warnings():
            return storage_class()(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=HEARTBEAT_INTERVAL,
                grace_period=GRACE_PERIOD,
                heartbeat_stale_trial_callback=retry_callback(MAX_RETRY),
                skip_table_creation=not create,
            )

    for attempt in range(_CREATE_ATTEMPTS):
        try:
            # Building it reads the schema version: the server may go away here too.
            storage = with_outage_retry(build, outage) if outage > 0 else build()
            break
        except sqlalchemy.exc.SQLAlchemyError as e:
            if attempt + 1 == _CREATE_ATTEMPTS:
                raise StorageError(f"cannot open storage {shown}: {_first_line(e, url)}") from None
            time.sleep(0.1 * (attempt + 1) + random.random() * 0.2)
        except RuntimeError as e:  # Optuna's schema-version check
            raise StorageError(f"storage {shown}: {_first_line(e, url)}") from None
    return storage


def _prepare_sqlite(database: str | None, shown: str, create: bool) -> None:
    """Check the file and switch it to WAL (persistent in the file) before Optuna opens it."""
    import sqlite3

    if not database or database == ":memory:":
        raise StorageError(f"{shown}: an in-memory SQLite database cannot be shared by workers; "
                           "give a file, e.g. sqlite:///hpo.db")
    path = Path(database).expanduser()
    if not create and not path.is_file():
        raise StorageError(f"no database at {path} ({shown}); run 'hpo create' or 'hpo run' "
                           "first, or pass --storage")
    if not path.parent.is_dir():
        raise StorageError(f"{shown}: directory {path.parent} does not exist")
    try:
        con = sqlite3.connect(str(path), timeout=SQLITE_BUSY_TIMEOUT)
        try:
            con.execute("PRAGMA journal_mode=WAL")
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        raise StorageError(f"cannot open SQLite database {path}: {e}") from None


def _check_server(url: str, shown: str, engine_kwargs: dict[str, Any], create: bool,
                  outage: float = 0.0) -> None:
    """Connect once with a short timeout so an unreachable server gives one clear line (after
    ``outage`` seconds of trying, where it is given)."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url, **engine_kwargs)
    except ImportError as e:
        raise StorageError(f"{shown}: the database driver is not installed ({e})") from None
    except Exception as e:
        raise StorageError(f"malformed storage URL {shown}: {_first_line(e, url)}") from None
    def connect() -> None:
        with engine.connect() as con:
            if not create and not sqlalchemy.inspect(con).has_table("studies"):
                raise StorageError(f"no studies in {shown}; run 'hpo create' or 'hpo run' first")

    try:
        with_outage_retry(connect, outage) if outage > 0 else connect()
    except sqlalchemy.exc.SQLAlchemyError as e:
        raise StorageError(f"cannot connect to {shown}: {_first_line(e, url)}") from None
    finally:
        engine.dispose()


def _first_line(e: BaseException, url: str) -> str:
    orig = getattr(e, "orig", None) or e
    lines = [ln.strip() for ln in str(orig).splitlines() if ln.strip()]
    # psycopg2 puts the useful part on the last line ("Connection refused ..."), others first;
    # its lines are sentences without a full stop: end each so that they read apart.
    text = " ".join(ln if ln[-1] in ".?!:;," else ln + "." for ln in lines[:3]) if lines \
        else type(orig).__name__
    return redact(text, url)
