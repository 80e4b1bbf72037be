"""Subcommands of the ``haf`` command, one module each (discovered by ``haf.cli``).

A subcommand module defines ``HELP`` (one line), ``configure(parser: argparse.ArgumentParser) -> None`` and
``run(args: argparse.Namespace) -> int``. The subcommand's name is the module name with ``_`` -> ``-``.
"""
