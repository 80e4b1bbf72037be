"""CIFAR-100 reader: the real pickle format (Python 2 pickles of numpy arrays), the reference split, the
restricted unpickler, the hierarchy fallback and error paths."""
from __future__ import annotations

import io
import os
import pickle
import struct
import warnings

import numpy as np
import pytest

from haf.hierarchy import Hierarchy
from haf.pipelines.readers.cifar100 import load_batch
from haf.pipelines.readers.registry import load_dataset

FINE = ("apple", "bee", "maple_tree", "oak_tree", "whale")  # alphabetical, as the real fine_label_names
COARSE = ("fruit", "insects", "trees", "aquatic_mammals")
FINE_TO_COARSE = (0, 1, 2, 2, 3)


class Py2Pickler(pickle._Pickler):
    """Writes what Python 2's cPickle wrote for the real batches: protocol 2, byte strings as STRING opcodes,
    numpy's reconstructor under its numpy 1 module name ``numpy.core.multiarray``."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", "")
        if module.startswith("numpy._core"):
            name = name or obj.__qualname__
            self.write(pickle.GLOBAL + f"numpy.core{module[len('numpy._core'):]}\n{name}\n".encode())
            self.memoize(obj)
            return
        super().save_global(obj, name)

    dispatch[type(lambda: None)] = save_global


def py2_dumps(obj) -> bytes:
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def make_cifar(root, per_class_train=53, per_class_test=4, seed=0, dumps=py2_dumps):
    """Tiny CIFAR-100 in the real layout: classes interleaved as in the real (shuffled) batches."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)

    def batch(per_class):
        labels = np.repeat(np.arange(len(FINE)), per_class)
        rng.shuffle(labels)
        data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
        return {
            "batch_label": "training batch 1 of 1",
            "fine_labels": labels.tolist(),
            "coarse_labels": [FINE_TO_COARSE[f] for f in labels],
            "data": data,
            "filenames": [f"img_{i}.png" for i in range(len(labels))],
        }

    train, test = batch(per_class_train), batch(per_class_test)
    (root / "train").write_bytes(dumps(train))
    (root / "test").write_bytes(dumps(test))
    (root / "meta").write_bytes(dumps({"fine_label_names": list(FINE), "coarse_label_names": list(COARSE)}))
    return train, test


def test_real_format_reference_split_and_pixels(tmp_path):
    train, test = make_cifar(tmp_path / "cifar-100-python")
    # The Py2 fake really uses the real files' globals (and no others).
    text = (tmp_path / "cifar-100-python" / "train").read_bytes()
    assert b"numpy.core.multiarray\n_reconstruct" in text and b"_codecs" not in text
    with pytest.warns(UserWarning, match="2-level superclass tree"):
        data = load_dataset("cifar100", tmp_path, validation_per_class=50)  # finds cifar-100-python/ below root
    assert data.classes == FINE
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 5 * 3, "val": 5 * 50, "test": 20}
    labels = np.array(train["fine_labels"])
    # Validation = the last 50 training images of each class, in original order; train = the rest, in order.
    val_idx = np.sort(np.concatenate([np.flatnonzero(labels == c)[-50:] for c in range(5)]))
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    images = train["data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    assert np.array_equal(data["val"].labels, labels[val_idx])
    assert np.array_equal(data["train"].labels, labels[train_idx])
    assert np.array_equal(data["val"].arrays, images[val_idx])
    assert np.array_equal(data["train"].arrays, images[train_idx])
    # CHW planar rows: pixel (y, x) channel c is data[c * 1024 + y * 32 + x].
    row = train["data"][train_idx[0]]
    assert data["train"].arrays[0, 7, 11, 2] == row[2 * 1024 + 7 * 32 + 11]
    assert data["train"].arrays.dtype == np.uint8 and data["train"].arrays.shape[1:] == (32, 32, 3)
    assert data["train"].files is None and np.array_equal(data["test"].labels, test["fine_labels"])
    # Fallback tree: siblings under one superclass at distance 1, others at 2.
    m = data.distances.matrix
    assert m[FINE.index("maple_tree"), FINE.index("oak_tree")] == 1 and m[0, 1] == 2
    assert data.hierarchy.height == 2


def test_hierarchy_file_option_and_no_validation(tmp_path):
    make_cifar(tmp_path, per_class_train=3)
    edges = [("root", "life"), ("life", "plants"), ("life", "animals"), ("plants", "apple"),
             ("plants", "trees"), ("trees", "maple_tree"), ("trees", "oak_tree"), ("animals", "bee"),
             ("animals", "whale")]
    Hierarchy.from_edges(edges).to_json(tmp_path / "cifar_h.json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a hierarchy file given: no fallback warning
        data = load_dataset("cifar100", tmp_path, hierarchy=tmp_path / "cifar_h.json", validation_per_class=0)
    assert set(data.splits) == {"train", "test"} and len(data["train"]) == 15
    assert data.hierarchy.height == 4 and data.distances.matrix[FINE.index("bee"), FINE.index("whale")] == 1


def test_python3_pickles_read_too(tmp_path):
    make_cifar(tmp_path, per_class_train=3, dumps=lambda obj: pickle.dumps(obj, protocol=4))
    with pytest.warns(UserWarning):
        data = load_dataset("cifar100", tmp_path, validation_per_class=1)
    assert len(data["val"]) == 5 and len(data["train"]) == 10


class Evil:
    def __reduce__(self):
        return (os.system, ("echo owned > /dev/null",))


def test_restricted_unpickler_refuses_other_globals(tmp_path):
    path = tmp_path / "train"
    path.write_bytes(pickle.dumps({"data": Evil()}, protocol=2))
    with pytest.raises(ValueError, match=r"refusing to unpickle global (posix|os)\.system"):
        load_batch(path)
    path.write_bytes(pickle.dumps({"data": np.array([object()], dtype=object)}, protocol=4))
    with pytest.raises(ValueError, match="refusing dtype"):
        load_batch(path)


@pytest.mark.filterwarnings("ignore:CIFAR-100 at")
def test_error_paths_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="CIFAR-100 folder not found"):
        load_dataset("cifar100", tmp_path / "nowhere")
    make_cifar(tmp_path, per_class_train=3)
    with pytest.raises(ValueError, match="class index 0 has 3 training images"):
        load_dataset("cifar100", tmp_path)
    (tmp_path / "test").unlink()
    with pytest.raises(FileNotFoundError, match="test"):
        load_dataset("cifar100", tmp_path, validation_per_class=1)
    make_cifar(tmp_path, per_class_train=3)
    (tmp_path / "meta").write_bytes(py2_dumps({"coarse_label_names": list(COARSE)}))
    with pytest.raises(ValueError, match="'fine_label_names' is missing"):
        load_dataset("cifar100", tmp_path)
    make_cifar(tmp_path, per_class_train=3)
    Hierarchy.from_edges([("root", "apple"), ("root", "bee")]).to_json(tmp_path / "small.json")
    with pytest.raises(ValueError, match="maple_tree"):
        load_dataset("cifar100", tmp_path, hierarchy=tmp_path / "small.json", validation_per_class=1)
    (tmp_path / "train").write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="train"):
        load_dataset("cifar100", tmp_path, validation_per_class=1)
