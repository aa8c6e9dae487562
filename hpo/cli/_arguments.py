"""The commands' arguments: argument types (a bad value is one line and exit code 2), the
flags several commands share (``SHARED``, each defined once) and each command's own arguments.
The command table (``_table``) names them per command.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

Arguments = Callable[[argparse.ArgumentParser], None]


def _none(p: argparse.ArgumentParser) -> None:
    """A command without arguments of its own."""


# --------------------------------------------------------------------------------------------
# Argument types: a bad value is one line and exit code 2, as argparse's own errors.


def _number(
    convert: Callable[[str], Any], ok: Callable[[Any], bool], expected: str
) -> Callable[[str], Any]:
    """An argument type: ``convert`` the text, refuse it unless ``ok``."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


def _checked(check: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argument type from a check that raises ``ValueError`` with what it expected."""

    def parse(text: str) -> Any:
        try:
            return check(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


positive_int = _number(int, lambda v: v >= 1, "an integer >= 1")


def _per_gpu(text: str) -> int | str:
    """``--per-gpu``: an integer >= 1, or ``auto``."""
    if text == "auto":
        return text
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected an integer >= 1 or auto, got {text!r}"
        ) from None


positive_float = _number(float, lambda v: v > 0, "seconds > 0")
port = _number(int, lambda v: 0 <= v <= 65535, "a port number 0-65535")
non_negative_float = _number(float, lambda v: v >= 0, "a number >= 0")


# --------------------------------------------------------------------------------------------
# The shared flags, each defined once.


def storage_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--storage",
        metavar="URL",
        help="SQLAlchemy URL of the study database (default: $HPO_STORAGE, else sqlite:///hpo.db)",
    )


def _budget(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--n-trials",
        type=positive_int,
        metavar="N",
        help="finished trials (complete + pruned) of the study, across all workers; "
        "overrides the spec's budget.n_trials",
    )
    p.add_argument(
        "--timeout",
        type=positive_float,
        metavar="SECONDS",
        help="start no new trial after this many seconds; overrides budget.timeout",
    )
    p.add_argument(
        "--checkpoint-dir",
        metavar="DIR",
        help="where trial checkpoints go (default: $HPO_CHECKPOINT_DIR, else ./checkpoints)",
    )


def _launch(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--gpus",
        metavar="LIST|all",
        help="GPUs to use, e.g. 0,1,2,3, or all (default for run: every visible "
        "GPU, else one CPU worker); a GPU that does not exist here is an error",
    )
    p.add_argument(
        "--per-gpu",
        type=_per_gpu,
        default=1,
        metavar="K|auto",
        help="workers per GPU (default 1); auto: one until a trial's peak memory is "
        "measured, then as many as fit in 85%% of the GPU's memory, one fewer after an "
        "out-of-memory there (the trial is retried)",
    )
    p.add_argument(
        "--workers", type=positive_int, metavar="N", help="N CPU workers (machines without GPUs)"
    )
    p.add_argument(
        "--max-trials-per-process",
        type=positive_int,
        metavar="N",
        help="recycle each worker process after N trials",
    )


def _preflight(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-preflight",
        action="store_true",
        help="skip the checks of this machine's files (data, model directory, "
        "checkpoint) before the study is written: for files only the "
        "workers have",
    )


def _json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON")


SHARED: dict[str, Arguments] = {
    "budget": _budget,
    "launch": _launch,
    "preflight": _preflight,
    "json": _json,
}


# --------------------------------------------------------------------------------------------
# Each command's own arguments.


def _run_spec(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC", help="study spec, e.g. search_spaces/digits.yaml")


def _create_spec(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC")


def _worker(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-trials-per-process",
        type=positive_int,
        metavar="N",
        help="exit with code 75 (restart me) after N trials, so long studies do "
        "not creep in memory; the launcher restarts it",
    )


def _reap(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--all",
        action="store_true",
        help="treat every running trial as dead, heartbeat or not (only when no "
        "worker of the study is alive)",
    )


def _template(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=("slurm", "kubernetes"), metavar="slurm|kubernetes")
    p.add_argument(
        "--nodes",
        type=positive_int,
        default=1,
        metavar="N",
        help="machines: array tasks or pods (default 1)",
    )
    p.add_argument(
        "--gpus-per-node",
        type=_number(int, lambda v: v >= 0, "an integer >= 0"),
        default=1,
        metavar="N",
        help="GPUs per machine, one worker each (default 1; "
        "0: machines without GPUs, one CPU worker each)",
    )
    p.add_argument(
        "--image", default="python:3.11", help="container image with hpo installed (kubernetes)"
    )
    p.add_argument(
        "--checkpoint-dir",
        default="/shared/hpo-checkpoints",
        metavar="DIR",
        help="a directory all machines share (default /shared/hpo-checkpoints)",
    )
    p.add_argument(
        "--python",
        metavar="PATH",
        help="the Python with hpo installed on the compute nodes (slurm; default: "
        "the one running this command, e.g. .venv/bin/python)",
    )
    from hpo.run import cluster

    p.add_argument(
        "--time",
        type=_checked(cluster.slurm_time),
        metavar="LIMIT",
        help=f"each array task's time limit (slurm; default {cluster.DEFAULT_TIME}): "
        "MINUTES, HH:MM:SS or DAYS-HH[:MM[:SS]]; a task stopped at it re-queues its trials",
    )
    p.add_argument(
        "--partition",
        type=_checked(cluster.slurm_names),
        metavar="NAME",
        help="the partition, or a comma-separated list (slurm; default: the cluster's)",
    )
    p.add_argument(
        "--account",
        type=_checked(cluster.slurm_names),
        metavar="NAME",
        help="the account charged (slurm; default: your default account)",
    )
    p.add_argument(
        "--cpu",
        type=_checked(cluster.kubernetes_cpu),
        metavar="CORES",
        help=f"each pod's CPU request, e.g. 8 or 7500m (kubernetes; default "
        f"{cluster.CPUS_PER_WORKER} per GPU, or per CPU worker; no CPU limit)",
    )
    p.add_argument(
        "--memory",
        type=_checked(cluster.kubernetes_memory),
        metavar="SIZE",
        help=f"each pod's memory request and limit, e.g. 32Gi (kubernetes; default "
        f"{cluster.MEMORY_PER_WORKER_GI}Gi per GPU, or per CPU worker)",
    )
    p.add_argument(
        "--shm-size",
        type=_checked(cluster.kubernetes_memory),
        metavar="SIZE",
        help="the memory-backed /dev/shm the DataLoader workers share batches through "
        "(kubernetes; default a quarter of --memory, which it counts against)",
    )


def _storage_proxy(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; 0.0.0.0 for workers on other "
        "machines: the proxy has no login or TLS, keep it on a trusted network)",
    )
    p.add_argument("--port", type=port, default=13000, help="port (default 13000; 0: any free)")
    p.add_argument(
        "--threads",
        type=positive_int,
        default=10,
        metavar="N",
        help="threads serving the workers' calls, each with at most one database "
        "connection (default 10)",
    )


def _report(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", metavar="FILE", help="the HTML file (default: dashboards/STUDY.html)")
    p.add_argument(
        "--compare",
        metavar="OTHER",
        action="append",
        default=[],
        help="compare with another study of the storage (repeatable)",
    )
    p.add_argument(
        "--no-dashboard",
        action="store_true",
        help="do not save the figures and note into the study",
    )
    p.add_argument(
        "--png",
        action="store_true",
        help="also write static PNGs into a folder beside the HTML (needs kaleido, "
        "which needs Chrome; skipped with a note where it does not work)",
    )


def _dashboard(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; 0.0.0.0 opens it to the network)",
    )
    p.add_argument("--port", type=port, default=8080, help="port (default 8080; 0: any free)")
    p.add_argument(
        "--artifacts",
        metavar="DIR",
        help="artifact store folder (default: $HPO_ARTIFACTS, else beside the SQLite "
        "file as NAME-artifacts/, else ./hpo-artifacts)",
    )


def _best(p: argparse.ArgumentParser) -> None:
    from hpo.results.summary import OVERFIT_GAP

    p.add_argument(
        "--overfit-gap",
        type=non_negative_float,
        default=OVERFIT_GAP,
        metavar="GAP",
        help="flag overfitting where a training score (accuracy, or the objective's) beats "
        f"the validation one by more than GAP at the best evaluation (default {OVERFIT_GAP})",
    )


def _trials(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=("csv", "json"), default="csv", help="default csv")
    p.add_argument("--out", metavar="FILE", help="write here instead of standard output")


def _trial(p: argparse.ArgumentParser, verb: str) -> None:
    """``--trial N``: the complete trial a command takes instead of the best."""
    p.add_argument(
        "--trial",
        type=int,
        metavar="N",
        help=f"{verb} complete trial N instead of the best (a study of several "
        "objectives needs it: one of its Pareto set)",
    )


def _export(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", metavar="DIR", help="the folder (default: exports/STUDY)")
    p.add_argument(
        "--artifacts",
        metavar="DIR",
        help="artifact store folder, where the checkpoint was uploaded elsewhere",
    )
    _trial(p, "export")


def _retrain(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", metavar="DIR", help="the folder (default: retrain/STUDY)")
    p.add_argument(
        "--epochs",
        type=positive_int,
        metavar="N",
        help="epochs to train (default: the trial's best_epoch, else its epochs)",
    )
    _trial(p, "retrain")


def _verify(p: argparse.ArgumentParser) -> None:
    _trial(p, "rerun")
    p.add_argument(
        "--threads",
        type=positive_int,
        metavar="N",
        help="CPU threads for the rerun (default: the trial's recorded count)",
    )
    p.add_argument(
        "--tolerance",
        type=non_negative_float,
        default=1e-6,
        metavar="X",
        help="the relative difference a step may have and count as reproduced (default 1e-6)",
    )
