"""State-dict files: pretrained weights to start from, and a trial's own checkpoints.

A trial checkpoint holds everything to resume at the next epoch as if never stopped: model,
optimizer, LR scheduler, loss scaler, the epoch, the RNG states and the loop's progress (best
loss so far, first loss, micro-batch size, ...). The checkpoint written after a trial's last
epoch is *final*: the model, the epoch and the progress alone, a third of the size with Adam
(the optimizer's two moments are twice the weights). A resume from it trains nothing: it
finds the loop done and returns the trial's result (a trial whose worker died between its
last epoch and the tell); ``hpo export`` takes the weights from it.

Of a model with an adapter (``task.adapter``), every checkpoint holds the adapter and the head
alone (``model_state``), and ``"adapter"``, its peft config (JSON): the frozen rest is the
pretrained model's.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hpo.job.adapter import adapter_config, adapter_state, is_adapted, load_adapter_state
from hpo.job.errors import JobSetupError

log = logging.getLogger(__name__)

_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile


def load_weights_file(model: nn.Module, path: str | os.PathLike[str]) -> list[str]:
    """Load a local checkpoint's tensors into ``model`` where names and shapes match.

    Tensors whose shape does not fit (an old classifier with another number of classes) and
    names the model lacks are skipped, so call it before replacing the head.

    Args:
        model: the freshly built model.
        path: a state_dict saved with ``torch.save`` (or a dict holding one under
            ``state_dict`` / ``model``), or a ``.safetensors`` file.

    Returns:
        The names of the tensors loaded.

    Raises:
        JobSetupError: the file does not read, or not one of its tensors fits.
    """
    path = Path(path).expanduser()
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same bad input
        raise JobSetupError(f"weights {path}: not a readable checkpoint ({e})") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise JobSetupError(f"weights {path}: expected a state_dict, got {type(obj).__name__}")
    state = {_strip(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    own = model.state_dict()
    fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not fits:
        raise JobSetupError(
            f"weights {path}: none of its {len(state)} tensors fits "
            f"{type(model).__name__} (names or shapes differ)"
        )
    model.load_state_dict(fits, strict=False)
    skipped = sorted(set(state) - set(fits))
    missing = sorted(set(own) - set(fits))
    log.info(
        "weights %s: loaded %d tensors, skipped %d %s, %d left as initialized %s",
        path,
        len(fits),
        len(skipped),
        skipped[:4],
        len(missing),
        missing[:4],
    )
    return sorted(fits)


def _strip(name: str) -> str:
    for prefix in _PREFIXES:
        while name.startswith(prefix):
            name = name[len(prefix) :]
    return name


def model_state(model: nn.Module) -> dict[str, Any]:
    """What a checkpoint keeps of ``model``: its ``state_dict``, or of a model with an adapter
    the adapter's weights and the head (``hpo.job.adapter.adapter_state``)."""
    return adapter_state(model) if is_adapted(model) else model.state_dict()


def load_model_state(model: nn.Module, state: Mapping[str, Any]) -> None:
    """Load what ``model_state`` kept, strictly: every tensor that it saves."""
    if is_adapted(model):
        load_adapter_state(model, state)
    else:
        model.load_state_dict(state)


def save_checkpoint(
    path: Path,
    *,
    model: nn.Module,
    optimizer,
    scheduler,
    scaler,
    epoch: int,
    progress: dict,
    final: bool = False,
) -> None:
    """Write the trial's state after ``epoch`` (1-based) atomically to ``path``.

    ``final``: the trial trained its last epoch (or stopped early): write the model, the
    epoch and the progress alone (``{"epoch", "model", "progress", "final": True}``), what a
    finished trial needs; the optimizer, scheduler, scaler and RNG states are left out.
    """
    if final:
        _save_atomically(
            {
                "epoch": epoch,
                "model": model_state(model),
                "progress": dict(progress),
                "final": True,
                **_adapter(model),
            },
            path,
        )
        return
    state = {
        "epoch": epoch,
        "model": model_state(model),
        **_adapter(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
        "progress": dict(progress),
    }
    _save_atomically(state, path)


def keep_hyperparameters(optimizer, scheduler, mine: list[dict[str, Any]]) -> None:
    """The trial's own hyperparameters over those a checkpoint loaded: its learning rates,
    weight decay and momentum (``mine``: the optimizer's groups as the trial's params built
    them), at the point of the schedule the checkpoint reached. A resume with the params it
    paused with changes nothing; one with other params (``pbt``'s explore) trains on with
    them, the optimizer's moments kept."""
    groups = optimizer.param_groups
    if len(groups) != len(mine):
        raise JobSetupError(
            f"the checkpoint's optimizer has {len(groups)} parameter groups, the trial's "
            f"{len(mine)}: it was trained with another freeze policy or model"
        )
    for group, own in zip(groups, mine):
        group.update({k: v for k, v in own.items() if k != "lr"})
    scheduler.base_lrs = [group["initial_lr"] for group in groups]
    for group, base, factor in zip(groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(scheduler.last_epoch)


def save_model(path: Path, *, model: nn.Module, epoch: int) -> None:
    """Write the model alone, ``{"model": state_dict, "epoch": epoch}`` (``model_state``),
    atomically to ``path``: what a final fit keeps (no optimizer state to resume with)."""
    _save_atomically({"epoch": epoch, "model": model_state(model), **_adapter(model)}, path)


def _adapter(model: nn.Module) -> dict[str, str]:
    # Only with an adapter: other checkpoints keep exactly the keys they always had.
    return {"adapter": adapter_config(model)} if is_adapted(model) else {}


def _save_atomically(state: dict, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a reader never sees half a file, even if we die mid-write


def restore_checkpoint(
    path: Path, *, model: nn.Module, optimizer, scheduler, scaler, epochs: int | None = None
) -> tuple[int, dict]:
    """Load a checkpoint written by ``save_checkpoint`` into the given objects.

    A final checkpoint (``save_checkpoint(final=True)``) loads the model alone: the loop it
    restores is done, nothing trains after it.

    Args:
        epochs: the trial's planned epochs, to refuse a final checkpoint that would leave
            epochs to train without their optimizer state (None: not checked).

    Returns:
        ``(epoch, progress)``: the last finished epoch and the loop's saved progress.

    Raises:
        JobSetupError: a final checkpoint, and the trial has epochs left to train.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("final"):
        epoch, progress = int(state["epoch"]), dict(state["progress"])
        if epochs is not None and epoch < epochs and not progress.get("stopped_early"):
            raise JobSetupError(
                f"checkpoint {path} is final (weights only, written after epoch {epoch}), "
                f"but the trial plans {epochs} epochs: it cannot resume training"
            )
        load_model_state(model, state["model"])
        return epoch, progress
    load_model_state(model, state["model"])
    mine = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    keep_hyperparameters(optimizer, scheduler, mine)
    scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return int(state["epoch"]), dict(state["progress"])
