"""A TCP proxy in front of a database server whose connection a test can cut and restore:
a real outage (connections reset, new ones refused) at a moment the test chooses."""

from __future__ import annotations

import socket
import struct
import threading


class Proxy:
    """Forward ``127.0.0.1:port`` to ``target``; ``cut()`` drops every connection and refuses
    new ones until ``restore()``."""

    def __init__(self, target: tuple[str, int], cut_after: int | None = None) -> None:
        self.target = target
        self.cut_after = cut_after
        """Cut by itself once this many connections were accepted (None: never)."""
        self.accepted = 0
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._server = self._listen(0)
        self.port = self._server.getsockname()[1]

    def _listen(self, port: int) -> socket.socket:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen(64)
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()
        return server

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
                self.accepted += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()
            if self.cut_after is not None and self.accepted >= self.cut_after:
                self.cut_after = None
                threading.Timer(0.3, self.cut).start()  # after the connection's first words
                return

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            _shutdown(s)

    def cut(self) -> None:
        # shutdown() wakes the threads blocked in accept() / recv() on these sockets (close()
        # alone would not, and the kernel would keep them open underneath).
        _shutdown(self._server)
        self._server.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            _shutdown(s)
            s.close()  # linger 0: a reset, as when a server dies

    def restore(self) -> None:
        self._server = self._listen(self.port)

    def close(self) -> None:
        self.cut()


def _shutdown(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
