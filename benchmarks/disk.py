"""Disk: what a study leaves on disk (``checkpoints/`` and the artifact store) against the sum
of its best 3 models' weights, with hpo now and with hpo before issue #12.

The study is the shipped digits spec (20 trials) run as a new user runs it: ``hpo run
search_spaces/digits.yaml`` in an empty folder, so ``hpo.db``, ``checkpoints/`` and
``hpo-artifacts/`` land side by side. Disk used: the bytes of the files under
``checkpoints/`` and ``hpo-artifacts/``, a file with two names (an upload hard-linked to its
checkpoint) counted once, as ``du`` counts it; the database is left out (the same either way).
Best-3 weights: the tensors of the ``model`` state dicts of the study's 3 best complete
trials (elements x element size), what a user keeps of a study at the least.

"Before" is the same study run by hpo as of ``BEFORE`` (the last commit before issue #12's
changes), taken from this repository with ``git archive`` into the scratch folder and run
with the same interpreter and packages; without git or that commit its row is skipped with the
reason. The new user's figure on the issue is in the notes (``ISSUE_MB``).

``--smoke``: the digits spec shrunk to seconds (4 trials of 1-2 epochs on 150 images), the
same measurements both ways.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from benchmarks import studies
from benchmarks.studies import ROOT
from benchmarks.table import Row, judged

BEFORE = "f76a99690c6032318cbf40424599c279e7f69d7c"
"""hpo before issue #12: every completed trial that was among the best 3 when it finished
kept a full checkpoint (optimizer state included) in the artifact store for good."""
ISSUE_MB = (854, 385)
"""The new user's measurement on issue #12: hpo-artifacts/ and checkpoints/ in MB after the
20-trial digits study."""
GOAL = 1.1
"""Disk used after a study <= 1.1 x the best 3 models' weights."""
KEEP_BEST = 3
SMOKE_SPEC = """
study: {name: digits}
task:
  kind: image_classification
  model: resnet18
  dataset: {name: digits}
  image_size: 16
  max_samples: 150
search_space:
  lr:        {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
  batch_size: 32
  epochs:    {type: int, low: 1, high: 2}
  optimizer: {type: categorical, choices: [adam, adamw]}
sampler: {name: random, seed: 0}
pruner:  {name: none}
budget:  {n_trials: 4}
"""


def run(smoke: bool, workdir: Path, say) -> list[Row]:
    if smoke:
        spec = workdir / "digits.yaml"
        spec.write_text(SMOKE_SPEC)
        case = "digits smoke, 4 trials"
    else:
        spec = ROOT / "search_spaces" / "digits.yaml"
        case = "digits, 20 trials"
    say(f"disk: {case}: hpo run, this checkout")
    after = _study(spec, workdir / "after", src=None)
    rows = [judged(Row(
        "disk", case, "MB on disk", hpo=after["mb"], baseline=after["best3_mb"],
        baseline_name="best-3 weights", ratio=after["mb"] / after["best3_mb"],
        goal=f"<= {GOAL}",
        note=f"checkpoints/ {after['checkpoints_mb']:.0f} MB, hpo-artifacts/ "
             f"{after['artifacts_mb']:.0f} MB: {after['files']} files on disk (an upload is "
             f"a hard link to its checkpoint); {after['complete']} complete trials"),
        lambda r: r <= GOAL)]
    src = _before_source(workdir / "before-src")
    if isinstance(src, str):
        rows.append(Row("disk", case, "MB on disk", goal="", skipped=src))
        return rows
    say(f"disk: {case}: hpo run, hpo before issue #12 ({BEFORE[:7]})")
    before = _study(spec, workdir / "before", src=src)
    issue = "" if smoke else (f"; the new user's figure: {sum(ISSUE_MB):,} MB "
                              f"({ISSUE_MB[0]} artifacts + {ISSUE_MB[1]} checkpoints)")
    rows.append(Row(
        "disk", case, "MB on disk", hpo=after["mb"], baseline=before["mb"],
        baseline_name=f"before #12 ({BEFORE[:7]})", ratio=after["mb"] / before["mb"],
        note=f"before: checkpoints/ {before['checkpoints_mb']:.0f} MB + hpo-artifacts/ "
             f"{before['artifacts_mb']:.0f} MB, {before['files']} files, "
             f"{before['mb'] / before['best3_mb']:.1f}x its best-3 weights "
             f"({before['best3_mb']:.0f} MB){issue}"))
    return rows


def _study(spec: Path, folder: Path, src: Path | None) -> dict:
    """Run ``hpo run SPEC`` in an empty ``folder`` with hpo from ``src`` (None: this
    checkout); measure what it left."""
    folder.mkdir(parents=True, exist_ok=True)
    env = studies.environment()
    for var in ("HPO_CHECKPOINT_DIR", "HPO_ARTIFACTS"):  # the defaults, as a new user has
        env.pop(var, None)
    if src is not None:
        env["PYTHONPATH"] = str(src)  # its hpo before this checkout's
    studies.run_hpo(["run", str(spec)], cwd=folder, env=env, log=folder / "hpo-run.log")
    checkpoints, artifacts = folder / "checkpoints", folder / "hpo-artifacts"
    files: dict[tuple[int, int], int] = {}  # (device, inode): bytes; a hard link counts once
    sizes = {}
    for root in (checkpoints, artifacts):
        sizes[root.name] = 0
        for f in (p for p in root.rglob("*") if p.is_file()) if root.is_dir() else ():
            st = f.stat()
            files[st.st_dev, st.st_ino] = st.st_size
            sizes[root.name] += st.st_size
    best3, complete = _best_weights(folder, spec)
    return {
        "mb": sum(files.values()) / 1e6,
        "checkpoints_mb": sizes["checkpoints"] / 1e6,
        "artifacts_mb": sizes["hpo-artifacts"] / 1e6,
        "files": len(files),
        "best3_mb": best3 / 1e6,
        "complete": complete,
    }


def _best_weights(folder: Path, spec: Path) -> tuple[int, int]:
    """Bytes of the best 3 complete trials' model tensors, and how many trials completed
    (the study that ``hpo run`` left in ``folder``; its checkpoint paths are relative to it)."""
    import optuna
    import torch
    import yaml
    from optuna.trial import TrialState

    name = yaml.safe_load(spec.read_text())["study"]["name"]
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'hpo.db'}")
    complete = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
                      key=lambda t: t.value)
    total = 0
    for t in complete[:KEEP_BEST]:
        state = torch.load(folder / t.user_attrs["checkpoint"], map_location="cpu",
                           weights_only=True)
        total += sum(v.numel() * v.element_size() for v in state["model"].values())
    return total, len(complete)


def _before_source(dest: Path) -> Path | str:
    """hpo as of ``BEFORE``, extracted into ``dest``; a string saying why not."""
    if (dest / "hpo" / "__init__.py").is_file():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", BEFORE,
                                  "hpo"], capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        return f"no git here to take hpo {BEFORE[:7]} from: {e}"
    if archive.returncode != 0:
        return (f"hpo {BEFORE[:7]} is not in this repository: "
                f"{archive.stderr.decode(errors='replace').strip()[:120]}")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True,
                   timeout=60)
    return dest

