"""Tree-frame files and hierarchy files as untrusted input: a compressed .npz bomb is refused before inflating
(peak memory measured), inconsistent shapes, NaN/inf and altered values are refused naming the file and the
array, and a saved frame loads back equal."""
from __future__ import annotations

import io
import tracemalloc
import zipfile

import numpy as np
import pytest

from haf.frame import TreeArrays, build_tree_frame, load_tree_frame, save_tree_frame


@pytest.fixture()
def frame_file(tmp_path):
    tree = TreeArrays.from_parents(np.array([-1, 0, 0, 1, 1, 2, 2, 2]), classes=None)
    frame = build_tree_frame(tree, 2.0, "lca-height")
    path = tmp_path / "frame.npz"
    save_tree_frame(frame, path)
    return path, frame


def _rewrite(path, **changes):
    with np.load(path) as data:
        arrays = {key: data[key] for key in data.files}
    arrays.update(changes)
    np.savez_compressed(path, **arrays)


def test_a_saved_frame_loads_back_equal(frame_file):
    path, frame = frame_file
    loaded = load_tree_frame(path)
    np.testing.assert_array_equal(loaded.u, frame.u)
    assert loaded.beta == frame.beta and loaded.q == frame.q


@pytest.mark.parametrize("key,value,message", [
    ("u", lambda u: np.where(np.arange(u.size) == 3, np.nan, u),
     r"array 'u' holds a non-finite value \(nan at index 3\)"),
    ("node_similarity", lambda g: np.where(np.arange(g.size) == 0, np.inf, g),
     r"array 'node_similarity' holds a non-finite"),
    ("beta", lambda b: np.array(np.nan), r"array 'beta' holds a non-finite"),
    ("u", lambda u: u * 1.01, r"array 'u' disagrees with the frame its tree"),
    ("q", lambda q: q + 1e-3, r"array 'q' disagrees"),
    ("u", lambda u: u[:-1], r"array 'u' must have one entry per node \(8\)"),
    ("parent", lambda p: p.astype(np.float64), r"array 'parent' must hold integers"),
    ("parent", lambda p: np.array([-1, 0, 0, 1, 1, 2, 2, 9]), r"tree: parent\[7\] = 9 must lie in"),
    ("leaf_node", lambda k: k[:1], r"array 'leaf_node' must list 2..8 classes"),
    ("gamma", lambda g: np.array([1.0, 2.0]), r"'gamma' must be a scalar"),
])
def test_bad_values_are_refused_naming_file_and_array(frame_file, key, value, message):
    path, _ = frame_file
    with np.load(path) as data:
        original = data[key]
    _rewrite(path, **{key: value(original)})
    with pytest.raises(ValueError, match=message) as caught:
        load_tree_frame(path)
    assert str(caught.value).startswith(str(path)) and "\n" not in str(caught.value)


def test_an_npz_bomb_is_refused_before_inflating(tmp_path):
    path = tmp_path / "bomb.npz"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (2**23,)})
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("u.npy", "w", force_zip64=True) as member:  # 64 MiB of zeros, ~64 KB compressed
            member.write(header.getvalue())
            zeros = bytes(2**24)
            for _ in range(4):
                member.write(zeros)
    assert path.stat().st_size < 2**20  # 8 times the peak allowed below, inflated: refused from the sizes alone
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"array 'u' claims \d+ bytes from \d+ compressed") as caught:
            load_tree_frame(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(caught.value).startswith(str(path))
    assert peak < 8 * 2**20, peak


def test_a_header_that_lies_about_its_shape_is_refused(tmp_path):
    path = tmp_path / "lie.npz"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)})
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("u.npy", header.getvalue() + bytes(64))
    with pytest.raises(ValueError, match=r"array 'u': its header claims shape \(1000000000000,\)"):
        load_tree_frame(path)


def test_not_an_archive_names_the_file(tmp_path):
    path = tmp_path / "x.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable .npz archive") as caught:
        load_tree_frame(path)
    assert str(caught.value).startswith(str(path))


def test_training_uses_a_saved_tree_frame_and_refuses_a_wrong_one(tmp_path):
    import torch

    from haf.frame import save_tree_frame
    from haf.methods import MethodContext, get_method
    from haf.models.classifier import build_method_options
    from haf.pipelines import load_dataset

    data = load_dataset("synthetic-tree", "unused", num_classes=40, depth=3, train_per_class=1)
    context = MethodContext(data.classes, data.distances.matrix, seed=0, hierarchy=data.hierarchy)
    cls = get_method("haframe")
    def build(**options):
        return cls(16, context, build_method_options(cls, {"factorization": "tree", "gamma": 3.0, **options}))

    built = build()
    tree = TreeArrays.from_hierarchy(data.hierarchy)
    path = tmp_path / "frame.npz"
    save_tree_frame(build_tree_frame(tree, 3.0, "lca-height"), path)
    loaded = build(frame_file=str(path))
    buffers = dict(built.tree_frame.named_buffers())
    assert buffers
    for name, buffer in buffers.items():
        assert torch.equal(buffer, dict(loaded.tree_frame.named_buffers())[name]), name
    with pytest.raises(ValueError, match=r"frame.npz: method.options.frame_file: the frame has gamma = 3.0"):
        build(frame_file=str(path), gamma=2.0)
    other = tmp_path / "other.npz"
    save_tree_frame(build_tree_frame(TreeArrays.from_parents(np.array([-1, 0, 0])), 3.0, "lca-height"), other)
    with pytest.raises(ValueError, match=r"other.npz: method.options.frame_file: the frame's tree \(2 classes"):
        build(frame_file=str(other))


def test_an_imbalance_ratio_that_empties_classes_is_refused_naming_them(tmp_path):
    from test_readers_cifar100 import make_cifar

    from haf.pipelines.readers.registry import load_dataset

    make_cifar(tmp_path / "cifar", per_class_train=53)
    with pytest.raises(ValueError, match=r"imbalance ratio 0.01 leaves \d+ class\(es\) with no training image "
                                         r"\('.*'\): with 53 images per class it must be at least 1/53"):
        load_dataset("cifar100", tmp_path / "cifar", long_tail="exp", imbalance_ratio=0.01,
                     hierarchy=None, validation_per_class=4)
    # ratio 1.0 takes every training image: refused when the data are read, before any training
    with pytest.raises(ValueError, match=r"none is left for validation"):
        load_dataset("cifar100", tmp_path / "cifar", long_tail="exp", imbalance_ratio=1.0, validation_per_class=4)
    ds = load_dataset("cifar100", tmp_path / "cifar", long_tail="exp", imbalance_ratio=1.0, validation_per_class=0)
    assert len(ds["train"].labels) == 5 * 53


def test_a_json_hierarchy_whose_class_list_omits_a_leaf_is_refused(tmp_path):
    import json

    from haf.hierarchy import Hierarchy, load_hierarchy

    document = {"format": "haf-hierarchy", "version": 1, "root": "r", "classes": ["a", "b"],
                "edges": [["r", "x"], ["x", "a"], ["x", "b"], ["r", "c"]]}
    path = tmp_path / "h.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match=r"h.json: key 'classes' omits the leaf 'c' of the edges") as caught:
        load_hierarchy(path)
    assert "\n" not in str(caught.value)
    # an explicit class list still selects (prunes to) the classes asked for
    assert Hierarchy.from_json(json.dumps(document), classes=["a", "b"]).classes == ("a", "b")


@pytest.mark.parametrize("options,message", [
    ({"validation_per_class": "5"}, r"option 'validation_per_class' must be int, got str '5'"),
    ({"imbalance_ratio": "0.1", "long_tail": "exp"}, r"option 'imbalance_ratio' must be float, got str"),
    ({"long_tail": 3}, r"option 'long_tail' must be str or None, got int 3"),
    ({"validation_per_class": True}, r"must be int, got bool True"),
])
def test_wrong_typed_reader_options_are_named_not_a_type_error(tmp_path, options, message):
    from haf.pipelines.readers.registry import load_dataset

    with pytest.raises(ValueError, match=message):
        load_dataset("cifar100", tmp_path, **options)
