"""Save / load a :class:`~haf.frame.tree.TreeFrame` as ``.npz`` (arrays and scalars only; never pickle).

Keys: ``parent``, ``leaf_node`` (breadth-first numbering), ``node_similarity`` g, ``u``, scalars ``beta``, ``q``,
``s_min``, ``gamma``, ``d_max``, ``max_gram_error``, ``gram_pairs``, strings ``convention``, ``format`` and, when
known, ``classes``. The edge weights a are re-derived from g (a_v = g(v) − g(parent v)). Written to a temporary
name in the target folder and renamed, so an interrupted write never leaves a partial file.
"""
from __future__ import annotations

import os

import numpy as np

from haf.safe_files import atomic_write

from .tree import TreeArrays, TreeFrame, _edges

FORMAT = "haf-tree-frame-v1"
_SCALARS = ("beta", "q", "s_min", "gamma", "d_max", "max_gram_error")


def save_tree_frame(frame: TreeFrame, path: str | os.PathLike) -> None:
    arrays = {
        "format": np.array(FORMAT),
        "parent": frame.tree.parent,
        "leaf_node": frame.tree.leaf_node,
        "node_similarity": frame.node_similarity,
        "u": frame.u,
        "convention": np.array(frame.convention),
        "s_min_searched": np.array(frame.s_min_searched),
        "gram_pairs": np.array(frame.gram_pairs),
        **{key: np.array(getattr(frame, key), dtype=np.float64) for key in _SCALARS},
    }
    if frame.tree.classes is not None:
        arrays["classes"] = np.array(frame.tree.classes, dtype=str)
    atomic_write(path, lambda stream: np.savez_compressed(stream, **arrays))


def load_tree_frame(path: str | os.PathLike) -> TreeFrame:
    """Read a frame written by :func:`save_tree_frame`; a missing key or another format is an error naming it."""
    with np.load(path, allow_pickle=False) as data:
        if "format" not in data.files or str(data["format"]) != FORMAT:
            raise ValueError(f"{path}: not a tree frame file (key 'format' must be {FORMAT!r})")
        missing = [k for k in ("parent", "leaf_node", "node_similarity", "u", "convention", *_SCALARS)
                   if k not in data.files]
        if missing:
            raise ValueError(f"{path}: key {missing[0]!r} is missing")
        classes = tuple(str(c) for c in data["classes"]) if "classes" in data.files else None
        tree = TreeArrays(data["parent"], data["leaf_node"], classes)
        g = np.array(data["node_similarity"], dtype=np.float64)
        if g.shape != (tree.num_nodes,) or data["u"].shape != (tree.num_nodes,):
            raise ValueError(f"{path}: node_similarity and u must have one entry per node ({tree.num_nodes})")
        scalars = {key: float(data[key]) for key in _SCALARS}
        return TreeFrame(
            tree, str(data["convention"]), scalars["gamma"], scalars["s_min"], bool(data["s_min_searched"]),
            scalars["d_max"], g, _edges(tree, g), np.array(data["u"], dtype=np.float64), scalars["beta"],
            scalars["q"], scalars["max_gram_error"], int(data["gram_pairs"]),
        )
