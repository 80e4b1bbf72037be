"""The reference HAFrame loss (plain PyTorch), kept importable here; it lives beside its fused path in
:mod:`haf.kernels.dense.reference`."""
from haf.kernels.dense.reference import *  # noqa: F401,F403
from haf.kernels.dense.reference import __all__  # noqa: F401
