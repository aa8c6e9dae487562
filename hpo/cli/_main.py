"""The parser, built from the command table, and ``main``: one handle per command, and every
error as one line with its exit code."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from hpo import __version__
from hpo.cli._arguments import SHARED, storage_flag
from hpo.cli._handle import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_OK, Handle
from hpo.cli._table import COMMANDS
from hpo.errors import HpoError

VERBOSE_VAR = "HPO_VERBOSE"


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad flags as one line with exit code 2 (as argparse does)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``hpo`` parser: one subcommand per entry of ``COMMANDS``."""
    parser = _Parser(
        prog="hpo",
        description="Hyperparameter optimization for fine-tuning pretrained models: Optuna "
        "studies whose trials are real fine-tuning jobs, in one shared database.",
    )
    parser.add_argument("--version", action="version", version=f"hpo {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show the libraries' own warnings and progress bars (also in "
        "the workers; HPO_DEBUG=1 does too, with tracebacks)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.description)
        storage_flag(p)
        for name in command.shared:
            SHARED[name](p)
        command.arguments(p)
        if command.study:
            p.add_argument("study", metavar="STUDY")
        p.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hpo`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    logging.basicConfig(
        level=os.environ.get("HPO_LOG_LEVEL", "WARNING").upper(),
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.verbose:
        os.environ[VERBOSE_VAR] = "1"  # the launcher's workers inherit it
    _quiet_libraries(verbose=bool(os.environ.get(VERBOSE_VAR) or os.environ.get("HPO_DEBUG")))
    handle = Handle(args)
    try:
        return args.run(handle)
    except BrokenPipeError:
        # The reader went away (`hpo trials S | head`): stop quietly, as Unix tools do. Point
        # stdout at /dev/null so that the interpreter's last flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except HpoError as e:
        print(f"hpo: error: {handle.redact(str(e))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("hpo: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as e:  # a failure, not bad input: one line unless debugging
        if os.environ.get("HPO_DEBUG"):
            raise
        from hpo.store.outage import OUTAGE_VAR, database_outage, outage_seconds

        outage = database_outage(e)
        # Optuna's own wrapper says "invalid data": say what it was
        failure = e if outage is None else outage
        first = (str(getattr(failure, "orig", None) or failure).strip().splitlines() or [""])[0]
        what = (
            f"the database did not answer for {outage_seconds():g}s (${OUTAGE_VAR}): "
            if outage is not None
            else ""
        )
        print(
            f"hpo: failed: {what}{type(failure).__name__}: {handle.redact(first)} (HPO_DEBUG=1 "
            "shows the traceback)",
            file=sys.stderr,
        )
        return EXIT_FAILURE


def _quiet_libraries(verbose: bool) -> None:
    """Optuna logs each trial at INFO with its params; the progress display says it better.
    Unless ``verbose``, no third-party warnings or progress bars either (transformers draws a
    "Loading weights" bar for every trial); set in the environment, so workers inherit it."""
    import warnings

    logging.getLogger("optuna").setLevel(logging.WARNING)
    os.environ.setdefault("OPTUNA_VERBOSITY", "WARNING")
    warnings.filterwarnings("ignore", message=".*is experimental.*")
    if not verbose:
        for var, value in (
            ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
            ("TRANSFORMERS_VERBOSITY", "error"),
            ("PYTHONWARNINGS", "ignore"),
        ):
            os.environ.setdefault(var, value)
        warnings.simplefilter("ignore")
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.ERROR)
    except ImportError:
        pass
