"""The ``hpo`` command line.

Exit codes: 0 done, 2 bad input (one clear line, no traceback), 1 failure. Heavy libraries
(torch, transformers, plotly) are imported only by the commands that use them, so
``hpo --help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Sequence

from hpo import __version__
from hpo.errors import HpoError

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2
VERBOSE_VAR = "HPO_VERBOSE"


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad flags as one line with exit code 2 (as argparse does)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def _storage_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", metavar="URL",
                   help="SQLAlchemy URL of the study database (default: $HPO_STORAGE, "
                        "else sqlite:///hpo.db)")


def _budget_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n-trials", type=_positive_int, metavar="N",
                   help="finished trials (complete + pruned) of the study, across all workers; "
                        "overrides the spec's budget.n_trials")
    p.add_argument("--timeout", type=_positive_float, metavar="SECONDS",
                   help="start no new trial after this many seconds; overrides budget.timeout")
    p.add_argument("--checkpoint-dir", metavar="DIR",
                   help="where trial checkpoints go (default: $HPO_CHECKPOINT_DIR, "
                        "else ./checkpoints)")


def _launch_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gpus", metavar="LIST|all",
                   help="GPUs to use, e.g. 0,1,2,3, or all (default for run: every visible "
                        "GPU, else one CPU worker)")
    p.add_argument("--per-gpu", type=_positive_int, default=1, metavar="K",
                   help="workers per GPU (default 1)")
    p.add_argument("--workers", type=_positive_int, metavar="N",
                   help="N CPU workers (machines without GPUs)")
    p.add_argument("--max-trials-per-process", type=_positive_int, metavar="N",
                   help="recycle each worker process after N trials")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hpo",
        description="Hyperparameter optimization for fine-tuning pretrained models: Optuna "
                    "studies whose trials are real fine-tuning jobs, in one shared database.",
    )
    parser.add_argument("--version", action="version", version=f"hpo {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show the libraries' own warnings and progress bars (also in "
                             "the workers; HPO_DEBUG=1 does too, with tracebacks)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("run", help="create or resume the spec's study and run its trials here",
                       description="Create the study of SPEC (or resume it) and run workers on "
                                   "this machine until the budget is met: one per visible GPU, "
                                   "else one CPU worker.")
    p.add_argument("spec", metavar="SPEC", help="study spec, e.g. search_spaces/digits.yaml")
    _storage_flag(p)
    _budget_flags(p)
    _launch_flags(p)
    p.add_argument("--no-preflight", action="store_true",
                   help="skip the checks of this machine's files (data, model directory, "
                        "checkpoint) before the study is written: for files only the "
                        "workers have")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("create", help="create the spec's study without running trials",
                       description="Validate SPEC and create its study, storing the whole spec "
                                   "in it so that workers need only the study name.")
    p.add_argument("spec", metavar="SPEC")
    _storage_flag(p)
    p.add_argument("--no-preflight", action="store_true",
                   help="skip the checks of this machine's files (data, model directory, "
                        "checkpoint) before the study is written: for files only the "
                        "workers have")
    p.set_defaults(func=cmd_create)

    p = sub.add_parser("worker", help="run trials of an existing study (one worker)",
                       description="Pull trials of STUDY until its global budget is met. Start "
                                   "one per GPU or machine against the same --storage; "
                                   "CUDA_VISIBLE_DEVICES pins it.")
    p.add_argument("study", metavar="STUDY")
    _storage_flag(p)
    _budget_flags(p)
    p.add_argument("--max-trials-per-process", type=_positive_int, metavar="N",
                   help="exit with code 75 (restart me) after N trials, so long studies do "
                        "not creep in memory; the launcher restarts it")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("launch", help="run supervised workers of a study on this machine",
                       description="One worker process per GPU slot (CUDA_VISIBLE_DEVICES set "
                                   "before torch loads), restarted if it dies; Ctrl-C re-queues "
                                   "the running trials. Run it on every machine against one "
                                   "PostgreSQL or MySQL --storage.")
    p.add_argument("study", metavar="STUDY")
    _storage_flag(p)
    _budget_flags(p)
    _launch_flags(p)
    p.set_defaults(func=cmd_launch)

    p = sub.add_parser("reap", help="fail and re-queue the trials of dead workers",
                       description="Fail the running trials whose worker stopped beating "
                                   "(the heartbeat grace period passed) and re-queue them to "
                                   "resume from their last checkpoint.")
    p.add_argument("study", metavar="STUDY")
    _storage_flag(p)
    p.add_argument("--all", action="store_true",
                   help="treat every running trial as dead, heartbeat or not (only when no "
                        "worker of the study is alive)")
    p.set_defaults(func=cmd_reap)

    p = sub.add_parser("template", help="print a Slurm or Kubernetes job for many machines",
                       description="Print a Slurm job array or a Kubernetes Job whose every "
                                   "node runs 'hpo launch STUDY --gpus all' against the shared "
                                   "database. A URL with a password is read from $HPO_STORAGE "
                                   "there, never written into the template.")
    p.add_argument("kind", choices=("slurm", "kubernetes"), metavar="slurm|kubernetes")
    p.add_argument("study", metavar="STUDY")
    _storage_flag(p)
    p.add_argument("--nodes", type=_positive_int, default=1, metavar="N",
                   help="machines: array tasks or pods (default 1)")
    p.add_argument("--gpus-per-node", type=_positive_int, default=1, metavar="N",
                   help="GPUs per machine, one worker each (default 1)")
    p.add_argument("--image", default="python:3.11", help="container image with hpo installed "
                   "(kubernetes)")
    p.add_argument("--checkpoint-dir", default="/shared/hpo-checkpoints", metavar="DIR",
                   help="a directory all machines share (default /shared/hpo-checkpoints)")
    p.add_argument("--python", metavar="PATH",
                   help="the Python with hpo installed on the compute nodes (slurm; default: "
                        "the one running this command, e.g. .venv/bin/python)")
    p.set_defaults(func=cmd_template)

    p = sub.add_parser("status", help="trial counts, best value and running trials",
                       description="Counts by state, the best value and the running trials "
                                   "with their latest epoch.")
    p.add_argument("study", metavar="STUDY")
    _storage_flag(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("best", help="the best trial: params, val loss, curve",
                       description="The best complete trial: its validation loss, "
                                   "hyperparameters, per-epoch validation loss and attributes.")
    p.add_argument("study", metavar="STUDY")
    _storage_flag(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_best)

    p = sub.add_parser("studies", help="list the studies in the storage",
                       description="Every study in the storage with counts and best values.")
    _storage_flag(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_studies)

    p = sub.add_parser("report", help="HTML report of a study; its figures into the dashboard",
                       description="Write a self-contained HTML report of STUDY that opens with "
                                   "no network (optimization history, learning curves, parallel "
                                   "coordinates, importances, slices, timeline of workers, "
                                   "pruning savings) and save the same figures and a summary "
                                   "note into the study for optuna-dashboard.")
    p.add_argument("study", metavar="STUDY")
    _storage_flag(p)
    p.add_argument("--out", metavar="FILE", help="the HTML file (default: dashboards/STUDY.html)")
    p.add_argument("--compare", metavar="OTHER", action="append", default=[],
                   help="compare with another study of the storage (repeatable)")
    p.add_argument("--no-dashboard", action="store_true",
                   help="do not save the figures and note into the study")
    p.add_argument("--png", action="store_true",
                   help="also write static PNGs into a folder beside the HTML (needs kaleido, "
                        "which needs Chrome; skipped with a note where it does not work)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("dashboard", help="start optuna-dashboard on the study database",
                       description="Serve optuna-dashboard on the study database with the "
                                   "artifact store the workers upload checkpoints to. Binds to "
                                   "127.0.0.1 unless --host says otherwise; Ctrl-C stops it.")
    _storage_flag(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=_port, default=8080, help="port (default 8080; 0: any free)")
    p.add_argument("--artifacts", metavar="DIR",
                   help="artifact store folder (default: $HPO_ARTIFACTS, else beside the SQLite "
                        "file as NAME-artifacts/, else ./hpo-artifacts)")
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser("trials", help="every trial of a study as CSV or JSON",
                       description="Every trial of STUDY: number, state, value, times, params, "
                                   "attributes and per-epoch validation loss.")
    p.add_argument("study", metavar="STUDY")
    _storage_flag(p)
    p.add_argument("--format", choices=("csv", "json"), default="csv", help="default csv")
    p.add_argument("--out", metavar="FILE", help="write here instead of standard output")
    p.set_defaults(func=cmd_trials)

    p = sub.add_parser("export", help="the best trial as a runnable spec, its weights and record",
                       description="Write the best trial of STUDY into a folder: spec.yaml (the "
                                   "best params fixed; run it with hpo run), its weights "
                                   "(model.pt: a torchvision state_dict; model/: a transformers "
                                   "save_pretrained folder), record.json (seeds, package "
                                   "versions, git commit, data fingerprint, how to load the "
                                   "weights) and trials.csv.")
    p.add_argument("study", metavar="STUDY")
    _storage_flag(p)
    p.add_argument("--out", metavar="DIR", help="the folder (default: exports/STUDY)")
    p.add_argument("--artifacts", metavar="DIR",
                   help="artifact store folder, where the checkpoint was uploaded elsewhere")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("retrain", help="retrain the best trial on train + val, test it",
                       description="Fine-tune the best trial's configuration (or --trial N's) "
                                   "once more on the trials' train and validation examples "
                                   "together, for the epoch its validation loss was best, and "
                                   "evaluate it on the test split where the dataset has one "
                                   "(or task.test_fraction). Writes model.pt and retrain.json "
                                   "and keeps a summary in the study (hpo.retrain).")
    p.add_argument("study", metavar="STUDY")
    _storage_flag(p)
    p.add_argument("--out", metavar="DIR", help="the folder (default: retrain/STUDY)")
    p.add_argument("--epochs", type=_positive_int, metavar="N",
                   help="epochs to train (default: the trial's best_epoch, else its epochs)")
    p.add_argument("--trial", type=int, metavar="N",
                   help="retrain complete trial N instead of the best")
    p.set_defaults(func=cmd_retrain)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}")
    return value


# --------------------------------------------------------------------------------------------
# Commands.


def cmd_create(args: argparse.Namespace) -> int:
    from hpo.preflight import load_checked_spec
    from hpo.storage import open_storage, redact, resolve_url
    from hpo.study import create_study

    # Validate, and check this machine's files, before touching the database.
    spec = load_checked_spec(args.spec, preflight=not args.no_preflight)
    url = resolve_url(args.storage)
    study = create_study(spec, open_storage(url))
    print(f"study {study.study_name} ready in {redact(url, url)}")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from hpo.preflight import load_checked_spec
    from hpo.storage import open_storage, resolve_url
    from hpo.study import create_study

    # Validate, and check this machine's files, before touching the database.
    spec = load_checked_spec(args.spec, preflight=not args.no_preflight)
    url = resolve_url(args.storage)
    create_study(spec, open_storage(url))
    return _launch(spec.study.name, url, args)


def cmd_launch(args: argparse.Namespace) -> int:
    from hpo.storage import open_storage, resolve_url
    from hpo.study import load_study

    url = resolve_url(args.storage)
    load_study(args.study, open_storage(url, create=False))  # a clear error before any fork
    return _launch(args.study, url, args)


def _launch(name: str, url: str, args: argparse.Namespace) -> int:
    import socket

    from hpo.launch import (
        SQLITE_SAFE_WORKERS,
        Slot,
        Supervisor,
        WorkerOptions,
        assign_slots,
        default_slots,
        describe_exit,
        parse_gpus,
    )
    from hpo.storage import ENV_VAR, open_storage, redact
    from hpo.study import load_study
    from hpo.summary import best_record, format_best, format_status, status_record
    from hpo.worker import reap_process

    gpus = parse_gpus(args.gpus)
    if gpus is None and args.workers is None:
        slots = default_slots()
    else:
        slots = assign_slots(gpus, args.per_gpu, args.workers)
    shown = redact(url, url)
    if url.startswith("sqlite") and len(slots) > SQLITE_SAFE_WORKERS:
        _say(f"hpo: warning: {len(slots)} workers on one SQLite file will wait on its lock; "
             f"for more than {SQLITE_SAFE_WORKERS} workers use PostgreSQL or MySQL")
    # The URL reaches the workers through their environment: a password in it must not show
    # in their command lines (``ps``).
    worker_args = WorkerOptions.from_args(args, study=name).to_argv()
    _say(f"hpo: study {name} in {shown}: {len(slots)} worker(s) "
         + ", ".join(s.label for s in slots))

    storage = open_storage(url, create=False)
    study, _ = load_study(name, storage)
    host = socket.gethostname()
    gpu_of = {f"{host}:w{s.index}": s.gpu for s in slots}

    def live_view() -> str:
        return format_status(status_record(study), gpus=gpu_of)

    def hand_on(slot: Slot, pid: int, code: int) -> None:
        # A dead worker's trial is failed and its retry queued now, not after the grace
        # period: a sibling (or the restarted worker) resumes it from its checkpoint.
        for number in reap_process(study, host, pid):
            _say(f"[{slot.label}] trial {number} of the dead worker (exit "
                 f"{describe_exit(code)}) failed; its retry resumes from its checkpoint")

    code = Supervisor(worker_args, slots, env={ENV_VAR: url}, say=_say, status=live_view,
                      on_exit=hand_on).run()
    best = best_record(study)
    if best is not None:
        _say(format_best(best))
    return code


def cmd_worker(args: argparse.Namespace) -> int:
    from optuna.trial import TrialState

    from hpo.launch import EXIT_GAVE_UP, EXIT_PREEMPTED, EXIT_RECYCLE, WorkerOptions
    from hpo.outage import outage_seconds
    from hpo.storage import open_storage, redact, resolve_url
    from hpo.study import load_study, make_sampler
    from hpo.summary import best_record, format_best, format_trial
    from hpo.worker import (
        MAX_CONSECUTIVE_FAILURES,
        RESTART_SEED_STRIDE,
        WORKER_INDEX_VAR,
        checkpoint_root,
        run_worker,
        worker_identity,
    )

    options = WorkerOptions.from_args(args)
    url = resolve_url(args.storage)
    worker, seed_offset = worker_identity()
    launched = WORKER_INDEX_VAR in os.environ
    # A launcher restarts its workers, also while the database restarts: they wait for it.
    storage = open_storage(url, create=False, outage=outage_seconds() if launched else 0)
    study, spec = load_study(options.study, storage, seed_offset=seed_offset)
    if study.get_trials(deepcopy=False):
        # A worker joining a study under way (restarted, recycled, relaunched) must not draw
        # the same parameters as the process that held its slot before.
        study.sampler = make_sampler(
            spec, seed_offset + RESTART_SEED_STRIDE * len(study.get_trials(deepcopy=False)))
    spec = spec.with_budget(options.n_trials, options.timeout)
    budget = spec.budget
    if not launched:
        _say(f"hpo: study {options.study} in {redact(url, url)}; worker {worker}; budget "
             + ", ".join(x for x in (budget.n_trials and f"{budget.n_trials} trials",
                                     budget.timeout and f"{budget.timeout:g}s") if x))

    def progress(trial: Any, trials: list[Any]) -> None:
        done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        best = min((t.value for t in trials if t.state == TrialState.COMPLETE), default=None)
        _say(format_trial(trial, done, budget.n_trials, best))

    report = run_worker(study, spec, worker=worker, checkpoint_dir=checkpoint_root(
        options.checkpoint_dir), on_trial=progress, max_trials=options.max_trials_per_process,
        storage_url=url)
    _say(f"hpo: worker {worker} stopped ({report.stopped_because}) after {report.trials} "
         "trial(s)")
    if report.stopped_because == "failures":
        _say(f"hpo: error: {MAX_CONSECUTIVE_FAILURES} trials failed in a row; last: "
             f"{report.last_failure}")
        return EXIT_GAVE_UP
    if report.stopped_because == "recycle":
        return EXIT_RECYCLE
    if report.stopped_because == "preempted":
        return EXIT_PREEMPTED
    if not launched:
        best = best_record(study)
        if best is not None:
            _say(format_best(best))
    return EXIT_OK


def cmd_template(args: argparse.Namespace) -> int:
    from sqlalchemy.engine import make_url

    from hpo.cluster import render
    from hpo.storage import open_storage, resolve_url
    from hpo.study import load_study

    url = resolve_url(args.storage)
    if url.startswith("sqlite"):
        raise HpoError("a cluster needs a database server every machine reaches "
                       "(--storage postgresql+psycopg2://... or mysql+pymysql://...), not SQLite")
    load_study(args.study, open_storage(url, create=False))  # the workers will need it
    host = make_url(url).host
    if host in (None, "", "localhost", "::1") or host.startswith("127."):
        _warn(f"the storage host {host or '(a local socket)'!r} is this machine as every "
              "node sees itself: the workers on other machines will not reach it; give the "
              "database's network name (--storage or HPO_STORAGE)")
    print(render(args.kind, args.study, url, nodes=args.nodes, gpus=args.gpus_per_node,
                 image=args.image, checkpoint_dir=args.checkpoint_dir,
                 python=args.python or sys.executable), end="")
    return EXIT_OK


def cmd_reap(args: argparse.Namespace) -> int:
    from hpo.storage import open_storage
    from hpo.study import load_study
    from hpo.worker import reap

    study, _ = load_study(args.study, open_storage(args.storage, create=False))
    failed = reap(study, everything=args.all)
    print(f"reaped {len(failed)} trial(s)" + (": " + ", ".join(f"#{n}" for n in failed)
                                              if failed else ""))
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from hpo.storage import open_storage
    from hpo.study import load_study
    from hpo.summary import format_status, status_record

    study, _ = load_study(args.study, open_storage(args.storage, create=False))
    record = status_record(study)
    print(json.dumps(record, indent=2) if args.json else format_status(record))
    return EXIT_OK


def cmd_best(args: argparse.Namespace) -> int:
    from hpo.storage import open_storage
    from hpo.study import load_study
    from hpo.summary import best_record, format_best

    study, _ = load_study(args.study, open_storage(args.storage, create=False))
    record = best_record(study)
    if record is None:
        raise HpoError(f"study {args.study!r} has no complete trial yet")
    print(json.dumps(record, indent=2) if args.json else format_best(record))
    return EXIT_OK


def cmd_studies(args: argparse.Namespace) -> int:
    from hpo.storage import open_storage
    from hpo.summary import format_studies, studies_records

    records = studies_records(open_storage(args.storage, create=False))
    print(json.dumps(records, indent=2) if args.json else format_studies(records))
    return EXIT_OK


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {text!r}")
    return value


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hpo.report import write_pngs, write_report
    from hpo.storage import open_storage, redact, resolve_url
    from hpo.study import load_study

    url = resolve_url(args.storage)
    storage = open_storage(url, create=False)
    study, _ = load_study(args.study, storage)
    others = [load_study(name, storage)[0] for name in args.compare]
    path, _, figures = write_report(study, Path(args.out) if args.out else None, compare=others,
                                    dashboard=not args.no_dashboard, storage=redact(url, url))
    _say(f"hpo: report of {args.study} written to {path} "
         f"({path.stat().st_size / 1e6:.1f} MB, opens with no network)")
    if not args.no_dashboard:
        _say(f"hpo: {len(figures)} figures and a summary note saved into the study; "
             "see them with: hpo dashboard")
    if args.png:
        pngs = write_pngs(figures, path.with_suffix(""))
        _say(f"hpo: {len(pngs)} PNGs written to {path.with_suffix('')}" if isinstance(pngs, list)
             else f"hpo: no PNGs: {pngs}")
    return EXIT_OK


def cmd_dashboard(args: argparse.Namespace) -> int:
    from hpo.dashboard import serve
    from hpo.storage import redact, resolve_url

    url = resolve_url(args.storage)

    def ready(address: str, artifacts: str) -> None:
        if args.host not in ("127.0.0.1", "localhost", "::1"):
            _say(f"hpo: warning: listening on {args.host}: anyone who reaches this port can "
                 "read and change the studies (optuna-dashboard has no login)")
        _say(f"hpo: optuna-dashboard on {redact(url, url)}; artifacts in {artifacts}")
        _say(f"hpo: open {address}   (Ctrl-C stops it)")

    try:
        serve(url, host=args.host, port=args.port, artifacts=args.artifacts, on_ready=ready)
    except KeyboardInterrupt:
        _say("hpo: dashboard stopped")
    return EXIT_OK


def cmd_trials(args: argparse.Namespace) -> int:
    from hpo.artifacts import artifact_dir
    from hpo.export import write_trials
    from hpo.storage import open_storage
    from hpo.study import load_study

    study, _ = load_study(args.study, open_storage(args.storage, create=False))
    store = artifact_dir(args.storage)  # uploads removed from it are not named
    if args.out is None:
        write_trials(study, args.format, sys.stdout, store)
        return EXIT_OK
    try:
        with open(args.out, "w", encoding="utf-8", newline="") as f:
            n = write_trials(study, args.format, f, store)
    except OSError as e:
        raise HpoError(f"cannot write {args.out}: {e.strerror or e}") from None
    print(f"hpo: {n} trials written to {args.out}", file=sys.stderr)
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hpo.export import export_best, format_export
    from hpo.report import default_path
    from hpo.storage import open_storage, resolve_url
    from hpo.study import load_study

    url = resolve_url(args.storage)
    study, spec = load_study(args.study, open_storage(url, create=False))
    out = Path(args.out) if args.out else Path("exports") / default_path(args.study).stem
    record = export_best(study, spec, out, storage_url=url, artifacts=args.artifacts)
    _say(format_export(record, out))
    return EXIT_OK


def cmd_retrain(args: argparse.Namespace) -> int:
    from hpo.retrain import format_retrain, retrain
    from hpo.storage import open_storage, resolve_url
    from hpo.study import load_study

    url = resolve_url(args.storage)
    study, spec = load_study(args.study, open_storage(url, create=False))
    record = retrain(study, spec, out=args.out, trial_number=args.trial, epochs=args.epochs,
                     storage_url=url, say=_say)
    _say(format_retrain(record))
    return EXIT_OK


def _say(text: str) -> None:
    print(text, flush=True)


def _warn(text: str) -> None:
    print(f"hpo: warning: {text}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hpo`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    logging.basicConfig(level=os.environ.get("HPO_LOG_LEVEL", "WARNING").upper(),
                        format="%(levelname)s %(name)s: %(message)s")
    if args.verbose:
        os.environ[VERBOSE_VAR] = "1"  # the launcher's workers inherit it
    _quiet_libraries(verbose=bool(os.environ.get(VERBOSE_VAR) or os.environ.get("HPO_DEBUG")))
    try:
        return args.func(args)
    except BrokenPipeError:
        # The reader went away (`hpo trials S | head`): stop quietly, as Unix tools do. Point
        # stdout at /dev/null so that the interpreter's last flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except HpoError as e:
        print(f"hpo: error: {_redact(str(e), args)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("hpo: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as e:  # a failure, not bad input: one line unless debugging
        if os.environ.get("HPO_DEBUG"):
            raise
        from hpo.outage import OUTAGE_VAR, database_outage, outage_seconds

        outage = database_outage(e)
        if outage is not None:  # Optuna's own wrapper says "invalid data": say what it was
            e = outage
        first = (str(getattr(e, "orig", None) or e).strip().splitlines() or [""])[0]
        what = (f"the database did not answer for {outage_seconds():g}s (${OUTAGE_VAR}): "
                if outage is not None else "")
        print(f"hpo: failed: {what}{type(e).__name__}: {_redact(first, args)} (HPO_DEBUG=1 "
              "shows the traceback)", file=sys.stderr)
        return EXIT_FAILURE


def _redact(text: str, args: argparse.Namespace) -> str:
    from hpo.storage import redact, resolve_url

    return redact(text, resolve_url(getattr(args, "storage", None)))


def _quiet_libraries(verbose: bool) -> None:
    """Optuna logs each trial at INFO with its params; the progress display says it better.
    Unless ``verbose``, no third-party warnings or progress bars either (transformers draws a
    "Loading weights" bar for every trial); set in the environment, so workers inherit it."""
    import warnings

    logging.getLogger("optuna").setLevel(logging.WARNING)
    os.environ.setdefault("OPTUNA_VERBOSITY", "WARNING")
    warnings.filterwarnings("ignore", message=".*is experimental.*")
    if not verbose:
        for var, value in (("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
                           ("TRANSFORMERS_VERBOSITY", "error"), ("PYTHONWARNINGS", "ignore")):
            os.environ.setdefault(var, value)
        warnings.simplefilter("ignore")
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.ERROR)
    except ImportError:
        pass


if __name__ == "__main__":
    sys.exit(main())
