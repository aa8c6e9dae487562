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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hpo",
        description="Hyperparameter optimization for fine-tuning pretrained models: Optuna "
                    "studies whose trials are real fine-tuning jobs, in one shared database.",
    )
    parser.add_argument("--version", action="version", version=f"hpo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("run", help="create or resume the spec's study and run its trials here",
                       description="Create the study of SPEC (or resume it) and run trials in "
                                   "this process until the budget is met.")
    p.add_argument("spec", metavar="SPEC", help="study spec, e.g. search_spaces/digits.yaml")
    _storage_flag(p)
    _budget_flags(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("create", help="create the spec's study without running trials",
                       description="Validate SPEC and create its study, storing the whole spec "
                                   "in it so that workers need only the study name.")
    p.add_argument("spec", metavar="SPEC")
    _storage_flag(p)
    p.set_defaults(func=cmd_create)

    p = sub.add_parser("worker", help="run trials of an existing study (one worker)",
                       description="Pull trials of STUDY until its global budget is met. Start "
                                   "one per GPU or machine against the same --storage.")
    p.add_argument("study", metavar="STUDY")
    _storage_flag(p)
    _budget_flags(p)
    p.set_defaults(func=cmd_worker)

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
    from hpo.spec import load_spec
    from hpo.storage import open_storage, redact, resolve_url
    from hpo.study import create_study

    spec = load_spec(args.spec)  # validate before touching the database
    url = resolve_url(args.storage)
    study = create_study(spec, open_storage(url))
    print(f"study {study.study_name} ready in {redact(url, url)}")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from hpo.spec import load_spec
    from hpo.storage import open_storage, resolve_url
    from hpo.study import create_study

    spec = load_spec(args.spec)
    url = resolve_url(args.storage)
    create_study(spec, open_storage(url))
    return _work(spec.study.name, url, args)


def cmd_worker(args: argparse.Namespace) -> int:
    from hpo.storage import resolve_url

    return _work(args.study, resolve_url(args.storage), args)


def _work(name: str, url: str, args: argparse.Namespace) -> int:
    from hpo.storage import open_storage, redact
    from hpo.study import load_study
    from hpo.summary import best_record, format_best, format_trial
    from optuna.trial import TrialState

    from hpo.worker import (
        MAX_CONSECUTIVE_FAILURES,
        checkpoint_root,
        count_states,
        run_worker,
        worker_identity,
    )

    worker, seed_offset = worker_identity()
    study, spec = load_study(name, open_storage(url, create=False), seed_offset=seed_offset)
    spec = spec.with_budget(args.n_trials, args.timeout)
    budget = spec.budget
    _say(f"hpo: study {name} in {redact(url, url)}; worker {worker}; budget "
         + ", ".join(x for x in (budget.n_trials and f"{budget.n_trials} trials",
                                 budget.timeout and f"{budget.timeout:g}s") if x))

    def progress(study: Any, trial: Any) -> None:
        counts = count_states(study)
        done = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
        best = best_record(study)
        _say(format_trial(trial, done, budget.n_trials, best and best["value"]))

    report = run_worker(study, spec, worker=worker, checkpoint_dir=checkpoint_root(
        args.checkpoint_dir), on_trial=progress)
    counts = count_states(study)
    _say(f"hpo: worker stopped ({report.stopped_because}) after {report.trials} trials; study: "
         + ", ".join(f"{s.name.lower()} {n}" for s, n in counts.items() if n))
    best = best_record(study)
    if best is not None:
        _say(format_best(best))
    if report.failed:
        _say(f"hpo: error: {MAX_CONSECUTIVE_FAILURES} trials failed in a row; last: "
             f"{report.last_failure}")
        return EXIT_FAILURE
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


def _say(text: str) -> None:
    print(text, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hpo`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    logging.basicConfig(level=os.environ.get("HPO_LOG_LEVEL", "WARNING").upper(),
                        format="%(levelname)s %(name)s: %(message)s")
    _quiet_libraries()
    try:
        return args.func(args)
    except HpoError as e:
        print(f"hpo: error: {_redact(str(e), args)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("hpo: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as e:  # a failure, not bad input: one line unless debugging
        if os.environ.get("HPO_DEBUG"):
            raise
        first = (str(e).strip().splitlines() or [""])[0]
        print(f"hpo: failed: {type(e).__name__}: {_redact(first, args)} (HPO_DEBUG=1 shows the "
              "traceback)", file=sys.stderr)
        return EXIT_FAILURE


def _redact(text: str, args: argparse.Namespace) -> str:
    from hpo.storage import redact, resolve_url

    return redact(text, resolve_url(getattr(args, "storage", None)))


def _quiet_libraries() -> None:
    """Optuna logs each trial at INFO with its params; the progress display says it better."""
    import warnings

    logging.getLogger("optuna").setLevel(logging.WARNING)
    os.environ.setdefault("OPTUNA_VERBOSITY", "WARNING")
    warnings.filterwarnings("ignore", message=".*is experimental.*")
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.ERROR)
    except ImportError:
        pass


if __name__ == "__main__":
    sys.exit(main())
