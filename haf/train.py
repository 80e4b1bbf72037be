"""Train a hierarchy-aware classifier; the same command under every launcher::

    deepspeed [--num_gpus N | --hostfile FILE] haf/train.py --config cifar100/haframe
    torchrun --nproc_per_node N haf/train.py --config ...
    python haf/train.py --config demo [--set train.epochs=2] [--output-dir DIR] [--resume | --overwrite] [-q | -v]

``--config`` takes a YAML file or a shipped config's name. The loop lives in :mod:`haf.training.loop`. Run as a
file, this script's folder (``haf/``) is first on ``sys.path``, which is why no module in ``haf/`` shares a name
with a standard-library or third-party module.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from haf.cli import run_reporting_errors
    from haf.commands.train import add_train_arguments, run
    from haf.log_setup import configure_logging

    parser = argparse.ArgumentParser(prog="haf/train.py", description="Train a hierarchy-aware classifier: "
                                     "deepspeed|torchrun|python haf/train.py --config NAME_OR_FILE")
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging(quiet=args.quiet, verbose=args.verbose)
    return run_reporting_errors("haf/train.py", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
