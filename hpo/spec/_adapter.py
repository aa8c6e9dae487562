"""``task.adapter``: what a text task trains instead of the whole pretrained model.

A LoRA adapter (Hu et al. 2021, built with ``peft``) adds a low-rank update ``B @ A`` beside
chosen linear layers of the frozen pretrained model; the adapter matrices and the new
classification head train, nothing else. Its rank, scale and dropout are hyperparameters
(``lora_r``, ``lora_alpha``, ``lora_dropout``), and so is the choice of layers, as a preset
name (``lora_target``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ADAPTER_KINDS = ("lora",)

LORA_PRESETS: dict[str, tuple[str, ...] | str] = {
    "attention": ("query", "value"),
    "attention_all": ("query", "key", "value", "attention.output.dense"),
    "all_linear": "all-linear",
}
"""Named sets of LoRA target modules, as peft's ``target_modules`` takes them. The names are
BERT's (MiniLM, BERT, RoBERTa, ...): ``attention`` is the attention's query and value
projections (the LoRA paper's choice); ``attention_all`` adds the key and the attention's
output projection; ``all_linear`` is peft's ``all-linear``, every linear layer of the encoder
but the classifier, in any architecture. Other models name their own modules in
``task.adapter.target_modules`` (DistilBERT: ``[q_lin, v_lin]``)."""

ADAPTER_PARAMS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target")
"""The hyperparameters that only a task with an adapter has."""


@dataclass(frozen=True)
class AdapterSpec:
    """The ``task.adapter`` section: ``{kind: lora, target_modules: attention}``."""

    kind: str = "lora"
    """``lora``: peft's LoRA; the head (``classifier``) trains in full beside it."""
    target_modules: str | tuple[str, ...] = "attention"
    """Where the LoRA matrices go: a preset of ``LORA_PRESETS``, or module names as peft
    matches them (a name matches a module whose dotted path ends with it). The ``lora_target``
    hyperparameter, where searched or fixed, takes its place."""

    def to_dict(self) -> dict[str, Any]:
        targets = self.target_modules
        return {
            "kind": self.kind,
            "target_modules": targets if isinstance(targets, str) else list(targets),
        }


def lora_targets(adapter: AdapterSpec, preset: str | None = None) -> str | list[str]:
    """The ``target_modules`` to give peft: ``preset`` (a ``lora_target`` param) where given,
    else the adapter's own, with preset names resolved."""
    chosen = preset if preset is not None else adapter.target_modules
    if isinstance(chosen, str):
        chosen = LORA_PRESETS.get(chosen, chosen)
    return chosen if isinstance(chosen, str) else list(chosen)
