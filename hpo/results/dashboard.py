"""Dashboard: optuna-dashboard on the study database, with the study's artifact store.

Binds to 127.0.0.1 unless told otherwise; serves requests on threads so that a browser's
parallel requests do not queue behind a slow one.
"""

from __future__ import annotations

import errno
import os
import socket
import socketserver
from collections.abc import Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from hpo.errors import HpoError
from hpo.store.artifacts import artifact_dir, artifact_store, missing_artifacts_as_404
from hpo.store.storage import open_storage
from hpo.store.url import StorageUrl

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    """No access log: the terminal shows where to open the dashboard and errors."""

    def log_request(self, *args, **kwargs) -> None:
        pass


def dashboard_url(host: str, port: int) -> str:
    """The address to open for a server bound to ``host:port``."""
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/dashboard/"


def serve(
    storage_url: str | StorageUrl | None = None,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    artifacts: str | os.PathLike[str] | None = None,
    on_ready: Callable[[str, str], None] | None = None,
) -> None:
    """Run optuna-dashboard on the study database until interrupted.

    Args:
        storage_url: the study database (``None``: as ``StorageUrl.parse`` says).
        host: the address to bind; ``0.0.0.0`` opens it to the network.
        port: the port; 0 picks a free one.
        artifacts: the artifact store's folder (default: see ``hpo.store.artifacts.artifact_dir``).
        on_ready: called with the URL to open and the artifact folder once listening.

    Raises:
        HpoError: no such database, or the port cannot be bound.
    """
    import optuna_dashboard

    url = StorageUrl.parse(storage_url)
    storage = open_storage(url, create=False)
    store = artifact_store(url, artifacts)
    # A checkpoint hpo removed (its trial left the best) answers 404 with the reason.
    app = missing_artifacts_as_404(
        optuna_dashboard.wsgi(storage, artifact_store=store), artifact_dir(url, artifacts)
    )
    server_class = _Server6 if ":" in host else _Server
    try:
        server = make_server(
            host, port, app, server_class=server_class, handler_class=_QuietHandler
        )
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise HpoError(f"port {port} on {host} is in use; pass another --port") from None
        raise HpoError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    with server:
        if on_ready is not None:
            on_ready(dashboard_url(host, server.server_port), str(artifact_dir(url, artifacts)))
        server.serve_forever()
