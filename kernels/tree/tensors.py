"""A tree-factorised frame (:class:`haf.frame.TreeFrame`) as device tensors, shared by both tree-loss paths.

:class:`TreeFrameTensors` holds the tree's structure (int64) and values (float64) as buffers that follow
``.to(device)``; :func:`directionless_as_inf` is the rule for a feature without a direction (as in the dense loss).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from haf.kernels.dense.reference import FEATURE_EPS

__all__ = ["TreeFrameTensors", "as_tree_frame", "directionless_as_inf", "is_tree_frame", "scale_saved_gradient"]


class TreeFrameTensors(nn.Module):
    """A :class:`haf.frame.TreeFrame` as buffers (float64 values, int64 structure) that follow ``.to(device)``.

    Everything is O(N): per-node arrays (``parent`` with the root its own parent, ``depth``, ``first_child``,
    ``child_count``, the values), ``leaf_node`` per class and ``levels``: per depth ≥ 1 the node range [lo, hi) and
    its parents' range [plo, phi) (nodes are breadth first). No K × H path table: a class's path is walked with
    ``parent`` (a caterpillar thousands of levels deep costs O(N), not K × H).
    """

    def __init__(self, frame) -> None:
        super().__init__()
        tree = frame.tree
        self.levels = tree.levels()
        self.num_classes = tree.num_classes
        self.num_nodes = tree.num_nodes
        self.beta = float(frame.beta)
        self.c = float(frame.c)
        as_long = lambda a: torch.from_numpy(np.array(a, dtype=np.int64))  # noqa: E731
        as_float = lambda a: torch.from_numpy(np.array(a, dtype=np.float64))  # noqa: E731
        self.register_buffer("parent", as_long(np.maximum(tree.parent, 0)), persistent=False)
        self.register_buffer("depth", as_long(tree.depth), persistent=False)
        self.register_buffer("leaf_node", as_long(tree.leaf_node), persistent=False)
        self.register_buffer("sqrt_a", as_float(frame.sqrt_a), persistent=False)
        self.register_buffer("g", as_float(frame.node_similarity), persistent=False)
        self.register_buffer("u", as_float(frame.u), persistent=False)
        self._check_values()
        first_child, child_count, self.level_max_children = _children(self.parent, self.levels, self.num_nodes)
        self.register_buffer("first_child", first_child, persistent=False)
        self.register_buffer("child_count", child_count, persistent=False)
        self._check_leaves()
        #: H, the deepest class's depth: the steps of a walk from a leaf to the root.
        self.height = int(self.depth[self.leaf_node].max())
        self._casts: dict = {}

    def _check_values(self) -> None:
        """What the kernels assume, checked once where the tree enters: finite values, consistent structure."""
        nodes, classes = self.num_nodes, self.num_classes
        for name, value in (("beta", self.beta), ("c", self.c)):
            if not np.isfinite(value):
                raise ValueError(f"tree frame: {name} = {value} is not finite")
        for name in ("sqrt_a", "g", "u"):
            tensor = self._buffers[name]
            if tensor.shape != (nodes,):
                raise ValueError(f"tree frame: {name} has shape {tuple(tensor.shape)}, expected ({nodes},) (one per node)")
            if not bool(torch.isfinite(tensor).all()):
                raise ValueError(f"tree frame: {name} has non-finite values (NaN or inf)")
        if bool((self.sqrt_a < 0).any()):
            raise ValueError("tree frame: sqrt_a has negative values (square roots of the level weights)")
        if self.leaf_node.shape != (classes,) or bool(((self.leaf_node < 1) | (self.leaf_node >= nodes)).any()):
            raise ValueError(f"tree frame: leaf_node must hold {classes} node indices in [1, {nodes})")
        if self.parent.shape != (nodes,) or bool((self.parent[1:] >= torch.arange(1, nodes)).any()):
            raise ValueError("tree frame: parent must give every non-root node a parent numbered before it")
        if self.depth.shape != (nodes,) or int(self.depth[0]) != 0 or \
                bool((self.depth[1:] != self.depth[self.parent[1:]] + 1).any()):
            raise ValueError("tree frame: depth must be 0 at the root and one more than the parent's elsewhere")

    def _check_leaves(self) -> None:
        """leaf_node lists every leaf (a node without children) exactly once: each class's walk to the root is
        the path of one leaf."""
        leaves = self.child_count == 0
        if int(leaves.sum()) != self.num_classes or not bool(leaves[self.leaf_node].all()) or \
                torch.unique(self.leaf_node).numel() != self.num_classes:
            raise ValueError(f"tree frame: leaf_node must list each of the {int(leaves.sum())} leaves exactly once")

    @property
    def width(self) -> int:
        return self.num_nodes - 1

    def cast(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        """A buffer in ``dtype`` (cached per device: the row chunks and training steps reuse it)."""
        key = (name, dtype)
        cached = self._casts.get(key)
        if cached is None or cached.device != self._buffers[name].device:
            cached = self._casts[key] = self._buffers[name].to(dtype)
        return cached

    def _apply(self, fn, recurse: bool = True) -> "TreeFrameTensors":
        """Device moves apply; dtype casts (a module-wide ``.half()``) do not: the frame is the loss's target."""
        before = dict(self._buffers)
        super()._apply(fn, recurse)
        for name, original in before.items():
            after = self._buffers[name]
            if after.dtype != original.dtype:
                self._buffers[name] = original.to(device=after.device)
        return self

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, width={self.width}, depth={self.height}"


def _children(parent: torch.Tensor, levels, nodes: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(first child, child count) per node and the most children of a parent per level: nodes are breadth first
    with children grouped in their parents' order, so each parent's children are one contiguous range."""
    first = torch.zeros(nodes, dtype=torch.int64)
    count = torch.zeros(nodes, dtype=torch.int64)
    most = []
    for lo, hi, plo, phi in levels:
        parents = parent[lo:hi]
        if bool((parents[1:] < parents[:-1]).any()):
            raise ValueError(f"tree frame: parent of nodes [{lo}, {hi}) is not grouped in parent order")
        per = torch.bincount(parents - plo, minlength=phi - plo)
        count[plo:phi] = per
        first[plo:phi] = lo + torch.cumsum(per, 0) - per
        most.append(int(per.max()) if per.numel() else 0)
    return first, count, most


def is_tree_frame(frame) -> bool:
    from haf.frame import TreeFrame

    return isinstance(frame, (TreeFrame, TreeFrameTensors))


def as_tree_frame(frame, device: torch.device) -> TreeFrameTensors:
    tensors = frame if isinstance(frame, TreeFrameTensors) else TreeFrameTensors(frame)
    return tensors.to(device) if tensors.parent.device != device else tensors


def directionless_as_inf(norm: torch.Tensor) -> torch.Tensor:
    """‖h‖ with the dense loss's rule for a feature without a direction (‖h‖ < FEATURE_EPS): n = ∞ there, so every
    cos = z/n is 0, the cosine term is the constant Σ_i S[i, y]², and its share of dℓ/dh (∝ 1/n) vanishes."""
    return torch.where(norm >= FEATURE_EPS, norm, torch.full_like(norm, float("inf")))


def scale_saved_gradient(ctx, grad_losses: torch.Tensor):
    """The backward of both tree-loss paths: dℓ_b/dh_b was computed in the forward; scale it by dL/dℓ_b. Out of
    place, so the saved gradient survives for another backward (``retain_graph=True``). The saved gradient is a
    constant of the forward, so a derivative of this backward (``create_graph=True``) is refused."""
    if torch.is_grad_enabled():
        raise RuntimeError("double backward through the tree frame loss is not supported")
    (grad,) = ctx.saved_tensors
    return grad * grad_losses[:, None].to(grad.dtype), None, None, None, None, None
