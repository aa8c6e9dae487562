"""Storage URLs: which URL (the flag, ``$HPO_STORAGE``, the default), what kind of storage it
names, a proxy's address and a journal's path in it, and its password kept out of every
message (``redact``). ``hpo.storage`` opens what they name."""

from __future__ import annotations

import os
import re
from pathlib import Path

from hpo.errors import StorageError

DEFAULT_URL = "sqlite:///hpo.db"
ENV_VAR = "HPO_STORAGE"
GRPC_DEFAULT_PORT = 13000
"""Optuna's default port of its gRPC storage proxy."""


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


def storage_kind(url: str) -> str:
    """The kind of storage a URL names: sqlite, postgresql, mysql, grpc, journal (or the
    scheme as written, for the error that opening it gives)."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else url
    return scheme.split("+", 1)[0]


def grpc_address(url: str) -> tuple[str, int]:
    """``grpc://HOST:PORT`` -> (host, port).

    Raises:
        StorageError: no host, a bad port, or a user, password, path or query (the proxy holds
            the database's credentials; the workers need none).
    """
    from urllib.parse import urlsplit

    shown = redact(url, url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise StorageError(f"malformed proxy URL {shown}: {e}; expected grpc://HOST:PORT") from None
    if parts.username or parts.password:
        raise StorageError(
            f"{shown}: a grpc:// URL takes no user or password (the proxy holds "
            "the database's credentials); expected grpc://HOST:PORT"
        )
    if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise StorageError(
            f"malformed proxy URL {shown}; expected grpc://HOST:PORT, e.g. "
            f"grpc://db-proxy.internal:{GRPC_DEFAULT_PORT}"
        )
    return parts.hostname, port or GRPC_DEFAULT_PORT


def journal_path(url: str) -> Path:
    """``journal://PATH`` -> PATH: ``journal:///shared/hpo/study.log`` is the absolute path
    ``/shared/hpo/study.log``, ``journal://study.log`` a path relative to the current
    directory."""
    return Path(url.split("://", 1)[1]).expanduser()
