"""What the installed torchvision offers: its classification models, each model's weights, and
its datasets, the names a vision spec is checked against.

Importing torchvision (and torch behind it) takes 2-4 s of CPU, most of what ``hpo create``
costs; the names only change with torchvision's version. So the catalogue is read from a small
JSON file under the user's cache directory (``$XDG_CACHE_HOME/hpo``, else ``~/.cache/hpo``),
one per torchvision version, and written the first time a version is met. A missing, stale or
unreadable file is rebuilt from torchvision itself; a cache directory that cannot be written
only costs the import again next time.
"""

from __future__ import annotations

import json
import os
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

FORMAT = 1
"""The file's layout; a file of another layout is rebuilt."""


def cache_dir() -> Path:
    """Where hpo keeps what it can compute again: ``$XDG_CACHE_HOME/hpo``, else
    ``~/.cache/hpo``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hpo"


def torchvision_catalog() -> dict[str, Any]:
    """``{"models": {model: [weights enum names]}, "datasets": [names]}`` of the installed
    torchvision, from the cache file of its version where there is one."""
    version = metadata.version("torchvision")
    path = cache_dir() / f"torchvision-{version}.json"
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
        if cached.get("format") == FORMAT and cached.get("torchvision") == version:
            return cached
    except (OSError, ValueError, AttributeError):
        pass
    catalog = _from_torchvision(version)
    _write(path, catalog)
    return catalog


def _from_torchvision(version: str) -> dict[str, Any]:
    import torchvision.datasets
    import torchvision.models

    names = torchvision.models.list_models(module=torchvision.models)
    return {
        "format": FORMAT,
        "torchvision": version,
        "models": {
            n: [w.name for w in torchvision.models.get_model_weights(n)] for n in sorted(names)
        },
        "datasets": sorted(torchvision.datasets.__all__),
    }


def _write(path: Path, catalog: dict[str, Any]) -> None:
    """Write ``catalog`` whole or not at all (a reader never sees half a file)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(catalog, f)
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)
