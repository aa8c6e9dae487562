"""The small specs the tests share, built as a user writes them (YAML) and parsed for real."""

from __future__ import annotations

import time

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
