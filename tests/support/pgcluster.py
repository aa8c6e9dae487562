"""A PostgreSQL server of a test's own, to restart at will: a cluster made with ``initdb`` in
a temp folder, on a free port of 127.0.0.1 (trust authentication, user ``postgres``).

The tests that restart PostgreSQL (an outage mid-study, the PostgreSQL chaos round) restart
this one, not the machine's server, so they run beside the other tests instead of alone. As
root the server programs run as the ``postgres`` user (``initdb`` refuses root).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def server_programs() -> Path | None:
    """The newest PostgreSQL's program folder (``initdb``, ``pg_ctl``), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(Path(p).parent.parent.name))
    return Path(found[-1]).parent if found else None


def why_not() -> str | None:
    """Why no private cluster can run on this machine, or None."""
    if server_programs() is None:
        return "PostgreSQL's server programs (initdb, pg_ctl) are not installed"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "as root, runuser is needed to run PostgreSQL as its own user"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateCluster:
    """A running PostgreSQL cluster of this process's own; ``close()`` stops and removes it.

    Attributes:
        port: the port it listens on.
        url: a storage URL of its ``postgres`` database.
    """

    def __init__(self) -> None:
        self._bin = server_programs()
        if self._bin is None:
            raise RuntimeError(why_not())
        self._as_root = os.geteuid() == 0
        self.folder = Path(tempfile.mkdtemp(prefix="hpo-pg-"))
        if self._as_root:
            shutil.chown(self.folder, "postgres", "postgres")
        self._data = self.folder / "data"
        self.port = _free_port()
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"
        self._run("initdb", "-D", str(self._data), "-U", "postgres", "--auth=trust",
                  "-E", "UTF8", "--no-sync")
        self._ctl("start")

    def _run(self, program: str, *args: str) -> None:
        cmd = [str(self._bin / program), *args]
        if self._as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120, cwd=self.folder)

    def _ctl(self, action: str, mode: str = "fast") -> None:
        options = (f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c max_connections=50")
        self._run("pg_ctl", "-D", str(self._data), "-l", str(self.folder / "server.log"),
                  "-w", "-t", "60", "-m", mode, "-o", options, action)

    def restart(self, down: float = 2.0) -> float:
        """Stop the server (its connections cut, as ``pg_ctlcluster ... restart`` cuts them),
        keep it down ``down`` seconds (a fresh small cluster restarts in 0.2 s, faster than a
        real one), start it again; return the seconds it was away."""
        start = time.monotonic()
        self._ctl("stop")
        time.sleep(down)
        self._ctl("start")
        return time.monotonic() - start

    def close(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._ctl("stop", mode="immediate")
        shutil.rmtree(self.folder, ignore_errors=True)
