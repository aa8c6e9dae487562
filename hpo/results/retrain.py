"""Retrain: the best configuration of a study, fit on train + val, tested on the test split.

``hpo retrain STUDY`` takes the best complete trial (or ``--trial N``), fine-tunes its params
once more on the trials' train and validation examples together, with the one fit loop of
``hpo.job`` (no validation, no pruning), for the epoch at which the trial's validation loss
was best (``best_epoch``; ``--epochs`` overrides), then evaluates the test split where the
dataset has one: its own (torchvision ``train=False``, an image folder's ``test/``, a ``test``
file, a Hugging Face test split) or the ``task.test_fraction`` that no trial saw. It writes

- ``model.pt``: the fine-tuned model, ``{"model": state_dict, "epoch": N}``;
- ``retrain.json``: the trial, params, epochs, train and test numbers, time, device, package
  versions, git commits and the data fingerprint;

and stores a compact summary in the study's user attr ``hpo.results.retrain``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpo.errors import HpoError
from hpo.provenance import environment_record, file_sha256
from hpo.records import BEST_METRICS_ATTR, RETRAIN_ATTR, VERSION_ATTR, safe_name, val_loss
from hpo.run.slots import WAIT_VARS, wait_briefly
from hpo.search.study import pick_trial
from hpo.spec import suggest
from hpo.store.url import StorageUrl

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from hpo.spec import Spec

MODEL_FILE = "model.pt"
RECORD_FILE = "retrain.json"


class RetrainFailed(RuntimeError):
    """The retrain's loss went NaN or diverged: a failure (exit 1), not bad input."""


def default_out(study_name: str) -> Path:
    """``retrain/STUDY`` with the name made safe for a folder."""
    return Path("retrain") / safe_name(study_name)


def retrain_epochs(
    trial: FrozenTrial, params: dict[str, Any], epochs: int | None = None
) -> tuple[int, str]:
    """How many epochs to retrain and why: ``epochs`` if given, else the trial's
    ``best_epoch``, else its ``epochs`` param."""
    if epochs is not None:
        return epochs, "--epochs"
    best_epoch = trial.user_attrs.get("best_epoch")
    if isinstance(best_epoch, int) and best_epoch >= 1:
        return best_epoch, "best_epoch"
    return int(params["epochs"]), "epochs"


def retrain(
    study: optuna.Study,
    spec: Spec,
    *,
    out: str | os.PathLike[str] | None = None,
    trial_number: int | None = None,
    epochs: int | None = None,
    storage_url: str | StorageUrl | None = None,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Retrain a trial's configuration on train + val and test it; write ``out``.

    Every check runs before any file is written or torch is imported; the files are written
    into a temporary folder beside ``out`` and moved into it only when all went well.

    Args:
        study: the study (from ``hpo.search.study.load_study``).
        spec: its stored spec.
        out: the folder (default ``retrain/STUDY``); files of an earlier retrain are replaced.
        trial_number: the trial to retrain (default: the best).
        epochs: epochs to train (default: the trial's ``best_epoch``, else its ``epochs``).
        storage_url: the study database, named (redacted) in the record.
        say: told one line when training starts and one after each epoch (epoch k/N, its
            mean training loss, the seconds since training started, samples per second).

    Returns:
        The record, also written as ``retrain.json``.

    Raises:
        HpoError: a custom task, no complete trial, a trial that did not complete, ``out``
            is a file, or the task's data or model cannot be loaded here.
        RetrainFailed: the loss went NaN or diverged.
    """
    if spec.task.kind == "custom":
        raise HpoError(
            f"study {study.study_name!r} runs a custom job "
            f"({spec.task.entrypoint}); hpo retrain needs the built-in fine-tuning "
            "job (image_classification or text_classification): retrain with your "
            "own code from the params of hpo best"
        )
    trial = pick_trial(study, trial_number, "retrain")
    out = Path(out) if out is not None else default_out(study.study_name)
    if out.exists() and not out.is_dir():
        raise HpoError(f"--out {out} is a file; give a folder")
    new_parents = [p for p in reversed(out.absolute().parents) if not p.exists()]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as e:
        raise HpoError(f"--out {out}: cannot write there ({e.strerror or e})") from None
    done = False
    try:
        record = _retrain_into(work, study, spec, trial, epochs, storage_url, out, say)
        _move_into(work, out)
        done = True
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not done:  # leave no folder this call made
            for parent in reversed(new_parents):
                with contextlib.suppress(OSError):
                    parent.rmdir()
    study.set_user_attr(RETRAIN_ATTR, summary(record))
    return record


def _retrain_into(
    work: Path,
    study: optuna.Study,
    spec: Spec,
    trial: FrozenTrial,
    epochs: int | None,
    storage_url: str | StorageUrl | None,
    out: Path,
    say: Callable[[str], None] | None,
) -> dict[str, Any]:
    """Fit and test; write ``model.pt`` and ``retrain.json`` into ``work``."""
    import optuna

    # As a worker's (hpo.run.slots.Slot.env): OpenMP threads that spin briefly when they
    # wait. Set before torch loads it; spinning ones on shared cores made a retrain 10x slower.
    wait_briefly(os.environ)
    from hpo.job import JobContext
    from hpo.run.worker import run_on_devices

    fixed = optuna.trial.FixedTrial(dict(trial.params), number=trial.number)
    params = suggest(fixed, spec)  # every hyperparameter, as the trial had them
    params["epochs"], epochs_from = retrain_epochs(trial, params, epochs)
    model = work / MODEL_FILE
    if say is not None:
        took = trial.user_attrs.get("train_seconds")
        say(
            f"hpo: retraining trial #{trial.number} of {study.study_name} for "
            f"{params['epochs']} epoch(s) on its train + val examples"
            + (f" (the trial took {took:.0f} s)" if isinstance(took, (int, float)) else "")
        )
    started = time.perf_counter()
    job_trial = _Progress(trial.number, say, started)  # keeps the attrs the fit writes
    try:
        run_on_devices(
            job_trial,
            spec.task,
            params,
            JobContext(checkpoint_path=model, final=True),
            spec.resources.devices_per_trial,
        )
    except optuna.TrialPruned:
        attrs = job_trial.attrs
        raise RetrainFailed(
            f"the training loss went {attrs.get('prune_reason', 'bad')} at epoch "
            f"{attrs.get('epochs_run', '?')} of {params['epochs']}; retrain another trial "
            "(--trial N) or fewer --epochs"
        ) from None
    seconds = time.perf_counter() - started
    attrs = job_trial.attrs
    url = StorageUrl.parse(storage_url)
    test = test_numbers(attrs)
    record: dict[str, Any] = {
        "study": study.study_name,
        "storage": url.redacted,
        "retrained": dt.datetime.now().isoformat(timespec="seconds"),
        "out": str(out),
        "trial": {
            "number": trial.number,
            # The objective's value, and the best evaluation's loss (the value itself where
            # the objective is val_loss).
            "metric": spec.study.metric,
            "value": val_loss(trial),
            "val_loss": val_loss(trial)
            if spec.study.metric == "val_loss"
            else (trial.user_attrs.get(BEST_METRICS_ATTR) or {}).get("val_loss"),
            "val_accuracy": trial.user_attrs.get("val_accuracy"),
            "best_epoch": trial.user_attrs.get("best_epoch"),
            "epochs": trial.params.get("epochs", trial.user_attrs.get("epochs_planned")),
        },
        "params": {k: params[k] for k in sorted(params)},
        "epochs": params["epochs"],
        "epochs_from": epochs_from,
        "train_examples": attrs.get("train_examples"),
        "train_loss": attrs.get("train_loss"),
        "test": test,
        "test_split": attrs.get("test_split"),
        "seconds": round(seconds, 3),
        "train_seconds": attrs.get("train_seconds"),
        "samples_per_second": attrs.get("samples_per_second"),
        "device": attrs.get("device"),
        "world_size": attrs.get("world_size"),
        "peak_memory_mb": attrs.get("peak_memory_mb"),
        "omp_wait": {var: os.environ.get(var) for var in WAIT_VARS},
        "model": {
            "path": MODEL_FILE,
            "sha256": file_sha256(model),
            "bytes": model.stat().st_size,
            "format": (
                "torch.load(path)['model'] is the adapter's state (peft's "
                "get_peft_model_state_dict; 'adapter' its config)"
                if spec.task.adapter
                else "torch.load(path)['model'] is the model's state_dict"
            ),
        },
        "seeds": {"task.seed": spec.task.seed},
        "study_hpo_version": study.user_attrs.get(VERSION_ATTR),
        **environment_record(spec.task),
    }
    (work / RECORD_FILE).write_text(
        json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8"
    )
    return record


def test_numbers(attrs: dict[str, Any]) -> dict[str, Any] | None:
    """The test split's numbers of a final fit's attrs (``hpo.job.final.final_test``): loss,
    accuracy, examples, the macro averages, and where recorded ``per_class`` (``classes``,
    ``precision``, ``recall``, ``f1``, ``examples``: lists in class order) and ``confusion``
    (``[true][predicted]`` counts); None without a test split."""
    if "test_loss" not in attrs:
        return None
    test: dict[str, Any] = {
        "loss": attrs["test_loss"],
        "accuracy": attrs["test_accuracy"],
        "examples": attrs["test_examples"],
    }
    metrics = attrs.get("test_metrics") or {}
    for name in ("balanced_accuracy", "precision", "recall", "f1", "auroc"):
        if metrics.get(f"test_{name}") is not None:
            test[name] = metrics[f"test_{name}"]
    lists = {
        name: metrics[f"test_{name}_per_class"]
        for name in ("precision", "recall", "f1")
        if isinstance(metrics.get(f"test_{name}_per_class"), list)
    }
    confusion = metrics.get("test_confusion")
    if lists:
        n = max(len(v) for v in lists.values())
        names = [str(c) for c in attrs.get("test_classes") or []]
        test["per_class"] = {"classes": names if len(names) == n else [str(i) for i in range(n)]}
        test["per_class"].update(lists)
        if isinstance(confusion, list):
            test["per_class"]["examples"] = [sum(row) for row in confusion]
    if isinstance(confusion, list):
        test["confusion"] = confusion
    return test


class _Progress:
    """The retrain's trial (``hpo.job.trial.Trial``): keeps the attrs the fit writes, never
    prunes, and tells ``say`` one line per epoch that the fit records (its ``epochs_run`` with
    that epoch's ``train_loss``): the job itself prints nothing."""

    def __init__(self, number: int, say: Callable[[str], None] | None, started: float) -> None:
        self.number = number
        self.attrs: dict[str, Any] = {}
        self._say = say
        self._started = started
        self._shown = 0

    def report(self, value: float, step: int) -> None:
        """A final fit has no validation set, so nothing to report."""

    def should_prune(self) -> bool:
        return False

    def set_attrs(self, attrs: dict[str, Any]) -> None:
        self.attrs.update(attrs)
        epoch = attrs.get("epochs_run")
        if self._say is None or "train_loss" not in attrs or not isinstance(epoch, int):
            return
        if epoch <= self._shown:
            return
        self._shown = epoch
        self._say(
            f"hpo: epoch {epoch}/{attrs.get('epochs_planned', '?')}: "
            f"train loss {attrs['train_loss']:.4f}, "
            f"{time.perf_counter() - self._started:.1f} s elapsed, "
            f"{attrs.get('samples_per_second', 0):.0f} samples/s"
        )


def _move_into(work: Path, out: Path) -> None:
    """Put the finished files in place: the whole folder at once where ``out`` is new, else
    file by file (each replace atomic; the record last)."""
    try:
        if not out.exists():
            os.replace(work, out)
            return
        for name in (MODEL_FILE, RECORD_FILE):
            os.replace(work / name, out / name)
    except OSError as e:
        raise HpoError(f"--out {out}: cannot write there ({e.strerror or e})") from None


SHOWN_CLASSES = 50
"""The most classes ``format_per_class`` prints (the rest are in ``retrain.json``)."""


def format_per_class(per: dict[str, Any] | None) -> list[str]:
    """The test split's per-class table for the terminal: precision, recall, F1 and the
    examples of each class (up to ``SHOWN_CLASSES``)."""
    if not per:
        return []
    cols = [c for c in ("precision", "recall", "f1", "examples") if c in per]
    width = max(5, *(len(str(c)) for c in per["classes"]))
    lines = ["  test by class:", f"    {'class':<{width}}  " + "  ".join(f"{c:>9}" for c in cols)]
    for i, name in enumerate(per["classes"][:SHOWN_CLASSES]):
        cells = [per[c][i] for c in cols]
        lines.append(
            f"    {name:<{width}}  "
            + "  ".join(f"{v:>9}" if isinstance(v, int) else f"{v:>9.4f}" for v in cells)
        )
    if len(per["classes"]) > SHOWN_CLASSES:
        lines.append(f"    ... {len(per['classes']) - SHOWN_CLASSES} more in {RECORD_FILE}")
    return lines


def summary(record: dict[str, Any]) -> dict[str, Any]:
    """The compact form kept in the study (``hpo.results.retrain``)."""
    test = record["test"] or {}
    return {
        "trial": record["trial"]["number"],
        "epochs": record["epochs"],
        "train_examples": record["train_examples"],
        "test_loss": test.get("loss"),
        "test_accuracy": test.get("accuracy"),
        "test_f1": test.get("f1"),
        "test_examples": test.get("examples"),
        # The report's per-class table and confusion matrix of the test split.
        "test_per_class": test.get("per_class"),
        "test_confusion": test.get("confusion"),
        "test_split": record["test_split"],
        "out": str(Path(record["out"]).resolve()),
        "retrained": record["retrained"],
        "device": record["device"],
    }


def format_retrain(record: dict[str, Any]) -> str:
    """A few lines for the terminal: what was trained, test vs the trial's validation."""
    trial, test = record["trial"], record["test"]
    why = {"best_epoch": "its best_epoch", "epochs": "its epochs", "--epochs": "--epochs"}[
        record["epochs_from"]
    ]
    lines = [
        f"hpo: retrained trial #{trial['number']} of {record['study']} on "
        f"{record['train_examples']} train + val examples for {record['epochs']} epoch(s) "
        f"({why}) in {record['seconds']:.1f} s on {record['device']}",
    ]
    val_acc, val_loss_, name = trial["val_accuracy"], trial["val_loss"], trial.get("metric")
    parts = [f"loss {val_loss_:.4f}"] if val_loss_ is not None else []
    if val_acc is not None:
        parts.append(f"accuracy {val_acc:.4f}")
    if name and name not in ("val_loss", "val_accuracy"):  # the objective, where another
        parts.append(f"{name.removeprefix('val_')} {trial['value']:.4f}")
    val = ", ".join(parts) or "-"
    if test is None:
        lines.append(f"  no test split: {record['test_split']}")
        lines.append(f"  trial #{trial['number']} validation: {val}")
    else:
        f1 = f", macro-F1 {test['f1']:.4f}" if test.get("f1") is not None else ""
        lines.append(
            f"  test:       loss {test['loss']:.4f}, accuracy {test['accuracy']:.4f}{f1} "
            f"on {test['examples']} examples ({record['test_split']})"
        )
        lines.append(f"  validation: {val} (trial #{trial['number']}, before retraining)")
        lines += format_per_class(test.get("per_class"))
    lines.append(f"  {record['out']}/{MODEL_FILE} and {RECORD_FILE} written")
    return "\n".join(lines)
