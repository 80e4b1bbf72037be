"""Reader for CIFAR-100's python pickle batches (``cifar-100-python/{train,test,meta}``; format: docs/METHOD.md §9).

Images come out as (N, 32, 32, 3) uint8 arrays in memory (``Split.arrays``), labels as fine-label indices. Splits
follow the reference: validation = the last 50 training images of each class, in original order; the rest is
training data (45,000 / 5,000 / 10,000). With ``long_tail`` the training split is the CIFAR-100-LT subset instead
(:mod:`haf.pipelines.readers.long_tail`; profiles and sizes in docs/RECIPES.md), validation is drawn from the images it
leaves out, and the test split stays the balanced official one.

The field's 5-level hierarchy is not shipped with the dataset: pass it as a file (``hierarchy=``); without one the
reader falls back to the dataset's own 2-level superclass tree and warns. The batches are untrusted input, read
with a restricted unpickler that admits only numpy's array reconstruction (:data:`CIFAR_GLOBALS`).
"""
from __future__ import annotations

import functools
import io
import math
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from haf.hierarchy.distance_conventions import DEFAULT_CONVENTION, Convention
from haf.hierarchy import Hierarchy
from haf.hierarchy.safe_unpickle import check_pickle_bounds

from haf.pipelines.readers.long_tail import PROFILES, long_tail_counts, select_long_tail
from haf.pipelines.readers.common import check_convention, dataset_splits, distances_of, hierarchy_from_file, require_dir
from haf.pipelines.readers.splits import DatasetSplits, Split

IMAGE_SHAPE = (3, 32, 32)  # stored channel-planar
VALIDATION_PER_CLASS = 50  # the reference split: last 50 training images of each class
COARSE_PREFIX = "superclass:"  # fallback-tree inner nodes; keeps e.g. a superclass and a class of one name apart


def _reconstruct(subtype: Any, shape: Any, dtype: Any, *, max_bytes: int = 0) -> np.ndarray:
    """``numpy.core.multiarray._reconstruct`` limited to plain ndarrays (the only subtype the files use) of at
    most ``max_bytes`` (the file's size: an array's data must be in the file; the real files pass shape (0,))."""
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"refusing to reconstruct an array of type {subtype!r}")
    dims = (shape,) if isinstance(shape, int) else shape
    if not isinstance(dims, tuple) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims):
        raise pickle.UnpicklingError(f"refusing array shape {shape!r}")
    if isinstance(dtype, (bytes, str)) and len(dtype) <= 8:  # numpy writes b"b" here; setstate sets the dtype
        dtype = np.dtype(dtype.decode("latin1") if isinstance(dtype, bytes) else dtype)
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise pickle.UnpicklingError(f"refusing array dtype {dtype!r}")
    nbytes = math.prod(dims) * dtype.itemsize
    if nbytes > max_bytes:
        raise pickle.UnpicklingError(f"an array of shape {dims} ({nbytes} bytes) cannot come from a file of "
                                     f"{max_bytes} bytes")
    return np.ndarray.__new__(np.ndarray, dims, dtype)


def _dtype(spec: Any, align: Any = False, copy: Any = True) -> np.dtype:
    """``numpy.dtype`` limited to plain numeric types: object (or structured) arrays could carry arbitrary objects."""
    if isinstance(spec, bytes):
        spec = spec.decode("latin1")
    if not isinstance(spec, str):
        raise pickle.UnpicklingError(f"refusing dtype spec {spec!r}")
    if len(spec) > 8:
        raise pickle.UnpicklingError(f"refusing dtype spec {spec[:20]!r}")
    dtype = np.dtype(spec)
    if dtype.kind not in "biuf" or dtype.itemsize > 16:
        raise pickle.UnpicklingError(f"refusing dtype {dtype!r}")
    return np.dtype(spec, bool(align), bool(copy))


#: Exactly the globals the real files reference: numpy's array reconstruction (numpy 2 spells the first
#: ``numpy._core.multiarray``). Dicts, lists, strings, bytes and ints are pickle opcodes, not globals.
CIFAR_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
}


class CifarUnpickler(pickle.Unpickler):
    """Resolves only :data:`CIFAR_GLOBALS`; Python 2 ``str`` objects decode as latin-1 (numpy's convention)."""

    def __init__(self, file: io.BufferedIOBase, source: str, max_array_bytes: int) -> None:
        super().__init__(file, encoding="latin1")
        self._source = source
        self._max_array_bytes = max_array_bytes

    def find_class(self, module: str, name: str) -> Any:
        try:
            found = CIFAR_GLOBALS[(module, name)]
            if found is _reconstruct:
                return functools.partial(_reconstruct, max_bytes=self._max_array_bytes)
            return found
        except KeyError:
            raise ValueError(
                f"{self._source}: refusing to unpickle global {module}.{name}: a CIFAR batch may only hold numpy "
                "arrays (pickles are untrusted input)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise ValueError(f"{self._source}: refusing persistent id {pid!r} in an untrusted pickle")


def load_batch(path: Path) -> dict[str, Any]:
    """Unpickle one batch file with :class:`CifarUnpickler`; keys come back as ``str``.

    Memory is bounded by the file's size: the opcodes are checked first (``check_pickle_bounds``: memo indices,
    claimed lengths) and no array may hold more bytes than the file."""
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-100 batch file not found: {path}")
    data = path.read_bytes()
    check_pickle_bounds(data, source=str(path))
    try:
        batch = CifarUnpickler(io.BytesIO(data), str(path), max_array_bytes=len(data)).load()
    except ValueError:
        raise
    except MemoryError:
        raise ValueError(f"{path}: unpickling it needs more memory than there is; refusing it") from None
    except (pickle.UnpicklingError, EOFError, TypeError, AttributeError, IndexError, KeyError) as error:
        raise ValueError(f"{path}: not a readable CIFAR-100 batch: {error}") from None
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(batch).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}


def _field(batch: dict, key: str, path: Path) -> Any:
    if key not in batch:
        raise ValueError(f"{path}: key {key!r} is missing (keys: {sorted(batch)})")
    return batch[key]


def batch_images(batch: dict, path: Path) -> np.ndarray:
    """``data`` (N × 3072, CHW planar rows) → (N, 32, 32, 3) uint8, C-contiguous."""
    data = _field(batch, "data", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise ValueError(f"{path}: key 'data' must be an N × 3072 uint8 array, got {type(data).__name__} {shape}")
    return np.ascontiguousarray(data.reshape(-1, *IMAGE_SHAPE).transpose(0, 2, 3, 1))


def batch_labels(batch: dict, key: str, path: Path, count: int, num_classes: int) -> np.ndarray:
    labels = _field(batch, key, path)
    if not isinstance(labels, (list, np.ndarray)) or len(labels) != count:
        raise ValueError(f"{path}: key {key!r} must list {count} labels, got {type(labels).__name__}")
    array = np.asarray(labels)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{path}: key {key!r} must hold integers")
    bad = np.flatnonzero((array < 0) | (array >= num_classes))
    if bad.size:
        raise ValueError(f"{path}: {key}[{int(bad[0])}] = {int(array[bad[0]])} is outside 0..{num_classes - 1}")
    return array.astype(np.int64)


def _names(meta: dict, key: str, path: Path) -> tuple[str, ...]:
    names = _field(meta, key, path)
    if not isinstance(names, list) or not all(isinstance(n, (str, bytes)) for n in names):
        raise ValueError(f"{path}: key {key!r} must be a list of names")
    out = tuple(n.decode("latin1") if isinstance(n, bytes) else n for n in names)
    if len(set(out)) != len(out):
        raise ValueError(f"{path}: key {key!r} lists a name twice")
    return out


def validation_indices(labels: np.ndarray, per_class: int, num_classes: int, path: Path) -> np.ndarray:
    """Indices (ascending) of the last ``per_class`` training images of each class."""
    chosen = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        if members.size <= per_class:
            raise ValueError(
                f"{path}: class index {c} has {members.size} training images; cannot hold out {per_class} "
                "for validation"
            )
        chosen.append(members[-per_class:])
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)


def unselected_validation_indices(labels: np.ndarray, chosen: np.ndarray, per_class: int, num_classes: int) -> np.ndarray:
    """Indices (ascending) of the last ``per_class`` images of each class that ``chosen`` leaves out (fewer if
    fewer are left): a validation split disjoint from a training subset drawn from the whole training set."""
    free = np.ones(len(labels), dtype=bool)
    free[chosen] = False
    picked = [np.flatnonzero(free & (labels == c))[-per_class:] for c in range(num_classes)]
    return np.sort(np.concatenate(picked)) if picked else np.empty(0, dtype=np.int64)


def superclass_hierarchy(
    fine: tuple[str, ...], coarse: tuple[str, ...], fine_labels: np.ndarray, coarse_labels: np.ndarray, path: Path
) -> Hierarchy:
    """The dataset's own 2-level tree: root → superclass → class, from the training batch's label pairs."""
    parent: dict[int, int] = {}
    for f, c in zip(fine_labels.tolist(), coarse_labels.tolist()):
        if parent.setdefault(f, c) != c:
            raise ValueError(
                f"{path}: class {fine[f]!r} appears under two superclasses, {coarse[parent[f]]!r} and {coarse[c]!r}"
            )
    missing = [fine[f] for f in range(len(fine)) if f not in parent]
    if missing:
        raise ValueError(f"{path}: class {missing[0]!r} has no training image, so no superclass")
    edges = [("root", COARSE_PREFIX + c) for c in coarse] + [
        (COARSE_PREFIX + coarse[parent[f]], name) for f, name in enumerate(fine)
    ]
    return Hierarchy.from_edges(edges, classes=fine, source=f"{path} (coarse_labels)")


def read_cifar100(
    root: str | os.PathLike,
    hierarchy: str | os.PathLike | None = None,
    convention: Convention = DEFAULT_CONVENTION,
    validation_per_class: int = VALIDATION_PER_CLASS,
    name: str = "cifar100",
    long_tail: str | None = None,
    imbalance_ratio: float = 0.01,
) -> DatasetSplits:
    """Read ``train``, ``test`` and ``meta`` from ``root`` (or ``root/cifar-100-python``).

    Args:
        hierarchy: the field's 5-level hierarchy file; without it the 2-level superclass tree (with a warning).
        validation_per_class: training images held out per class (the last ones); 0 gives no validation split.
            With ``long_tail``: the last this many *unselected* training images of each class in file order, as
            many as there are (none for a class the profile keeps whole: class 0, and the first half under
            ``step``), so validation never overlaps training.
        long_tail: None (the balanced release), ``"exp"`` or ``"step"``: the CIFAR-100-LT training subset, drawn
            from all 50,000 training images, in the authors' order (class by class).
        imbalance_ratio: ρ = n_min / n_max of the long-tailed profile (0.005, 0.01, 0.02 in the literature).
    """
    root = require_dir(Path(root).expanduser().absolute(), "CIFAR-100 folder")
    if not (root / "meta").is_file() and (root / "cifar-100-python" / "meta").is_file():
        root = root / "cifar-100-python"
    check_convention(convention)
    if long_tail is not None and long_tail not in PROFILES:
        raise ValueError(f"long_tail must be null or one of {', '.join(PROFILES)}, got {long_tail!r}")
    if validation_per_class < 0:
        raise ValueError(f"validation_per_class must be ≥ 0, got {validation_per_class}")
    meta_path, train_path, test_path = root / "meta", root / "train", root / "test"
    meta = load_batch(meta_path)
    classes = _names(meta, "fine_label_names", meta_path)
    k = len(classes)

    train = load_batch(train_path)
    train_images = batch_images(train, train_path)
    train_labels = batch_labels(train, "fine_labels", train_path, len(train_images), k)
    test = load_batch(test_path)
    test_images = batch_images(test, test_path)
    test_labels = batch_labels(test, "fine_labels", test_path, len(test_images), k)

    if hierarchy is not None:
        tree, distances = hierarchy_from_file(hierarchy, classes, convention)
    else:
        coarse = _names(meta, "coarse_label_names", meta_path)
        coarse_labels = batch_labels(train, "coarse_labels", train_path, len(train_images), len(coarse))
        tree = superclass_hierarchy(classes, coarse, train_labels, coarse_labels, train_path)
        distances = distances_of(tree, convention, tree.source)
        warnings.warn(
            f"CIFAR-100 at {root}: no hierarchy file given; using the dataset's 2-level superclass tree "
            "(20 → 100, distances 0–2). The field's results use a 5-level hierarchy: pass hierarchy=<file>.",
            UserWarning,
            stacklevel=2,
        )

    splits: dict[str, Split] = {}
    if long_tail is not None:
        counts = long_tail_counts(k, len(train_labels) / k, long_tail, imbalance_ratio, classes)
        try:
            chosen = select_long_tail(train_labels, counts)
        except ValueError as error:
            raise ValueError(f"{train_path}: {error}") from None
        splits["train"] = Split("train", train_labels[chosen], arrays=train_images[chosen])
        if validation_per_class:
            held_out = unselected_validation_indices(train_labels, chosen, validation_per_class, k)
            if held_out.size == 0:
                raise ValueError(f"{train_path}: the long-tailed subset (imbalance ratio {imbalance_ratio}) takes "
                                 "every training image, so none is left for validation; set dataset.options."
                                 "validation_per_class: 0 and dataset.val_split: test, or a ratio below 1")
            splits["val"] = Split("val", train_labels[held_out], arrays=train_images[held_out])
    elif validation_per_class:
        held_out = validation_indices(train_labels, validation_per_class, k, train_path)
        keep = np.ones(len(train_labels), dtype=bool)
        keep[held_out] = False
        splits["train"] = Split("train", train_labels[keep], arrays=train_images[keep])
        splits["val"] = Split("val", train_labels[held_out], arrays=train_images[held_out])
    else:
        splits["train"] = Split("train", train_labels, arrays=train_images)
    splits["test"] = Split("test", test_labels, arrays=test_images)
    return dataset_splits(name, classes, tree, distances, splits)
