"""Input rules of the HAFrame loss, shared by the reference and the fused path (same checks, same messages).

Per call, without a host synchronisation: shapes, dtypes, devices, ``alpha`` (a number in [0, 1]), ``reduction``,
the target dtype. Once per frame/similarity tensor (cached by identity and version in a weak-keyed table, so no
entry outlives its tensor): finite values, S symmetric and inside [-1, 1], unit rows when ``unit_frame`` is claimed.

Targets: every integer dtype torch can turn into int64 without loss (int8/16/32/64, uint8/16/32). ``ignore_index``
is compared by *value*: a target dtype that cannot hold it (−100 in uint8) simply has no ignored row — the value is
never cast into the target's dtype, where −100 would become 156. uint64 and bool targets are refused.
"""
from __future__ import annotations

import numbers

import torch
from torch.utils.weak import WeakIdKeyDictionary

__all__ = [
    "REDUCTIONS", "SIMILARITY_TOLERANCE", "UNIT_ROW_TOLERANCE", "TARGET_DTYPES", "check_constants",
    "check_frame_loss_inputs", "check_frame_values", "check_ignore_index", "check_similarity_values", "check_target", "check_target_range", "parse_alpha",
]

REDUCTIONS = ("mean", "sum", "none")
#: Integer target dtypes taken as class indices (every value fits int64).
TARGET_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.uint16, torch.uint32)
#: |S − Sᵀ| and the excess of |S| over 1 allowed (S computed as W Wᵀ by a GEMM is symmetric only to rounding).
SIMILARITY_TOLERANCE = 1e-5
#: | ‖w_i‖ − 1 | allowed when the caller claims a unit frame.
UNIT_ROW_TOLERANCE = 1e-3


def parse_alpha(alpha) -> float:
    """α as a Python float in [0, 1]: a number or a one-element CPU tensor (a CUDA one would synchronise)."""
    if isinstance(alpha, torch.Tensor):
        if alpha.numel() != 1:
            raise TypeError(f"alpha must be a number, got a tensor of shape {tuple(alpha.shape)}")
        if alpha.device.type != "cpu":
            raise TypeError(f"alpha must be a number or a CPU tensor (reading one on {alpha.device} synchronises)")
        alpha = alpha.item()
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"alpha must be a number in [0, 1], got {type(alpha).__name__} {alpha!r}")
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:  # also refuses NaN
        raise ValueError(f"alpha is the weight of the cosine term and must lie in [0, 1], got {alpha}")
    return alpha


def check_target(target: torch.Tensor, batch: int) -> None:
    """Shape and dtype of ``target`` (no host synchronisation)."""
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a tensor of class indices, got {type(target).__name__}")
    if target.dim() != 1 or target.shape[0] != batch:
        raise ValueError(f"target must have shape ({batch},) to match features, got {tuple(target.shape)}")
    if target.dtype not in TARGET_DTYPES:
        if target.dtype == torch.uint64:
            raise ValueError("target dtype torch.uint64 cannot be represented as int64 class indices; use int64")
        raise ValueError(f"target must be an integer tensor of class indices, got dtype {target.dtype}")


def check_target_range(target: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """Every non-ignored target is a class index; returns the mask of rows that count (compared as int64).

    Synchronises with the device (``bool(...)``): fast paths call it only for CPU tensors.
    """
    target = target.long()
    valid = target != ignore_index
    bad = valid & ((target < 0) | (target >= num_classes))
    if bool(bad.any()):
        row = int(torch.nonzero(bad)[0, 0])
        raise ValueError(
            f"target[{row}] = {int(target[row])} is not a class index in [0, {num_classes}) "
            f"nor ignore_index ({ignore_index})"
        )
    return valid


def check_ignore_index(ignore_index) -> None:
    """An int that fits int64 (a float such as −100.0 is refused: targets are compared by integer value)."""
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__} {ignore_index!r}")
    if not -(2**63) <= int(ignore_index) < 2**63:
        raise ValueError(f"ignore_index {ignore_index} does not fit int64")


def check_frame_loss_inputs(features, frame, target, similarity, alpha, reduction, ignore_index=-100) -> float:
    """Shapes, dtypes, devices, α, reduction and ignore_index of a call, without host synchronisation.

    Returns α as a float.
    """
    for name, tensor in (("features", features), ("frame", frame), ("similarity", similarity)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(tensor).__name__}")
    if features.dim() != 2:
        raise ValueError(f"features must be B × D, got shape {tuple(features.shape)}")
    if frame.dim() != 2 or frame.shape[1] != features.shape[1]:
        raise ValueError(
            f"frame must be K × D with D = {features.shape[1]} (the feature width), got shape {tuple(frame.shape)}"
        )
    num_classes = frame.shape[0]
    if similarity.shape != (num_classes, num_classes):
        raise ValueError(
            f"similarity must be K × K with K = {num_classes} (frame rows), got shape {tuple(similarity.shape)}"
        )
    for name, tensor in (("features", features), ("frame", frame), ("similarity", similarity)):
        if not tensor.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")
        if tensor.device != features.device:
            raise ValueError(f"{name} is on {tensor.device} but features are on {features.device}")
    check_target(target, features.shape[0])
    if target.device != features.device:
        raise ValueError(f"target is on {target.device} but features are on {features.device}")
    check_ignore_index(ignore_index)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return parse_alpha(alpha)


def _check_finite(name: str, tensor: torch.Tensor) -> None:
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} has non-finite values (NaN or inf)")


def check_similarity_values(similarity: torch.Tensor) -> None:
    s = similarity.detach()
    _check_finite("similarity", s)
    if s.numel() and float((s - s.T).abs().max()) > SIMILARITY_TOLERANCE:
        raise ValueError(f"similarity is not symmetric (|S − Sᵀ| > {SIMILARITY_TOLERANCE})")
    if s.numel() and float(s.abs().max()) > 1.0 + SIMILARITY_TOLERANCE:
        raise ValueError(f"similarity has values outside [-1, 1] (max |S| = {float(s.abs().max()):.6g})")


def check_frame_values(frame: torch.Tensor, unit_frame: bool) -> None:
    w = frame.detach()
    _check_finite("frame", w)
    if unit_frame and w.numel():
        worst = float((torch.linalg.vector_norm(w.double(), dim=1) - 1.0).abs().max())
        if worst > UNIT_ROW_TOLERANCE:
            raise ValueError(f"frame rows are not unit norm (largest | ‖w_i‖ − 1 | = {worst:.3g})")


_checked: WeakIdKeyDictionary = WeakIdKeyDictionary()


def tensor_version(tensor: torch.Tensor) -> int | None:
    try:
        return tensor._version
    except RuntimeError:  # inference-mode tensors carry no version counter
        return None


def check_constants(frame: torch.Tensor, similarity: torch.Tensor, unit_frame: bool = False) -> None:
    """The value checks of the fixed tensors, once per tensor and version (synchronises on that first call)."""
    for key, check in (((frame, bool(unit_frame)), check_frame_values),
                       ((similarity, None), check_similarity_values)):
        tensor, option = key
        version = tensor_version(tensor)
        seen = _checked.get(tensor) if version is not None else None
        if seen is not None and seen[0] == version and option in seen[1]:
            continue
        if option is None:
            check(tensor)
        else:
            check(tensor, option)
        if version is not None:
            options = seen[1] if seen is not None and seen[0] == version else set()
            _checked[tensor] = (version, options | {option, False})
