"""What a command gets: its parsed flags, and the storage and the study, each opened once.

No command opens the storage its own way. The URL is resolved once (``--storage``, else
``$HPO_STORAGE``, else ``sqlite:///hpo.db``); the storage is opened on first use and never
created, so that a mistyped URL leaves no empty database behind; the study is loaded on first
use. ``create`` is the one way a command writes a new study.
"""

from __future__ import annotations

import argparse
import sys
from functools import cached_property
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

    from hpo.spec import Spec
    from hpo.store.url import StorageUrl

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2


class Handle:
    """One command's flags, storage and study.

    Args:
        args: the parsed command line; ``args.storage`` (every command has the flag) and, for
            the commands that take one, ``args.study``.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self._opened: optuna.storages.BaseStorage | None = None
        self._loaded: tuple[optuna.Study, Spec] | None = None

    @cached_property
    def url(self) -> StorageUrl:
        """The storage URL, parsed once; ``str()`` of it has the password: never print it,
        print ``shown``."""
        from hpo.store.url import StorageUrl

        return StorageUrl.parse(getattr(self.args, "storage", None))

    @property
    def shown(self) -> str:
        """The storage URL as it may be printed (``user:***@``)."""
        return self.url.redacted

    def redact(self, text: str) -> str:
        """``text`` without the storage URL's password, nor any URL's."""
        return self.url.redact(text)

    def storage(self, *, outage: float = 0.0) -> optuna.storages.BaseStorage:
        """The study database, opened on the first call.

        Args:
            outage: seconds to wait for a database server that does not answer (a restart);
                0, for commands a person types: fail at once.
        """
        if self._opened is None:
            from hpo.store.storage import open_storage

            self._opened = open_storage(self.url, create=False, outage=outage)
        return self._opened

    def serve_proxy(self, *, host: str, port: int, threads: int) -> tuple[Any, int]:
        """Open the database (its tables created where missing) and serve it as the gRPC
        storage proxy on ``host:port``; returns the started server and its port."""
        from hpo.store.storage import serve_proxy

        return serve_proxy(self.url, host=host, port=port, threads=threads)

    def load(self, *, seed_offset: int = 0, outage: float = 0.0) -> tuple[optuna.Study, Spec]:
        """The study named by the STUDY argument and its stored spec, loaded on the first call.

        Args:
            seed_offset: added to the sampler's seed (a worker's own, see ``hpo.search.study``).
            outage: as for ``storage``.

        Raises:
            StudyNotFoundError: no such study (exit 2, the message lists those there are).
        """
        if self._loaded is None:
            from hpo.search.study import load_study

            self._loaded = load_study(
                self.args.study, self.storage(outage=outage), seed_offset=seed_offset
            )
        return self._loaded

    @property
    def study(self) -> optuna.Study:
        return self.load()[0]

    @property
    def spec(self) -> Spec:
        return self.load()[1]

    def study_named(self, name: str) -> optuna.Study:
        """Another study of the same storage (``hpo report --compare``)."""
        from hpo.search.study import load_study

        return load_study(name, self.storage())[0]

    def create(self, spec: Spec) -> optuna.Study:
        """Create the spec's study, or resume it where it exists with the same spec; the
        database (a SQLite file, the tables) is created where missing."""
        from hpo.search.study import create_study
        from hpo.store.storage import open_storage

        self._opened = open_storage(self.url)
        self._loaded = (
            create_study(spec, self._opened, getattr(self.args, "spec", "<spec>")),
            spec,
        )
        return self._loaded[0]


def say(text: str) -> None:
    """A line of the command's progress, on standard output, at once."""
    print(text, flush=True)


def warn(text: str) -> None:
    print(f"hpo: warning: {text}", file=sys.stderr, flush=True)
