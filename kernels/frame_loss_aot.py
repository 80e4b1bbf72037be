"""``python -m haf.kernels.frame_loss_aot``: the ahead-of-time compile check of :mod:`haf.kernels.dense.aot`, under
the short name the docs use."""
import sys

from haf.kernels.dense.aot import main

if __name__ == "__main__":
    sys.exit(main())
