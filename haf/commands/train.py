"""``haf train --config FILE``: the same run as ``python haf/train.py`` (one process, or under ``torchrun`` /
``deepspeed`` as ``python -m haf.cli train``), for users who prefer the console command."""
from __future__ import annotations

import argparse

HELP = "train a model from a YAML config (same as `python haf/train.py`; for several GPUs use deepspeed/torchrun)"


def configure(parser: argparse.ArgumentParser) -> None:
    from haf.training.run_config import add_train_arguments  # argparse + PyYAML only: cheap to import

    add_train_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from haf.training.run_config import load_config
    from haf.training.loop import run_training

    config = load_config(args.config, args.overrides, output_dir=args.output_dir)
    run_training(config, resume=args.resume)
    return 0
