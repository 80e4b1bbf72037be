"""Untrusted readers bound memory by their input's real size: a few hundred hostile bytes are refused with one
line naming the file, and the peak memory of the attempt (tracemalloc) stays far below what the bytes claim."""
from __future__ import annotations

import lzma
import pickle
import struct
import tracemalloc

import numpy as np
import pytest

from haf.hierarchy.distances_pickle import read_distances_pickle
from haf.hierarchy.safe_unpickle import check_pickle_bounds
from haf.hierarchy.tree_pickle import read_tree_pickle
from haf.pipelines.readers.cifar100 import load_batch

PEAK_LIMIT = 32 * 2**20  # bytes (an xz decoder alone takes ~9 MiB); each hostile file below claims ≥ 4 GiB


def _peak(call):
    """Run ``call`` (which must raise ValueError); return (message, peak bytes allocated meanwhile)."""
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as caught:
            call()
        return str(caught.value), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


MEMO_BOMB = b"\x80\x02N" + b"r" + struct.pack("<I", 0x10000000) + b"."  # LONG_BINPUT 2**28: a 4 GiB memo
LENGTH_BOMB = b"\x80\x04\x8e" + struct.pack("<Q", 2**33) + b"abc."  # BINBYTES8 claiming 8 GiB
FRAME_BOMB = b"\x80\x04\x95" + struct.pack("<Q", 2**40) + b"N."  # a 1 TiB frame


@pytest.mark.parametrize("payload,words", [(MEMO_BOMB, "memo index"), (LENGTH_BOMB, "remain"),
                                           (FRAME_BOMB, "frame")])
@pytest.mark.parametrize("kind", ["tree", "distances-xz", "cifar"])
def test_hostile_pickles_are_refused_before_allocating(tmp_path, payload, words, kind):
    if kind == "tree":
        path = tmp_path / "h_tree.pkl"
        path.write_bytes(payload)
        reader = lambda: read_tree_pickle(path)  # noqa: E731
    elif kind == "distances-xz":
        path = tmp_path / "h_distances.pkl.xz"
        path.write_bytes(lzma.compress(payload))
        reader = lambda: read_distances_pickle(path)  # noqa: E731
    else:
        path = tmp_path / "train"
        path.write_bytes(payload)
        reader = lambda: load_batch(path)  # noqa: E731
    assert len(path.read_bytes()) < 200
    message, peak = _peak(reader)
    assert message.startswith(str(path)) and words in message and "\n" not in message
    assert peak < PEAK_LIMIT, peak


def _array_claim_pickle(shape: tuple[int, ...]) -> bytes:
    """A CIFAR-like batch whose array reconstruction claims ``shape`` (uint8) with 3 data bytes."""
    body = (
        b"\x80\x02}q\x00U\x04dataq\x01"
        b"cnumpy.core.multiarray\n_reconstruct\nq\x02cnumpy\nndarray\nq\x03"
        + pickle.dumps(shape, protocol=2)[2:-1]
        + b"U\x01bq\x04\x87q\x05Rq\x06"
        + b"(K\x01" + pickle.dumps(shape, protocol=2)[2:-1]
        + b"cnumpy\ndtype\nq\x07U\x02u1q\x08\x89\x88\x87q\tRq\n(K\x03U\x01|q\x0bNNNJ\xff\xff\xff\xffJ\xff\xff\xff\xff"
          b"K\x00tq\x0cb\x89U\x03abcq\rtq\x0ebs."
    )
    return body


def test_cifar_array_claiming_a_terabyte_is_refused_by_file_size(tmp_path):
    path = tmp_path / "train"
    path.write_bytes(_array_claim_pickle((10**12,)))
    message, peak = _peak(lambda: load_batch(path))
    assert message.startswith(str(path)) and "cannot come from a file of" in message
    assert peak < PEAK_LIMIT


def test_a_real_array_still_reads(tmp_path):
    path = tmp_path / "train"
    data = np.arange(3 * 3072, dtype=np.uint8).reshape(3, 3072)
    path.write_bytes(pickle.dumps({"data": data, "fine_labels": [0, 1, 2]}, protocol=4))
    batch = load_batch(path)
    np.testing.assert_array_equal(batch["data"], data)


@pytest.mark.parametrize("protocol", range(6))
def test_real_pickles_pass_the_opcode_check(protocol):
    table = {(f"c{i}", f"c{j}"): i + j for i in range(20) for j in range(i)}
    tree_like = [["a", ["b", "c"]] * 10, "x" * 300, b"y" * 70000, 2**70]
    for obj in (table, tree_like):
        check_pickle_bounds(pickle.dumps(obj, protocol=protocol), source="f")


def _caterpillar(depth: int) -> np.ndarray:
    """A spine of ``depth`` inner nodes, one leaf hanging off each, two off the last: K = depth + 1, H = depth."""
    return np.array([-1, *range(depth - 1), *range(depth), depth - 1])


def test_a_tree_thousands_deep_builds_its_frame_in_memory_linear_in_its_nodes():
    from haf.frame.tree import TreeArrays, build_tree_frame

    tree = TreeArrays.from_parents(_caterpillar(4500))  # K 4501 > the all-pairs limit: sampled Gram check
    tracemalloc.start()
    try:
        frame = build_tree_frame(tree, 1.0, "lca-height")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert tree.height == 4500 and frame.gram_pairs > 100_000 and frame.max_gram_error < 1e-9
    assert peak < 32 * 2**20, peak  # a K × H table alone would be 162 MB (it peaked at 4.4 GB at depth 5000)


def test_binary_lifting_lca_equals_climbing_on_random_and_deep_trees():
    import torch

    from haf.frame.tree import TreeArrays
    from haf.hierarchy.tree_distances import TreeDistances

    rng = np.random.default_rng(0)
    for parent in (_caterpillar(300), np.array([-1, *[rng.integers(0, v) for v in range(1, 400)]])):
        tree = TreeArrays.from_parents(parent)
        a, b = rng.integers(0, tree.num_nodes, 2000), rng.integers(0, tree.num_nodes, 2000)

        def climb(x, y):
            seen = set()
            while x >= 0:
                seen.add(x)
                x = tree.parent[x]
            while y not in seen:
                y = tree.parent[y]
            return y

        want = np.array([climb(x, y) for x, y in zip(a, b)])
        np.testing.assert_array_equal(tree.lca(a, b), want)
        dist = TreeDistances(tree, "lca-height")
        np.testing.assert_array_equal(dist.lca(torch.from_numpy(a), torch.from_numpy(b)).numpy(), want)
