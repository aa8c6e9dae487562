"""What trains and how fast: the freeze policy, the optimizer's groups, the LR schedule."""

from __future__ import annotations

import math

import torch
from torch import nn


def freeze(
    model: nn.Module,
    head: list[nn.Parameter],
    blocks: list[list[nn.Parameter]],
    policy: str,
    k: int,
) -> list[nn.Module]:
    """Turn off gradients by the freeze policy; the new head always trains.

    Args:
        model: the whole model.
        head: the new head's parameters.
        blocks: the backbone's blocks from the input side.
        policy: ``none``; ``head_only`` (only the head trains); ``first_k`` (the first ``k``
            blocks are frozen; ``k`` = 0 freezes nothing, ``k`` >= len(blocks) all of them).
        k: blocks frozen by ``first_k``.

    Returns:
        The largest submodules left with no trainable parameter. ``train_mode`` keeps them in
        eval mode, so batch-norm statistics and dropout of frozen layers stay fixed too.
    """
    heads = {id(p) for p in head}
    if policy == "head_only":
        frozen = [p for p in model.parameters() if id(p) not in heads]
    elif policy == "first_k":
        frozen = [p for block in blocks[:k] for p in block if id(p) not in heads]
    elif policy == "none":
        frozen = []
    else:
        raise ValueError(f"freeze: expected none, head_only or first_k, got {policy!r}")
    for p in frozen:
        p.requires_grad_(False)
    return _frozen_modules(model)


def _frozen_modules(module: nn.Module) -> list[nn.Module]:
    found = []
    for child in module.children():
        params = list(child.parameters())
        if params and not any(p.requires_grad for p in params):
            found.append(child)
        elif params:
            found += _frozen_modules(child)
    return found


def train_mode(model: nn.Module, frozen: list[nn.Module]) -> None:
    """``model.train()``, except for the frozen submodules, which stay in eval mode."""
    model.train()
    for m in frozen:
        m.eval()


def make_optimizer(model: nn.Module, head: list[nn.Parameter], params: dict):
    """The optimizer over the trainable parameters, in up to four groups.

    The new head learns at ``lr``, the pretrained backbone at ``lr * backbone_lr_mult``.
    Weight decay applies to weights (matrices, kernels) only: decaying biases and norm scales
    only hurts. ``momentum`` is used by sgd and rmsprop.
    """
    lr, mult, decay = params["lr"], params["backbone_lr_mult"], params["weight_decay"]
    heads = {id(p) for p in head}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((id(p) in heads, p.ndim >= 2), []).append(p)
    param_groups = [
        {
            "params": ps,
            "lr": lr if is_head else lr * mult,
            "weight_decay": decay if is_weight else 0.0,
        }
        for (is_head, is_weight), ps in sorted(groups.items())
    ]
    name = params["optimizer"]
    if name == "adam":
        return _fused(torch.optim.Adam, param_groups, lr=lr)
    if name == "adamw":
        return _fused(torch.optim.AdamW, param_groups, lr=lr)
    if name == "sgd":
        return _fused(torch.optim.SGD, param_groups, lr=lr, momentum=params["momentum"])
    if name == "rmsprop":  # no fused kernel in torch: foreach (the same numbers as a loop)
        return torch.optim.RMSprop(param_groups, lr=lr, momentum=params["momentum"], foreach=True)
    raise ValueError(f"optimizer: expected adam, adamw, sgd or rmsprop, got {name!r}")


def _fused(cls, param_groups: list[dict], **kwargs):
    """The fused implementation where the device has one (CUDA, and the CPU since torch 2.4):
    one kernel for all parameters (AdamW's step on MiniLM: 0.20 s -> 0.02 s on a CPU core),
    which skips a step on the device where fp16's loss scaler found an inf, with no sync;
    else foreach (a kernel per operation over all parameters)."""
    try:
        return cls(param_groups, fused=True, **kwargs)
    except (RuntimeError, ValueError):
        return cls(param_groups, foreach=True, **kwargs)


def lr_factor(step: int, total: int, warmup_fraction: float, schedule: str) -> float:
    """The LR multiplier at optimizer step ``step`` (0-based) of ``total``.

    Linear warmup over the first ``warmup_fraction`` of the steps, then ``constant``, or
    ``cosine`` / ``linear`` decay to zero at the last step.
    """
    warmup = int(round(warmup_fraction * total))
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1.0 - progress
    raise ValueError(f"schedule: expected constant, cosine or linear, got {schedule!r}")


def make_scheduler(optimizer, total_steps: int, params: dict):
    """A per-step ``LambdaLR`` following ``lr_factor``."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(step, total_steps, params["warmup_fraction"], params["schedule"]),
    )
