"""Weights: a trial's model in the form its library loads directly (what ``hpo export``
writes): a plain torchvision ``state_dict``, a transformers ``save_pretrained`` folder, or a
custom job's checkpoint as it saved it. No optimizer state: what using the model needs, not
resuming its training."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpo.provenance import file_sha256
from hpo.records import CHECKPOINT_ARTIFACT_ATTR, CHECKPOINT_ATTR
from hpo.store.artifacts import download_checkpoint, has_checkpoint

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from hpo.spec import TaskSpec
    from hpo.store.url import StorageUrl

MODEL_FILE = "model.pt"
"""A torchvision model's exported ``state_dict``."""
MODEL_DIR = "model"
"""A transformers model's exported ``save_pretrained`` folder."""


def export_model(
    trial: FrozenTrial,
    task: TaskSpec,
    out: str | os.PathLike[str],
    *,
    storage_url: str | StorageUrl | None = None,
    artifacts: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Write a trial's weights into ``out`` in the form its library loads directly.

    The weights are the trial's final checkpoint's (its local file, else its copy in the
    artifact store): the model after the trial's last epoch. Written as

    - torchvision (``image_classification``): ``model.pt``, a plain ``state_dict`` of
      ``torchvision.models.get_model(NAME, num_classes=N)``: hpo's head
      ``Sequential(Dropout, layer)`` is unwrapped (a dropout has no weights), so
      ``model.load_state_dict(torch.load("model.pt"))`` loads it;
    - transformers (``text_classification``): ``model/``, what ``save_pretrained`` writes
      (config with the dataset's label names, safetensors weights) and the tokenizer, for
      ``AutoModelForSequenceClassification.from_pretrained`` / ``AutoTokenizer``; with
      ``task.adapter``, ``model/`` is the adapter as peft's ``save_pretrained`` writes it,
      for ``PeftModel.from_pretrained(base, "model")``, and the tokenizer;
    - otherwise (a custom job's checkpoint, a file without a model) the checkpoint file as it
      is, ``best-checkpoint.EXT`` (a script task's checkpoint directory: ``best-checkpoint/``);
      weights whose architecture cannot be rebuilt here go out
      as hpo's own ``state_dict`` (``model.pt``, the head still wrapped), with the reason.

    Returns:
        The record's ``model``: ``path`` (None when there are no weights, and ``missing``
        says why), ``format``, ``load`` (Python that loads it), ``from``, ``epoch``,
        ``bytes``, ``sha256`` (a folder: ``files``, each file's) and ``note`` where needed.
    """
    out = Path(out)
    source = trial.user_attrs.get(CHECKPOINT_ATTR)
    artifact_id = trial.user_attrs.get(CHECKPOINT_ARTIFACT_ATTR)
    if source and Path(source).is_dir():  # a script's checkpoint directory, as it saved it
        return _copy_folder(Path(source), out / "best-checkpoint", task)
    with tempfile.TemporaryDirectory(dir=out, prefix=".export-") as scratch:
        if source and Path(source).is_file():
            path, origin = Path(source), f"checkpoint {source}"
        elif artifact_id and has_checkpoint(artifact_id, storage_url, artifacts):
            path = Path(scratch) / Path(source or "checkpoint.pt").name
            if not download_checkpoint(artifact_id, path, storage_url, artifacts):
                return {"path": None, "missing": f"artifact {artifact_id} could not be read"}
            origin = f"artifact {artifact_id}"
        else:
            missing = [f"no file at {source}" if source else "the trial recorded no checkpoint"]
            if artifact_id:
                missing.append(f"artifact {artifact_id} is no longer in the store")
            return {"path": None, "missing": "; ".join(missing)}
        model = _write_weights(path, task, out)
    model["from"] = origin
    best_epoch = trial.user_attrs.get("best_epoch")
    if model.get("epoch") and best_epoch and best_epoch != model["epoch"]:
        model["note"] = ((model.get("note", "") + "; ") if model.get("note") else "") + (
            f"the weights after epoch {model['epoch']}, the trial's last; its best val loss "
            f"was at epoch {best_epoch}"
        )
    return model


def _folder_record(folder: Path) -> dict[str, Any]:
    """A written folder's ``bytes`` and ``files`` (each file's sha256) for the record."""
    files = sorted(f for f in folder.rglob("*") if f.is_file())
    return {
        "bytes": sum(f.stat().st_size for f in files),
        "files": {str(f.relative_to(folder)): file_sha256(f) for f in files},
    }


def _copy_folder(source: Path, target: Path, task: TaskSpec) -> dict[str, Any]:
    """A script task's checkpoint directory, copied as it is (its own format)."""
    shutil.copytree(source, target, dirs_exist_ok=True)
    return {
        "path": f"{target.name}/",
        "format": "checkpoint",
        "load": f"the {task.kind} task's own checkpoint directory, as saved",
        "from": f"checkpoint {source}",
        **_folder_record(target),
    }


def _write_weights(path: Path, task: TaskSpec, out: Path) -> dict[str, Any]:
    state, epoch, adapter = _checkpoint_model(path)
    if state is None or task.kind not in ("image_classification", "text_classification"):
        target = out / f"best-checkpoint{path.suffix or '.pt'}"
        shutil.copyfile(path, target)
        what = (
            "the custom job's own checkpoint"
            if task.kind == "custom"
            else "not a checkpoint with model weights"
        )
        return {
            "path": target.name,
            "format": "checkpoint",
            "load": f"{what}, as saved",
            "bytes": target.stat().st_size,
            "sha256": file_sha256(target),
        }
    import torch

    try:
        if task.kind == "text_classification" and adapter:
            return _write_adapter(task, state, adapter, out / MODEL_DIR, epoch)
        if task.kind == "text_classification":
            folder = out / MODEL_DIR
            labels = transformers_save_pretrained(task, state, folder)
            where = str(folder)
            return {
                "path": f"{MODEL_DIR}/",
                "format": "transformers save_pretrained",
                "classes": labels,
                "epoch": epoch,
                "load": (
                    "from transformers import AutoModelForSequenceClassification, "
                    f"AutoTokenizer; model = AutoModelForSequenceClassification."
                    f"from_pretrained({where!r}); tokenizer = AutoTokenizer."
                    f"from_pretrained({where!r})"
                ),
                **_folder_record(folder),
            }
        plain, classes = torchvision_state_dict(task.model, state)
        target = out / MODEL_FILE
        torch.save(plain, target)
        arg = f", num_classes={classes}" if classes else ""
        return {
            "path": target.name,
            "format": "torchvision state_dict",
            "classes": classes,
            "epoch": epoch,
            "load": (
                f"import torch, torchvision; model = torchvision.models.get_model("
                f"{task.model!r}{arg}); model.load_state_dict(torch.load("
                f"{str(target)!r})); model.eval()"
            ),
            "bytes": target.stat().st_size,
            "sha256": file_sha256(target),
        }
    except Exception as e:  # noqa: BLE001 - the weights still go out, as hpo's model has them
        target = out / MODEL_FILE
        torch.save(state, target)
        return {
            "path": target.name,
            "format": "hpo state_dict",
            "epoch": epoch,
            "load": (
                f"torch.load({str(target)!r}): the state_dict of hpo's {task.model} "
                "(its head Sequential(Dropout, layer))"
            ),
            "note": f"not in {task.model}'s own form: {type(e).__name__}: "
            f"{(str(e).splitlines() or [''])[0][:200]}",
            "bytes": target.stat().st_size,
            "sha256": file_sha256(target),
        }


def _checkpoint_model(path: Path) -> tuple[dict[str, Any] | None, int | None, str | None]:
    """The model ``state_dict``, the epoch and the adapter's config (JSON; None without an
    adapter) of an hpo checkpoint (final or not); ``(None, None, None)`` for any other file."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not a torch file (a custom job's own format)
        return None, None, None
    model = obj.get("model") if isinstance(obj, Mapping) else None
    if (
        not isinstance(model, Mapping)
        or not model
        or not all(isinstance(v, torch.Tensor) for v in model.values())
    ):
        return None, None, None
    epoch = obj.get("epoch")
    adapter = obj.get("adapter")
    return (
        dict(model),
        int(epoch) if isinstance(epoch, int) else None,
        adapter if isinstance(adapter, str) else None,
    )


def _write_adapter(
    task: TaskSpec, state: Mapping[str, Any], adapter: str, folder: Path, epoch: int | None
) -> dict[str, Any]:
    """An adapter trial's export: what peft's ``save_pretrained`` writes
    (``adapter_config.json``, ``adapter_model.safetensors``: the LoRA matrices and the head)
    and the tokenizer."""
    from hpo.job.adapter import rebuild_adapter
    from hpo.job.text import load_tokenizer, pretrained_classifier
    from hpo.job.text_data import load_texts
    from hpo.spec import resolve_model

    labels = list(load_texts(task.dataset, {}).label_names)
    base, _ = pretrained_classifier(task.model, labels, task.weights)
    rebuild_adapter(base, adapter, state).save_pretrained(str(folder))
    load_tokenizer(task.model, {}).save_pretrained(folder)
    where, model = str(folder), resolve_model(task.model)
    record = {
        "path": f"{MODEL_DIR}/",
        "format": "peft adapter",
        "classes": len(labels),
        "epoch": epoch,
        "base": model,
        "load": (
            "from transformers import AutoModelForSequenceClassification, AutoTokenizer; "
            "from peft import PeftModel; base = AutoModelForSequenceClassification."
            f"from_pretrained({model!r}, num_labels={len(labels)}, "
            f"id2label={dict(enumerate(labels))!r}); model = PeftModel.from_pretrained("
            f"base, {where!r}); tokenizer = AutoTokenizer.from_pretrained({where!r})"
        ),
        **_folder_record(folder),
    }
    if task.weights not in (None, "DEFAULT"):
        record["note"] = (
            f"the adapter's base is {model} with the weights of {task.weights} "
            "loaded over it (load_state_dict(strict=False)), as the trial had it"
        )
    return record


def unwrap_head(state: Mapping[str, Any], reference: Iterable[str]) -> dict[str, Any]:
    """``state`` with the names of hpo's wrapped head, ``Sequential(Dropout, layer)``
    (``fc.1.weight``), put back as the library's model names it (``fc.weight``): a name the
    reference lacks loses one ``.1`` where that gives a reference name."""
    names = set(reference)
    plain = {}
    for key, value in state.items():
        name = key
        if key not in names:
            parts = key.split(".")
            for i in range(len(parts) - 2, 0, -1):  # the head is near the end
                candidate = ".".join(parts[:i] + parts[i + 1 :])
                if parts[i] == "1" and candidate in names and candidate not in state:
                    name = candidate
                    break
        plain[name] = value
    return plain


def torchvision_state_dict(
    name: str, state: Mapping[str, Any]
) -> tuple[dict[str, Any], int | None]:
    """A trained hpo model's weights as torchvision's own ``name`` model has them.

    Returns:
        ``(state_dict, num_classes)``: the state_dict loads strictly into
        ``torchvision.models.get_model(name, num_classes=num_classes)`` (``None``: the
        model's default number of classes).

    Raises:
        RuntimeError / ValueError: the weights do not fit that model.
    """
    import torchvision.models

    reference = torchvision.models.get_model(name, weights=None).state_dict()
    plain = unwrap_head(state, reference)
    classes = {
        int(v.shape[0])
        for k, v in plain.items()
        if k in reference and v.shape != reference[k].shape and v.ndim >= 1
    }
    if len(classes) > 1:
        raise ValueError(f"tensors of {len(classes)} other sizes than {name}'s")
    num_classes = classes.pop() if classes else None
    model = torchvision.models.get_model(
        name, weights=None, **({"num_classes": num_classes} if num_classes else {})
    )
    model.load_state_dict(plain)  # strict: every name and shape
    return {k: plain[k] for k in model.state_dict()}, num_classes


def transformers_save_pretrained(task: TaskSpec, state: Mapping[str, Any], folder: Path) -> int:
    """Write a trained hpo text classifier with ``save_pretrained`` (config, weights) and its
    tokenizer into ``folder``; the config names the dataset's labels.

    Returns:
        The number of labels.
    """
    from hpo.job.text import load_tokenizer, pretrained_classifier
    from hpo.job.text_data import load_texts

    labels = list(load_texts(task.dataset, {}).label_names)
    model, _ = pretrained_classifier(task.model, labels, None)
    model.load_state_dict(unwrap_head(state, model.state_dict()))  # strict
    model.save_pretrained(folder)
    load_tokenizer(task.model, {}).save_pretrained(folder)
    return len(labels)
