"""Train a hierarchy-aware classifier; the same command under every launcher::

    deepspeed [--num_gpus N | --hostfile FILE] haf/train.py --config configs/<dataset>/<method>.yaml
    torchrun --nproc_per_node N haf/train.py --config ...
    python haf/train.py --config configs/demo.yaml [--set train.epochs=2] [--output-dir DIR] [--resume]

The loop lives in :mod:`haf.training.loop`. Run as a file, this script's folder (``haf/``) is first on
``sys.path``, which is why no module in ``haf/`` shares a name with a standard-library or third-party module.
"""
from __future__ import annotations

import sys

from haf.training.loop import main

if __name__ == "__main__":
    sys.exit(main())
