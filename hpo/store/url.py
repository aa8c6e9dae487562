"""Storage URLs: which URL (the flag, ``$HPO_STORAGE``, the default) and what it names,
parsed once into a ``StorageUrl`` (its kind, driver, file, proxy address, and the form of it
that may be shown); ``redact`` keeps passwords out of any text. ``hpo.store.storage`` opens what
they name.

What hpo needs of a storage URL, whatever its kind: ``kind`` picks the opener, ``path`` is
the file of a storage on one filesystem (SQLite, a journal), ``host`` the machine a cluster's
workers must reach, and ``redacted`` is the only form that goes into a message.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpo.errors import StorageError

DEFAULT_URL = "sqlite:///hpo.db"
ENV_VAR = "HPO_STORAGE"
GRPC_DEFAULT_PORT = 13000
"""Optuna's default port of its gRPC storage proxy."""

SERVER_KINDS = ("postgresql", "mysql", "grpc")
"""Kinds whose storage is a server that workers on several machines reach."""


def resolve_url(url: str | None = None) -> str:
    """The storage URL: the flag, else ``$HPO_STORAGE``, else ``sqlite:///hpo.db``."""
    return url or os.environ.get(ENV_VAR) or DEFAULT_URL


def redact(text: str, url: str | None = None) -> str:
    """Remove passwords of URLs from ``text`` (``user:secret@`` -> ``user:***@``), and
    ``url``'s password wherever it stands alone."""
    return _redact(text, _sqlalchemy_url(url)[1] if url else None)


def _redact(text: str, password: str | None) -> str:
    text = re.sub(r"(\w+(?:\+\w+)?://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)
    if password:
        text = text.replace(password, "***")
    return text


def _sqlalchemy_url(text: str) -> tuple[Any, str | None]:
    """SQLAlchemy's reading of ``text`` and its password; (None, None) where it cannot."""
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(text)
    except Exception:
        return None, None
    return parsed, parsed.password


@dataclass(frozen=True)
class StorageUrl:
    """A storage URL, parsed once by ``StorageUrl.parse``; ``str()`` gives it back as written
    (password and all, for SQLAlchemy and ``$HPO_STORAGE``): print ``redacted``.

    Parsing never fails: what a URL lacks, its opener says (``hpo.store.storage.open_storage``), so
    that every message about it comes from one place.
    """

    text: str
    """The URL as given, password and all: never print it."""
    kind: str
    """``sqlite``, ``postgresql``, ``mysql``, ``grpc`` or ``journal``; another scheme as
    written (``SQLITE``, ``redis``), or ``""`` without one, for the opener to refuse."""
    driver: str | None
    """The SQLAlchemy driver named after ``+`` (``psycopg2``, ``pymysql``), else None."""
    path: Path | None
    """The file: SQLite's database (None in memory), the journal's (``journal:///abs.log``
    is absolute, ``journal://rel.log`` relative to the current directory)."""
    host: str | None
    """The database server's or proxy's host; None for a file, or a malformed proxy URL."""
    port: int | None
    """Its port (a proxy's default: ``GRPC_DEFAULT_PORT``); None where the URL has none."""
    redacted: str
    """The URL as it may be shown (``user:***@``)."""
    password: str | None = field(default=None, repr=False, compare=False)
    """SQLAlchemy's reading of its password; None without one."""
    sqlalchemy: Any = field(default=None, repr=False, compare=False)
    """SQLAlchemy's ``URL`` of it (a database, not a proxy or journal); None where it has
    none."""
    problem: str | None = field(default=None, repr=False, compare=False)
    """What is wrong with a proxy URL, in the words ``address`` raises."""

    @classmethod
    def parse(cls, text: str | StorageUrl | None = None) -> StorageUrl:
        """Read a storage URL: ``text``, else ``$HPO_STORAGE``, else ``sqlite:///hpo.db``
        (a ``StorageUrl`` is already read: it is returned as it is)."""
        if isinstance(text, StorageUrl):
            return text
        text = resolve_url(text)
        scheme, sep, rest = text.partition("://")
        base = scheme.split("+", 1)[0] if sep else ""
        kind = base.lower() if base.lower() in ("grpc", "journal") else base
        parsed, password = _sqlalchemy_url(text)
        redacted = _redact(text, password)
        driver, path, host, port, problem = None, None, None, None, None
        if kind == "journal":
            path = Path(rest).expanduser()
        elif kind == "grpc":
            address = _grpc_address(text, redacted)
            if isinstance(address, str):
                problem = address
            else:
                host, port = address
        elif parsed is not None:
            driver = parsed.drivername.partition("+")[2] or None
            database = parsed.database
            if kind == "sqlite" and database and database != ":memory:":
                path = Path(database).expanduser()
            host, port = parsed.host, parsed.port
        return cls(
            text=text,
            kind=kind,
            driver=driver,
            path=path,
            host=host,
            port=port,
            redacted=redacted,
            password=password,
            sqlalchemy=parsed if kind not in ("grpc", "journal") else None,
            problem=problem,
        )

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"StorageUrl({self.redacted!r})"

    @property
    def is_server(self) -> bool:
        """A database server or proxy, which workers on several machines can share."""
        return self.kind in SERVER_KINDS

    @property
    def is_file(self) -> bool:
        """A file on one filesystem: a SQLite database or a journal."""
        return self.path is not None

    def address(self) -> tuple[str, int]:
        """A proxy's ``grpc://HOST:PORT`` -> (host, port).

        Raises:
            StorageError: no host, a bad port, or a user, password, path or query (the proxy
                holds the database's credentials; the workers need none).
        """
        if self.host is None or self.port is None:
            raise StorageError(self.problem or f"{self.redacted} is not a grpc:// URL")
        return self.host, self.port

    def redact(self, text: str) -> str:
        """``text`` without this URL's password, nor any URL's."""
        return _redact(text, self.password)


def _grpc_address(url: str, shown: str) -> tuple[str, int] | str:
    """``grpc://HOST:PORT`` -> (host, port), or what is wrong with it."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        return f"malformed proxy URL {shown}: {e}; expected grpc://HOST:PORT"
    if parts.username or parts.password:
        return (
            f"{shown}: a grpc:// URL takes no user or password (the proxy holds "
            "the database's credentials); expected grpc://HOST:PORT"
        )
    if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment:
        return (
            f"malformed proxy URL {shown}; expected grpc://HOST:PORT, e.g. "
            f"grpc://db-proxy.internal:{GRPC_DEFAULT_PORT}"
        )
    return parts.hostname, port or GRPC_DEFAULT_PORT
