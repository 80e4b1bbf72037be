"""HAFrame (Liang & Davis, ICCV 2023): a fixed hierarchy-aware frame as the last layer (docs/METHOD.md §3–4).

The last layer is a fixed frame W (K × D, unit rows) whose Gram matrix is the class similarity
S_ij = (1 − s_min)·exp(−γ·d_ij / d_max) + s_min (built once by :func:`haf.frame.build_frame` from the dataset's
distance matrix), and the features h are trained to collapse onto it with

    z = h Wᵀ                      (h not normalised; no bias, no temperature)
    L = (1 − α)·CE(z, y) + α·(1/B) Σ_b Σ_i (cos(w_i, h_b) − S[i, y_b])²

computed by :func:`haf.kernels.frame_loss` (fused Triton kernel on CUDA, plain PyTorch on CPU). Scores are z.
W and S are persistent buffers (:class:`FixedFrameMethod`, shared with the fixed ETF); the feature width is the
paper's D = K (:class:`HAFrame`).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from haf.hierarchy.distance_conventions import DEFAULT_CONVENTION, Convention
from haf.kernels import BACKENDS
from haf.methods._full_precision import FullPrecisionBuffersMethod
from haf.methods.base import MethodContext, register_method

__all__ = ["FixedFrameMethod", "HAFrame"]

#: Largest K for which the tree method materialises W (K × (N − 1)) for the neural-collapse diagnostics.
COLLAPSE_MAX_CLASSES = 4096



def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


class FixedFrameMethod(FullPrecisionBuffersMethod):
    """A fixed frame W (K × D) and target similarity S (K × K) as buffers; z = h Wᵀ; loss = frame_loss(α).

    The machinery shared by every fixed-frame method (the fixed ETF of ``haf/methods/etf_ce.py`` is the same thing
    with another frame and α = 0). W and S are persistent **buffers**: saved in checkpoints (the frame depends on a
    random rotation Q, so a resumed or evaluated model must use the stored one, not a rebuilt one), never in an
    optimizer, never weight-decayed. Subclasses build (W, S) in ``__init__`` and call :meth:`install_frame`; they
    set ``loss_alpha`` and ``loss_backend``. W and S follow device moves but are never rounded by a module-wide
    ``.half()`` / ``.bfloat16()`` (DeepSpeed's low-precision weights mode): they define the target geometry, not
    weights.
    """

    full_precision_buffers = ("frame", "similarity")

    frame: torch.Tensor
    similarity: torch.Tensor
    loss_alpha: float = 0.0
    loss_backend: str = "auto"

    def install_frame(self, frame: np.ndarray, similarity: np.ndarray) -> None:
        """Register W and S as persistent float32 buffers after checking their shapes against K and D."""
        num_classes = self.context.num_classes
        frame = np.asarray(frame, dtype=np.float64)
        similarity = np.asarray(similarity, dtype=np.float64)
        if frame.shape != (num_classes, self.in_features):
            raise ValueError(
                f"{self.name}: frame must be K × D = {num_classes} × {self.in_features}, got {frame.shape}"
            )
        if similarity.shape != (num_classes, num_classes):
            raise ValueError(
                f"{self.name}: similarity must be K × K = {num_classes} × {num_classes}, got {similarity.shape}"
            )
        if not (np.isfinite(frame).all() and np.isfinite(similarity).all()):
            raise ValueError(f"{self.name}: frame or similarity contains NaN/inf")
        self.register_buffer("frame", torch.from_numpy(frame).float(), persistent=True)
        self.register_buffer("similarity", torch.from_numpy(similarity).float(), persistent=True)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """The outputs are the features themselves: the loss needs h (its norm and direction), not only z."""
        return features

    def classifier_weights(self) -> torch.Tensor:
        return self.frame  # the fixed frame W is the classifier

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # Imported here, not at module level: the method registry imports every method module, and a kernel
        # package that fails to import (no Triton on some platform) must not hide the other methods.
        from haf.kernels import frame_loss

        return frame_loss(
            outputs, self.frame, targets, self.similarity, alpha=self.loss_alpha, backend=self.loss_backend
        )

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        """z = h Wᵀ in fp32 (outside autocast: ranking near-tied classes is what HierDist@k measures)."""
        with torch.autocast(device_type=outputs.device.type, enabled=False):
            return outputs.float() @ self.frame.float().T


@register_method("haframe")
class HAFrame(FixedFrameMethod):
    """Fixed hierarchy-aware frame + (1 − α)·CE + α·cosine loss (Liang & Davis, ICCV 2023).

    Feature width. The paper uses D = K: the type-II head ends in K channels and W is K × K, which is what the dense
    factorisation requires (a different width is an error naming both numbers). A K × K frame embeds in any D > K
    as W Pᵀ with P (D × K) orthonormal, which keeps W Wᵀ = S; that generalisation is not part of the paper and is
    not offered here. The tree factorisation puts a learnable projection D → N − 1 before its frame instead.
    """

    @dataclass(frozen=True)
    class Options:
        # γ: how fast similarity decays with hierarchical distance. Paper: FGVC 1, CIFAR-100 2, iNat2019 5,
        # tieredImageNet-H 3; the default is FGVC-Aircraft's.
        gamma: float = 1.0
        # Weight of the cosine term. Paper: FGVC / tieredImageNet-H 0.5, CIFAR-100 / iNat2019 0.4.
        alpha: float = 0.5
        # Floor of the similarity; None: the reference's grid search for the most negative PSD value.
        s_min: float | None = None
        backend: Literal[BACKENDS] = "auto"
        # "dense": the paper's K × K frame (features K-d). "tree": the exact tree-factorised frame of width N − 1
        # (needs the class tree; a learnable projection D → N − 1 precedes it, so any head width works and the
        # cost is linear in K). docs/TREE_FRAME.md.
        factorization: Literal["dense", "tree"] = "dense"
        # The tree frame's distance convention; must be the dataset's (checked against context.distances).
        distance_convention: Convention = DEFAULT_CONVENTION
        # A tree frame saved by `haf frame --factorization tree --out FILE.npz`, used instead of building one: it
        # must be the frame of the dataset's tree with these gamma, convention (and s_min when given).
        frame_file: str | None = None

        def __post_init__(self) -> None:
            if self.factorization not in ("dense", "tree"):
                raise ValueError(f"factorization must be 'dense' or 'tree', got {self.factorization!r}")
            if not (math.isfinite(self.gamma) and self.gamma > 0):
                raise ValueError(f"gamma must be a positive number, got {self.gamma}")
            if not 0.0 <= self.alpha <= 1.0:
                raise ValueError(f"alpha must lie in [0, 1], got {self.alpha}")
            if self.s_min is not None and not -1.0 <= self.s_min < 1.0:
                raise ValueError(f"s_min must lie in [-1, 1) (or be null for the grid search), got {self.s_min}")
            _check_backend(self.backend)

    @classmethod
    def wants_tree_distances(cls, options: dict) -> bool:
        return options.get("factorization") == "tree"

    def __init__(self, in_features: int, context: MethodContext, options: Options | None = None) -> None:
        super().__init__(in_features, context, options)
        num_classes = context.num_classes
        self.tree_frame = None
        if self.options.factorization == "tree":
            self._init_tree()
            return
        if in_features != num_classes:
            raise ValueError(
                f"haframe: the frame is K × K with K = {num_classes} classes, so the features must be "
                f"{num_classes}-d, but the head gives in_features = {in_features} (use the type2 head, whose "
                f"width defaults to K)"
            )
        distances = np.asarray(context.distances)
        if distances.shape != (num_classes, num_classes):
            raise ValueError(
                f"haframe: context.distances must be K × K = {num_classes} × {num_classes} (one row per class), "
                f"got shape {distances.shape}"
            )
        from haf.frame import build_frame  # numpy only, but keeps the registry's import light

        result = build_frame(distances, self.options.gamma, s_min=self.options.s_min, seed=context.seed)
        self.install_frame(result.W, result.S)
        self.loss_alpha = float(self.options.alpha)
        self.loss_backend = self.options.backend
        #: How the frame was built (for logs and metrics.json); the buffers are the source of truth.
        self.frame_info: dict[str, Any] = {
            "gamma": float(self.options.gamma),
            "s_min": float(result.s_min),
            "d_max": float(result.d_max),
            "min_eigenvalue": float(result.min_eigenvalue),
            "max_gram_error": float(result.max_gram_error),
        }

    # ------------------------------------------------------------------------------------ tree factorisation
    def _init_tree(self) -> None:
        from haf.frame import TreeArrays, build_tree_frame
        from haf.kernels.tree.loss import TreeFrameTensors

        context, options = self.context, self.options
        self._logged_no_collapse = False
        if context.hierarchy is None:
            raise ValueError("haframe: factorization 'tree' needs the class tree, but the dataset has only a distance "
                             "matrix; use factorization: dense")
        from haf.hierarchy.tree_distances import TreeDistances

        # The dataset's tree distances already hold the tree as arrays; convert the hierarchy only without them.
        tree = (context.distances.tree if isinstance(context.distances, TreeDistances)
                else TreeArrays.from_hierarchy(context.hierarchy))
        if tree.classes != tuple(context.classes):
            raise ValueError("haframe: the hierarchy's class order differs from the dataset's")
        if options.frame_file is not None:
            frame = _saved_tree_frame(options.frame_file, tree, options)
        else:
            frame = build_tree_frame(tree, options.gamma, options.distance_convention, s_min=options.s_min)
        _check_tree_distances(frame, context.distances, options.distance_convention)
        #: Learnable D → N − 1 map into the frame's space (no bias: the frame has none either).
        self.projection = torch.nn.Linear(self.in_features, frame.width, bias=False)
        self.tree_frame = TreeFrameTensors(frame)
        self.loss_alpha = float(options.alpha)
        self.loss_backend = options.backend
        self.frame_info = {"gamma": float(options.gamma), "s_min": frame.s_min, "d_max": frame.d_max,
                           "factorization": "tree", "width": frame.width, "max_gram_error": frame.max_gram_error}

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features if self.tree_frame is None else self.projection(features)

    def classifier_weights(self) -> torch.Tensor | None:
        """The frame (K × D). Tree frame: W = F − β·1uᵀ materialised (K × (N − 1)) up to
        ``COLLAPSE_MAX_CLASSES`` classes for the neural-collapse diagnostics, None beyond (logged once)."""
        if self.tree_frame is None:
            return self.frame
        k = self.tree_frame.num_classes
        if k > COLLAPSE_MAX_CLASSES:
            if not self._logged_no_collapse:
                logging.getLogger(__name__).info(
                    "haframe: neural-collapse diagnostics skipped: the tree frame has K = %d > %d classes, and "
                    "its K × (N − 1) frame and K × K similarity are not materialised", k, COLLAPSE_MAX_CLASSES)
                self._logged_no_collapse = True
            return None
        from haf.kernels.tree.loss import tree_frame_matrix

        return tree_frame_matrix(self.tree_frame).to(torch.float32)

    @property
    def collapse_on_outputs(self) -> bool:
        """The frame acts on forward()'s outputs (the projection into R^{N−1}), not on the head's features."""
        return self.tree_frame is not None

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.tree_frame is None:
            return super().loss(outputs, targets)
        from haf.kernels import frame_loss

        return frame_loss(outputs, self.tree_frame, targets, None, alpha=self.loss_alpha, backend=self.loss_backend)

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        if self.tree_frame is None:
            return super().scores(outputs)
        from haf.kernels.tree.loss import tree_logits

        with torch.autocast(device_type=outputs.device.type, enabled=False):
            return tree_logits(outputs.float(), self.tree_frame)


def _check_tree_distances(frame, distances, convention: str, pairs: int = 4096) -> None:
    """The tree frame's S must be the one the dataset's distances give (a K × K matrix or TreeDistances): compare
    d(LCA) on sampled pairs."""
    from haf.hierarchy.tree_distances import TreeDistances, pair_distances

    k = frame.num_classes
    if tuple(distances.shape) != (k, k):
        raise ValueError(f"haframe: context.distances must be K × K = {k} × {k}, got shape {tuple(distances.shape)}")
    rng = np.random.default_rng(0)
    i, j = (torch.from_numpy(rng.integers(0, k, pairs)) for _ in range(2))
    given = distances if isinstance(distances, TreeDistances) else torch.as_tensor(np.asarray(distances))
    if not torch.equal(TreeDistances(frame.tree, convention).pairs(i, j), pair_distances(given, i, j).cpu().long()):
        raise ValueError(f"haframe: option distance_convention={convention!r} does not give the dataset's distances; "
                         "set it to the dataset's distance_convention")


def _saved_tree_frame(path: str, tree: Any, options: Any) -> Any:
    """The tree frame in ``path`` (value-checked on load), refused unless it is the frame of ``tree`` (same
    parents, classes and class order) under the method's gamma, convention and s_min (when given)."""
    from haf.frame import load_tree_frame

    frame = load_tree_frame(path)
    if not (np.array_equal(frame.tree.parent, tree.parent) and np.array_equal(frame.tree.leaf_node, tree.leaf_node)
            and frame.tree.classes in (None, tree.classes)):
        raise ValueError(f"{path}: method.options.frame_file: the frame's tree ({frame.tree.num_classes} classes, "
                         f"{frame.tree.num_nodes} nodes) is not the dataset's ({tree.num_classes} classes, "
                         f"{tree.num_nodes} nodes, or another order)")
    for key, want in (("gamma", float(options.gamma)), ("convention", options.distance_convention),
                      ("s_min", None if options.s_min is None else float(options.s_min))):
        got = getattr(frame, key)
        if want is not None and got != want:
            raise ValueError(f"{path}: method.options.frame_file: the frame has {key} = {got!r}, the method "
                             f"options {want!r}")
    return frame
