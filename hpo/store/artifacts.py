"""Artifacts: the file store that holds trial checkpoints next to the study database.

Workers upload the final checkpoint (the weights) of each trial that completes among the best
``KEEP_BEST_CHECKPOINTS`` into it (``upload_checkpoint``) and remove it when the trial leaves
them (``remove_checkpoints``, from the worker's checkpoint retention); optuna-dashboard
(``hpo dashboard``) shows and serves them; ``hpo export`` fetches the best one from it when
the local file is gone. A removed checkpoint's id stays in its finished trial (user attr
``checkpoint_artifact`` and Optuna's artifact list, which cannot change once a trial is
finished): readers check that the file is there (``has_checkpoint``), and the dashboard
answers 404 with the reason (``missing_artifacts_as_404``).

An upload on the same filesystem as the checkpoint is a hard link, not a copy: the store and
``checkpoints/`` share the bytes (checkpoints are replaced, never written in place, so the
artifact keeps the file as uploaded).

Where the store lives: ``--artifacts DIR``, else ``$HPO_ARTIFACTS``, else for SQLite a folder
beside the database file (``hpo.db`` -> ``hpo-artifacts/``), else ``./hpo-artifacts``. With
workers on several machines, point it at a shared filesystem on every machine.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpo.records import CHECKPOINT_ARTIFACT_ATTR
from hpo.store.url import StorageUrl

if TYPE_CHECKING:
    import optuna
    from optuna.artifacts import FileSystemArtifactStore

ARTIFACTS_VAR = "HPO_ARTIFACTS"
KEEP_BEST_CHECKPOINTS = 3
"""Checkpoints kept of finished trials: the best k complete ones (their final checkpoints:
the weights), in ``checkpoints/`` and in the artifact store."""


def artifact_dir(
    storage_url: str | StorageUrl | None = None, directory: str | os.PathLike[str] | None = None
) -> Path:
    """The folder of the artifact store of a study database.

    Args:
        storage_url: the study database (``None``: as ``StorageUrl.parse`` says).
        directory: an explicit folder (the ``--artifacts`` flag); wins over everything.

    Returns:
        The folder (not created).
    """
    if directory:
        return Path(directory).expanduser()
    if os.environ.get(ARTIFACTS_VAR):
        return Path(os.environ[ARTIFACTS_VAR]).expanduser()
    url = StorageUrl.parse(storage_url)
    # Beside a SQLite file named as sqlite:///PATH (a sqlite+DRIVER URL's store stays in the
    # current directory, as it always has).
    if url.kind == "sqlite" and url.driver is None and url.path is not None:
        return url.path.with_name(f"{url.path.stem}-artifacts")
    return Path("hpo-artifacts")


def artifact_store(
    storage_url: str | StorageUrl | None = None, directory: str | os.PathLike[str] | None = None
) -> FileSystemArtifactStore:
    """The artifact store of a study database, its folder created if missing.

    Args:
        storage_url: the study database.
        directory: an explicit folder (see ``artifact_dir``).

    Returns:
        An Optuna ``FileSystemArtifactStore`` for ``optuna.artifacts.upload_artifact`` and
        ``optuna_dashboard.run_server``.
    """
    path = artifact_dir(storage_url, directory)
    path.mkdir(parents=True, exist_ok=True)
    from hpo.store._optuna import HpoArtifactStore

    return HpoArtifactStore(path)


def upload_checkpoint(
    trial: optuna.Trial,
    path: str | os.PathLike[str],
    storage_url: str | StorageUrl | None = None,
    directory: str | os.PathLike[str] | None = None,
) -> str:
    """Upload a trial's checkpoint file (a hard link where it can be) and record its id in
    the trial.

    Args:
        trial: the running trial.
        path: the checkpoint file.
        storage_url: the study database (decides where the store is).
        directory: an explicit store folder.

    Returns:
        The artifact id, also stored as the trial's ``checkpoint_artifact`` user attr.
    """
    from optuna.artifacts import upload_artifact

    artifact_id = upload_artifact(
        artifact_store=artifact_store(storage_url, directory),
        file_path=str(path),
        study_or_trial=trial,
        mimetype="application/octet-stream",
    )
    trial.set_user_attr(CHECKPOINT_ARTIFACT_ATTR, artifact_id)
    return artifact_id


def has_checkpoint(
    artifact_id: str | None,
    storage_url: str | StorageUrl | None = None,
    directory: str | os.PathLike[str] | None = None,
) -> bool:
    """Whether the store still holds the artifact (False for a removed one, or no id)."""
    if not artifact_id or not _ARTIFACT_ID.fullmatch(str(artifact_id)):
        return False
    return (artifact_dir(storage_url, directory) / str(artifact_id)).is_file()


def remove_checkpoints(
    artifact_ids: Iterable[str],
    storage_url: str | StorageUrl | None = None,
    directory: str | os.PathLike[str] | None = None,
) -> list[str]:
    """Remove uploaded checkpoints from the store (those already gone are skipped).

    Returns:
        The ids whose file was removed here.
    """
    folder = artifact_dir(storage_url, directory)
    removed = []
    for artifact_id in artifact_ids:
        if not _ARTIFACT_ID.fullmatch(str(artifact_id)):
            continue  # not an id this store wrote: never a path outside it
        path = folder / str(artifact_id)
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(str(artifact_id))
    return removed


_ARTIFACT_ID = re.compile(r"[0-9a-fA-F-]+")
"""What Optuna's artifact ids look like (uuid4), and what the dashboard's routes accept."""
_ARTIFACT_ROUTE = re.compile(r"/artifacts/\d+/(?:\d+/)?([0-9a-fA-F-]+)")
REMOVED_REASON = (
    "this artifact's file is not in the store: hpo removes a trial's checkpoint "
    "when the trial is no longer among the best {k} complete trials, whose "
    "weights it keeps"
)


def missing_artifacts_as_404(
    app: Callable[..., Any], folder: str | os.PathLike[str], keep_best: int = KEEP_BEST_CHECKPOINTS
) -> Callable[..., Any]:
    """Wrap optuna-dashboard's WSGI app: a request for an artifact whose file is gone (hpo
    removed the checkpoint of a trial that left the best) gets 404 and the reason, where
    the dashboard would fail with a 500 (its list of a finished trial's artifacts cannot be
    changed)."""
    folder = Path(folder)

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        found = _ARTIFACT_ROUTE.fullmatch(environ.get("PATH_INFO", ""))
        if (
            found
            and environ.get("REQUEST_METHOD", "GET") in ("GET", "HEAD")
            and not (folder / found.group(1)).is_file()
        ):
            body = (REMOVED_REASON.format(k=keep_best) + "\n").encode()
            start_response(
                "404 Not Found",
                [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
            )
            return [body]
        return app(environ, start_response)

    return wrapped


def download_checkpoint(
    artifact_id: str,
    dest: str | os.PathLike[str],
    storage_url: str | StorageUrl | None = None,
    directory: str | os.PathLike[str] | None = None,
) -> Path | None:
    """Fetch an uploaded checkpoint into ``dest``; None if the store does not have it."""
    from optuna.artifacts import download_artifact
    from optuna.artifacts.exceptions import ArtifactNotFound

    folder = artifact_dir(storage_url, directory)
    if not folder.is_dir():
        return None
    try:
        download_artifact(
            artifact_store=artifact_store(storage_url, directory),
            file_path=str(dest),
            artifact_id=artifact_id,
        )
    except ArtifactNotFound:
        return None
    return Path(dest)
