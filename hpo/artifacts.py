"""Artifacts: the file store that holds trial checkpoints next to the study database.

Workers upload each trial's checkpoint into it (``upload_checkpoint``); optuna-dashboard
(``hpo dashboard``) shows and serves them; ``hpo export`` fetches the best one from it when
the local file is gone.

Where the store lives: ``--artifacts DIR``, else ``$HPO_ARTIFACTS``, else for SQLite a folder
beside the database file (``hpo.db`` -> ``hpo-artifacts/``), else ``./hpo-artifacts``. With
workers on several machines, point it at a shared filesystem on every machine.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna
    from optuna.artifacts import FileSystemArtifactStore

ARTIFACTS_VAR = "HPO_ARTIFACTS"
CHECKPOINT_ARTIFACT_ATTR = "checkpoint_artifact"
"""Trial user attr: the artifact id of the trial's uploaded checkpoint."""


def artifact_dir(storage_url: str | None = None, directory: str | os.PathLike[str] | None = None
                 ) -> Path:
    """The folder of the artifact store of a study database.

    Args:
        storage_url: the study database (``None``: as ``hpo.storage.resolve_url`` says).
        directory: an explicit folder (the ``--artifacts`` flag); wins over everything.

    Returns:
        The folder (not created).
    """
    from hpo.storage import resolve_url

    if directory:
        return Path(directory).expanduser()
    if os.environ.get(ARTIFACTS_VAR):
        return Path(os.environ[ARTIFACTS_VAR]).expanduser()
    url = resolve_url(storage_url)
    if url.startswith("sqlite:///"):
        from sqlalchemy.engine import make_url

        database = make_url(url).database
        if database and database != ":memory:":
            db = Path(database).expanduser()
            return db.with_name(f"{db.stem}-artifacts")
    return Path("hpo-artifacts")


def artifact_store(storage_url: str | None = None,
                   directory: str | os.PathLike[str] | None = None) -> "FileSystemArtifactStore":
    """The artifact store of a study database, its folder created if missing.

    Args:
        storage_url: the study database.
        directory: an explicit folder (see ``artifact_dir``).

    Returns:
        An Optuna ``FileSystemArtifactStore`` for ``optuna.artifacts.upload_artifact`` and
        ``optuna_dashboard.run_server``.
    """
    from optuna.artifacts import FileSystemArtifactStore

    path = artifact_dir(storage_url, directory)
    path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(path)


def upload_checkpoint(trial: "optuna.Trial", path: str | os.PathLike[str],
                      storage_url: str | None = None,
                      directory: str | os.PathLike[str] | None = None) -> str:
    """Upload a trial's checkpoint file and record its id in the trial.

    Args:
        trial: the running trial.
        path: the checkpoint file.
        storage_url: the study database (decides where the store is).
        directory: an explicit store folder.

    Returns:
        The artifact id, also stored as the trial's ``checkpoint_artifact`` user attr.
    """
    from optuna.artifacts import upload_artifact

    artifact_id = upload_artifact(artifact_store=artifact_store(storage_url, directory),
                                  file_path=str(path), study_or_trial=trial,
                                  mimetype="application/octet-stream")
    trial.set_user_attr(CHECKPOINT_ARTIFACT_ATTR, artifact_id)
    return artifact_id


def download_checkpoint(artifact_id: str, dest: str | os.PathLike[str],
                        storage_url: str | None = None,
                        directory: str | os.PathLike[str] | None = None) -> Path | None:
    """Fetch an uploaded checkpoint into ``dest``; None if the store does not have it."""
    from optuna.artifacts import download_artifact
    from optuna.artifacts.exceptions import ArtifactNotFound

    folder = artifact_dir(storage_url, directory)
    if not folder.is_dir():
        return None
    try:
        download_artifact(artifact_store=artifact_store(storage_url, directory),
                          file_path=str(dest), artifact_id=artifact_id)
    except ArtifactNotFound:
        return None
    return Path(dest)
