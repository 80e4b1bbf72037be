"""The ``haf`` console command: a thin dispatcher over the modules of ``haf.commands``.

Subcommand modules are discovered, not listed, so adding one touches no shared file. Building the parser imports
every subcommand module, which is why those keep their module level to argparse: torch, DALI and DeepSpeed are
imported inside ``run()``, only for the subcommand chosen.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import pkgutil
import sys
from typing import Callable, Sequence

import haf.commands


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
        sub_parser = sub.add_parser(name, help=getattr(module, "HELP", None), description=getattr(module, "HELP", None))
        configure(sub_parser)
    return parser, modules


def main(argv: Sequence[str] | None = None) -> int:
    parser, modules = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(modules[args.command])
    return run_reporting_errors(f"haf {args.command}", lambda: module.run(args))


def run_reporting_errors(prog: str, call: Callable[[], int | None],
                         errors: tuple[type[BaseException], ...] = (ValueError, OSError, KeyError)) -> int:
    """``call()``'s exit code; bad input or a user-caused OS error (missing folder, not a folder, disk full,
    permission, a refused run folder, a diverging run) becomes one line naming the file/key/class at fault and
    exit code 2, no traceback."""
    try:
        return int(call() or 0)
    except errors as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        if isinstance(error, OSError):
            message = os_error_message(error)
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2


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
