"""Save / load a :class:`~haf.frame.tree.TreeFrame` as ``.npz`` (arrays and scalars only; never pickle).

Keys: ``parent``, ``leaf_node`` (breadth-first numbering), ``node_similarity`` g, ``u``, scalars ``beta``, ``q``,
``s_min``, ``gamma``, ``d_max``, ``max_gram_error``, ``gram_pairs``, strings ``convention``, ``format`` and, when
known, ``classes``. The edge weights a are re-derived from g (a_v = g(v) − g(parent v)). Written to a temporary
name in the target folder and renamed, so an interrupted write never leaves a partial file. Loading treats the
file as untrusted (:func:`load_tree_frame`: bounded inflation, shapes from the headers first, values checked).
"""
from __future__ import annotations

import math
import os
import zipfile

import numpy as np

from haf.safe_files import atomic_write

from .tree import TreeArrays, TreeFrame, _edges, build_tree_frame

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


# Inflating a member may not exceed this many times its compressed size (deflate reaches ~1000:1 on a bomb; the
# real arrays — floats, breadth-first parents, class names — stay far below), beyond a small allowance.
MAX_INFLATION = 200
INFLATION_ALLOWANCE = 1 << 20
# Scalars and strings other than ``classes`` are tiny; a class name longer than this is not a name.
MAX_NAME_CHARS = 4096
_INTEGER_KEYS = ("parent", "leaf_node")
_PER_NODE = ("parent", "node_similarity", "u")
# Agreement of the stored arrays with the frame their tree, gamma, convention and s_min define.
CONSISTENCY_RTOL = 1e-9


def _headers(path: str, archive: zipfile.ZipFile) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """(shape, dtype) of every ``.npy`` member, read from its header before anything is inflated; refuses a
    member whose declared size exceeds its compressed size × :data:`MAX_INFLATION` or disagrees with its header."""
    headers = {}
    for info in archive.infolist():
        if not info.filename.endswith(".npy"):
            raise ValueError(f"{path}: member {info.filename!r} is not an array (.npy)")
        key = info.filename[:-4]
        if info.file_size > max(INFLATION_ALLOWANCE, MAX_INFLATION * info.compress_size):
            raise ValueError(f"{path}: array {key!r} claims {info.file_size} bytes from {info.compress_size} "
                             f"compressed (more than {MAX_INFLATION}:1); refusing to inflate it")
        with archive.open(info) as stream:
            version = np.lib.format.read_magic(stream)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = reader(stream, max_header_size=10_000)
            header_bytes = stream.tell() if hasattr(stream, "tell") else 0
        if dtype.hasobject:
            raise ValueError(f"{path}: array {key!r} holds Python objects; refusing it")
        data_bytes = math.prod(shape) * dtype.itemsize
        if header_bytes and data_bytes != info.file_size - header_bytes:
            raise ValueError(f"{path}: array {key!r}: its header claims shape {shape} ({data_bytes} bytes), the "
                             f"archive {info.file_size - header_bytes} bytes")
        headers[key] = (shape, dtype)
    return headers


def _check_shapes(path: str, headers: dict[str, tuple[tuple[int, ...], np.dtype]]) -> None:
    missing = [k for k in ("format", "parent", "leaf_node", "node_similarity", "u", "convention", *_SCALARS)
               if k not in headers]
    if "format" in headers and headers["format"][0] != ():
        missing = ["format"]
    if missing:
        if missing[0] == "format":
            raise ValueError(f"{path}: not a tree frame file (key 'format' must be {FORMAT!r})")
        raise ValueError(f"{path}: key {missing[0]!r} is missing")
    (n,) = headers["parent"][0] if len(headers["parent"][0]) == 1 else (None,)
    if n is None:
        raise ValueError(f"{path}: array 'parent' must be 1-d, got shape {headers['parent'][0]}")
    for key in _PER_NODE:
        if headers[key][0] != (n,):
            raise ValueError(f"{path}: array {key!r} must have one entry per node ({n}), got shape {headers[key][0]}")
    k = headers["leaf_node"][0]
    if len(k) != 1 or not 2 <= k[0] <= n:
        raise ValueError(f"{path}: array 'leaf_node' must list 2..{n} classes, got shape {k}")
    if "classes" in headers:
        shape, dtype = headers["classes"]
        if shape != k or dtype.kind != "U" or dtype.itemsize > 4 * MAX_NAME_CHARS:
            raise ValueError(f"{path}: array 'classes' must be {k[0]} strings, got {dtype} {shape}")
    for key in _INTEGER_KEYS:
        if headers[key][1].kind not in "iu":
            raise ValueError(f"{path}: array {key!r} must hold integers, got {headers[key][1]}")
    for key in ("node_similarity", "u", *_SCALARS, "gram_pairs", "s_min_searched"):
        if key in headers and (headers[key][1].kind not in "biuf"):
            raise ValueError(f"{path}: array {key!r} must be numeric, got {headers[key][1]}")
    for key in (*_SCALARS, "convention", "gram_pairs", "s_min_searched"):
        if key in headers and headers[key][0] != ():
            raise ValueError(f"{path}: {key!r} must be a scalar, got shape {headers[key][0]}")
    if headers["convention"][1].kind != "U" or headers["convention"][1].itemsize > 4 * 64:
        raise ValueError(f"{path}: 'convention' must be a short string")


def _finite(path: str, key: str, values: np.ndarray) -> None:
    bad = np.flatnonzero(~np.isfinite(np.atleast_1d(values)))
    if bad.size:
        raise ValueError(f"{path}: array {key!r} holds a non-finite value ({np.atleast_1d(values)[bad[0]]} at "
                         f"index {int(bad[0])})")


def load_tree_frame(path: str | os.PathLike) -> TreeFrame:
    """Read a frame written by :func:`save_tree_frame`, as untrusted input; every error is one line naming the
    file and the array.

    Before inflating: every member's declared size against its compressed size and its ``.npy`` header, and the
    shapes against each other (one entry per node, one name per class). After: integers and finite values, the
    tree's own checks, and the stored frame (g, u, β, q) against the one its tree, γ, convention and s_min define
    (rebuilt in O(N)), so a file whose values were altered gives an error, not a wrong loss.
    """
    source = str(path)
    try:
        with zipfile.ZipFile(path) as archive:
            _check_shapes(source, _headers(source, archive))
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (zipfile.BadZipFile, EOFError) as error:
        raise ValueError(f"{source}: not a readable .npz archive ({error})") from None
    except ValueError as error:
        if str(error).startswith(source):
            raise
        raise ValueError(f"{source}: not a readable tree frame ({error})") from None
    if str(arrays["format"]) != FORMAT:
        raise ValueError(f"{source}: not a tree frame file (key 'format' must be {FORMAT!r})")
    for key in ("node_similarity", "u", *_SCALARS):
        if key != "max_gram_error":  # NaN when the frame was saved unchecked
            _finite(source, key, arrays[key])
    convention = str(arrays["convention"])
    classes = tuple(str(c) for c in arrays["classes"]) if "classes" in arrays else None
    try:
        tree = TreeArrays(arrays["parent"], arrays["leaf_node"], classes)
        scalars = {key: float(arrays[key]) for key in _SCALARS}
        rebuilt = build_tree_frame(tree, scalars["gamma"], convention, s_min=scalars["s_min"], check=False)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None
    stored = {"node_similarity": np.asarray(arrays["node_similarity"], dtype=np.float64),
              "u": np.asarray(arrays["u"], dtype=np.float64)}
    for key, want in (("node_similarity", rebuilt.node_similarity), ("u", rebuilt.u),
                      ("beta", rebuilt.beta), ("q", rebuilt.q), ("d_max", rebuilt.d_max)):
        got = stored.get(key, scalars.get(key))
        if not np.allclose(got, want, rtol=CONSISTENCY_RTOL, atol=CONSISTENCY_RTOL):
            worst = float(np.max(np.abs(np.asarray(got) - np.asarray(want))))
            raise ValueError(f"{source}: array {key!r} disagrees with the frame its tree, gamma = {scalars['gamma']} "
                             f"and s_min = {scalars['s_min']} define (max difference {worst:.3g}); a damaged file?")
    return TreeFrame(
        tree, convention, scalars["gamma"], scalars["s_min"], bool(arrays.get("s_min_searched", False)),
        scalars["d_max"], stored["node_similarity"], _edges(tree, stored["node_similarity"]), stored["u"],
        scalars["beta"], scalars["q"], scalars["max_gram_error"], int(arrays.get("gram_pairs", 0)),
    )
