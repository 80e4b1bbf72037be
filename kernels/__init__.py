"""Fused Triton kernels (installed as ``haf.kernels``), each beside its plain-PyTorch reference."""
