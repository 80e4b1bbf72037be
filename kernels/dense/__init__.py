"""The HAFrame loss on a dense K × D frame: plain-PyTorch reference (``reference``), input rules (``inputs``), the
fused Triton kernels (``kernels``, ``persistent``) with their host side (``fused``, ``tiled``, ``config``, ``memo``)
and the ahead-of-time compile check (``aot``). Importing this package does not import Triton."""
