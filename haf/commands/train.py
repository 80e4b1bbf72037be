"""``haf train --config NAME_OR_FILE``: the same run as ``python haf/train.py`` (one process, or under ``torchrun``
/ ``deepspeed`` as ``python -m haf.cli train``), for users who prefer the console command."""
from __future__ import annotations

import argparse

from haf.log_setup import add_verbosity_arguments

HELP = "train a model from a config (same as `python haf/train.py`; for several GPUs use deepspeed/torchrun)"


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The training command line shared by ``haf/train.py`` and ``haf train`` (argparse only: cheap)."""
    parser.add_argument("--config", required=True, metavar="NAME_OR_FILE",
                        help="a YAML file, or a shipped config's name (demo, cifar100/haframe; `haf config --list`)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.epochs=2 (repeatable; VALUE is YAML)")
    parser.add_argument("--output-dir", default=None, help="checkpoints, logs and metrics.json (default: "
                        "the config's output_dir, else runs/<dataset>/<config name>-seed<seed>)")
    # A folder that holds a run is refused unless one of these says what to do with it.
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument("--resume", action="store_true", help="continue the run in OUTPUT_DIR from its last.pt "
                          "(from scratch if it has none)")
    existing.add_argument("--overwrite", action="store_true", help="replace the run in OUTPUT_DIR (its "
                          "checkpoints, logs and metrics are deleted first)")
    # The deepspeed launcher passes --local_rank (torch.distributed.launch --local-rank); the LOCAL_RANK
    # environment variable is what is used.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    add_verbosity_arguments(parser)


def configure(parser: argparse.ArgumentParser) -> None:
    add_train_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from haf.training.loop import run_training
    from haf.training.run_config import load_config

    config = load_config(args.config, args.overrides, output_dir=args.output_dir)
    run_training(config, resume=args.resume, overwrite=args.overwrite)
    return 0
