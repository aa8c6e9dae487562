"""hpo's artifact store: Optuna's file store, which hpo extends through its private
``_get_filepath`` (where an artifact's file lies)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from optuna.artifacts import FileSystemArtifactStore


class HpoArtifactStore(FileSystemArtifactStore):
    """Optuna's file store; an upload of a file on the same filesystem is a hard link, and
    removing what is already gone is not an error (the dashboard's "delete study with its
    artifacts" then deletes a study whose non-best checkpoints hpo removed)."""

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        target = self._get_filepath(artifact_id)
        source = getattr(content_body, "name", None)
        if isinstance(source, str) and _same_file(content_body, source):
            try:
                os.link(source, target)
                return
            except OSError:  # another filesystem, or links not allowed: copy
                pass
        super().write(artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        Path(self._get_filepath(artifact_id)).unlink(missing_ok=True)


def _same_file(stream: BinaryIO, path: str) -> bool:
    """Whether the open ``stream`` reads the file now at ``path`` (not one replaced since)."""
    try:
        mine, there = os.fstat(stream.fileno()), os.stat(path)
    except (OSError, AttributeError, ValueError):
        return False
    return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)
