"""The dense hierarchy-aware frame: similarity S, the reference's s_min, the HAFrame factorisation, the fixed ETF.

Everything here is numpy float64 in and out (a K × K eigendecomposition in fp32 loses the 1e-6 PSD threshold).

Similarity (Liang & Davis, ICCV 2023; docs/METHOD.md §2)::

    S_ij = (1 − s_min) · exp(−γ · d_ij / d_max) + s_min,       S_ii = 1,  d_max = max_ij d_ij

s_min is the most negative point of the reference's grid ``linspace(−1/(K−1), −1, 100)`` whose S is positive
semi-definite (no eigenvalue ≤ −1e-6). :func:`find_s_min_full_scan` is that rule literally (100 eigensolves);
:func:`find_s_min` gives the identical answer with at most 9 certified Cholesky tests, because the PSD grid points
form a prefix (proof: :func:`haf.frame.grid.last_psd_index`; the test: :func:`_is_psd_cholesky`).

Frame (docs/METHOD.md §3): W = S^{1/2} Q_gᵀ with Q_g seeded orthogonal, so W Wᵀ = S with unit rows and W depends
only on (S, seed) (:func:`hierarchy_frame`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .grid import GRID_POINTS, PSD_TOLERANCE, last_psd_index, reference_grid

__all__ = [
    "PSD_TOLERANCE",
    "GRID_POINTS",
    "FrameResult",
    "build_dense_frame",
    "find_s_min",
    "find_s_min_full_scan",
    "fixed_etf",
    "hierarchy_frame",
    "reference_grid",
    "similarity_matrix",
]

#: Unit rows are restored by renormalising only when eigenvalue clipping moved a row norm by less than this; a
#: larger deviation means S did not have a unit diagonal, which is an error, not something to paper over.
_ROW_NORM_TOLERANCE = 1e-5
#: fp64 unit roundoff, for the Cholesky guard band.
_UNIT_ROUNDOFF = np.finfo(np.float64).eps / 2


# --------------------------------------------------------------------------------------------------- validation


def _as_square_matrix(matrix: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(matrix, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] != array.shape[1]:
        raise ValueError(f"{name} must be a square K × K matrix, got shape {array.shape}")
    bad = ~np.isfinite(array)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(f"{name}[{i}, {j}] = {array[i, j]} is not finite")
    asymmetric = np.abs(array - array.T) > 1e-12 * max(1.0, float(np.abs(array).max(initial=0.0)))
    if asymmetric.any():
        i, j = np.argwhere(asymmetric)[0]
        raise ValueError(f"{name} is not symmetric: [{i}, {j}] = {array[i, j]} but [{j}, {i}] = {array[j, i]}")
    return array


def _validate_distances(distances: np.ndarray) -> tuple[np.ndarray, float]:
    """Return the distances as float64 and d_max, or raise naming the entry at fault."""
    d = _as_square_matrix(distances, "distances")
    if d.shape[0] < 2:
        raise ValueError(f"a frame needs at least 2 classes, got K = {d.shape[0]} (d_max would be 0)")
    negative = d < 0
    if negative.any():
        i, j = np.argwhere(negative)[0]
        raise ValueError(f"distances[{i}, {j}] = {d[i, j]} is negative")
    diagonal = np.flatnonzero(np.diag(d) != 0)
    if diagonal.size:
        i = diagonal[0]
        raise ValueError(f"distances[{i}, {i}] = {d[i, i]}: a class must be at distance 0 from itself")
    d_max = float(d.max())
    if d_max == 0:
        raise ValueError(f"all {d.shape[0]} classes are at distance 0 from each other (d_max = 0): no hierarchy")
    return d, d_max


def _validate_gamma(gamma: float) -> float:
    gamma = float(gamma)
    if not np.isfinite(gamma) or gamma <= 0:
        raise ValueError(f"gamma must be a positive finite number, got {gamma}")
    return gamma


def _validate_s_min(s_min: float) -> float:
    s_min = float(s_min)
    if not np.isfinite(s_min) or not -1.0 <= s_min < 1.0:
        raise ValueError(f"s_min must be a finite number in [-1, 1), got {s_min}")
    return s_min


# --------------------------------------------------------------------------------------------------- similarity


def _similarity(d: np.ndarray, d_max: float, gamma: float, s_min: float) -> np.ndarray:
    s = (1.0 - s_min) * np.exp(-gamma * d / d_max) + s_min
    np.fill_diagonal(s, 1.0)  # exact 1, not 1 ± 1 ulp from (1 − s) + s
    return s


def similarity_matrix(distances: np.ndarray, gamma: float, s_min: float) -> np.ndarray:
    """S_ij = (1 − s_min) · exp(−γ · d_ij / d_max) + s_min, with S_ii = 1 exactly (K × K float64)."""
    d, d_max = _validate_distances(distances)
    return _similarity(d, d_max, _validate_gamma(gamma), _validate_s_min(s_min))


# ------------------------------------------------------------------------------------------------ the PSD tests


def _min_eigenvalue(s: np.ndarray) -> float:
    return float(np.linalg.eigvalsh(s)[0])


def _is_psd_eigvalsh(s: np.ndarray) -> bool:
    return _min_eigenvalue(s) > -PSD_TOLERANCE


def _cholesky_succeeds(s: np.ndarray, shift: float) -> bool:
    """Whether S + shift·I is numerically positive definite (LAPACK potrf reaches the end)."""
    shifted = s.copy()
    shifted.flat[:: s.shape[0] + 1] += shift  # the diagonal, without building a K × K identity
    try:
        np.linalg.cholesky(shifted)
    except np.linalg.LinAlgError:
        return False
    return True


def _is_psd_cholesky(s: np.ndarray) -> bool:
    """λ_min(S) > −τ by Cholesky, certified outside a band of half-width δ around −τ, ``eigvalsh`` inside it.

    One Cholesky is ~3–4× cheaper than ``eigvalsh`` at K = 1010 on a CPU (bench/bench_frame.py measures it).
    ``cholesky(S + (τ − δ)·I)`` succeeding proves λ_min > −τ, and ``cholesky(S + (τ + δ)·I)`` failing proves
    λ_min ≤ −τ, where δ = 8·K·u·‖S‖_∞ bounds the rounding error of both Cholesky and the symmetric eigensolver
    (u = fp64 unit roundoff; backward errors of both are O(K·u·‖S‖)). Only a λ_min within δ of −τ is undecided,
    and then ``eigvalsh`` decides, so the choice is always the one the eigenvalue-threshold rule makes.
    """
    band = 8.0 * s.shape[0] * _UNIT_ROUNDOFF * float(np.abs(s).sum(axis=1).max())
    if band < PSD_TOLERANCE and _cholesky_succeeds(s, PSD_TOLERANCE - band):
        return True  # S + (τ − δ)I is positive definite even allowing for rounding: λ_min > −τ
    if not _cholesky_succeeds(s, PSD_TOLERANCE + band):
        return False  # S + (τ + δ)I is not positive definite even allowing for rounding: λ_min ≤ −τ
    return _is_psd_eigvalsh(s)


_PSD_TESTS = {"cholesky": _is_psd_cholesky, "eigvalsh": _is_psd_eigvalsh}


def _no_psd_point_error(d: np.ndarray, d_max: float, gamma: float, grid: np.ndarray) -> ValueError:
    least_negative = _min_eigenvalue(_similarity(d, d_max, gamma, grid[0]))
    return ValueError(
        f"no s_min on the reference grid linspace({grid[0]:.6g}, -1, {GRID_POINTS}) makes S positive "
        f"semi-definite for K = {d.shape[0]}, gamma = {gamma}: even at s_min = {grid[0]:.6g} the smallest "
        f"eigenvalue is {least_negative:.6g} (PSD needs > {-PSD_TOLERANCE:g}); the distances are not those of a tree"
    )


# ------------------------------------------------------------------------------------------------- s_min search


def find_s_min_full_scan(distances: np.ndarray, gamma: float) -> float:
    """The reference rule literally: test all 100 grid points with ``eigvalsh``, keep the most negative PSD one.

    The baseline :func:`find_s_min` is tested and benchmarked against.
    """
    d, d_max = _validate_distances(distances)
    gamma = _validate_gamma(gamma)
    grid = reference_grid(d.shape[0])
    psd = [s for s in grid if _is_psd_eigvalsh(_similarity(d, d_max, gamma, s))]
    if not psd:
        raise _no_psd_point_error(d, d_max, gamma, grid)
    return float(min(psd))


def _bisect_grid(d: np.ndarray, d_max: float, gamma: float, psd_test: str) -> tuple[int, int]:
    """Index of the last PSD grid point (the PSD points are a prefix, see :func:`last_psd_index`), and the count of
    PSD tests used: 2 for the ends, then ⌈log2(98)⌉ = 7 at most for the bisection."""
    try:
        is_psd = _PSD_TESTS[psd_test]
    except KeyError:
        raise ValueError(f"psd_test must be one of {sorted(_PSD_TESTS)}, got {psd_test!r}") from None
    grid = reference_grid(d.shape[0])
    index, tests = last_psd_index(lambda s: is_psd(_similarity(d, d_max, gamma, s)), grid)
    if index is None:
        raise _no_psd_point_error(d, d_max, gamma, grid)
    return index, tests


def find_s_min(distances: np.ndarray, gamma: float, psd_test: str = "cholesky") -> float:
    """The reference's s_min (most negative PSD point of ``linspace(−1/(K−1), −1, 100)``) by bisection.

    Identical to :func:`find_s_min_full_scan` with at most 9 PSD tests instead of 100 (the PSD grid points form a
    prefix: :func:`haf.frame.grid.last_psd_index`). ``psd_test``: "cholesky" (default, fastest; certified,
    ``eigvalsh`` decides the rare near-threshold case) or "eigvalsh".

    Raises:
        ValueError: bad distances or gamma, or no grid point gives a PSD S (message names K, γ and the smallest
            eigenvalue at the least negative grid point).
    """
    d, d_max = _validate_distances(distances)
    gamma = _validate_gamma(gamma)
    index, _ = _bisect_grid(d, d_max, gamma, psd_test)
    return float(reference_grid(d.shape[0])[index])


# ------------------------------------------------------------------------------------------------------ frames


def _seeded_orthogonal(rows: int, cols: int, seed: int) -> np.ndarray:
    """Orthonormal columns from the QR of a seeded Gaussian, signs fixed (R's diagonal > 0) so the result is a
    deterministic function of the seed, Haar-distributed (Mezzadri 2007)."""
    gaussian = np.random.default_rng(seed).standard_normal((rows, cols))
    q, r = np.linalg.qr(gaussian)
    signs = np.where(np.diag(r) < 0, -1.0, 1.0)
    return q * signs


def _factorise(similarity: np.ndarray, seed: int) -> tuple[np.ndarray, float]:
    s = _as_square_matrix(similarity, "similarity")
    k = s.shape[0]
    off_diagonal = np.flatnonzero(np.abs(np.diag(s) - 1.0) > _ROW_NORM_TOLERANCE)
    if off_diagonal.size:
        i = off_diagonal[0]
        raise ValueError(f"similarity[{i}, {i}] = {s[i, i]}: a frame has unit rows, so S needs a unit diagonal")
    eigenvalues, eigenvectors = np.linalg.eigh(s)
    min_eigenvalue = float(eigenvalues[0])
    if min_eigenvalue <= -PSD_TOLERANCE:
        raise ValueError(
            f"similarity (K = {k}) has eigenvalue {min_eigenvalue:.6g} < 0 (beyond the {PSD_TOLERANCE:g} "
            f"tolerance): S is not positive semi-definite, so no frame W with W Wᵀ = S exists; use a less "
            f"negative s_min"
        )
    # Eigenvalues within the tolerance of 0 are 0 (the reference's rule); clip them so the square root is real.
    root = (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T  # S^{1/2}
    frame = root @ _seeded_orthogonal(k, k, seed).T
    norms = np.linalg.norm(frame, axis=1)
    if np.abs(norms - 1.0).max() > _ROW_NORM_TOLERANCE:  # unreachable with a unit diagonal; kept as a guard
        i = int(np.argmax(np.abs(norms - 1.0)))
        raise ValueError(f"frame row {i} has norm {norms[i]:.8g} after factorisation; expected 1")
    return frame / norms[:, None], min_eigenvalue


def hierarchy_frame(similarity: np.ndarray, seed: int = 0) -> np.ndarray:
    """HAFrame W (K × K) with W Wᵀ = S and unit rows: W = (Q Λ^{1/2} Vᵀ)ᵀ for S = V Λ Vᵀ, Q seeded orthogonal.

    Eigenvalues in (−1e-6, 0) are clipped to 0, and rows renormalised (a change below 1e-5); anything more
    negative is a ValueError naming the eigenvalue. Deterministic in (S, seed) on every machine: we use the random
    orthogonal matrix Q' = Q_g V (Q_g from the QR of a seeded Gaussian, sign-fixed), i.e.
    W = V Λ^{1/2} Vᵀ Q_gᵀ = S^{1/2} Q_gᵀ. Q' is as Haar-random as Q_g, so this is the same construction, but W
    depends only on S and the seed, not on which eigenvector basis LAPACK returns inside a repeated eigenvalue's
    eigenspace (balanced trees have many): the same seed gives the same frame, to rounding, on every machine and BLAS.
    """
    return _factorise(similarity, int(seed))[0]


def fixed_etf(num_classes: int, dim: int, seed: int = 0) -> np.ndarray:
    """Simplex equiangular tight frame (Yang et al., NeurIPS 2022) as K × dim rows: unit rows, cos = −1/(K−1).

    M = sqrt(K/(K−1)) · P (I − 11ᵀ/K) with P (dim × K) orthonormal columns needs dim ≥ K; because I − 11ᵀ/K = U Uᵀ
    for an orthonormal basis U (K × (K−1)) of the sum-zero subspace, M = sqrt(K/(K−1)) · P Uᵀ with P now
    dim × (K−1) — the same frame, and it exists for dim ≥ K−1. U is the Helmert basis; P is seeded.
    """
    num_classes, dim = int(num_classes), int(dim)
    if num_classes < 2:
        raise ValueError(f"an ETF needs at least 2 classes, got num_classes = {num_classes}")
    if dim < num_classes - 1:
        raise ValueError(f"a simplex ETF of {num_classes} classes needs dim >= K - 1 = {num_classes - 1}, got {dim}")
    k = num_classes
    # Helmert basis: column j (j = 1..K−1) is (1, …, 1, −j, 0, …, 0)/sqrt(j(j+1)) with j ones.
    helmert = np.zeros((k, k - 1))
    for j in range(1, k):
        helmert[:j, j - 1] = 1.0
        helmert[j, j - 1] = -float(j)
        helmert[:, j - 1] /= np.sqrt(j * (j + 1.0))
    rotation = _seeded_orthogonal(dim, k - 1, int(seed))
    return np.sqrt(k / (k - 1.0)) * (helmert @ rotation.T)


@dataclass(frozen=True)
class FrameResult:
    """A built HAFrame and what it was built from; ``W`` and ``S`` are the paper's names."""

    W: np.ndarray  # noqa: N815  the frame, K × K, unit rows
    S: np.ndarray  # noqa: N815  the similarity, K × K
    s_min: float
    gamma: float
    seed: int
    d_max: float
    min_eigenvalue: float  # smallest eigenvalue of S (before clipping)
    max_gram_error: float  # max |W Wᵀ − S|
    s_min_searched: bool  # True: the reference grid's choice; False: given by the caller

    @property
    def num_classes(self) -> int:
        return self.W.shape[0]


def build_dense_frame(
    distances: np.ndarray, gamma: float, s_min: float | None = None, seed: int = 0, psd_test: str = "cholesky"
) -> FrameResult:
    """Distances → S (with the reference's s_min unless one is given) → HAFrame W, with its diagnostics."""
    d, d_max = _validate_distances(distances)
    gamma = _validate_gamma(gamma)
    searched = s_min is None
    if searched:
        index, _ = _bisect_grid(d, d_max, gamma, psd_test)
        s_min = float(reference_grid(d.shape[0])[index])
    else:
        s_min = _validate_s_min(s_min)
    s = _similarity(d, d_max, gamma, s_min)
    w, min_eigenvalue = _factorise(s, int(seed))
    return FrameResult(
        W=w,
        S=s,
        s_min=s_min,
        gamma=gamma,
        seed=int(seed),
        d_max=d_max,
        min_eigenvalue=min_eigenvalue,
        max_gram_error=float(np.abs(w @ w.T - s).max()),
        s_min_searched=searched,
    )
