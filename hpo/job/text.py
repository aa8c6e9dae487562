"""Transformers text classifiers: a pretrained encoder, a classification head, its layers.

hpo runs offline (``hpo.job.hub``): a model is read from a local directory or the local Hugging
Face cache (``local_files_only``) and nothing tries the network; the process's environment is
left as it was. Set ``HF_HUB_OFFLINE=0`` where there is internet to let transformers download.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from hpo.job.checkpoint import load_weights_file
from hpo.job.errors import JobSetupError
from hpo.job.hub import offline
from hpo.job.setup import TrainingSetup
from hpo.job.text_data import (
    PadBatch,
    final_tokenized_datasets,
    load_texts,
    tokenized_datasets,
)
from hpo.spec import resolve_model

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def build_text(task, params: dict, cache: dict, *, final: bool = False) -> TrainingSetup:
    """The model and data of one text-classification trial.

    Args:
        task: the ``TaskSpec``.
        params: the trial's hyperparameters (``dropout`` and, with ``task.adapter``, the
            ``lora_*`` ones are used here).
        cache: the worker's cache (texts, tokenizer, tokenized splits).
        final: train on train + val and test on the test split (``hpo retrain``).

    Raises:
        JobSetupError: a model, weights or data that cannot be loaded here.
    """
    source = load_texts(task.dataset, cache)
    tokenizer = load_tokenizer(task.model, cache)
    val_set = test_set = None
    test_about = ""
    if final:
        train_set, test_set, test_about = final_tokenized_datasets(task, tokenizer, source, cache)
    else:
        train_set, val_set = tokenized_datasets(task, tokenizer, source, cache)
    pretrained, new = pretrained_classifier(task.model, source.label_names, task.weights)
    model: nn.Module = pretrained  # with an adapter, peft's model around it
    set_head_dropout(model, params["dropout"])
    if task.adapter is not None:
        from hpo.job.adapter import add_lora

        # Only the adapter and the head train, all of them at lr: the "head" of the freeze
        # policies and of the optimizer's groups; no blocks to freeze.
        model = add_lora(model, task.adapter, params)
        head, blocks = [p for p in model.parameters() if p.requires_grad], []
    else:
        base = {id(p) for p in pretrained.base_model.parameters()}
        head = [p for name, p in model.named_parameters() if id(p) not in base or name in new]
        blocks = _blocks(model)
    return TrainingSetup(
        model=model,
        head=head,
        blocks=blocks,
        train_set=train_set,
        val_set=val_set,
        num_classes=len(source.label_names),
        collate=PadBatch(tokenizer),
        in_memory=True,
        test_set=test_set,
        test_about=test_about,
        class_names=source.label_names,
    )


def load_tokenizer(model: str, cache: dict):
    """The model's tokenizer, loaded once per worker."""
    from transformers import AutoTokenizer

    key = f"tokenizer:{model}"
    if key not in cache:
        try:
            cache[key] = AutoTokenizer.from_pretrained(_where(model), local_files_only=offline())
        except OSError as e:
            raise _not_found(model, e) from None
    return cache[key]


def pretrained_classifier(
    model: str, label_names: list[str], weights: str | None
) -> tuple[PreTrainedModel, set[str]]:
    """``AutoModelForSequenceClassification`` with one output per label.

    Args:
        model: a hub name (in the local cache) or a local model directory.
        label_names: the dataset's labels, in id order.
        weights: ``None`` or ``DEFAULT`` (the model's own pretrained weights), or a local
            checkpoint file loaded over them where names and shapes match.

    Returns:
        ``(model, names of the parameters initialized anew)``: the head, and whatever else the
        checkpoint lacked.
    """
    from transformers import AutoModelForSequenceClassification

    try:
        net, info = AutoModelForSequenceClassification.from_pretrained(
            _where(model),
            num_labels=len(label_names),
            id2label=dict(enumerate(label_names)),
            label2id={name: i for i, name in enumerate(label_names)},
            ignore_mismatched_sizes=True,  # a checkpoint's own head, for other labels
            output_loading_info=True,
            local_files_only=offline(),
        )
    except OSError as e:
        raise _not_found(model, e) from None
    new = set(info.get("missing_keys", ())) | {
        k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys", ())
    }
    if weights not in (None, "DEFAULT"):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise JobSetupError(
                f"weights {weights!r}: for a text model, expected null, "
                "DEFAULT (its own pretrained weights) or a checkpoint file"
            )
        new -= set(load_weights_file(net, path))
    return net, new


def set_head_dropout(model: PreTrainedModel, p: float) -> None:
    """Make ``p`` the dropout in front of the classifier.

    Sets every ``nn.Dropout`` of the head (the modules outside the pretrained encoder, e.g.
    BERT's classifier dropout); a head without one gets its last Linear wrapped as
    ``Sequential(Dropout(p), Linear)``.
    """
    encoder = {id(m) for m in model.base_model.modules()}
    outside = [(n, m) for n, m in model.named_modules() if id(m) not in encoder and n]
    dropouts = [m for _, m in outside if isinstance(m, nn.Dropout)]
    for m in dropouts:
        m.p = p
    if not dropouts:
        name, linear = [(n, m) for n, m in outside if isinstance(m, nn.Linear)][-1]
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, nn.Sequential(nn.Dropout(p), linear))
    if hasattr(model.config, "classifier_dropout"):
        model.config.classifier_dropout = p


def _blocks(model: PreTrainedModel) -> list[list[nn.Parameter]]:
    """Blocks from the input side for ``first_k``: embeddings with layer 1, then each layer.

    The layers are the encoder's longest ``nn.ModuleList`` (``encoder.layer`` in BERT).
    """
    base = model.base_model
    lists = [m for m in base.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        return []
    layers = max(lists, key=len)
    embeddings = getattr(base, "embeddings", None) or model.get_input_embeddings()
    blocks = [list(layer.parameters()) for layer in layers]
    blocks[0] = list(embeddings.parameters()) + blocks[0]
    return blocks


def _where(model: str) -> str:
    path = Path(resolve_model(model)).expanduser()
    return str(path) if path.is_dir() else model


def _not_found(model: str, error: Exception) -> JobSetupError:
    return JobSetupError(
        f"model {model!r}: not found locally ({str(error).splitlines()[0]}); hpo runs offline: "
        "give a local model directory, or set HF_HUB_OFFLINE=0 where there is internet"
    )
