"""Long-tailed subsets of a balanced training set, drawn exactly as the field's CIFAR-LT code draws them.

Profile (Cao et al., NeurIPS 2019; the code of Yang et al., NeurIPS 2022, ``datasets/cifar10.py``) for K classes
with ``img_max`` = (training images) / K and imbalance ratio ρ = n_min / n_max:

* ``exp``:  n_i = int(img_max · ρ^(i / (K − 1)))           (CIFAR-100, ρ = 0.01: 500 → 5, 10,847 images)
* ``step``: n_i = int(img_max) for i < K // 2, else int(img_max · ρ)

Selection: the legacy NumPy stream seeded once with ``np.random.seed(0)``; then, class by class in index order,
the class's indices (ascending) are shuffled in place by that one stream and the first n_i kept. The stream is a
private ``np.random.RandomState(0)``, which draws the same numbers as the seeded global one without touching it.
"""
from __future__ import annotations

import numpy as np

PROFILES = ("exp", "step")
SELECTION_SEED = 0  # the authors' np.random.seed(0)


def long_tail_counts(num_classes: int, img_max: float, profile: str, ratio: float,
                     names: tuple[str, ...] | None = None) -> np.ndarray:
    """Images per class (K int64) of ``profile`` with imbalance ``ratio`` = n_min / n_max in (0, 1].

    A ratio so small that a class gets no image (img_max · ρ < 1) is refused, naming the classes (``names``, or
    their indices)."""
    counts = _counts(num_classes, img_max, profile, ratio)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        label = lambda c: repr(names[c]) if names is not None else f"index {c}"  # noqa: E731
        listed = ", ".join(label(int(c)) for c in empty[:5]) + (f" and {empty.size - 5} more" if empty.size > 5 else "")
        raise ValueError(f"imbalance ratio {ratio} leaves {empty.size} class(es) with no training image ({listed}): "
                         f"with {int(img_max)} images per class it must be at least 1/{int(img_max)} = "
                         f"{1 / int(img_max) if int(img_max) else float('inf'):.3g}")
    return counts


def _counts(num_classes: int, img_max: float, profile: str, ratio: float) -> np.ndarray:
    if profile not in PROFILES:
        raise ValueError(f"unknown long-tail profile {profile!r}; valid choices: {', '.join(PROFILES)}")
    if not (isinstance(ratio, (int, float)) and 0.0 < ratio <= 1.0):
        raise ValueError(f"imbalance ratio must lie in (0, 1], got {ratio!r}")
    if num_classes < 2:
        raise ValueError(f"a long-tailed profile needs at least 2 classes, got {num_classes}")
    if profile == "exp":
        # Python floats, as the authors' list comprehension computes them (same rounding as int()).
        return np.array([int(img_max * ratio ** (i / (num_classes - 1.0))) for i in range(num_classes)], np.int64)
    half = num_classes // 2
    return np.array([int(img_max)] * half + [int(img_max * ratio)] * (num_classes - half), np.int64)


def select_long_tail(labels: np.ndarray, counts: np.ndarray, seed: int = SELECTION_SEED) -> np.ndarray:
    """Indices into ``labels`` of the subset, grouped by class in class order (the authors' concatenation order).

    Class c contributes the first ``counts[c]`` of its ascending indices after one in-place shuffle by the shared
    ``RandomState(seed)`` stream; a class with fewer images than asked for is an error.
    """
    labels = np.asarray(labels)
    rng = np.random.RandomState(seed)
    chosen = []
    for c, wanted in enumerate(np.asarray(counts).tolist()):
        members = np.where(labels == c)[0]
        if members.size < wanted:
            raise ValueError(f"class index {c} has {members.size} training images, fewer than the {wanted} its "
                             "long-tail profile asks for")
        rng.shuffle(members)
        chosen.append(members[:wanted])
    return np.concatenate(chosen) if chosen else np.empty(0, dtype=np.int64)
