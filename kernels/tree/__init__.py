"""The HAFrame loss on a tree-factorised frame: the frame's device tensors (``tensors``), the reference path and
its dispatch (``loss``) and the fused Triton path (``fused``). Importing this package does not import Triton."""
