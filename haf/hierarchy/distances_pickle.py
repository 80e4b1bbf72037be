"""Reader (restricted) and writer for the field's ``*_distances.pkl.xz``: an lzma-compressed pickle of a dict
``{(name_a, name_b): int}``.

A file may hold each unordered pair once, in either order, or both orders; it may also hold pairs of inner
nodes, which are ignored unless named as classes. Reading yields the distances among the chosen classes, in
their order: a missing pair, a class absent from the file, or two orders of one pair with different values are
errors naming the classes. Without ``classes`` every name in the file is a class, in sorted order, so a file
that also holds inner nodes needs an explicit class list. The tree is unknown, so the height is ``None`` and
the values are taken as stored (convention ``"file"``).

Without ``classes`` the names are taken as classes only when the file holds a distance for every pair of them;
otherwise it holds inner nodes (or is incomplete) and reading is refused, asking for the class list. (A file
that holds every pair of leaves *and* inner nodes cannot be told from one of more classes: check K.)
Untrusted-file bounds: the decompressed pickle may not exceed :func:`max_pickle_bytes` (256 MiB, or less when
the number of classes is known); a distance must be an int in 0 … ``MAX_DISTANCE``.
"""

from __future__ import annotations

import lzma
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from haf.safe_files import atomic_write_bytes

from .distances import ClassDistances
from .safe_unpickle import DISTANCES_GLOBALS, read_capped, restricted_loads

# Marks a matrix entry that the file did not provide; real distances are ≥ 0.
_MISSING = -1
# The decompressed pickle's size limit when the class count is unknown: ~8x the largest real file (iNat2019 with
# every inner node, both orders of each pair, is ~35 MB).
DEFAULT_MAX_PICKLE_BYTES = 256 * 2**20
# With K classes known: pairs among at most 4K names (leaves and inner nodes, chains included), 64 bytes a pair.
BYTES_PER_CLASS_SQUARED = 16 * 64
MIN_MAX_PICKLE_BYTES = 2**20
# A tree distance is at most twice the tree's height; no hierarchy is a million levels deep.
MAX_DISTANCE = 10**6


def max_pickle_bytes(num_classes: int | None) -> int:
    """The largest decompressed distance pickle accepted for ``num_classes`` classes (None: unknown)."""
    if num_classes is None:
        return DEFAULT_MAX_PICKLE_BYTES
    return min(DEFAULT_MAX_PICKLE_BYTES, max(MIN_MAX_PICKLE_BYTES, BYTES_PER_CLASS_SQUARED * num_classes**2))


def read_distances_pickle(path: str | Path, classes: Sequence[str] | None = None) -> ClassDistances:
    """Read ``*_distances.pkl.xz`` (or an uncompressed ``.pkl``) with the restricted unpickler."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise FileNotFoundError(f"distance file not found: {path}")
    cap = max_pickle_bytes(None if classes is None else len(classes))
    why = "the limit for distance files" if classes is None else f"more than {len(classes)} classes can need"
    raw = read_capped(path, cap, why=why)
    table = restricted_loads(raw, DISTANCES_GLOBALS, source=source)
    return distances_from_pairs(table, classes, source=source)


def distances_from_pairs(
    table: Mapping, classes: Sequence[str] | None = None, *, source: str = "<pairs>"
) -> ClassDistances:
    """Build a :class:`ClassDistances` from a ``{(a, b): int}`` table (see the module docstring)."""
    if not isinstance(table, dict):
        raise ValueError(f"{source}: expected a dict {{(a, b): int}}, got {type(table).__name__}")
    names: set[str] = set()
    for key, value in table.items():
        if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(n, str) for n in key)):
            raise ValueError(f"{source}: key {key!r} is not a pair of class names")
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_DISTANCE:
            raise ValueError(
                f"{source}: distance of pair {key!r} must be a non-negative int ≤ {MAX_DISTANCE}, got {value!r}"
            )
        names.update(key)
    inferred = classes is None
    if inferred:
        classes = sorted(names)
        unordered = {frozenset(key) for key in table if key[0] != key[1]}
        needed = len(names) * (len(names) - 1) // 2
        if len(unordered) < needed:
            raise ValueError(
                f"{source}: holds distances for {len(unordered)} of the {needed} pairs of its {len(names)} names, "
                "so some names are inner nodes (or pairs are missing); pass the class list (--classes FILE, one "
                "class name a line) to say which names are classes"
            )
    classes = tuple(classes)
    index: dict[str, int] = {}
    for name in classes:
        if name in index:
            raise ValueError(f"{source}: class {name!r} is listed twice in the class list")
        if name not in names:
            raise ValueError(f"{source}: class {name!r} is absent from the distance file")
        index[name] = len(index)

    k = len(classes)
    rows, cols, values = [], [], []
    for (a, b), value in table.items():
        i = index.get(a)
        j = index.get(b)
        if i is None or j is None:
            continue  # a pair involving an inner node or a class not selected
        if i == j:
            if value != 0:
                raise ValueError(f"{source}: d({a!r}, {a!r}) = {value}; a class is at distance 0 from itself")
            continue
        rows.append(i)
        cols.append(j)
        values.append(value)
    given = np.full((k, k), _MISSING, dtype=np.int64)
    given[np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64)] = np.array(values, dtype=np.int64)
    both = (given != _MISSING) & (given.T != _MISSING) & (given != given.T)
    if both.any():
        i, j = map(int, np.argwhere(both)[0])
        raise ValueError(
            f"{source}: contradictory distances d({classes[i]!r}, {classes[j]!r}) = {given[i, j]} and "
            f"d({classes[j]!r}, {classes[i]!r}) = {given[j, i]}"
        )
    matrix = np.where(given != _MISSING, given, given.T)
    np.fill_diagonal(matrix, 0)
    missing = np.argwhere(matrix == _MISSING)
    if missing.size:
        i, j = map(int, missing[0])
        raise ValueError(
            f"{source}: no distance for the pair ({classes[i]!r}, {classes[j]!r}) "
            f"({len(missing) // 2} pair(s) missing in all)"
        )
    return ClassDistances(classes, matrix, None, "file", source)


def write_distances_pickle(
    distances: ClassDistances, path: str | Path, *, both_orders: bool = False, protocol: int = 4
) -> None:
    """Write ``{(a, b): d}`` for a < b in class order (both orders with ``both_orders``), lzma-compressed
    when ``path`` ends in .xz."""
    classes = distances.classes
    matrix = distances.matrix
    table: dict[tuple[str, str], int] = {}
    for i, a in enumerate(classes):
        for j in range(i + 1, len(classes)):
            table[(a, classes[j])] = int(matrix[i, j])
            if both_orders:
                table[(classes[j], a)] = int(matrix[i, j])
    data = pickle.dumps(table, protocol=protocol)
    path = Path(path)
    atomic_write_bytes(path, lzma.compress(data) if path.suffix in (".xz", ".lzma") else data)
