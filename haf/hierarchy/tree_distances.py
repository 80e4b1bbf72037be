"""Class distances read off the tree, never a K × K matrix: for 10⁴–10⁶ classes (the tree-factorised frame).

d(i, j) = f(LCA(i, j)) for i ≠ j, 0 for i = j, with f(v) = subtree height of v (``lca-height``) or H − depth(v)
(``fixed-depth``), the same numbers as :meth:`haf.hierarchy.Hierarchy.distance_matrix`.

* pairs: LCA by binary lifting (the deeper node jumps up by the depth gap's bits, then both jump by halving
  powers of two while they differ), vectorised over any broadcast batch of pairs: O(pairs · log H) time and an
  O(N log H) table, so trees thousands of levels deep cost no K × H table and no H steps.
* expected cost (CRM): E_j = Σ_i p_i d(i, j) for every j by one bottom-up and one top-down pass. With
  P(v) = Σ_{leaves i under v} p_i and f(leaf) := 0, the leaves whose LCA with j is the path node w carry mass
  P(w) − P(child of w towards j), so E_j telescopes to E(root) = f(root)·P(root),
  E(v) = E(parent v) + (f(v) − f(parent v))·P(v), E_j = E(leaf j). O(B·N).
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["TreeDistances", "pair_distances"]

#: Rows per chunk of :meth:`TreeDistances.expected` (temporaries chunk × N float).
EXPECTED_ROW_CHUNK = 64


class TreeDistances:
    """Leaf distances of a class tree under a convention, as per-node tensors (``.to(device)`` moves them)."""

    def __init__(self, tree, convention: str) -> None:
        node_distance = tree.node_distance(convention)
        self.tree, self.convention = tree, convention
        self.levels = tree.levels()
        self.height = int(tree.depth.max())
        as_long = lambda a: torch.from_numpy(np.array(a, dtype=np.int64))  # noqa: E731
        self.parent = as_long(np.maximum(tree.parent, 0))
        self.depth = as_long(tree.depth)
        self.leaf_node = as_long(tree.leaf_node)
        self.node_distance = as_long(node_distance)
        self.jumps = torch.from_numpy(np.array(tree.jumps))  # 2^k-th ancestors (tree_arrays.binary_lifting)

    @classmethod
    def from_hierarchy(cls, hierarchy, convention: str) -> "TreeDistances":
        from haf.frame.tree import TreeArrays

        return cls(TreeArrays.from_hierarchy(hierarchy), convention)

    # -- the matrix-like surface the metrics use --------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return int(self.leaf_node.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return (self.num_classes, self.num_classes)

    @property
    def classes(self) -> tuple[str, ...] | None:
        return self.tree.classes

    @property
    def device(self) -> torch.device:
        return self.parent.device

    def to(self, device, dtype=None) -> "TreeDistances":  # dtype: accepted for symmetry with tensors, unused
        if torch.device(device) == self.device:
            return self
        moved = object.__new__(TreeDistances)
        moved.__dict__.update(self.__dict__)
        for name in ("parent", "depth", "leaf_node", "node_distance", "jumps"):
            setattr(moved, name, getattr(self, name).to(device))
        return moved

    def cpu(self) -> "TreeDistances":
        return self.to("cpu")

    def state(self) -> dict:
        """Compact arrays that define these distances (for checkpoints): breadth-first parents, class leaves."""
        return {"parent": torch.from_numpy(np.array(self.tree.parent)), "leaf_node": self.leaf_node.cpu(),
                "convention": self.convention}

    def same_as(self, other) -> bool:
        return isinstance(other, TreeDistances) and self.convention == other.convention and all(
            torch.equal(getattr(self, n).cpu(), getattr(other, n).cpu()) for n in ("parent", "leaf_node"))

    @property
    def matrix(self) -> np.ndarray:
        """The dense K × K int64 matrix (small K only: tests, dense methods on a small synthetic tree)."""
        k = self.num_classes
        rows = torch.arange(k)
        return torch.cat([self.pairs(rows[start:start + 256, None], rows[None, :])
                          for start in range(0, k, 256)]).numpy()

    # -- the tree computations ---------------------------------------------------------------------------------
    def lca(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Lowest common ancestors of node tensors (broadcast), by binary lifting: O(log H) steps."""
        a, b = torch.broadcast_tensors(a.to(self.device, torch.long), b.to(self.device, torch.long))
        swap = self.depth[a] < self.depth[b]
        a, b = torch.where(swap, b, a), torch.where(swap, a, b)  # a is the deeper one
        gap = self.depth[a] - self.depth[b]
        for k in range(self.jumps.shape[0]):
            a = torch.where(((gap >> k) & 1) == 1, self.jumps[k][a], a)
        for k in range(self.jumps.shape[0] - 1, -1, -1):
            ja, jb = self.jumps[k][a], self.jumps[k][b]
            move = ja != jb
            a, b = torch.where(move, ja, a), torch.where(move, jb, b)
        return torch.where(a == b, a, self.jumps[0][a])

    def pairs(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """d(i, j) for class-index tensors i, j (broadcast), int64."""
        i, j = torch.as_tensor(i, device=self.device), torch.as_tensor(j, device=self.device)
        return self.node_distance[self.lca(self.leaf_node[i], self.leaf_node[j])]

    def expected(self, probs: torch.Tensor) -> torch.Tensor:
        """Σ_i p_i d(i, j) for every class j (B × K, fp32; fp64 for fp64 probs), rows in chunks (docstring)."""
        if probs.dim() != 2 or probs.shape[1] != self.num_classes:
            raise ValueError(f"probs must be B × K with K = {self.num_classes}, got {tuple(probs.shape)}")
        dtype = torch.float64 if probs.dtype == torch.float64 else torch.float32
        tree = self.to(probs.device)
        f = tree.node_distance.to(dtype)
        step = f - f[tree.parent]  # f(v) − f(parent v); entry 0 unused
        out = torch.empty(probs.shape, dtype=dtype, device=probs.device)
        for start in range(0, probs.shape[0], EXPECTED_ROW_CHUNK):
            p = probs[start:start + EXPECTED_ROW_CHUNK].to(dtype)
            mass = p.new_zeros(p.shape[0], self.parent.shape[0])
            mass[:, tree.leaf_node] = p
            for lo, hi, plo, phi in reversed(self.levels):  # subtree sums, deepest level first
                mass[:, plo:phi].index_add_(1, tree.parent[lo:hi] - plo, mass[:, lo:hi])
            cost = mass  # overwritten top-down: a node's parent is final before the node itself
            cost[:, 0] = f[0] * mass[:, 0]
            for lo, hi, _, _ in self.levels:
                cost[:, lo:hi] = cost[:, tree.parent[lo:hi]] + step[lo:hi] * mass[:, lo:hi]
            out[start:start + p.shape[0]] = cost[:, tree.leaf_node]
        return out


def pair_distances(distances, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """d(i, j) from a dense K × K tensor or a :class:`TreeDistances` (index tensors broadcast)."""
    if isinstance(distances, TreeDistances):
        return distances.pairs(i, j)
    return distances[i, j]
