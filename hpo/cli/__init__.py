"""The ``hpo`` command line.

Exit codes: 0 done, 2 bad input (one clear line, no traceback), 1 failure. Heavy libraries
(torch, transformers, plotly) are imported only by the commands that use them, so
``hpo --help`` is instant.

Inside: ``_table`` (the command table: one entry per command), ``_arguments`` (argument types,
the flags commands share, each command's own arguments),
``_handle`` (what a command gets: its flags, the storage and the study opened once),
``_run`` (the commands that run trials), ``_read`` (the commands that read studies) and
``_main`` (the parser built from the table; ``main``, which turns errors into exit codes).
"""

from hpo.cli._arguments import SHARED
from hpo.cli._handle import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_OK, Handle
from hpo.cli._main import VERBOSE_VAR, build_parser, main
from hpo.cli._table import COMMANDS, Command

__all__ = [
    "COMMANDS",
    "EXIT_BAD_INPUT",
    "EXIT_FAILURE",
    "EXIT_OK",
    "SHARED",
    "VERBOSE_VAR",
    "Command",
    "Handle",
    "build_parser",
    "main",
]
