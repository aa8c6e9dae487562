"""The command table: one entry per ``hpo`` command (their flags: ``_arguments``).

An entry names the command, its help line and description, the function that adds its own
arguments, the shared flags it takes and the function that runs it. ``build_parser`` makes the
parser from the table; ``main`` runs the entry's function with a ``Handle``. Adding a command
is adding an entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hpo.cli import _read, _run
from hpo.cli._arguments import (
    Arguments,
    _best,
    _create_spec,
    _dashboard,
    _export,
    _none,
    _reap,
    _report,
    _retrain,
    _run_spec,
    _storage_proxy,
    _template,
    _trials,
    _verify,
    _worker,
)
from hpo.cli._handle import Handle


@dataclass(frozen=True)
class Command:
    """One command of ``hpo``."""

    name: str
    help: str
    """Its line in ``hpo --help``."""
    description: str
    """The paragraph atop ``hpo NAME --help``."""
    run: Callable[[Handle], int]
    """Does the work with the command's handle; returns the exit code."""
    arguments: Arguments = _none
    """Adds its own arguments, after ``--storage`` (which every command has) and ``shared``."""
    shared: tuple[str, ...] = ()
    """The shared flags it takes: keys of ``SHARED``."""
    study: bool = True
    """It takes a STUDY argument (after its own positional ones): the study its handle loads."""


# --------------------------------------------------------------------------------------------
# The table, in the order of ``hpo --help``.

COMMANDS: tuple[Command, ...] = (
    Command(
        "run",
        "create or resume the spec's study and run its trials here",
        "Create the study of SPEC (or resume it) and run workers on this machine until the "
        "budget is met: one per visible GPU, else one CPU worker.",
        _run.run,
        _run_spec,
        ("budget", "launch", "preflight"),
        study=False,
    ),
    Command(
        "create",
        "create the spec's study without running trials",
        "Validate SPEC and create its study, storing the whole spec in it so that workers "
        "need only the study name.",
        _run.create,
        _create_spec,
        ("preflight",),
        study=False,
    ),
    Command(
        "worker",
        "run trials of an existing study (one worker)",
        "Pull trials of STUDY until its global budget is met. Start one per GPU or machine "
        "against the same --storage; CUDA_VISIBLE_DEVICES pins it.",
        _run.worker,
        _worker,
        ("budget",),
    ),
    Command(
        "launch",
        "run supervised workers of a study on this machine",
        "One worker process per GPU slot (CUDA_VISIBLE_DEVICES set before torch loads), "
        "restarted if it dies; Ctrl-C re-queues the running trials. Run it on every "
        "machine against one PostgreSQL or MySQL --storage.",
        _run.launch,
        shared=("budget", "launch"),
    ),
    Command(
        "reap",
        "fail and re-queue the trials of dead workers",
        "Fail the running trials whose worker stopped beating (the heartbeat grace period "
        "passed) and re-queue them to resume from their last checkpoint.",
        _run.reap,
        _reap,
    ),
    Command(
        "template",
        "print a Slurm or Kubernetes job for many machines",
        "Print a Slurm job array or a Kubernetes Job whose every node runs 'hpo launch "
        "STUDY --gpus all' against the shared database. A URL with a password is read from "
        "$HPO_STORAGE there, never written into the template.",
        _run.template,
        _template,
    ),
    Command(
        "storage-proxy",
        "serve the study database to many workers over gRPC",
        "Run Optuna's gRPC storage proxy, with hpo's claims and heartbeats, in front of "
        "the --storage database (PostgreSQL, MySQL or SQLite; its tables are created "
        "where missing). Workers then take --storage grpc://HOST:PORT and need no "
        "database driver or credentials, and the database sees at most --threads "
        "connections however many workers there are. Ctrl-C or SIGTERM stops it.",
        _run.storage_proxy,
        _storage_proxy,
        study=False,
    ),
    Command(
        "status",
        "trial counts, best value and running trials",
        "Counts by state, the best value and the running trials with their latest epoch.",
        _read.status,
        shared=("json",),
    ),
    Command(
        "best",
        "the best trial (or the Pareto set): params, objective, curve, overfitting",
        "The best complete trial (by the study's direction): its objective (study.metric, "
        "by default the validation loss), hyperparameters, per-epoch values and "
        "attributes, and the train vs validation gap of its best evaluation (accuracy, "
        "loss, the objective's), flagged past --overfit-gap; --json carries best_metrics "
        "and overfitting. A study of several objectives: its Pareto set, a table of each "
        "trial's objectives and params (--json: a list of trials).",
        _read.best,
        _best,
        shared=("json",),
    ),
    Command(
        "studies",
        "list the studies in the storage",
        "Every study in the storage with counts and best values.",
        _read.studies,
        shared=("json",),
        study=False,
    ),
    Command(
        "report",
        "HTML report of a study; its figures into the dashboard",
        "Write a self-contained HTML report of STUDY that opens with no network "
        "(optimization history, learning curves, parallel coordinates, importances, "
        "slices, timeline of workers, pruning savings; the Pareto front of a study of several "
        "objectives) and save the same figures and a "
        "summary note into the study for optuna-dashboard.",
        _read.report,
        _report,
    ),
    Command(
        "dashboard",
        "start optuna-dashboard on the study database",
        "Serve optuna-dashboard on the study database with the artifact store the workers "
        "upload checkpoints to. Binds to 127.0.0.1 unless --host says otherwise; Ctrl-C "
        "stops it.",
        _read.dashboard,
        _dashboard,
        study=False,
    ),
    Command(
        "trials",
        "every trial of a study as CSV or JSON",
        "Every trial of STUDY: number, state, value, times, params, attributes and "
        "per-epoch validation loss.",
        _read.trials,
        _trials,
    ),
    Command(
        "export",
        "the best trial as a runnable spec, its weights and record",
        "Write the best trial of STUDY into a folder: spec.yaml (the best params fixed; "
        "run it with hpo run), its weights (model.pt: a torchvision state_dict; model/: a "
        "transformers save_pretrained folder), record.json (seeds, package versions, git "
        "commit, data fingerprint, how to load the weights) and trials.csv.",
        _read.export,
        _export,
    ),
    Command(
        "retrain",
        "retrain the best trial on train + val, test it",
        "Fine-tune the best trial's configuration (or --trial N's) once more on the "
        "trials' train and validation examples together, for the epoch its validation "
        "loss was best, and evaluate it on the test split where the dataset has one (or "
        "task.test_fraction). Writes model.pt and retrain.json and keeps a summary in the "
        "study (hpo.results.retrain).",
        _read.retrain,
        _retrain,
    ),
    Command(
        "verify",
        "rerun a trial and compare its curve with the recorded one",
        "Rerun the best trial of STUDY (or --trial N) in this process from its recorded "
        "params, seed and CPU thread count, stop it where it stopped, and print each "
        "recorded evaluation beside the rerun's, the largest difference and a verdict: "
        "identical, within tolerance (exit 0) or differs (exit 1). The built-in job only "
        "(hpo.results.verify).",
        _read.verify,
        _verify,
        shared=("json",),
    ),
)
