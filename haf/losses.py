"""The reference HAFrame loss (plain PyTorch), kept importable here; it lives beside its fused path in
:mod:`haf.kernels.frame_loss_reference`."""
from haf.kernels.frame_loss_reference import *  # noqa: F401,F403
from haf.kernels.frame_loss_reference import __all__  # noqa: F401
