"""Cluster templates: a Slurm job array and a Kubernetes Job that run ``hpo launch`` on many
machines against one shared database.

Every node runs ``hpo launch STUDY --gpus all``: one worker per GPU there, all joining the same
study, whose global budget stops them (``--workers 1`` on nodes without GPUs, ``gpus=0``). A
storage URL with a password is never written into a template: the template reads
``$HPO_STORAGE`` (a Kubernetes Secret, or the submitting shell).
"""

from __future__ import annotations

import json
import shlex
from string import Template

from hpo.errors import HpoError

SLURM = Template("""\
#!/bin/bash
# hpo: workers for study $study, $nodes node(s) x $workers. Submit with: sbatch $$0
# The study must exist in the storage (hpo create SPEC) before the job starts. Every node runs
# $runner (hpo template --python PATH to change): it must be there on every node, e.g. a
# virtual environment on a shared filesystem.
#SBATCH --job-name=hpo-$name
#SBATCH --array=0-$last
#SBATCH --nodes=1
#SBATCH --ntasks=1
${gres}#SBATCH --cpus-per-task=$cpus
#SBATCH --time=$time
#SBATCH --requeue
#SBATCH --signal=B:TERM@120
#SBATCH --output=hpo-$name-%A_%a.out
#SBATCH --open-mode=append
set -euo pipefail
$storage_line
export HPO_CHECKPOINT_DIR=$${HPO_CHECKPOINT_DIR:-$checkpoint_dir_sh}
# exec: this script becomes the launcher, so Slurm's SIGTERM reaches it (preemption and
# `scontrol requeue` signal every process of the task; the time limit, 120 s early, and
# `scancel --batch --signal=TERM` this script alone): it re-queues the running trials from their
# checkpoints, for any node's workers to resume. A re-queued task starts again later, appending
# to its log; a task stopped at its time limit ends (sbatch this file again to go on).
exec $command
""")

KUBERNETES = Template("""\
# hpo: workers for study $study, $nodes pod(s) x $workers. Apply with: kubectl apply -f -
# The study must exist in the storage (hpo create SPEC) first; the image must have hpo on PATH.
apiVersion: batch/v1
kind: Job
metadata:
  name: hpo-$name
spec:
  parallelism: $nodes
  completions: $nodes
  completionMode: Indexed
  backoffLimit: $backoff
  template:
    metadata:
      labels: {app: hpo, study: "$name"}
    spec:
      restartPolicy: OnFailure
      terminationGracePeriodSeconds: 60
      containers:
        - name: hpo
          image: $image
          command: $command_json
          env:
$env            - name: HPO_CHECKPOINT_DIR
              value: $checkpoint_dir_json
          resources:
            $resources
          volumeMounts:
            - {name: checkpoints, mountPath: $checkpoint_dir_json}
      volumes:
        - name: checkpoints
          persistentVolumeClaim: {claimName: hpo-checkpoints}
""")

KINDS = ("slurm", "kubernetes")


def render(
    kind: str,
    study: str,
    storage_url: str,
    *,
    nodes: int = 1,
    gpus: int = 1,
    image: str = "python:3.11",
    checkpoint_dir: str = "/shared/hpo-checkpoints",
    time: str = "24:00:00",
    python: str | None = None,
    devices_per_trial: int = 1,
) -> str:
    """The text of a cluster template.

    Args:
        kind: ``slurm`` or ``kubernetes``.
        study: the study the workers join (created beforehand with ``hpo create``).
        storage_url: the shared PostgreSQL / MySQL URL.
        nodes: machines (array tasks / pods).
        gpus: GPUs per machine, one worker each; 0: machines without GPUs, one CPU worker
            each (no GPU is requested).
        image: the container image with hpo installed (Kubernetes).
        checkpoint_dir: a directory every machine shares, so trials resume anywhere.
        time: the Slurm time limit.
        python: the interpreter with hpo installed that the Slurm nodes run (``PYTHON -m
            hpo``; default: ``hpo`` on the nodes' PATH). Kubernetes runs the image's ``hpo``.
        devices_per_trial: the study's ``resources.devices_per_trial``: each node's launcher
            groups its GPUs into gangs of this many, so a trial's gang stays inside one node.

    Raises:
        HpoError: an unknown kind, a SQLite URL (one machine only), or GPUs per node that
            gangs of ``devices_per_trial`` do not divide.
    """
    from sqlalchemy.engine import make_url

    if kind not in KINDS:
        raise HpoError(f"unknown template {kind!r}; expected one of {', '.join(KINDS)}")
    url = make_url(storage_url)
    if url.get_backend_name() == "sqlite":
        raise HpoError(
            "a cluster needs a database server every machine reaches "
            "(postgresql+psycopg2://... or mysql+pymysql://...), not SQLite"
        )
    secret = url.password is not None
    # A Slurm job name, a Kubernetes object name and label value: ASCII letters, digits, '-'.
    name = "".join(c if c.isascii() and c.isalnum() else "-" for c in study.lower())
    name = name[:50].strip("-") or "study"
    n = devices_per_trial
    if gpus and gpus % n:
        raise HpoError(
            f"--gpus-per-node {gpus}: the study's trials each take {n} GPUs of one "
            f"node (resources.devices_per_trial); give a multiple of {n}"
        )
    argv = ["hpo", "launch", study, *(["--gpus", "all"] if gpus else ["--workers", "1"])]
    if n == 1:
        workers = f"{gpus} GPU(s)" if gpus else "1 CPU worker"
    else:
        workers = (
            f"{gpus} GPUs, {gpus // n} trial(s) of {n} GPUs at a time"
            if gpus
            else f"1 CPU worker, its trials on {n} CPU processes"
        )
    values = dict(
        study=study,
        name=name,
        nodes=nodes,
        last=nodes - 1,
        workers=workers,
        cpus=max(4, 4 * (gpus or n)),
        time=time,
    )
    if kind == "slurm":
        storage_line = (
            ': "${HPO_STORAGE:?export HPO_STORAGE (its URL has a password) first}"'
            if secret
            else f"export HPO_STORAGE={shlex.quote(storage_url)}"
        )
        if python:
            argv = [python, "-m", *argv]
        return SLURM.substitute(
            values,
            storage_line=storage_line,
            gres=f"#SBATCH --gres=gpu:{gpus}\n" if gpus else "",
            checkpoint_dir_sh=shlex.quote(checkpoint_dir),
            runner=f"{python} -m hpo" if python else "hpo from PATH",
            command=" ".join(shlex.quote(a) for a in argv),
        )
    # JSON strings are YAML strings: any study name, URL or path stays one well-formed value.
    if secret:
        env = (
            "            - name: HPO_STORAGE\n"
            "              valueFrom: {secretKeyRef: {name: hpo-storage, key: url}}\n"
        )
    else:
        env = f"            - name: HPO_STORAGE\n              value: {json.dumps(storage_url)}\n"
    resources = (
        f"limits: {{nvidia.com/gpu: {gpus}}}" if gpus else f"requests: {{cpu: {values['cpus']}}}"
    )
    return KUBERNETES.substitute(
        values,
        image=json.dumps(image),
        env=env,
        command_json=json.dumps(argv),
        resources=resources,
        checkpoint_dir_json=json.dumps(checkpoint_dir),
        backoff=4 * nodes,
    )
