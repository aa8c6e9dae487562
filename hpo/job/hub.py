"""Offline by default, decided where hpo loads from Hugging Face, not for the whole process.

The machines hpo runs on reach no model or dataset hub: a model or dataset named by its hub
name must be in the local Hugging Face cache, unless the user sets ``HF_HUB_OFFLINE=0`` where
there is internet. hpo sets nothing in the process's environment for that: model loads pass
``local_files_only``, and dataset loads run inside ``offline_loads``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
"""What ``offline_loads`` sets for its block; ``HF_HUB_OFFLINE`` (0, false, no) is also the
user's way to let hpo download."""


def offline() -> bool:
    """Whether hpo loads from local files only: yes unless ``$HF_HUB_OFFLINE`` says no."""
    return os.environ.get("HF_HUB_OFFLINE", "1").lower() not in ("0", "false", "no", "")


@contextlib.contextmanager
def offline_loads() -> Iterator[None]:
    """Hugging Face loads in the block read local files only (where ``offline()``); after it
    the environment and the libraries' switches are as they were.

    ``huggingface_hub`` and ``datasets`` read their offline switch from the environment once,
    at import: import them before the block (``huggingface_hub`` is imported here); their
    switches are set for the block, with the variables, and restored.
    """
    if not offline():
        yield
        return
    import huggingface_hub.constants

    switches = [
        (module, name, getattr(module, name))
        for module in (huggingface_hub.constants, sys.modules.get("datasets.config"))
        if module is not None
        for name in OFFLINE_VARS
        if hasattr(module, name)
    ]
    variables = {name: os.environ.get(name) for name in OFFLINE_VARS}
    os.environ.update(dict.fromkeys(OFFLINE_VARS, "1"))
    for module, name, _ in switches:
        setattr(module, name, True)
    try:
        yield
    finally:
        for module, name, value in switches:
            setattr(module, name, value)
        for name, value in variables.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
