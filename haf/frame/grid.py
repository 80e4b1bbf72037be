"""The reference's s_min grid and the bisection over it, shared by the dense and the tree factorisations.

Along ``linspace(−1/(K−1), −1, 100)`` the PSD points form a prefix (proof on :func:`last_psd_index`; it uses only
that S(s) = (1 − s)·E + s·11ᵀ with E fixed, which holds for both factorisations), so the most negative PSD point
is found by bisection with at most 9 PSD tests.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

#: The reference's PSD threshold: eigenvalues with |λ| < 1e-6 count as 0, so S is PSD iff λ_min > −1e-6.
PSD_TOLERANCE = 1e-6
#: Size of the reference's s_min grid.
GRID_POINTS = 100


def reference_grid(num_classes: int) -> np.ndarray:
    """The reference's candidate s_min values: ``linspace(−1/(K−1), −1, 100)``, least negative first."""
    if num_classes < 2:
        raise ValueError(f"the s_min grid needs at least 2 classes, got K = {num_classes}")
    return np.linspace(-1.0 / (num_classes - 1), -1.0, GRID_POINTS)


def last_psd_index(is_psd: Callable[[float], bool], grid: np.ndarray) -> tuple[int | None, int]:
    """Index of the last grid point where ``is_psd`` holds (None if not even the first), and the tests used:
    2 for the ends, then ⌈log2(98)⌉ = 7 at most for the bisection.

    Valid because the PSD points form a prefix of the grid. Write E = exp(−γD/d_max) and
    S(s) = (1 − s)·E + s·11ᵀ = (1 − s)·[E + t·11ᵀ] with t = s/(1 − s), which increases with s on s < 1. 11ᵀ is
    PSD, so by Weyl's inequality every eigenvalue μ_k(t) of E + t·11ᵀ is non-decreasing in t, hence in s. The
    thresholded test is monotone too: take s < s' with λ_min(S(s)) > −τ. If μ_min(t') ≥ 0, S(s') is PSD outright;
    otherwise μ_min(t) ≤ μ_min(t') < 0 and 0 < 1 − s' < 1 − s, so
    |λ_min(S(s'))| = (1 − s')·|μ_min(t')| < (1 − s)·|μ_min(t)| = |λ_min(S(s))| < τ. So "PSD at s" implies
    "PSD at every larger s", and along the grid (which runs from −1/(K−1) down to −1) the PSD points are a prefix.

    The first grid point is PSD for every tree: tree distances are ultrametric, so E = Σ_l w_l·B_l with w_l ≥ 0,
    Σ w_l = 1 and B_l the 0/1 "same block at level l" matrices, and xᵀB_l x ≥ (1ᵀx)²/K gives K·E ⪰ 11ᵀ, i.e.
    S(−1/(K−1)) = (K·E − 11ᵀ)/(K − 1) ⪰ 0. No PSD grid point therefore means the distances are not a tree's.
    """
    if not is_psd(float(grid[0])):
        return None, 1
    last = len(grid) - 1
    if is_psd(float(grid[last])):
        return last, 2
    tests = 2
    good, bad = 0, last  # invariant: grid[good] is PSD, grid[bad] is not
    while bad - good > 1:
        middle = (good + bad) // 2
        tests += 1
        if is_psd(float(grid[middle])):
            good = middle
        else:
            bad = middle
    return good, tests
