"""LoRA adapters (``task.adapter``) on a transformers classifier, built with ``peft``.

The pretrained model is frozen; LoRA matrices go beside its chosen linear layers, and the new
classification head trains in full (peft's ``modules_to_save``, which task type ``SEQ_CLS``
sets up for ``classifier`` / ``score``). What trains is then a few hundred thousand numbers, and
that is all a checkpoint holds (``adapter_state``): the frozen rest is the pretrained model's
own files, rebuilt the same way on resume, export and retrain.

``peft`` is imported inside the functions that use it: a trial without an adapter never
loads it.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeGuard

from torch import nn

from hpo.job.errors import JobSetupError

if TYPE_CHECKING:
    from peft import PeftModel


def add_lora(model: nn.Module, adapter, params: dict) -> PeftModel:
    """``model`` wrapped as a peft ``PeftModelForSequenceClassification`` with a LoRA adapter.

    Args:
        model: a transformers sequence classifier (its head's dropout already set).
        adapter: the task's ``hpo.spec.AdapterSpec``.
        params: the trial's hyperparameters: ``lora_r``, ``lora_alpha``, ``lora_dropout`` and
            ``lora_target`` (a preset name that replaces ``adapter.target_modules``).

    Returns:
        The wrapped model: only the LoRA matrices and the head require gradients.

    Raises:
        JobSetupError: a target module name matches no layer of the model.
    """
    from peft import LoraConfig, TaskType, get_peft_model

    from hpo.spec import lora_targets

    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=int(params["lora_r"]),
        lora_alpha=params["lora_alpha"],
        lora_dropout=params["lora_dropout"],
        target_modules=lora_targets(adapter, params.get("lora_target")),
    )
    try:
        with warnings.catch_warnings():
            # peft asks transformers 5 for is_gradient_checkpointing, which warns that it is
            # deprecated: nothing a user can act on.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing")
            return get_peft_model(model, config)
    except ValueError as e:  # peft: no module matched the targets
        linear = sorted(
            {n.rpartition(".")[2] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        )
        raise JobSetupError(
            f"task.adapter: target modules {config.target_modules!r}: no LoRA on this model "
            f"(its linear layers end in {', '.join(linear)}); peft: "
            f"{str(e).splitlines()[0][:160]}"
        ) from None


def is_adapted(model: nn.Module) -> TypeGuard[PeftModel]:
    """Whether ``model`` is a peft model (it has an adapter); no import of peft."""
    return getattr(model, "peft_config", None) is not None


def adapter_state(model: nn.Module) -> dict[str, Any]:
    """The adapter's weights and the head, as peft saves them (``adapter_model``): what a
    checkpoint of an adapter trial holds instead of the whole model."""
    from peft import get_peft_model_state_dict

    return dict(get_peft_model_state_dict(model))


def adapter_config(model: PeftModel) -> str:
    """The model's adapter config (peft's ``LoraConfig``) as JSON, for a checkpoint to name
    the adapter its weights belong to (``rebuild_adapter`` reads it back)."""
    config = model.peft_config["default"].to_dict()
    return json.dumps(config, default=lambda v: sorted(v) if isinstance(v, set) else str(v))


def rebuild_adapter(model: nn.Module, config: str, state: Mapping[str, Any]) -> PeftModel:
    """``model`` (the pretrained classifier, built as the trial built it) with the adapter of
    ``adapter_config``'s JSON and a checkpoint's ``adapter_state`` loaded into it."""
    from peft import PeftConfig, get_peft_model

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing")
        adapted = get_peft_model(model, PeftConfig.from_peft_type(**json.loads(config)))
    load_adapter_state(adapted, state)
    return adapted


def load_adapter_state(model: nn.Module, state: Mapping[str, Any]) -> None:
    """Load ``adapter_state``'s weights into a model built the same way, every one of them.

    Raises:
        JobSetupError: the state does not fit the model's adapter (names or shapes differ:
            another rank, target or model).
    """
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    own = get_peft_model_state_dict(model)
    wrong = sorted(k for k in own if k not in state or state[k].shape != own[k].shape)
    extra = sorted(set(state) - set(own))
    if wrong or extra:
        raise JobSetupError(
            f"the saved adapter does not fit this model's: {len(wrong)} of its "
            f"tensors missing or of another shape ({wrong[:2]}), {len(extra)} "
            f"unknown ({extra[:2]})"
        )
    set_peft_model_state_dict(model, dict(state))


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameters of a model, with or without an adapter (a peft
    model's count leaves out the head's frozen original, as peft's own does)."""
    if is_adapted(model):
        return model.get_nb_trainable_parameters()
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
