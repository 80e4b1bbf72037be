"""The ``haf`` console command: a thin dispatcher over the modules of ``haf.commands``.

Subcommand modules are discovered, not listed, so adding one touches no shared file. Building the parser imports
every subcommand module, which is why those keep their module level to argparse: torch, DALI and DeepSpeed are
imported inside ``run()``, only for the subcommand chosen.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from typing import Sequence

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
    try:
        return int(module.run(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as error:
        # Bad input: one clear line naming the file/key/class at fault, no traceback.
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"haf {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
