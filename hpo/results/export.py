"""Export: a study's trials as CSV / JSON, and its best trial as files to take away.

``hpo export STUDY --out DIR`` writes

- ``spec.yaml``: a ready-to-run spec with the best params fixed (``hpo run DIR/spec.yaml``
  trains the best configuration again, as study ``STUDY-best``);
- the best trial's weights, in the form its library loads (``hpo.results.weights``): ``model.pt``,
  a plain ``state_dict`` of the torchvision model
  (``model.load_state_dict(torch.load("model.pt"))``), or ``model/``, a transformers
  ``save_pretrained`` folder with the tokenizer; a custom job's checkpoint as it saved it
  (``best-checkpoint.EXT``). No optimizer state: what is needed to use the model, not to
  resume its training;
- ``record.json``: what reproducing it needs: seeds, package versions, git commits, a
  fingerprint of the data, the trial's params, curve and attributes; ``model``: which
  file holds the weights, their format, the Python that loads them, their sha256; and
  ``preprocessing``: how a raw example becomes the model's input (an image's scaling, grey
  to RGB, resize, crop, mean and std; a text's tokenizer, max length, truncation, padding),
  from the job's own code;
- ``trials.csv``: every trial of the study.

``format_export`` is what the command prints about them.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from hpo.errors import HpoError
from hpo.provenance import DATA_PATH_KEYS, environment_record, package_versions
from hpo.records import (
    CHECKPOINT_ARTIFACT_ATTR,
    CHECKPOINT_ATTR,
    VERSION_ATTR,
    iso,
    trial_record,
    val_loss,
)
from hpo.results.weights import MODEL_DIR, export_model
from hpo.store.artifacts import artifact_dir, has_checkpoint
from hpo.store.url import StorageUrl

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from hpo.spec import Spec

FORMATS = ("csv", "json")
ATTR_COLUMNS = (
    "val_accuracy",
    "best_epoch",
    "epochs_run",
    "epochs_planned",
    "train_seconds",
    "samples_per_second",
    "device",
    "host",
    "worker",
    "peak_memory_mb",
    "prune_reason",
    "fail_reason",
    "checkpoint",
)
EXPORTED_TRIAL_KEYS = ("number", "value", "values", "params", "intermediate_values", "user_attrs")
"""What ``record.json`` keeps of the best trial's record (``hpo.records.trial_record``)."""


# --------------------------------------------------------------------------------------------
# Trials.


def trial_rows(
    study: optuna.Study, artifacts_dir: str | os.PathLike[str] | None = None
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
            "value": val_loss(t),
            "datetime_start": iso(start),
            "datetime_complete": iso(end),
            "duration_seconds": round((end - start).total_seconds(), 3) if start and end else None,
        }
        row.update({f"param_{p}": t.params.get(p) for p in params})
        attrs = present_files(t.user_attrs, artifacts_dir)
        row.update({a: attrs.get(a) for a in (*ATTR_COLUMNS, *extra)})
        row["val_loss_by_epoch"] = " ".join(
            f"{step}:{value:.6g}" for step, value in sorted(t.intermediate_values.items())
        )
        rows.append(row)
    return rows


def present_files(
    attrs: dict[str, Any], artifacts_dir: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """A trial's user attrs with ``checkpoint`` set to None where the file is gone (retention
    deletes those of pruned, failed and worse trials) and, given the store's folder,
    ``checkpoint_artifact`` where the store no longer holds it (a trial that left the best).
    A finished trial's attrs cannot change, so readers check."""
    attrs = dict(attrs)
    path = attrs.get(CHECKPOINT_ATTR)
    if path and not Path(path).exists():  # a file, or a script's directory
        attrs[CHECKPOINT_ATTR] = None
    artifact = attrs.get(CHECKPOINT_ARTIFACT_ATTR)
    if (
        artifact
        and artifacts_dir is not None
        and not has_checkpoint(artifact, directory=artifacts_dir)
    ):
        attrs[CHECKPOINT_ARTIFACT_ATTR] = None
    return attrs


def write_trials(
    study: optuna.Study,
    fmt: str,
    stream: TextIO,
    artifacts_dir: str | os.PathLike[str] | None = None,
) -> int:
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


def best_spec_dict(spec: Spec, trial: FrozenTrial) -> dict[str, Any]:
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
    d.pop("warm_start", None)  # its one trial is the best's params, not first guesses
    task = d["task"]
    dataset = task.get("dataset") or {}  # a custom task has none
    for key in DATA_PATH_KEYS:
        if key in dataset:
            dataset[key] = _absolute(dataset[key])
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
    path.write_text(
        comment + yaml.safe_dump(d, sort_keys=False, default_flow_style=None), encoding="utf-8"
    )


def export_best(
    study: optuna.Study,
    spec: Spec,
    out: str | os.PathLike[str],
    *,
    storage_url: str | StorageUrl | None = None,
    artifacts: str | os.PathLike[str] | None = None,
    trial_number: int | None = None,
) -> dict[str, Any]:
    """Write the best trial's spec, model weights, reproducibility record and trials table.

    Args:
        study: the study (from ``hpo.search.study.load_study``).
        spec: its stored spec.
        out: the folder to write into (created).
        storage_url: the study database, to find the artifact store and to name it (redacted).
        artifacts: the artifact store's folder, where not the default.
        trial_number: export this complete trial instead of the best (a study of several
            objectives needs it: one of its Pareto set).

    Returns:
        The record (also written as ``record.json``).

    Raises:
        HpoError: no complete trial, no such complete trial, several objectives and no
            ``trial_number``, or ``out`` is a file.
    """
    from hpo.search.study import pick_trial

    best = pick_trial(study, trial_number, "export")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise HpoError(f"--out {out} is a file; give a folder")
    out.mkdir(parents=True, exist_ok=True)
    url = StorageUrl.parse(storage_url)

    spec_dict = best_spec_dict(spec, best)
    spec_path = out / "spec.yaml"
    write_spec_yaml(
        spec_dict,
        spec_path,
        (
            f"The {'chosen' if trial_number is not None else 'best'} configuration of study "
            f"{study.study_name}: trial {best.number}, {spec.study.metric} "
            f"{val_loss(best):.6f}.\n"
            f"Exported by hpo {package_versions(['hpo-finetune']).get('hpo-finetune', '?')} on "
            f"{dt.datetime.now().isoformat(timespec='seconds')}.\n"
            "Each param is fixed (a one-choice categorical); no pruning; one trial.\n"
            f"Run it: hpo run {spec_path}   (raise budget.n_trials to rerun it more times)"
        ),
    )

    model = export_model(best, spec.task, out, storage_url=url, artifacts=artifacts)
    preprocessing = input_preprocessing(spec.task, model, out)

    sampler_seed = spec.sampler.options.get("seed")
    trial = {k: v for k, v in trial_record(best).items() if k in EXPORTED_TRIAL_KEYS}
    # record.json has always had the start to the microsecond.
    trial["datetime_start"] = best.datetime_start.isoformat() if best.datetime_start else None
    record = {
        "study": study.study_name,
        "storage": url.redacted,
        "exported": dt.datetime.now().isoformat(timespec="seconds"),
        "trial": trial,
        "metric": spec.study.metric,
        "picked": "best" if trial_number is None else "--trial",
        "spec": spec_path.name,
        "model": model,
        "preprocessing": preprocessing,
        "seeds": {
            "task.seed": spec.task.seed,
            "sampler.seed": sampler_seed,
            **{k: v for k, v in best.user_attrs.items() if "seed" in k},
        },
        "study_hpo_version": study.user_attrs.get(VERSION_ATTR),
        **environment_record(spec.task),
    }
    (out / "record.json").write_text(
        json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8"
    )
    buffer = io.StringIO()
    write_trials(study, "csv", buffer, artifact_dir(url, artifacts))
    (out / "trials.csv").write_text(buffer.getvalue(), encoding="utf-8")
    return record


def input_preprocessing(task: Any, model: dict[str, Any], out: Path) -> dict[str, Any] | None:
    """The record's ``preprocessing``: how a raw example becomes the model's input, from the
    job's own code (``hpo.job.vision.image_preprocessing``, ``hpo.job.text_data``); ``None``
    for a custom job (its own), ``{"missing": why}`` where the data cannot be read here."""
    if task.kind == "image_classification":
        from hpo.job import JobSetupError
        from hpo.job.vision import image_preprocessing

        try:
            return image_preprocessing(task)
        except JobSetupError as e:
            return {"kind": "image", "missing": f"the data cannot be read here: {e}"}
    if task.kind == "text_classification":
        from hpo.job.text_data import preprocessing

        exported = model.get("format") in ("transformers save_pretrained", "peft adapter")
        return preprocessing(task, str(out / MODEL_DIR) if exported else task.model)
    return None


def format_preprocessing(pre: dict[str, Any] | None) -> str | None:
    """One line of what ``preprocessing`` says, for the terminal."""
    if not pre:
        return None
    if "missing" in pre:
        return f"(not recorded: {pre['missing']})"
    if pre["kind"] == "text":
        return (
            f"tokenizer {pre['tokenizer']}, truncation to max_length {pre['max_length']}, "
            f"padding {pre['padding']}"
        )
    described = []
    for step in pre["steps"]:
        op = step["op"]
        if op == "scale":
            described.append(f"/ {step['divide_by']:g}")
        elif op == "rgb":
            described.append("grey to RGB")
        elif op == "resize":
            described.append(f"resize {step['size']} ({step['interpolation']})")
        elif op == "center_crop":
            described.append(f"center crop {step['size']}")
        elif op == "normalize":
            mean = ", ".join(f"{m:.3f}" for m in step["mean"])
            std = ", ".join(f"{s:.3f}" for s in step["std"])
            described.append(f"normalize mean ({mean}) std ({std})")
    return ", ".join(described)


def format_export(record: dict[str, Any], out: str | os.PathLike[str]) -> str:
    """What ``hpo export`` prints: each file it wrote, what it is and how to load it."""
    trial, model = record["trial"], record["model"]
    out = Path(out)
    which = "trial" if record.get("picked") == "--trial" else "best trial"
    lines = [
        f"hpo: {which} #{trial['number']} of {record['study']} "
        f"({record.get('metric', 'val_loss')} {trial['value']:.6f}) exported to {out}/",
        f"  {'spec.yaml':<18} its params fixed; run it: hpo run {out / 'spec.yaml'}",
    ]
    if model["path"]:
        size = f"{model['bytes'] / 1e6:.1f} MB"
        after = f", after epoch {model['epoch']}" if model.get("epoch") else ""
        what = {
            "torchvision state_dict": f"the weights: a torchvision state_dict ({size}{after})",
            "transformers save_pretrained": f"the model: config, weights and tokenizer "
            f"({size}{after})",
            "hpo state_dict": f"the weights: hpo's own state_dict ({size}{after})",
            "peft adapter": f"the LoRA adapter and head, and the tokenizer ({size}{after})",
        }.get(model["format"], f"the trial's checkpoint as saved ({size})")
        lines.append(f"  {model['path']:<18} {what}, from {model['from']}")
        lines.append(f"  {'':<18} load: {model['load']}")
        if model.get("note"):
            lines.append(f"  {'':<18} note: {model['note']}")
        pre = format_preprocessing(record.get("preprocessing"))
        if pre:
            lines.append(f"  {'':<18} input: {pre} (record.json: preprocessing)")
    else:
        lines.append(f"  (no model weights: {model['missing']})")
    lines += [
        f"  {'record.json':<18} input preprocessing, seeds, package versions, git commit, "
        "data fingerprint",
        f"  {'trials.csv':<18} every trial of the study",
    ]
    return "\n".join(lines)
