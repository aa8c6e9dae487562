"""Storage: one factory from a URL to an Optuna storage.

SQLite (the default, one machine) gets WAL and a busy timeout so that several local workers do
not fail with "database is locked"; PostgreSQL and MySQL/MariaDB (several machines) get
pre-ping and a connect timeout. ``grpc://HOST:PORT`` is an ``hpo storage-proxy`` in front of
one of those (``serve_proxy``): its workers need no database driver or credentials, and the
database sees the proxy's few connections only. ``journal://PATH`` is Optuna's journal file
with its file lock, for a shared filesystem without a database server. Heartbeat is on for
every kind: a trial whose worker stopped beating is failed after the grace period and
re-queued (``RetryHeartbeatStaleTrialCallback``), its intermediate values kept.

Every kind is extended by ``hpo.store._optuna``: atomic claims (a claimed trial has its worker's
attrs and a heartbeat from its first moment), the study and its spec in one transaction,
several attrs of a running trial in one write, and every call retried through an outage of up
to ``$HPO_OUTAGE_SECONDS`` (default 300). A password in a URL is never shown: every message
goes through ``redact`` (``StorageUrl.redacted``, ``StorageUrl.redact``).
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpo.errors import StorageError
from hpo.store._optuna import no_experimental_warnings, retry_callback
from hpo.store.outage import with_outage_retry
from hpo.store.url import (
    DEFAULT_URL,
    ENV_VAR,
    GRPC_DEFAULT_PORT,
    StorageUrl,
    redact,
    resolve_url,
)

if TYPE_CHECKING:
    import optuna

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

__all__ = [  # with the URL's names, from ``hpo.store.url``
    "CONNECT_TIMEOUT",
    "DEFAULT_URL",
    "ENV_VAR",
    "GRACE_PERIOD",
    "GRPC_DEFAULT_PORT",
    "HEARTBEAT_INTERVAL",
    "MAX_RETRY",
    "PROXY_THREADS",
    "SQLITE_BUSY_TIMEOUT",
    "StorageUrl",
    "open_storage",
    "redact",
    "resolve_url",
    "serve_proxy",
]

_CREATE_ATTEMPTS = 5

_DRIVERS = {
    "sqlite": None,
    "postgresql": "psycopg2",
    "mysql": "pymysql",
}


def open_storage(
    url: str | StorageUrl | None = None,
    *,
    create: bool = True,
    outage: float = 0.0,
    pool: int | None = None,
) -> optuna.storages.BaseStorage:
    """Open the study storage.

    Args:
        url: a SQLAlchemy URL (``sqlite:///PATH``, ``postgresql+psycopg2://...``,
            ``mysql+pymysql://...``), ``grpc://HOST:PORT`` (an ``hpo storage-proxy``) or
            ``journal://PATH`` (a journal file), or one already parsed; ``None`` resolves as
            ``resolve_url`` says.
        create: create the database file / tables / journal file if missing. Read-only
            commands pass ``False`` so that a typo in a URL does not leave an empty database
            behind.
        outage: seconds to wait for a server (or proxy) that does not answer (a restart)
            before giving up; 0 (commands a person types): fail at once. A worker that its
            launcher restarts waits, as its storage calls do once it runs.
        pool: the most connections to a database server (the proxy's: one per thread);
            None: SQLAlchemy's default (5, and up to 10 more under load).

    Returns:
        A storage with heartbeat and stale-trial retry: hpo's ``RDBStorage`` for a database,
        the gRPC proxy's client or the journal, each with hpo's claims (``hpo.store._optuna``).

    Raises:
        StorageError: a malformed URL, an unknown backend, or a database that cannot be
            reached (answered within ``CONNECT_TIMEOUT`` seconds).
    """
    url = StorageUrl.parse(url)
    shown = url.redacted
    if url.kind == "grpc":
        return _open_grpc(url, outage)
    if url.kind == "journal":
        return _open_journal(url, create)

    import sqlalchemy

    parsed = url.sqlalchemy
    if parsed is None:
        raise StorageError(
            f"malformed storage URL {shown!r}; expected e.g. sqlite:///hpo.db "
            "or postgresql+psycopg2://user@host/db"
        )
    if url.kind not in _DRIVERS:
        raise StorageError(
            f"unsupported storage backend {url.kind!r} in {shown}; "
            "expected sqlite, postgresql, mysql, grpc or journal"
        )
    engine_url = url.text
    if url.kind != "sqlite" and url.driver is None:
        # Pin the drivers the project installs (SQLAlchemy's defaults may be missing).
        parsed = parsed.set(drivername=f"{url.kind}+{_DRIVERS[url.kind]}")
        engine_url = parsed.render_as_string(hide_password=False)

    engine_kwargs: dict[str, Any] = {}
    if url.kind == "sqlite":
        _prepare_sqlite(url, create)
        engine_kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT}
    else:
        engine_kwargs["pool_pre_ping"] = True
        engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT}
        if pool is not None:
            engine_kwargs.update(pool_size=pool, max_overflow=0)
        _check_server(url, engine_url, engine_kwargs, create, outage)

    # Workers starting together on a new database race to create its tables: the losers see
    # "already exists" / duplicate-key errors and simply try again.
    from hpo.store._optuna import HpoRDBStorage

    def build() -> optuna.storages.RDBStorage:
        with no_experimental_warnings():
            return HpoRDBStorage(
                engine_url,
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


def _prepare_sqlite(url: StorageUrl, create: bool) -> None:
    """Check the file and switch it to WAL (persistent in the file) before Optuna opens it."""
    import sqlite3

    shown, path = url.redacted, url.path
    if path is None:
        raise StorageError(
            f"{shown}: an in-memory SQLite database cannot be shared by workers; "
            "give a file, e.g. sqlite:///hpo.db"
        )
    if not create and not path.is_file():
        raise StorageError(
            f"no database at {path} ({shown}); run 'hpo create' or 'hpo run' "
            "first, or pass --storage"
        )
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


def _check_server(
    url: StorageUrl,
    engine_url: str,
    engine_kwargs: dict[str, Any],
    create: bool,
    outage: float = 0.0,
) -> None:
    """Connect once with a short timeout so an unreachable server gives one clear line (after
    ``outage`` seconds of trying, where it is given)."""
    import sqlalchemy

    shown = url.redacted
    try:
        engine = sqlalchemy.create_engine(engine_url, **engine_kwargs)
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


def _first_line(e: BaseException, url: StorageUrl) -> str:
    orig = getattr(e, "orig", None) or e
    lines = [ln.strip() for ln in str(orig).splitlines() if ln.strip()]
    # psycopg2 puts the useful part on the last line ("Connection refused ..."), others first;
    # its lines are sentences without a full stop: end each so that they read apart.
    text = (
        " ".join(ln if ln[-1] in ".?!:;," else ln + "." for ln in lines[:3])
        if lines
        else type(orig).__name__
    )
    return url.redact(text)


# --------------------------------------------------------------------------------------------
# The gRPC proxy and the journal file.

PROXY_THREADS = 10
"""Threads of ``hpo storage-proxy``, each with at most one database connection."""


def _heartbeat_options() -> dict[str, Any]:
    return {
        "heartbeat_interval": HEARTBEAT_INTERVAL,
        "grace_period": GRACE_PERIOD,
        "heartbeat_stale_trial_callback": retry_callback(MAX_RETRY),
    }


def _open_grpc(url: StorageUrl, outage: float) -> optuna.storages.BaseStorage:
    """The client of an ``hpo storage-proxy``: waits for it up to ``CONNECT_TIMEOUT`` seconds
    (``outage``, where longer), and checks that it is hpo's (Optuna's own proxy lacks hpo's
    claims and heartbeats)."""
    host, port = url.address()
    shown = url.redacted
    try:
        from hpo.store._optuna import HpoGrpcStorage  # gRPC as hpo wants it: no fork handlers
    except ImportError as e:
        raise StorageError(
            f"{shown}: the gRPC client is not installed ({e}); pip install grpcio protobuf"
        ) from None
    import grpc

    if outage <= 0:  # a person waits: a refused connection is an answer at once
        import socket

        try:
            socket.create_connection((host, port), timeout=CONNECT_TIMEOUT).close()
        except OSError as e:
            raise StorageError(
                f"cannot connect to the storage proxy {shown}: "
                f"{e.strerror or e}; is 'hpo storage-proxy' running there?"
            ) from None
    with no_experimental_warnings():
        storage = HpoGrpcStorage(host=host, port=port, **_heartbeat_options())
    try:
        storage.wait_server_ready(timeout=max(outage, CONNECT_TIMEOUT))
        storage.hello()
    except ConnectionError:
        storage.close()
        raise StorageError(
            f"cannot connect to the storage proxy {shown}: no answer within "
            f"{max(outage, CONNECT_TIMEOUT):g}s; is 'hpo storage-proxy' running "
            "there?"
        ) from None
    except grpc.RpcError as e:
        storage.close()
        if e.code() == grpc.StatusCode.UNIMPLEMENTED:
            raise StorageError(
                f"{shown} is not an hpo storage proxy (Optuna's own proxy lacks "
                "hpo's claims and heartbeats); start it with 'hpo storage-proxy "
                "--storage URL'"
            ) from None
        raise StorageError(f"storage proxy {shown}: {e.code().name}: {e.details()}") from None
    return storage


def _open_journal(url: StorageUrl, create: bool) -> optuna.storages.BaseStorage:
    """Optuna's journal file with its file lock; created where missing if ``create``."""
    shown, path = url.redacted, url.path
    if path is None or not str(path) or str(path) == ".":
        raise StorageError(f"malformed journal URL {shown}; expected journal:///PATH/study.log")
    if path.is_dir():
        raise StorageError(
            f"{shown}: {path} is a directory; expected a journal file, e.g. "
            f"journal:///{path.as_posix().lstrip('/')}/hpo.log"
        )
    if not create and not path.is_file():
        raise StorageError(
            f"no journal at {path} ({shown}); run 'hpo create' or 'hpo run' "
            "first, or pass --storage"
        )
    if not path.parent.is_dir():
        raise StorageError(f"{shown}: directory {path.parent} does not exist")
    if path.is_file() and not _looks_like_journal(path):
        # Optuna reads past what it cannot parse (a write cut short); hpo must not append
        # to a database file or anything else given by mistake.
        raise StorageError(
            f"{path} is not an Optuna journal file ({shown}): its first line "
            "is not a journal record"
        )
    try:
        with no_experimental_warnings():
            from hpo.store._optuna import HpoJournalStorage

            return HpoJournalStorage(str(path), **_heartbeat_options())
    except (ValueError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise StorageError(
            f"{path} is not an Optuna journal file ({shown}): {type(e).__name__}: {e}"
        ) from None
    except OSError as e:
        raise StorageError(f"cannot open journal {path}: {e.strerror or e}") from None


def _looks_like_journal(path: Path) -> bool:
    """Empty, or a first line that is a journal record (a JSON object with an ``op_code``)."""
    import json

    try:
        with open(path, "rb") as f:
            first = f.readline(1 << 20)
    except OSError as e:
        raise StorageError(f"cannot read journal {path}: {e.strerror or e}") from None
    if not first:
        return True
    try:
        record = json.loads(first)
    except ValueError:
        return False
    return isinstance(record, dict) and "op_code" in record


def serve_proxy(
    url: str | StorageUrl, *, host: str, port: int, threads: int = PROXY_THREADS
) -> tuple[Any, int]:
    """Start the gRPC storage proxy in front of the database at ``url`` (its tables created
    where missing): Optuna's proxy service and hpo's (claims, heartbeats, study creation).

    Returns:
        The started server (``server.stop(grace)`` ends it) and its port.

    Raises:
        StorageError: ``url`` is not a database (a proxy, a journal), or cannot be opened, or
            the address cannot be bound.
    """
    from hpo import __version__

    url = StorageUrl.parse(url)
    shown, kind = url.redacted, url.kind
    if kind == "grpc":
        raise StorageError(
            f"hpo storage-proxy serves a database (PostgreSQL, MySQL or "
            f"SQLite), not another proxy ({shown})"
        )
    if kind == "journal":
        raise StorageError(
            f"hpo storage-proxy serves a database, not a journal file ({shown}): "
            "Optuna's gRPC proxy does not support journals (optuna#6084); give "
            "the workers the journal:// URL on the shared filesystem instead"
        )
    storage = open_storage(url, create=True, pool=threads)
    try:
        from hpo.store._optuna import grpc_server

        return grpc_server(storage, host, port, threads, hello={"hpo": __version__})
    except OSError as e:
        raise StorageError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
