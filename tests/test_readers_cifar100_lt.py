"""CIFAR-100-LT: the exponential/step profiles, the field's seeded per-class selection (checked against an
independent re-implementation of the authors' procedure on the global legacy NumPy stream), the disjoint
validation split and the balanced test split, on a fake CIFAR-100 in the real pickle layout."""
from __future__ import annotations

import numpy as np
import pytest

from haf.pipelines.readers.registry import load_dataset
from haf.pipelines.readers.long_tail import long_tail_counts, select_long_tail
from test_readers_cifar100 import py2_dumps

K = 100
PER_CLASS = 30  # img_max = 30 on the fake (500 on the real files)
HIERARCHY_WARNING = "ignore:CIFAR-100 at"


def make_cifar100(root, per_class=PER_CLASS, per_class_test=2, seed=1):
    """A 100-class CIFAR-100 in the real layout (Python 2 pickles, interleaved classes); pixels encode the index."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)

    def batch(n):
        labels = np.repeat(np.arange(K), n)
        rng.shuffle(labels)
        data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
        data[:, 0] = np.arange(len(labels)) % 256  # first red pixel: image index mod 256
        data[:, 1] = np.arange(len(labels)) // 256
        return {"batch_label": "fake", "fine_labels": labels.tolist(), "coarse_labels": (labels // 5).tolist(),
                "data": data, "filenames": [f"img_{i}.png" for i in range(len(labels))]}

    train, test = batch(per_class), batch(per_class_test)
    (root / "train").write_bytes(py2_dumps(train))
    (root / "test").write_bytes(py2_dumps(test))
    fine = [f"class_{i:03d}" for i in range(K)]
    (root / "meta").write_bytes(py2_dumps({"fine_label_names": fine, "coarse_label_names": [f"super_{i:02d}" for i in range(20)]}))
    return train, test


def authors_selection(targets, imb_type, imb_factor, cls_num=K):
    """The authors' IMBALANCECIFAR procedure, written out step by step on the *global* legacy stream."""
    img_max = len(targets) / cls_num
    if imb_type == "exp":
        img_num = [int(img_max * (imb_factor ** (i / (cls_num - 1.0)))) for i in range(cls_num)]
    else:
        img_num = [int(img_max)] * (cls_num // 2) + [int(img_max * imb_factor)] * (cls_num // 2)
    np.random.seed(0)
    targets_np = np.array(targets, dtype=np.int64)
    selected = []
    for the_class, the_img_num in zip(np.unique(targets_np), img_num):
        idx = np.where(targets_np == the_class)[0]
        np.random.shuffle(idx)
        selected.append(idx[:the_img_num])
    return np.concatenate(selected), img_num


def image_index(split):
    arrays = split.arrays.astype(np.int64)
    return arrays[:, 0, 0, 0] + 256 * arrays[:, 0, 1, 0]  # row 0: red of pixels 0 and 1


def test_profile_counts_of_the_real_dataset():
    for ratio, total, tail in ((0.005, 9502, 2), (0.01, 10847, 5), (0.02, 12608, 10)):
        counts = long_tail_counts(K, 500.0, "exp", ratio)
        assert counts.sum() == total and counts[0] == 500 and counts[-1] == tail
        assert np.all(np.diff(counts) <= 0)
    step = long_tail_counts(K, 500.0, "step", 0.01)
    assert step.tolist() == [500] * 50 + [5] * 50
    # ρ = 0.01: many (> 100) / medium (20..100) / few (< 20) = 35 / 35 / 30 classes
    counts = long_tail_counts(K, 500.0, "exp", 0.01)
    assert ((counts > 100).sum(), ((counts >= 20) & (counts <= 100)).sum(), (counts < 20).sum()) == (35, 35, 30)
    with pytest.raises(ValueError, match="profile 'linear'"):
        long_tail_counts(K, 500.0, "linear", 0.01)
    with pytest.raises(ValueError, match="ratio"):
        long_tail_counts(K, 500.0, "exp", 0.0)


@pytest.mark.filterwarnings(HIERARCHY_WARNING)
@pytest.mark.parametrize("profile,ratio", [("exp", 0.1), ("exp", 0.05), ("step", 0.1)])  # every class keeps ≥ 1 image
def test_subset_is_the_authors_subset(tmp_path, profile, ratio):
    train, test = make_cifar100(tmp_path / "cifar")
    expected, img_num = authors_selection(train["fine_labels"], profile, ratio)
    state = np.random.get_state()
    ds = load_dataset("cifar100", tmp_path / "cifar", long_tail=profile, imbalance_ratio=ratio,
                      validation_per_class=4)
    after = np.random.get_state()
    assert all(np.array_equal(a, b) for a, b in zip(state[1:], after[1:])) and state[0] == after[0]
    tr = ds["train"]
    assert np.bincount(tr.labels, minlength=K).tolist() == img_num
    assert np.array_equal(image_index(tr), expected)  # the same images, in the authors' order
    assert np.array_equal(tr.labels, np.asarray(train["fine_labels"])[expected])
    # validation: from the unselected images only, the last ≤ 4 of each class in file order
    val_idx = image_index(ds["val"])
    assert not set(val_idx.tolist()) & set(expected.tolist())
    labels = np.asarray(train["fine_labels"])
    free = np.setdiff1d(np.arange(len(labels)), expected)
    want = np.sort(np.concatenate([free[labels[free] == c][-4:] for c in range(K)]))
    assert np.array_equal(val_idx, want)
    val_counts = np.bincount(ds["val"].labels, minlength=K)
    assert val_counts[0] == 0  # class 0 keeps all its images under either profile
    assert np.all(val_counts == np.minimum(4, PER_CLASS - np.asarray(img_num)))
    # test: the balanced official split, untouched
    assert np.array_equal(ds["test"].labels, np.asarray(test["fine_labels"]))
    assert np.all(np.bincount(ds["test"].labels, minlength=K) == 2)


def test_selection_uses_the_seed0_legacy_stream():
    labels = np.repeat(np.arange(3), 6)[::-1].copy()  # descending file order: the shuffle must start from ascending
    counts = np.array([6, 4, 2])
    got = select_long_tail(labels, counts)
    # The authors' IMBALANCECIFAR procedure: seed the global legacy generator once, then one
    # np.random.shuffle per class in class order; the global state is put back afterwards.
    saved = np.random.get_state()
    try:
        np.random.seed(0)
        want = []
        for c, n in enumerate(counts):
            idx = np.where(labels == c)[0]
            np.random.shuffle(idx)
            want.append(idx[:n])
    finally:
        np.random.set_state(saved)
    assert np.array_equal(got, np.concatenate(want))
    assert not np.array_equal(got, select_long_tail(labels, counts, seed=1))  # another seed, another subset
    # the one stream runs on across classes: class 1 is not shuffled by a fresh seed-0 stream
    fresh = np.where(labels == 1)[0]
    np.random.RandomState(0).shuffle(fresh)
    assert not np.array_equal(got[6:10], fresh[:4])
    with pytest.raises(ValueError, match="class index 2 has 6"):
        select_long_tail(labels, np.array([1, 1, 7]))


@pytest.mark.filterwarnings(HIERARCHY_WARNING)
def test_bad_options_are_named(tmp_path):
    make_cifar100(tmp_path / "cifar", per_class=2, per_class_test=1)
    with pytest.raises(ValueError, match="long_tail must be null or one of exp, step, got 'linear'"):
        load_dataset("cifar100", tmp_path / "cifar", long_tail="linear")
    ds = load_dataset("cifar100", tmp_path / "cifar", long_tail="exp", imbalance_ratio=0.5, validation_per_class=0)
    assert "val" not in ds.splits and len(ds["train"]) == sum(int(2 * 0.5 ** (i / 99)) for i in range(K))
