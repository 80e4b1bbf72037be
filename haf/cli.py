"""The ``haf`` console command: a thin dispatcher over the modules of ``haf.commands``.

Subcommand modules are discovered, not listed, so adding one touches no shared file. Building the parser imports
every subcommand module, which is why those keep their module level to argparse: torch, DALI and DeepSpeed are
imported inside ``run()``, only for the subcommand chosen.

Output: results on stdout, diagnostics on stderr (the ``haf`` logger, ``-q``/``-v`` on every subcommand). Expected
errors (bad input: :func:`haf.errors.is_expected`) print one line and exit 2; anything else is a bug and keeps its
traceback (exit 1). A closed stdout (``haf config --list | head -1``) ends the command quietly with 141, as a
SIGPIPE would.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import os
import pkgutil
import sys
import traceback
from typing import Callable, Sequence

import haf.commands
from haf.errors import is_expected
from haf.log_setup import add_verbosity_arguments, configure_logging

BROKEN_PIPE_EXIT = 141  # 128 + SIGPIPE: what a shell reports for a tool killed by a closed pipe


def _subcommand_modules() -> dict[str, str]:
    found = {}
    for info in pkgutil.iter_modules(haf.commands.__path__):
        if not info.name.startswith("_"):
            found[info.name.replace("_", "-")] = f"haf.commands.{info.name}"
    return dict(sorted(found.items()))


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, str]]:
    parser = argparse.ArgumentParser(prog="haf", description="Hierarchy-aware fixed-frame classification tools.")
    parser.add_argument("--version", action="version", version=f"haf {haf.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = _subcommand_modules()
    for name, module_name in modules.items():
        module = importlib.import_module(module_name)
        configure = getattr(module, "configure")
        help_text = getattr(module, "HELP", None)
        description = help_text.replace("%%", "%") if help_text else None  # argparse %-formats help, not this
        sub_parser = sub.add_parser(name, help=help_text, description=description)
        configure(sub_parser)
        if "--verbose" not in sub_parser._option_string_actions:
            if "--quiet" in sub_parser._option_string_actions:  # the subcommand's own --quiet (e.g. no progress bar)
                sub_parser.add_argument("-v", "--verbose", action="store_true", help="print debug messages too")
            else:
                add_verbosity_arguments(sub_parser)
    return parser, modules


def main(argv: Sequence[str] | None = None) -> int:
    parser, modules = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    configure_logging(quiet=getattr(args, "quiet", False), verbose=getattr(args, "verbose", False))
    module = importlib.import_module(modules[args.command])
    return run_reporting_errors(f"haf {args.command}", lambda: module.run(args))


def run_reporting_errors(prog: str, call: Callable[[], int | None]) -> int:
    """``call()``'s exit code, stdout flushed. An expected error (bad input, a user-caused OS error: missing
    folder, not a folder, disk full, permission, a refused run folder, a diverging run) becomes one line naming
    the file/key at fault and exit code 2; any other exception is a bug: its traceback, a line asking for a report,
    exit code 1. A closed stdout exits quietly (:data:`BROKEN_PIPE_EXIT`)."""
    try:
        code = int(call() or 0)
        sys.stdout.flush()  # inside the try: a reader that went away is noticed here, not at interpreter exit
        return code
    except BrokenPipeError:
        return _stdout_closed()
    except Exception as error:  # noqa: BLE001 - sorted into expected (one line) and bugs (traceback) below
        if not is_expected(error):
            traceback.print_exc(file=sys.stderr)
            print(f"{prog}: internal error: {type(error).__name__}: {error} (a bug: please report it with the "
                  "traceback above)", file=sys.stderr)
            return 1
        message = os_error_message(error) if isinstance(error, OSError) else error
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2


def _stdout_closed() -> int:
    """The reader of stdout went away (``| head``): send the rest of our output nowhere, so the interpreter's last
    flush cannot fail again, and exit like a tool killed by SIGPIPE (Python docs, "Note on SIGPIPE")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout without a file descriptor (captured): nothing left to protect
        pass
    return BROKEN_PIPE_EXIT


# Hints for errors whose system text leaves the cause unclear.
_OS_HINTS = {
    errno.EEXIST: "exists and is not a folder",
    errno.ENOTDIR: "a part of this path is a file, not a folder",
    errno.ENOSPC: "the disk is full",
}


def os_error_message(error: OSError) -> str:
    """``PATH: reason`` for an OSError that names its file; its own text otherwise (ours name the path)."""
    if error.filename is None:
        return str(error)
    paths = str(error.filename) + (f" -> {error.filename2}" if error.filename2 is not None else "")
    reason = error.strerror or str(error)
    hint = _OS_HINTS.get(error.errno)
    return f"{paths}: {reason}" + (f" ({hint})" if hint else "")


if __name__ == "__main__":
    sys.exit(main())
