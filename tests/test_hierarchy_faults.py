"""Hostile and damaged hierarchy files: decompression bombs stay within their cap, absurd distances and
ambiguous distance files are refused with one line naming the file (and the pair)."""
from __future__ import annotations

import lzma
import pickle
import tracemalloc

import numpy as np
import pytest

import haf.hierarchy.distances_pickle as distances_pickle
import haf.hierarchy.tree_pickle as tree_pickle
from haf.cli import main
from haf.hierarchy import Hierarchy, load_class_distances, load_hierarchy, write_tree_pickle
from haf.hierarchy.distances_pickle import max_pickle_bytes

STREAM_BYTES = 48 * 2**20  # one xz stream of zeros: 48 MiB out of ~7 kB


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    """A ~160 kB ``*_distances.pkl.xz`` that decompresses to 1 GiB (22 concatenated streams, as xz allows)."""
    path = tmp_path_factory.mktemp("bomb") / "bomb_distances.pkl.xz"
    path.write_bytes(lzma.compress(bytes(STREAM_BYTES), preset=0) * 22)
    assert path.stat().st_size < 200_000
    return path


def peak_bytes(function) -> tuple[int, Exception | None]:
    tracemalloc.start()
    error = None
    try:
        function()
    except Exception as caught:  # noqa: BLE001 - returned for the caller to check
        error = caught
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak, error


def test_bomb_with_known_classes_stops_at_the_derived_cap(bomb):
    cap = max_pickle_bytes(3)
    assert cap == 2**20  # a 3-class file can need at most 1 MiB
    peak, error = peak_bytes(lambda: load_class_distances(bomb, classes=["a", "b", "c"]))
    assert isinstance(error, ValueError)
    assert str(bomb) in str(error) and "more than 1 MiB" in str(error) and "3 classes" in str(error)
    assert peak < cap + 4 * 2**20  # the cap plus one chunk and the decoder: nowhere near the 1 GiB expansion


def test_bomb_without_classes_stops_at_the_documented_limit(bomb, monkeypatch, capsys):
    # The documented limit is 256 MiB; a smaller one keeps the test light (the mechanism is the same).
    monkeypatch.setattr(distances_pickle, "DEFAULT_MAX_PICKLE_BYTES", 16 * 2**20)
    peak, error = peak_bytes(lambda: load_class_distances(bomb))
    assert isinstance(error, ValueError) and "more than 16 MiB" in str(error)
    assert peak < 24 * 2**20
    assert main(["frame", str(bomb), "--gamma", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("haf frame: error:") and str(bomb) in err and err.count("\n") == 1


def test_cap_derivation():
    assert max_pickle_bytes(None) == 256 * 2**20
    assert max_pickle_bytes(100) == 16 * 64 * 100**2  # 10 MiB for CIFAR-100
    assert max_pickle_bytes(1010) == 256 * 2**20  # iNat2019: the general limit
    assert max_pickle_bytes(1) == 2**20


def test_uncompressed_and_tree_pickles_are_capped_by_file_size(tmp_path, monkeypatch):
    table = {("a", "b"): 1, ("a", "c"): 2, ("b", "c"): 2}
    plain = tmp_path / "x_distances.pkl"
    plain.write_bytes(pickle.dumps(table) + bytes(3 * 2**20))  # padding after the pickle: size is checked first
    with pytest.raises(ValueError, match="holds more than 1 MiB"):
        load_class_distances(plain, classes=["a", "b", "c"])
    tree = tmp_path / "t_tree.pkl"
    write_tree_pickle(Hierarchy.from_edges([("r", "a"), ("r", "b")]), tree)
    monkeypatch.setattr(tree_pickle, "MAX_TREE_PICKLE_BYTES", tree.stat().st_size - 1)
    with pytest.raises(ValueError, match="limit for tree pickles"):
        load_hierarchy(tree)


def test_concatenated_and_truncated_streams(tmp_path):
    data = pickle.dumps({("a", "b"): 1, ("a", "c"): 2, ("b", "c"): 2})
    path = tmp_path / "c_distances.pkl.xz"
    path.write_bytes(lzma.compress(data[:10]) + lzma.compress(data[10:]))  # two streams, one pickle
    assert load_class_distances(path).d_max == 2
    path.write_bytes(lzma.compress(data)[:-20])
    with pytest.raises(ValueError, match="not an lzma/xz file"):
        load_class_distances(path)


@pytest.mark.parametrize("value", [10**30, 10**6 + 1, 1e30, float("nan"), float("inf"), -1, 2.5, "3", None])
def test_absurd_distance_names_file_and_pair(tmp_path, capsys, value):
    path = tmp_path / "v_distances.pkl.xz"
    path.write_bytes(lzma.compress(pickle.dumps({("a", "b"): value, ("a", "c"): 2, ("b", "c"): 2})))
    assert main(["frame", str(path), "--gamma", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert str(path) in err and "('a', 'b')" in err and "non-negative int" in err


def test_complete_file_of_leaves_is_read_without_classes(tmp_path):
    path = tmp_path / "leaves_distances.pkl.xz"
    path.write_bytes(lzma.compress(pickle.dumps({("b", "a"): 1, ("a", "c"): 2, ("c", "b"): 2})))
    cd = load_class_distances(path)
    assert cd.classes == ("a", "b", "c")
    np.testing.assert_array_equal(cd.matrix, [[0, 1, 2], [1, 0, 2], [2, 2, 0]])
