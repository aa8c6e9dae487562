"""The ``warm_start`` section: a new study's first trials, from the model family's known-good
defaults and from an earlier study's best. ``hpo.search.warm_start`` enqueues them."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hpo.spec._checks import _BOOL, _STR, _positive_int
from hpo.spec._keypath import _At, _show
from hpo.spec._task_spec import TaskSpec

DEFAULT_TOP_K = 5


@dataclass(frozen=True)
class Family:
    """Models that fine-tune well from the same first configuration."""

    name: str
    params: Mapping[str, Any]
    """Hyperparameters (keys of ``HYPERPARAMETERS``); clipped to a spec's search space."""
    why: str
    """Where the numbers come from."""


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "transformer-encoder",
            {
                "lr": 3e-5,
                "batch_size": 32,
                "epochs": 3,
                "optimizer": "adamw",
                "weight_decay": 0.01,
                "warmup_fraction": 0.1,
                "schedule": "linear",
                "dropout": 0.1,
            },
            "BERT (Devlin et al. 2019) fine-tunes with AdamW at lr 2e-5..5e-5, batch 16/32, "
            "2-4 epochs, 10% warmup then linear decay, weight decay 0.01",
        ),
        Family(
            "vision-transformer",
            {
                "lr": 1e-4,
                "batch_size": 32,
                "optimizer": "adamw",
                "weight_decay": 0.05,
                "warmup_fraction": 0.1,
                "schedule": "cosine",
            },
            "ViT / Swin fine-tuning recipes: AdamW, lr 1e-4, weight decay 0.05, warmup, cosine",
        ),
        Family(
            "convnet",
            {
                "lr": 1e-3,
                "batch_size": 32,
                "optimizer": "adam",
                "momentum": 0.9,
                "weight_decay": 1e-4,
                "schedule": "cosine",
            },
            "torchvision CNNs (ResNet, EfficientNet, MobileNet, ...) with a new head: Adam at "
            "lr 1e-3 (SGD: 0.01, momentum 0.9), weight decay 1e-4, cosine decay",
        ),
    )
}
"""Known-good first configurations by model family (``warm_start.defaults``)."""

_VISION_TRANSFORMERS = ("vit_", "swin_", "swin3d_", "maxvit_")


def family_of(task: TaskSpec) -> Family | None:
    """The model family of the task's model; None for a custom job or a script (its model is
    unknown).

    Text classifiers are transformer encoders (BERT-like); torchvision's ViT / Swin / MaxViT
    are vision transformers; every other torchvision classifier is a convnet.
    """
    if task.kind == "text_classification":
        return FAMILIES["transformer-encoder"]
    if task.kind == "image_classification":
        vit = task.model.lower().startswith(_VISION_TRANSFORMERS)
        return FAMILIES["vision-transformer" if vit else "convnet"]
    return None


@dataclass(frozen=True)
class WarmStartSpec:
    """The ``warm_start`` section: where a new study's first trials come from."""

    defaults: bool = False
    """Enqueue the model family's known-good configuration (``FAMILIES``) as trial 0."""
    source: str | None = None
    """``from``: an earlier study whose best complete trials are enqueued next."""
    top_k: int = DEFAULT_TOP_K
    """How many of ``from``'s best (distinct) complete trials."""
    storage: str | None = None
    """The storage URL of ``from``'s study; default: the new study's own (no password: the spec is
    stored in the study)."""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.defaults:
            d["defaults"] = True
        if self.source is not None:
            d.update({"from": self.source, "top_k": self.top_k})
        if self.storage is not None:
            d["storage"] = self.storage
        return d


def _parse_warm_start(
    raw: Any, at: _At, study_name: str, task: TaskSpec, sampler: str
) -> WarmStartSpec:
    d = at.mapping(raw, ("defaults", "from", "top_k", "storage"))
    defaults = (at / "defaults").typed(d.get("defaults", False), _BOOL)
    source = d.get("from")
    if source is not None:
        source = (at / "from").typed(source, _STR)
        if source == study_name:
            raise (at / "from").error(
                f"{_show(source)} is this study itself; name an earlier study"
            )
    elif "top_k" in d or "storage" in d:
        key = "top_k" if "top_k" in d else "storage"
        raise (at / key).error("only with from: (the study to warm-start from)")
    if not defaults and source is None:
        raise at.error("give from: STUDY, defaults: true, or both")
    top_k = (at / "top_k").checked(d.get("top_k", DEFAULT_TOP_K), _positive_int)
    storage = d.get("storage")
    if storage is not None:
        storage = (at / "storage").typed(storage, _STR)
        if "://" not in storage:
            raise (at / "storage").error(f"expected a storage URL, got {_show(storage)}")
        if re.search(r"://[^/@]*:[^/@]*@", storage):
            raise (at / "storage").error(
                "a password here would be stored in the study; use a storage without one "
                "(or copy the study into this storage)"
            )
    if sampler == "grid":
        raise at.error(
            "the grid sampler runs every point of its grid; first guesses do not "
            "apply (use another sampler)"
        )
    if defaults and family_of(task) is None:
        raise (at / "defaults").error(
            f"no known defaults for your own code (task.kind: {task.kind}); its model is "
            "unknown to hpo (warm_start.from an earlier study works)"
        )
    return WarmStartSpec(defaults=defaults, source=source, top_k=top_k, storage=storage)
