"""``haf config``: list the shipped configs, or print one fully resolved (``base:`` composed, ``--set`` applied)."""
from __future__ import annotations

import argparse

HELP = "list the shipped configs (--list) or print one resolved, as YAML or --json"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", metavar="NAME_OR_FILE",
                        help="a YAML file, or a shipped config's name (demo, cifar100/haframe)")
    parser.add_argument("--list", action="store_true", help="print the names of the shipped configs")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.epochs=2 (repeatable; VALUE is YAML)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of YAML")


def run(args: argparse.Namespace) -> int:
    from haf.safe_files import json_text
    from haf.training.run_config import list_configs, load_config

    if args.list:
        print("\n".join(list_configs()))
        return 0
    if args.config is None:
        raise ValueError("name a config (or --list to see the shipped ones)")
    config = load_config(args.config, args.overrides)
    print(json_text(config.to_dict(), indent=2) if args.json else config.to_yaml(), end="\n" if args.json else "")
    return 0
