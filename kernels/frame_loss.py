"""Public entry point of the HAFrame loss: one function, two backends (fused Triton kernels, plain PyTorch).

    ℓ_b = (1 − α) · CE(h_b Wᵀ, y_b) + α · Σ_i (cos(w_i, h_b) − S[i, y_b])²

reduced over the batch like ``F.cross_entropy`` (reference: :mod:`haf.losses`). Backends: ``"reference"`` —
:func:`haf.kernels.dense.reference.hierarchy_frame_loss` (autograd, any device and dtype); ``"triton"`` —
:mod:`haf.kernels.dense.fused` (dL/dh computed in the forward, no B × K tensor kept; on CPU only through
Triton's interpreter, ``TRITON_INTERPRET=1``); ``"auto"`` — ``HAF_BACKEND`` if set, else Triton for CUDA tensors in
fp32/bf16/fp16 and the reference otherwise. An explicit backend always wins over ``HAF_BACKEND``.

Under ``torch.compile`` both backends run as one registered operator, ``torch.ops.haf.frame_loss`` (a
``torch.library`` custom op with a fake implementation and a registered backward), so ``fullgraph=True`` traces
through the loss without a graph break.
"""
from __future__ import annotations

from typing import Literal, overload

import torch
from torch import nn

from haf.kernels.backends import BACKEND_ENV, BACKENDS, autocast_features, resolve_backend
from haf.kernels.dense.inputs import parse_alpha

__all__ = ["BACKENDS", "BACKEND_ENV", "FrameLoss", "frame_loss", "resolve_backend"]

@overload
def frame_loss(
    features: torch.Tensor, frame: torch.Tensor, target: torch.Tensor, similarity: torch.Tensor,
    alpha: float = ..., reduction: str = ..., ignore_index: int = ..., backend: str = ...,
    *, return_logits: Literal[False] = ...,
) -> torch.Tensor: ...


@overload
def frame_loss(
    features: torch.Tensor, frame: torch.Tensor, target: torch.Tensor, similarity: torch.Tensor,
    alpha: float = ..., reduction: str = ..., ignore_index: int = ..., backend: str = ...,
    *, return_logits: Literal[True],
) -> tuple[torch.Tensor, torch.Tensor]: ...


def frame_loss(
    features: torch.Tensor,
    frame: torch.Tensor,
    target: torch.Tensor,
    similarity: torch.Tensor,
    alpha: float = 0.5,
    reduction: str = "mean",
    ignore_index: int = -100,
    backend: str = "auto",
    *,
    return_logits: bool = False,
    unit_frame: bool = False,
):
    """HAFrame loss, shaped like ``F.cross_entropy``.

    Args:
        features: h, B × D (fp32, bf16 or fp16 on the Triton path; any float dtype on the reference path).
        frame: W, K × D, fixed (the Triton path computes no dW and refuses a frame that requires grad); or a
            tree frame (``haf.frame.TreeFrame``), then ``similarity`` is None and S comes from the tree.
            Rows need not be unit-norm: the cosine divides by max(‖w_i‖, ε) as the reference does.
        target: B class indices; rows equal to ``ignore_index`` contribute 0 and do not count in the mean.
        similarity: S, K × K; the cosine target of class i for a sample of class y is S[i, y].
        alpha: weight of the cosine term, in [0, 1].
        reduction: "mean" (over non-ignored rows, 0 if none), "sum" or "none" (B values, 0 at ignored rows).
        backend: "auto", "triton" or "reference" (see the module docstring; ``HAF_BACKEND`` replaces "auto").
        return_logits: also return z = h Wᵀ (B × K, fp32, detached) for metrics, so evaluation does not
            compute the product twice. On the Triton path this keeps a B × K tensor alive: leave it off in training.
        unit_frame: claim that the frame's rows are unit norm; checked once per frame tensor (ValueError if not).

    Returns:
        The loss in fp32 (fp64 for fp64 inputs on the reference path), or ``(loss, logits)``.
    """
    if not isinstance(frame, torch.Tensor):  # a tree-factorised frame (haf.frame.TreeFrame): its own kernels
        from haf.kernels.tree.loss import is_tree_frame, tree_frame_loss

        if is_tree_frame(frame):
            return tree_frame_loss(features, frame, target, alpha, reduction, ignore_index, backend,
                                   return_logits=return_logits)
    chosen = resolve_backend(backend, features)
    if torch.compiler.is_compiling():
        return _compiled_frame_loss(features, frame, target, similarity, alpha, reduction, ignore_index, chosen,
                                    return_logits, unit_frame)
    if chosen == "triton":
        return _triton_entry()(
            features, frame, target, similarity, alpha=alpha, reduction=reduction, ignore_index=ignore_index,
            return_logits=return_logits, unit_frame=unit_frame,
        )
    from haf.kernels.dense.reference import hierarchy_frame_loss

    loss = hierarchy_frame_loss(features, frame, target, similarity, alpha, reduction, ignore_index,
                                unit_frame=unit_frame)
    if not return_logits:
        return loss
    return loss, _logits(features, frame)


_TRITON_ENTRY = []


def _triton_entry():
    """``triton_frame_loss``, imported on first use (importing Triton costs seconds) and kept."""
    if not _TRITON_ENTRY:
        from haf.kernels.dense.fused import triton_frame_loss

        _TRITON_ENTRY.append(triton_frame_loss)
    return _TRITON_ENTRY[0]


def _logits(features: torch.Tensor, frame: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        compute = torch.float64 if torch.float64 in (features.dtype, frame.dtype) else torch.float32
        return features.to(compute) @ frame.to(compute).T


# ----------------------------------------------------------------------------------------------------------------
# torch.library registration: the whole loss as one operator with its own backward (what torch.compile traces)
# ----------------------------------------------------------------------------------------------------------------
@torch.library.custom_op("haf::frame_loss", mutates_args=())
def _frame_loss_op(
    features: torch.Tensor, frame: torch.Tensor, target: torch.Tensor, similarity: torch.Tensor, alpha: float,
    reduction: str, ignore_index: int, backend: str, unit_frame: bool, compute_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, per-row dℓ/dh or an empty tensor, batch weight (1,)): dL/dh = grad_output · weight · dℓ/dh."""
    if backend == "triton":  # the eager entry's checks, device guard and plan (autocast: the caller casts)
        from haf.kernels.dense.fused import device_guard, fused_frame_loss_forward, triton_frame_loss_checks

        alpha = triton_frame_loss_checks(features, frame, target, similarity, alpha, reduction, ignore_index)
        with device_guard(features):
            out = fused_frame_loss_forward(features, frame, target, similarity, alpha, reduction, ignore_index,
                                           compute_grad=compute_grad, unit_frame=unit_frame)
        grad = out.grad_features if out.grad_features is not None else features.new_empty(0)
        scale = out.scale_tensor()
        scale = scale.clone() if scale is not None else torch.ones(1, device=features.device)
        return out.loss.clone(), grad, scale
    from haf.kernels.dense.reference import hierarchy_frame_loss, hierarchy_frame_loss_with_grad

    if not compute_grad:  # the loss alone: no B × K · K × D gradient product to build and drop
        loss = hierarchy_frame_loss(features, frame, target, similarity, alpha, reduction, ignore_index,
                                    unit_frame=unit_frame)
        return loss, features.new_empty(0), torch.ones(1, device=features.device)
    return hierarchy_frame_loss_with_grad(features, frame, target, similarity, alpha, reduction, ignore_index,
                                          unit_frame=unit_frame)


@_frame_loss_op.register_fake
def _frame_loss_fake(features, frame, target, similarity, alpha, reduction, ignore_index, backend, unit_frame,
                     compute_grad):
    wide = backend == "reference" and torch.float64 in (features.dtype, frame.dtype, similarity.dtype)
    shape = (features.shape[0],) if reduction == "none" else ()
    loss = features.new_empty(shape, dtype=torch.float64 if wide else torch.float32)
    grad = features.new_empty(features.shape if compute_grad else (0,))
    return loss, grad, features.new_empty((1,), dtype=torch.float32)


def _frame_loss_setup(ctx, inputs, output) -> None:
    ctx.reduction = inputs[5]
    ctx.save_for_backward(output[1], output[2])


def _frame_loss_backward(ctx, grad_loss, unused_grad, unused_scale):
    grad, scale = ctx.saved_tensors
    factor = grad_loss[:, None] if ctx.reduction == "none" else grad_loss * scale
    return (grad * factor).to(grad.dtype), None, None, None, None, None, None, None, None, None


_frame_loss_op.register_autograd(_frame_loss_backward, setup_context=_frame_loss_setup)


def _compiled_frame_loss(features, frame, target, similarity, alpha, reduction, ignore_index, backend,
                         return_logits, unit_frame):
    if backend == "triton":  # as the eager entry: fp32 features run in the autocast dtype, with its tiles
        features = autocast_features(features)
    compute_grad = features.requires_grad and torch.is_grad_enabled()
    loss = _frame_loss_op(features, frame, target, similarity, float(alpha), reduction, int(ignore_index), backend,
                          bool(unit_frame), compute_grad)[0]
    return (loss, _logits(features, frame)) if return_logits else loss


class FrameLoss(nn.Module):
    """``nn.Module`` form of :func:`frame_loss` holding the fixed frame W and the similarity S as buffers.

    Buffers move with ``.to()``/``.cuda()`` and never reach an optimizer. ``persistent=False`` keeps them out of
    ``state_dict`` for owners that already save the frame themselves (a method module whose last layer is W).
    """

    def __init__(
        self,
        frame,
        similarity: torch.Tensor | None = None,
        alpha: float = 0.5,
        reduction: str = "mean",
        ignore_index: int = -100,
        backend: str = "auto",
        persistent: bool = True,
        unit_frame: bool = False,
    ) -> None:
        super().__init__()
        from haf.kernels.tree.tensors import TreeFrameTensors, is_tree_frame

        if is_tree_frame(frame):
            if similarity is not None:
                raise ValueError("a tree frame carries its similarity (S = g(LCA)); pass similarity=None")
            self.tree = frame if isinstance(frame, TreeFrameTensors) else TreeFrameTensors(frame)
            self._set_options(alpha, reduction, ignore_index, backend, unit_frame)
            return
        self.tree = None
        frame = torch.as_tensor(frame)
        similarity = torch.as_tensor(similarity)
        if frame.dim() != 2:
            raise ValueError(f"frame must be K × D, got shape {tuple(frame.shape)}")
        if similarity.shape != (frame.shape[0], frame.shape[0]):
            raise ValueError(
                f"similarity must be K × K with K = {frame.shape[0]} (frame rows), got shape {tuple(similarity.shape)}"
            )
        self.register_buffer("frame", frame.detach().clone(), persistent=persistent)
        self.register_buffer("similarity", similarity.detach().clone(), persistent=persistent)
        self._set_options(alpha, reduction, ignore_index, backend, unit_frame)

    def _set_options(self, alpha: float, reduction: str, ignore_index: int, backend: str, unit_frame: bool) -> None:
        alpha = parse_alpha(alpha)
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be one of ('mean', 'sum', 'none'), got {reduction!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.alpha = float(alpha)
        self.reduction = reduction
        self.ignore_index = int(ignore_index)
        self.backend = backend
        self.unit_frame = bool(unit_frame)

    def forward(self, features: torch.Tensor, target: torch.Tensor, return_logits: bool = False):
        return frame_loss(
            features, self.tree if self.tree is not None else self.frame, target,
            None if self.tree is not None else self.similarity, alpha=self.alpha, reduction=self.reduction,
            ignore_index=self.ignore_index, backend=self.backend, return_logits=return_logits,
            unit_frame=self.unit_frame,
        )

    def extra_repr(self) -> str:
        num_classes, dim = self.frame.shape if self.tree is None else (self.tree.num_classes, self.tree.width)
        return (
            f"num_classes={num_classes}, dim={dim}, alpha={self.alpha}, reduction={self.reduction!r}, "
            f"ignore_index={self.ignore_index}, backend={self.backend!r}"
        )
