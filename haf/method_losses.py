"""Reference losses of the relatives of HAFrame, in plain PyTorch, usable without the ``haf.methods`` modules.

One section per method; every formula is written next to the code that computes it. Each method module in
``haf/methods/`` (``etf_dot_regression``, ``hug``, ``soft_labels``, ``hierarchical_ce``, ``flamingo``,
``hafeature``) owns the parameters and calls these functions, so the tests check the math here once.

Dtype policy (as ``haf.losses``): inputs in bf16/fp16/fp32 are computed and returned in fp32, fp64 stays fp64
(the tests compare against fp64 autograd); half precision is never used for the arithmetic.

Sources (facts, not code): Yang et al., NeurIPS 2022 (fixed ETF + dot regression); Liu et al., ICLR 2023 (HUG);
Bertinetto et al., CVPR 2020 (soft labels, hierarchical cross-entropy); Chang et al., CVPR 2021 (Flamingo);
Garg et al., ECCV 2022 (HAFeature, as re-implemented for the HAFrame paper's comparison); Wang et al., ACM MM 2017
(NormFace scale bound).
"""
from __future__ import annotations

import math
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "adjacent_dissimilar_pairs",
    "batch_class_rescaling",
    "coarsen_probabilities",
    "dissimilarity_hinge",
    "dot_regression_loss",
    "flamingo_chunk_bounds",
    "flamingo_level_inputs",
    "flamingo_loss",
    "hafeature_loss",
    "hafeature_loss_terms",
    "hierarchical_cross_entropy",
    "hierarchical_ce_weights",
    "hug_intra_class_distance",
    "hug_loss",
    "hyperspherical_energy",
    "jensen_shannon_divergence",
    "normface_scale",
    "soft_label_loss",
    "soft_label_targets",
    "weight_consistency",
]

#: Floor of ‖h‖ in the dot-regression loss: the value the reference clamps the (detached) feature norm with,
#: so an all-zero feature gives the finite loss ½·(0 − ‖w‖ε)²/ε = ½‖w‖²ε instead of 0/0.
NORM_EPS = 1e-8

#: Floor of the squared distance between two normalised HUG proxies. The reference drops exactly coincident
#: pairs; clamping instead keeps the energy finite (≤ 1e6 per pair) with the same value for any pair that is
#: not (numerically) coincident: unit vectors of random init are ~√2 apart.
PROXY_DISTANCE_EPS = 1e-6


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _check_batch(name: str, tensor: torch.Tensor, target: torch.Tensor) -> None:
    if tensor.dim() != 2:
        raise ValueError(f"{name} must be B × N, got shape {tuple(tensor.shape)}")
    if target.dim() != 1 or target.shape[0] != tensor.shape[0]:
        raise ValueError(f"target must have shape ({tensor.shape[0]},) to match {name}, got {tuple(target.shape)}")


# ----------------------------------------------------------------------------------------------------------------
# Probabilities of cosine classifiers
# ----------------------------------------------------------------------------------------------------------------


def normface_scale(num_classes: int, target_probability: float = 0.99) -> float:
    """Smallest softmax scale s at which a perfectly collapsed sample reaches ``target_probability``.

    A cosine classifier (HUG proxies, a fixed ETF) predicts by max cosine, with no temperature; CRM needs
    probabilities. With cos = 1 to its own class and −1/(K−1) to the K − 1 others (simplex collapse), softmax(s·cos)
    gives the true class p when s = (K−1)/K · log((K−1)·p/(1−p)) (Wang et al., NormFace, 2017, Prop. 2).
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if not 0.0 < target_probability < 1.0:
        raise ValueError(f"target_probability must lie in (0, 1), got {target_probability}")
    k = float(num_classes)
    return (k - 1.0) / k * math.log((k - 1.0) * target_probability / (1.0 - target_probability))


# ----------------------------------------------------------------------------------------------------------------
# Fixed ETF + dot regression (Yang et al., NeurIPS 2022)
# ----------------------------------------------------------------------------------------------------------------


def batch_class_rescaling(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-batch class lengths E_w for imbalanced data (Yang et al., §"imbalanced learning").

    With B samples of n_u distinct classes in the batch and n_c samples of class c, E_w[c] = sqrt((B/n_u)/n_c) for
    classes in the batch and 1 for the others; the ETF rows are used as E_w[c]·m_c, which weights each sample of
    the dot-regression loss by (B/n_u)/n_c: every present class carries the same total weight.
    """
    counts = torch.bincount(target, minlength=num_classes).to(torch.float32)
    present = counts > 0
    mean_count = target.shape[0] / present.sum().clamp_min(1).to(torch.float32)
    return torch.where(present, (mean_count / counts.clamp_min(1)).sqrt(), torch.ones_like(counts))


def dot_regression_loss(
    features: torch.Tensor,
    class_vectors: torch.Tensor,
    target: torch.Tensor,
    reduction: Literal["mean", "sum", "none"] = "mean",
) -> torch.Tensor:
    """Dot-regression loss: ½ · mean_b (h_bᵀ w_{y_b} − ‖w_{y_b}‖·‖h_b‖)² / ‖h_b‖, with ‖h‖ and ‖w‖ detached.

    ``features`` h (B × D) are the BN'd (and, in the CIFAR variant, L2-normalised) features; ``class_vectors``
    (K × D) the fixed ETF rows, optionally rescaled per batch (:func:`batch_class_rescaling`). Only the dot
    product carries gradient: ∂ℓ_b/∂h_b = (h_bᵀw_y − ‖w_y‖‖h_b‖)/‖h_b‖ · w_y, which pulls h_b towards the
    direction of w_y and vanishes once cos(h_b, w_y) = 1, whatever ‖h_b‖ is.
    """
    _check_batch("features", features, target)
    if class_vectors.dim() != 2 or class_vectors.shape[1] != features.shape[1]:
        raise ValueError(
            f"class_vectors must be K × D with D = {features.shape[1]}, got shape {tuple(class_vectors.shape)}"
        )
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be one of mean, sum, none, got {reduction!r}")
    dtype = _compute_dtype(features, class_vectors)
    h = features.to(dtype)
    w_y = class_vectors.to(dtype)[target]
    dot = (h * w_y).sum(dim=1)
    with torch.no_grad():
        h_norm = torch.linalg.vector_norm(h, dim=1).clamp_min(NORM_EPS)
        w_norm = torch.linalg.vector_norm(w_y, dim=1)
    per_sample = 0.5 * (dot - w_norm * h_norm).square() / h_norm
    if reduction == "none":
        return per_sample
    return per_sample.sum() if reduction == "sum" else per_sample.mean()


# ----------------------------------------------------------------------------------------------------------------
# HUG: hyperspherical uniformity gap, MHE variant (Liu et al., ICLR 2023)
# ----------------------------------------------------------------------------------------------------------------


def hyperspherical_energy(proxies: torch.Tensor) -> torch.Tensor:
    """Inter-class term: Riesz-2 energy of the normalised proxies, mean over pairs i < j of 1/‖ŵ_i − ŵ_j‖².

    Minimising it spreads the K proxies uniformly over the sphere (minimum hyperspherical energy, MHE).
    ‖ŵ_i − ŵ_j‖² = 2 − 2·ŵ_iᵀŵ_j (one K × K Gram matrix instead of K² difference vectors), floored at
    ``PROXY_DISTANCE_EPS``.
    """
    if proxies.dim() != 2 or proxies.shape[0] < 2:
        raise ValueError(f"proxies must be K × D with K ≥ 2, got shape {tuple(proxies.shape)}")
    unit = F.normalize(proxies.to(_compute_dtype(proxies)), dim=1)
    squared = (2.0 - 2.0 * unit @ unit.T).clamp_min(PROXY_DISTANCE_EPS)
    rows, cols = torch.triu_indices(unit.shape[0], unit.shape[0], offset=1, device=unit.device)
    return squared[rows, cols].reciprocal().mean()


def hug_intra_class_distance(features: torch.Tensor, proxies: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Intra-class term: class-balanced mean distance ‖x̂_b − sg(ŵ_{y_b})‖ of normalised features to their proxy.

    For every class present in the batch, the mean distance of its samples; then the mean over those classes
    (the authors' HUG-MHE loop, vectorised). The proxy is detached (sg = stop-gradient): this term moves only the
    features, the inter-class term only the proxies.
    """
    _check_batch("features", features, target)
    dtype = _compute_dtype(features, proxies)
    unit_features = F.normalize(features.to(dtype), dim=1)
    unit_proxies = F.normalize(proxies.detach().to(dtype), dim=1)
    distance = torch.linalg.vector_norm(unit_features - unit_proxies[target], dim=1)
    counts = torch.bincount(target, minlength=proxies.shape[0]).to(dtype)
    num_present = (counts > 0).sum().to(dtype)
    return (distance / counts[target]).sum() / num_present


def hug_loss(
    features: torch.Tensor,
    proxies: torch.Tensor,
    target: torch.Tensor,
    inter_weight: float = 0.15,
    intra_weight: float = 0.015,
) -> torch.Tensor:
    """L = α · MHE(ŵ) + β · intra(x̂, sg(ŵ), y): ``inter_weight`` α, ``intra_weight`` β (paper: 0.15 and 0.015)."""
    return inter_weight * hyperspherical_energy(proxies) + intra_weight * hug_intra_class_distance(
        features, proxies, target
    )


# ----------------------------------------------------------------------------------------------------------------
# Soft labels (Bertinetto et al., CVPR 2020)
# ----------------------------------------------------------------------------------------------------------------


def soft_label_targets(distances: np.ndarray | torch.Tensor, beta: float) -> torch.Tensor:
    """K × K float64 matrix whose row y is the soft target of label y: q_i(y) ∝ exp(−β · d(i, y) / d_max).

    d_max is the largest distance in the matrix (the reference normalises the distances by it, so β means the
    same on trees of any height). Larger β → closer to one-hot.
    """
    d = torch.as_tensor(np.asarray(distances), dtype=torch.float64)
    if d.dim() != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"distances must be a square K × K matrix, got shape {tuple(d.shape)}")
    if not bool(torch.isfinite(d).all()) or bool((d < 0).any()):
        raise ValueError("distances must be finite and non-negative")
    d_max = float(d.max())
    if d_max <= 0:
        raise ValueError("distances are all zero: soft labels need at least two classes at positive distance")
    if not (math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be a non-negative number, got {beta}")
    return torch.softmax(-beta * d / d_max, dim=1)


def soft_label_loss(logits: torch.Tensor, target: torch.Tensor, soft_targets: torch.Tensor) -> torch.Tensor:
    """KL(q(y) ‖ softmax(z)) = Σ_i q_i (log q_i − log p_i), summed over classes and averaged over the batch.

    Same gradient as the soft cross-entropy −Σ q_i log p_i (they differ by the constant entropy of q). The
    reference calls ``nn.KLDivLoss()`` with its default element-wise mean, i.e. this divided by K — a constant
    factor that the reference's Adam optimiser ignores but SGD would not; the batch mean is the KL itself.
    """
    _check_batch("logits", logits, target)
    if soft_targets.shape != (logits.shape[1], logits.shape[1]):
        raise ValueError(f"soft_targets must be K × K with K = {logits.shape[1]}, got {tuple(soft_targets.shape)}")
    dtype = _compute_dtype(logits)
    log_p = torch.log_softmax(logits.to(dtype), dim=1)
    q = soft_targets.to(device=logits.device, dtype=dtype)[target]
    return (torch.special.xlogy(q, q) - q * log_p).sum(dim=1).mean()


# ----------------------------------------------------------------------------------------------------------------
# Hierarchical cross-entropy (Bertinetto et al., CVPR 2020)
# ----------------------------------------------------------------------------------------------------------------


def hierarchical_ce_weights(
    assignments: Sequence[np.ndarray],
    alpha: float,
    weighting: Literal["depth", "height"] = "depth",
    normalize: bool = False,
) -> np.ndarray:
    """K × L float64 edge weights λ for each leaf's path, levels coarse → fine (last level = the leaves).

    The edge into the level-l node (depth l + 1, root depth 0) gets
    * ``"depth"``: λ = exp(−α·(l + 1)) — what the authors' code does (``exp(-value * len(position))`` over nltk
      tree positions): weights shrink going *down* the tree, so larger α favours the coarse decisions;
    * ``"height"``: λ = exp(−α·h(C)) with h(C) = L − (l + 1) — the formula as printed in the paper
      (λ(C) = exp(−α h(C)), h the height of C), using the fixed-scale height of the "fixed-depth" distance
      convention, which equals the subtree height on balanced trees.
    Edges whose child has the same leaves as its parent (single-child chains, or a shallow leaf repeated down
    the levels) have p(C | parent) = 1 and get weight 0, so they add exactly nothing.
    ``normalize``: divide by the sum of the weights of all nodes of the tree, root included, as the reference's
    default does (a constant factor: harmless with the reference's Adam, a 1/Z learning-rate cut under SGD). Nodes
    are counted per level, so on an unbalanced tree a shallow leaf repeated down the levels counts once per level
    (the level table cannot tell a repeat from a single-child chain): the constant differs, nothing else does.
    """
    if not (math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha must be a non-negative number, got {alpha}")
    if weighting not in ("depth", "height"):
        raise ValueError(f"weighting must be 'depth' or 'height', got {weighting!r}")
    levels = [np.asarray(a, dtype=np.int64) for a in assignments]
    num_levels, num_classes = len(levels), levels[-1].shape[0]
    depth = np.arange(1, num_levels + 1, dtype=np.float64)
    exponent = depth if weighting == "depth" else num_levels - depth
    per_level = np.exp(-alpha * exponent)
    weights = np.tile(per_level, (num_classes, 1))
    parent_size = np.full(num_classes, num_classes)  # the root holds every leaf
    for level, assignment in enumerate(levels):
        size = np.bincount(assignment)[assignment]  # leaves under each leaf's level-l node
        weights[size == parent_size, level] = 0.0
        parent_size = size
    if normalize:
        root_weight = 1.0 if weighting == "depth" else math.exp(-alpha * num_levels)
        nodes_per_level = np.array([int(a.max()) + 1 for a in levels], dtype=np.float64)
        weights /= root_weight + float((nodes_per_level * per_level).sum())
    return weights


def hierarchical_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, assignments: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """HXE: −Σ_{l} λ_l(y) · log p(C_l(y) | C_{l−1}(y)), averaged over the batch.

    ``assignments`` (L × K, long): node id of every leaf at each level, coarse → fine, last row = arange(K);
    ``weights`` (K × L): λ per leaf and level (:func:`hierarchical_ce_weights`). The probability of a node is the
    sum of its leaves' softmax probabilities, computed in log space as a masked logsumexp over the leaves that
    share the target's node (exact, no underflow); p(C | parent) = p(C)/p(parent), and p(root) = 1.
    """
    _check_batch("logits", logits, target)
    num_levels, num_classes = assignments.shape
    if num_classes != logits.shape[1] or weights.shape != (num_classes, num_levels):
        raise ValueError(
            f"assignments must be L × K and weights K × L with K = {logits.shape[1]}, "
            f"got {tuple(assignments.shape)} and {tuple(weights.shape)}"
        )
    dtype = _compute_dtype(logits)
    log_p = torch.log_softmax(logits.to(dtype), dim=1)  # B × K
    assignments = assignments.to(logits.device)
    same_node = assignments[:, None, :] == assignments[:, target][:, :, None]  # L × B × K
    masked = torch.where(same_node, log_p.unsqueeze(0), torch.full_like(log_p, -math.inf).unsqueeze(0))
    log_p_node = torch.logsumexp(masked, dim=2).T  # B × L: log p of the target's ancestor at each level
    log_p_parent = F.pad(log_p_node[:, :-1], (1, 0))  # log p(root) = 0
    conditional = log_p_node - log_p_parent
    lam = weights.to(device=logits.device, dtype=dtype)[target]
    return -(lam * conditional).sum(dim=1).mean()


# ----------------------------------------------------------------------------------------------------------------
# Flamingo (Chang et al., CVPR 2021)
# ----------------------------------------------------------------------------------------------------------------


def flamingo_chunk_bounds(dim: int, num_levels: int) -> list[tuple[int, int]]:
    """Column ranges of the per-level feature chunks, coarse → fine.

    As the reference: chunks of ⌊D/L⌋ columns, the finest chunk takes the remainder (D = 600, L = 7: six chunks
    of 85 and a last one of 90).
    """
    if num_levels < 1 or dim < num_levels:
        raise ValueError(f"Flamingo splits the {dim}-d feature into {num_levels} chunks: needs D ≥ L ≥ 1")
    size = dim // num_levels
    return [(level * size, (level + 1) * size if level < num_levels - 1 else dim) for level in range(num_levels)]


def flamingo_level_inputs(features: torch.Tensor, num_levels: int) -> list[torch.Tensor]:
    """Input of the level-l classifier: [chunk_l, sg(chunk_{l+1}), …, sg(chunk_{L−1})], coarse → fine.

    The coarse classifiers see the finer chunks but cannot train them (sg = stop-gradient): the finest chunk is
    shaped only by the finest labels, and each coarser chunk only by its own level's labels.
    """
    if features.dim() != 2:
        raise ValueError(f"features must be B × D, got shape {tuple(features.shape)}")
    bounds = flamingo_chunk_bounds(features.shape[1], num_levels)
    inputs = []
    for level, (start, end) in enumerate(bounds):
        finer_start = bounds[level + 1][0] if level + 1 < num_levels else features.shape[1]
        own = features[:, start:end]
        if finer_start < features.shape[1]:
            own = torch.cat([own, features[:, finer_start:].detach()], dim=1)
        inputs.append(own)
    return inputs


def flamingo_loss(level_logits: Sequence[torch.Tensor], level_targets: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ_l CE(z_l, y_l): one cross-entropy per level, unweighted, as the reference sums them."""
    if len(level_logits) != len(level_targets) or not level_logits:
        raise ValueError(f"need one target per level: {len(level_logits)} logits, {len(level_targets)} targets")
    dtype = _compute_dtype(*level_logits)
    return sum(F.cross_entropy(z.to(dtype), y) for z, y in zip(level_logits, level_targets))


# ----------------------------------------------------------------------------------------------------------------
# HAFeature (Garg et al., ECCV 2022)
# ----------------------------------------------------------------------------------------------------------------


def coarsen_probabilities(probs: torch.Tensor, parent: torch.Tensor, num_parents: int | None = None) -> torch.Tensor:
    """p̂_c = Σ_{children j of c} p_j: the finer level's probabilities summed onto its parent level (B × n_parent)."""
    num_parents = int(parent.max()) + 1 if num_parents is None else num_parents
    out = probs.new_zeros(probs.shape[0], num_parents)
    return out.index_add(1, parent.to(probs.device), probs)


def _kl_to_mixture(p: torch.Tensor, log_m: torch.Tensor) -> torch.Tensor:
    """Σ_i p_i (log p_i − log m_i) per row; p_i = 0 contributes 0 (log p is floored at the dtype's tiny)."""
    tiny = torch.finfo(p.dtype).tiny
    return (p * (p.clamp_min(tiny).log() - log_m)).sum(dim=1)


def jensen_shannon_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """JSD(p, q) = ½ KL(p ‖ m) + ½ KL(q ‖ m), m = (p + q)/2, averaged over the batch (rows are distributions).

    The reference floors m at 1e-7 before the log; here only at the dtype's smallest normal number, which
    changes nothing but entries that are exactly zero in both p and q (and those contribute 0 either way).
    """
    if p.shape != q.shape or p.dim() != 2:
        raise ValueError(f"p and q must be B × N of one shape, got {tuple(p.shape)} and {tuple(q.shape)}")
    log_m = (0.5 * (p + q)).clamp_min(torch.finfo(p.dtype).tiny).log()
    return 0.5 * (_kl_to_mixture(p, log_m) + _kl_to_mixture(q, log_m)).mean()


def dissimilarity_hinge(probs: torch.Tensor, pairs: torch.Tensor, margin: float = 3.0) -> torch.Tensor:
    """½ mean_pairs max(0, m − KL(p_a ‖ mix)) + ½ mean_pairs max(0, m − KL(p_b ‖ mix)) over (a, b) in ``pairs``.

    Pushes apart the predictions of samples with different labels at this level. KL to the mixture is at most
    log 2, so with the reference's margin 3 the hinge is always active and the term equals 3 − mean JSD(p_a, p_b).
    An empty ``pairs`` (P = 0) gives 0.
    """
    if pairs.numel() == 0:
        return probs.sum() * 0.0
    p, q = probs[pairs[:, 0]], probs[pairs[:, 1]]
    log_m = (0.5 * (p + q)).clamp_min(torch.finfo(p.dtype).tiny).log()
    hinge_p = (margin - _kl_to_mixture(p, log_m)).clamp_min(0).mean()
    hinge_q = (margin - _kl_to_mixture(q, log_m)).clamp_min(0).mean()
    return 0.5 * (hinge_p + hinge_q)


def adjacent_dissimilar_pairs(labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """P × 2 index pairs: neighbours in a random permutation of the batch whose ``labels`` differ.

    The reference shuffles the batch and takes consecutive samples with different labels, repeating that list
    until it holds 256 pairs (which weights the pairs almost uniformly); here each such pair counts once. Every
    unordered pair of the batch is equally likely to be adjacent, so no pair of classes is favoured.
    """
    perm = torch.randperm(labels.shape[0], generator=generator, device="cpu").to(labels.device)
    first, second = perm[:-1], perm[1:]
    keep = labels[first] != labels[second]
    return torch.stack([first[keep], second[keep]], dim=1)


def weight_consistency(coarse_weight: torch.Tensor, fine_weight: torch.Tensor, parent: torch.Tensor) -> torch.Tensor:
    """mean over coarse nodes c of cos(ŵ_c, normalize(Σ_{children j of c} ŵ_j)), rows normalised first."""
    coarse = F.normalize(coarse_weight, dim=1)
    fine = F.normalize(fine_weight, dim=1)
    summed = fine.new_zeros(coarse.shape).index_add(0, parent.to(fine.device), fine)
    return F.cosine_similarity(coarse, F.normalize(summed, dim=1), dim=1, eps=1e-8).mean()


def hafeature_loss_terms(
    level_logits: Sequence[torch.Tensor],
    level_weights: Sequence[torch.Tensor],
    level_targets: Sequence[torch.Tensor],
    parents: Sequence[torch.Tensor],
    margin: float = 3.0,
    pairs: Sequence[torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    hinge_levels: Sequence[int] | None = None,
) -> dict[str, torch.Tensor]:
    """The four HAFeature terms for levels coarse → fine (last = leaves); ``parents[l]`` maps level l to l − 1.

    * ``ce``: CE at the finest level only;
    * ``jsd``: Σ over adjacent levels of JSD(p̂_{l−1}, p_{l−1}), p̂ the level-l probabilities summed to parents;
    * ``weight_consistency``: Σ over adjacent levels of :func:`weight_consistency` (to be *maximised*);
    * ``dissimilarity``: Σ over the levels ``hinge_levels`` (0-based, coarse → fine; default the intermediate
      levels 1 … L−2: not the coarsest, not the leaves) of :func:`dissimilarity_hinge` on that level's
      probabilities, pairs from :func:`adjacent_dissimilar_pairs` of that level's labels unless given.
    """
    num_levels = len(level_logits)
    if not (len(level_weights) == len(level_targets) == len(parents) == num_levels):
        raise ValueError("level_logits, level_weights, level_targets and parents need one entry per level")
    dtype = _compute_dtype(*level_logits)
    log_probs = [torch.log_softmax(z.to(dtype), dim=1) for z in level_logits]
    probs = [lp.exp() for lp in log_probs]
    zero = log_probs[-1].sum() * 0.0
    terms = {
        "ce": F.nll_loss(log_probs[-1], level_targets[-1]),
        "jsd": zero,
        "weight_consistency": zero,
        "dissimilarity": zero,
    }
    for level in range(1, num_levels):
        coarse_count = probs[level - 1].shape[1]
        coarsened = coarsen_probabilities(probs[level], parents[level], coarse_count)
        terms["jsd"] = terms["jsd"] + jensen_shannon_divergence(coarsened, probs[level - 1])
        terms["weight_consistency"] = terms["weight_consistency"] + weight_consistency(
            level_weights[level - 1].to(dtype), level_weights[level].to(dtype), parents[level]
        )
    levels = range(1, num_levels - 1) if hinge_levels is None else hinge_levels
    for level in levels:
        if not 0 <= level < num_levels:
            raise ValueError(f"hinge level {level} outside the {num_levels} levels 0..{num_levels - 1}")
        level_pairs = pairs[level] if pairs is not None else adjacent_dissimilar_pairs(level_targets[level], generator)
        terms["dissimilarity"] = terms["dissimilarity"] + dissimilarity_hinge(probs[level], level_pairs, margin)
    return terms


def hafeature_loss(
    level_logits: Sequence[torch.Tensor],
    level_weights: Sequence[torch.Tensor],
    level_targets: Sequence[torch.Tensor],
    parents: Sequence[torch.Tensor],
    jsd_weight: float = 1.0,
    weight_consistency_weight: float = 1.0,
    dissimilarity_weight: float = 1.0,
    margin: float = 3.0,
    pairs: Sequence[torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    hinge_levels: Sequence[int] | None = None,
) -> torch.Tensor:
    """L = CE_fine + w_jsd·Σ JSD − w_wc·Σ cos-consistency + w_dis·Σ hinge (all weights 1 in the reference)."""
    terms = hafeature_loss_terms(level_logits, level_weights, level_targets, parents, margin, pairs, generator,
                                 hinge_levels)
    return (
        terms["ce"]
        + jsd_weight * terms["jsd"]
        - weight_consistency_weight * terms["weight_consistency"]
        + dissimilarity_weight * terms["dissimilarity"]
    )
