"""Cluster templates: a Slurm job array and a Kubernetes Job that run ``hpo launch`` on many
machines against one shared database.

Every node runs ``hpo launch STUDY --gpus all``: one worker per GPU there, all joining the same
study, whose global budget stops them (``--workers 1`` on nodes without GPUs, ``gpus=0``). A
storage URL with a password is never written into a template: the template reads
``$HPO_STORAGE`` (a Kubernetes Secret, or the submitting shell).

What each machine is given: Slurm's time limit (``--time``, default a day), partition and
account (default: the cluster's); Kubernetes' CPU and memory (requests, and the memory as the
limit too), and ``/dev/shm``, a memory-backed volume where the DataLoader workers pass their
batches (a container's default is 64 MB). The ``slurm_*`` and ``kubernetes_*`` checks turn a
flag's text into its value or raise ``ValueError`` saying what was expected.
"""

from __future__ import annotations

import json
import re
import shlex
from string import Template

from hpo.errors import HpoError
from hpo.store.url import StorageUrl

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
${partition}${account}#SBATCH --requeue
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
          resources: $resources
          volumeMounts:
            - {name: checkpoints, mountPath: $checkpoint_dir_json}
            - {name: dshm, mountPath: /dev/shm}
      volumes:
        - name: checkpoints
          persistentVolumeClaim: {claimName: hpo-checkpoints}
        - name: dshm
          emptyDir: {medium: Memory, sizeLimit: "$shm_size"}
""")

KINDS = ("slurm", "kubernetes")
DEFAULT_TIME = "24:00:00"
CPUS_PER_WORKER = 4
"""Cores per GPU (or per CPU rank): the worker and its DataLoader processes."""
MEMORY_PER_WORKER_GI = 16
"""GiB of memory per GPU (or per CPU rank), Kubernetes' default request and limit."""
SHM_SHARE = 4
"""``/dev/shm`` by default: this fraction (1/4) of the memory, which it counts against."""

_SLURM_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")
_SLURM_NAMES = re.compile(r"[A-Za-z0-9_.-]+(,[A-Za-z0-9_.-]+)*")
_CPU = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(m?)")
_MEMORY = re.compile(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?")
_UNITS = {
    **{s: 1024**i for i, s in enumerate(("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    **{s: 1000**i for i, s in enumerate(("k", "M", "G", "T", "P", "E"), 1)},
}


def slurm_time(text: str) -> str:
    """A Slurm time limit as sbatch takes it: ``MINUTES``, ``MINUTES:SECONDS``,
    ``HOURS:MINUTES:SECONDS``, ``DAYS-HOURS[:MINUTES[:SECONDS]]`` or ``UNLIMITED``."""
    expected = f"expected a Slurm time limit (MINUTES, HH:MM:SS or DAYS-HH[:MM[:SS]]), got {text!r}"
    if text.upper() in ("UNLIMITED", "INFINITE"):
        return text
    m = _SLURM_TIME.fullmatch(text)
    if m is None:
        raise ValueError(expected)
    days, *rest = m.groups()
    fields = [int(f) for f in rest if f is not None]
    limits: list[int | None]
    if days is not None:  # DAYS-HOURS[:MINUTES[:SECONDS]]
        limits = [24, 60, 60]
    else:  # MINUTES, MINUTES:SECONDS, HOURS:MINUTES:SECONDS
        by_count: dict[int, list[int | None]] = {1: [None], 2: [None, 60], 3: [None, 60, 60]}
        limits = by_count[len(fields)]
    if any(lim is not None and f >= lim for f, lim in zip(fields, limits, strict=False)):
        raise ValueError(expected)
    if int(days or 0) + sum(fields) == 0:
        raise ValueError(f"expected a time limit above zero, got {text!r}")
    return text


def slurm_names(text: str) -> str:
    """A Slurm partition (or a comma-separated list of them) or account name."""
    if not _SLURM_NAMES.fullmatch(text):
        raise ValueError(
            f"expected a Slurm name (letters, digits, '_', '.', '-'; partitions may be a "
            f"comma-separated list), got {text!r}"
        )
    return text


def kubernetes_cpu(text: str) -> str:
    """A Kubernetes CPU quantity above zero: cores (``4``, ``2.5``) or millicores
    (``3500m``)."""
    m = _CPU.fullmatch(text)
    if m is None or float(m[1]) <= 0 or (m[2] and "." in m[1]):
        raise ValueError(
            f"expected a CPU quantity above zero: cores (4, 2.5) or millicores (3500m), "
            f"got {text!r}"
        )
    return text


def kubernetes_memory(text: str) -> str:
    """A Kubernetes memory quantity above zero: ``16Gi``, ``512Mi``, ``10G``."""
    if _memory_bytes(text) is None:
        raise ValueError(
            f"expected a memory quantity above zero with a Kubernetes suffix (16Gi, 512Mi, "
            f"10G), got {text!r}"
        )
    return text


def _memory_bytes(text: str) -> float | None:
    m = _MEMORY.fullmatch(text)
    if m is None or float(m[1]) <= 0:
        return None
    return float(m[1]) * _UNITS[m[2] or ""]


def _share(memory: str, parts: int) -> str:
    """``memory / parts`` as a quantity, in the largest unit of the same kind (binary,
    decimal) that holds it whole."""
    size = _memory_bytes(memory) or 0.0
    binary = not memory[-1:].isdigit() and memory.endswith("i")
    suffixes = ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki") if binary else ("E", "P", "T", "G", "M", "k")
    share = size / parts
    for suffix in suffixes:
        n = share / _UNITS[suffix]
        if n >= 1 and n == int(n):
            return f"{int(n)}{suffix}"
    return str(int(share))


def render(
    kind: str,
    study: str,
    storage_url: str | StorageUrl,
    *,
    nodes: int = 1,
    gpus: int = 1,
    image: str = "python:3.11",
    checkpoint_dir: str = "/shared/hpo-checkpoints",
    time: str | None = None,
    python: str | None = None,
    devices_per_trial: int = 1,
    partition: str | None = None,
    account: str | None = None,
    cpu: str | None = None,
    memory: str | None = None,
    shm_size: str | None = None,
) -> str:
    """The text of a cluster template.

    Args:
        kind: ``slurm`` or ``kubernetes``.
        study: the study the workers join (created beforehand with ``hpo create``).
        storage_url: the shared PostgreSQL / MySQL URL (a proxy's, a journal's).
        nodes: machines (array tasks / pods).
        gpus: GPUs per machine, one worker each; 0: machines without GPUs, one CPU worker
            each (no GPU is requested).
        image: the container image with hpo installed (Kubernetes).
        checkpoint_dir: a directory every machine shares, so trials resume anywhere.
        time: the Slurm time limit (default ``24:00:00``; ``slurm_time``).
        python: the interpreter with hpo installed that the Slurm nodes run (``PYTHON -m
            hpo``; default: ``hpo`` on the nodes' PATH). Kubernetes runs the image's ``hpo``.
        devices_per_trial: the study's ``resources.devices_per_trial``: each node's launcher
            groups its GPUs into gangs of this many, so a trial's gang stays inside one node.
        partition: the Slurm partition(s) (default: the cluster's default partition).
        account: the Slurm account charged (default: the user's default account).
        cpu: Kubernetes' CPU request per pod (default 4 cores per GPU, or per CPU rank).
        memory: Kubernetes' memory request and limit per pod (default 16Gi per GPU, or per
            CPU rank).
        shm_size: the size of the pod's memory-backed ``/dev/shm`` (default a quarter of
            ``memory``, against whose limit it counts; less than ``memory``).

    Raises:
        HpoError: an unknown kind, a SQLite URL (one machine only), GPUs per node that
            gangs of ``devices_per_trial`` do not divide, a bad value, or an option of the
            other kind of template (each names its flag).
    """
    if kind not in KINDS:
        raise HpoError(f"unknown template {kind!r}; expected one of {', '.join(KINDS)}")
    options = {
        "slurm": {"time": time, "partition": partition, "account": account},
        "kubernetes": {"cpu": cpu, "memory": memory, "shm-size": shm_size},
    }
    for other, given in options.items():
        for flag, value in given.items():
            if other != kind and value is not None:
                raise HpoError(
                    f"--{flag} is for {other} templates; a {kind} template takes "
                    + ", ".join(f"--{f}" for f in options[kind])
                )
    checks = {
        "time": slurm_time,
        "partition": slurm_names,
        "account": slurm_names,
        "cpu": kubernetes_cpu,
        "memory": kubernetes_memory,
        "shm-size": kubernetes_memory,
    }
    for flag, value in options[kind].items():
        if value is not None:
            try:
                checks[flag](value)
            except ValueError as e:
                raise HpoError(f"--{flag}: {e}") from None
    url = StorageUrl.parse(storage_url)
    if url.kind == "sqlite":
        raise HpoError(
            "a cluster needs a database server every machine reaches "
            "(postgresql+psycopg2://... or mysql+pymysql://...), not SQLite"
        )
    secret = url.password is not None  # then the URL goes to the job as a secret
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
        cpus=CPUS_PER_WORKER * max(1, gpus or n),
        time=time or DEFAULT_TIME,
    )
    if kind == "slurm":
        storage_line = (
            ': "${HPO_STORAGE:?export HPO_STORAGE (its URL has a password) first}"'
            if secret
            else f"export HPO_STORAGE={shlex.quote(str(url))}"
        )
        if python:
            argv = [python, "-m", *argv]
        return SLURM.substitute(
            values,
            storage_line=storage_line,
            gres=f"#SBATCH --gres=gpu:{gpus}\n" if gpus else "",
            partition=f"#SBATCH --partition={partition}\n" if partition else "",
            account=f"#SBATCH --account={account}\n" if account else "",
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
        env = f"            - name: HPO_STORAGE\n              value: {json.dumps(str(url))}\n"
    # The memory is the limit too (a pod past it is killed, not its node's neighbours); no CPU
    # limit (throttling would slow the DataLoader workers, not protect anyone).
    memory = memory or f"{MEMORY_PER_WORKER_GI * max(1, gpus or n)}Gi"
    shm_size = shm_size or _share(memory, SHM_SHARE)
    if (_memory_bytes(shm_size) or 0) >= (_memory_bytes(memory) or 0):
        raise HpoError(
            f"--shm-size {shm_size}: /dev/shm counts against the pod's memory; give less "
            f"than --memory {memory}"
        )
    limits: dict[str, object] = {"memory": memory}
    if gpus:  # no GPU asked for where the nodes have none: such a pod would never start
        limits["nvidia.com/gpu"] = gpus
    resources = json.dumps(
        {"requests": {"cpu": cpu or str(values["cpus"]), "memory": memory}, "limits": limits}
    )
    return KUBERNETES.substitute(
        values,
        image=json.dumps(image),
        env=env,
        command_json=json.dumps(argv),
        resources=resources,
        checkpoint_dir_json=json.dumps(checkpoint_dir),
        backoff=4 * nodes,
        shm_size=shm_size,
    )
