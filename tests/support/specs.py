"""The small specs the tests share, built as a user writes them (YAML) and parsed for real."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import yaml

from hpo.spec import Spec, parse_spec

SMALL = """
task: {kind: image_classification, model: resnet18, dataset: {name: digits}}
search_space:
  lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
  epochs: {type: int, low: 1, high: 6}
  optimizer: {type: categorical, choices: [adam, sgd]}
budget: {n_trials: 5}
"""
"""A small digits study's spec: three hyperparameters, five trials."""


def make_spec(name: str, extra: str = "", **replace: str) -> Spec:
    """``SMALL`` as study ``name``, with ``extra`` YAML appended and each ``old=new`` text
    replaced (e.g. ``**{"n_trials: 5": "n_trials: 9"}``)."""
    text = SMALL + extra
    for old, new in replace.items():
        text = text.replace(old, new)
    return parse_spec(yaml.safe_load(text), default_name=name)


def unique(prefix: str) -> str:
    """A study name no other test uses (the server databases are shared by the session)."""
    return f"{prefix}-{time.time_ns()}"


TINY = {
    "task": {"kind": "image_classification", "model": "resnet18",
             "dataset": {"name": "digits"}, "image_size": 16, "max_samples": 400},
    "search_space": {
        "lr": {"type": "float", "low": 1.0e-8, "high": 1.0e-1, "log": True},
        "batch_size": {"type": "categorical", "choices": [32, 64]},
        "epochs": {"type": "int", "low": 2, "high": 3},
        "optimizer": {"type": "categorical", "choices": ["adam", "adamw", "sgd", "rmsprop"]},
        "momentum": {"type": "float", "low": 0.5, "high": 0.99, "when": {"optimizer": "sgd"}},
        "dropout": {"type": "float", "low": 0.0, "high": 0.5},
        "weight_decay": {"type": "float", "low": 1.0e-6, "high": 1.0e-2, "log": True},
    },
    "sampler": {"name": "random", "seed": 1},
    "pruner": {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 2},
    "budget": {"n_trials": 4},
}
"""The tiny real fine-tuning study the CLI, export and retrain tests run: ResNet-18 on 800
16x16 digits, four random trials of 2-3 epochs, the median pruner."""


def write_tiny_spec(path: Path, name: str, **sections: Any) -> Path:
    """Write ``TINY`` as study ``name`` to ``path``, as a user's YAML file.

    Args:
        path: the spec file to write.
        name: the study's name.
        sections: top-level sections that differ from ``TINY``: ``task`` and ``study`` keys
            are merged into its task and study, any other section replaces ``TINY``'s.

    Returns:
        ``path``.
    """
    spec = copy.deepcopy(TINY)
    spec["study"] = {"name": name}
    for key, value in sections.items():
        if key in ("task", "study"):
            spec[key].update(value)
        else:
            spec[key] = value
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def refused_spec(text: str, tmp_path: Path, capsys, *words: str) -> str:
    """``hpo create`` of the spec ``text`` (indented YAML is dedented): exit 2, one line on
    stderr naming the file and each of ``words``, nothing written to storage. Returns it."""
    import textwrap

    from hpo.cli import main

    spec_file = tmp_path / "bad.yaml"
    spec_file.write_text(textwrap.dedent(text))
    db = tmp_path / "hpo.db"
    code = main(["create", str(spec_file), "--storage", f"sqlite:///{db}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"hpo: error: {spec_file}: "), err
    for word in words:
        assert word in err, (word, err)
    assert not db.exists()  # nothing written to storage
    return err
