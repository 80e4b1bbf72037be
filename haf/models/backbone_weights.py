"""Backbone weights: torchvision's pretrained ResNets or a local checkpoint, loaded key for key.

A checkpoint is a bare state dict or one nested in a container (``state_dict``, ``model``, ...), its keys under a
framework's prefix (DDP, MoCo, SimCLR/BYOL/DINO wrappers, Lightning, our own classifier): the prefix under which most
of the backbone's keys appear is stripped and the rest is loaded strictly. Files are read with
``torch.load(weights_only=True)``: tensors and plain containers only, nothing executed.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

__all__ = ["CHECKPOINT_PREFIXES", "TORCHVISION_ARCHS", "load_backbone_checkpoint", "load_pretrained",
           "load_state_into_backbone", "resolve_torchvision_weights"]


#: Key prefixes that training frameworks put in front of a backbone's parameter names: DataParallel/DDP
#: (``module.``), MoCo v1/v2 (``module.encoder_q.``), SimCLR/BYOL/DINO-style wrappers (``encoder.``, ``backbone.``),
#: Lightning (``model.``), our own ``HierarchyClassifier`` (``backbone.``), and their DDP-wrapped forms. The prefix
#: under which most of the backbone's keys appear wins (see ``_strip_prefix``), so the order only breaks ties.
CHECKPOINT_PREFIXES: tuple[str, ...] = (
    "module.encoder_q.",
    "module.encoder.",
    "module.backbone.",
    "model.encoder.",
    "model.backbone.",
    "encoder_q.",
    "module.",
    "model.",
    "encoder.",
    "backbone.",
    "",
)

#: Containers under which checkpoints nest the state dict (``{"epoch": .., "state_dict": {...}}``), tried in order.
CHECKPOINT_CONTAINERS: tuple[str, ...] = ("state_dict", "model", "model_state_dict", "module")

#: Classifier heads in pretrained files that a feature extractor has no use for: torchvision's ``fc`` and MoCo's
#: projection MLP ``fc.0``/``fc.2``. Dropped after prefix stripping.
IGNORED_HEAD_PREFIXES: tuple[str, ...] = ("fc.",)

#: How many missing/unexpected keys an error message lists before saying "... and N more".
_KEYS_SHOWN = 8


def _unwrap_state_dict(raw: Any, source: str) -> dict[str, torch.Tensor]:
    state = raw
    while isinstance(state, Mapping) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        for container in CHECKPOINT_CONTAINERS:
            if isinstance(state.get(container), Mapping):
                state = state[container]
                break
        else:
            keys = ", ".join(map(str, list(state)[:_KEYS_SHOWN]))
            raise ValueError(
                f"{source}: no state dict found; top-level keys are [{keys}], expected tensors or one of "
                f"{list(CHECKPOINT_CONTAINERS)}"
            )
    if not isinstance(state, Mapping):
        raise ValueError(f"{source}: expected a state dict (a mapping of names to tensors), got {type(state).__name__}")
    return {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _strip_prefix(
    state: Mapping[str, torch.Tensor], expected: set[str]
) -> tuple[str, dict[str, torch.Tensor]]:
    """Pick the known prefix under which most of the model's keys appear; return (prefix, stripped state).

    Keys outside the chosen prefix (MoCo's momentum encoder ``encoder_k``, its ``queue``) belong to other models
    and are not considered; keys under it are matched strictly.
    """
    # The bare names are the baseline: a prefix must match strictly more keys to win, so a file that matches
    # nothing is reported with its own, unstripped keys.
    best_prefix, best_state = "", dict(state)
    best_hits = len(expected.intersection(best_state))
    for prefix in CHECKPOINT_PREFIXES:
        stripped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        hits = len(expected.intersection(stripped))
        if hits > best_hits:
            best_prefix, best_state, best_hits = prefix, stripped, hits
    best_state = {k: v for k, v in best_state.items() if not k.startswith(IGNORED_HEAD_PREFIXES)}
    return best_prefix, best_state


def _key_list(keys: set[str]) -> str:
    shown = sorted(keys)[:_KEYS_SHOWN]
    more = len(keys) - len(shown)
    return ", ".join(shown) + (f" ... and {more} more" if more > 0 else "")


def load_state_into_backbone(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> str:
    """Strip a known prefix from ``state`` and load it strictly into ``model``; return the prefix used.

    Strict means every parameter and buffer of the backbone must be present with the same shape, and no key under
    the prefix may be left over, except BatchNorm's ``num_batches_tracked`` counters, which older files lack and
    which do not affect the forward pass. Mismatches raise ``ValueError`` naming the source and the keys.
    """
    own = model.state_dict()
    expected = set(own)
    prefix, stripped = _strip_prefix(state, expected)
    missing = {k for k in expected - set(stripped) if not k.endswith("num_batches_tracked")}
    unexpected = set(stripped) - expected
    if missing or unexpected:
        parts = [
            f"{source}: checkpoint does not match the {type(model).__name__} backbone (prefix {prefix!r} stripped)"
        ]
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_key_list(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_key_list(unexpected)}")
        raise ValueError("; ".join(parts))
    for key, value in stripped.items():
        if value.shape != own[key].shape:
            raise ValueError(
                f"{source}: key {prefix + key!r} has shape {tuple(value.shape)}, "
                f"the backbone expects {tuple(own[key].shape)}"
            )
    model.load_state_dict(stripped, strict=False)
    return prefix


def load_backbone_checkpoint(model: nn.Module, path: str | os.PathLike[str]) -> str:
    """Load a local checkpoint (.pth/.pt/.tar/.ckpt) into ``model``; return the key prefix that was stripped.

    Accepts a bare state dict or one nested under ``state_dict``/``model``/... (MoCo, timm, Lightning), with keys
    prefixed by ``module.``, ``module.encoder_q.``, ``encoder.``, ``backbone.`` (see :data:`CHECKPOINT_PREFIXES`).
    The file is read with ``torch.load(weights_only=True)``: tensors and plain containers only, nothing executed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone checkpoint not found: {path}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError for disallowed globals, RuntimeError/EOFError for corrupt files
        raise ValueError(f"{path}: cannot read as a weights-only torch checkpoint: {error}") from error
    return load_state_into_backbone(model, _unwrap_state_dict(raw, str(path)), str(path))


def resolve_torchvision_weights(arch: str, name: str) -> Any:
    """Map ``"IMAGENET1K_V2"`` / ``"DEFAULT"`` / ``"imagenet"`` (= DEFAULT) / ``"ResNet50_Weights.IMAGENET1K_V2"`` to
    torchvision's weights enum member for ``arch``."""
    from torchvision.models import get_model_weights

    enum = get_model_weights(arch)
    if name.lower() == "imagenet":  # the config's spelling for "torchvision's recommended ImageNet weights"
        return enum.DEFAULT
    member = name.split(".", 1)[1] if name.startswith(enum.__name__ + ".") else name
    try:
        return enum[member]
    except KeyError:
        raise ValueError(
            f"unknown torchvision weights {name!r} for {arch}; valid choices: {', '.join(enum.__members__)} "
            f"or a path to a local checkpoint file"
        ) from None


#: Backbones whose ``weights`` may also name torchvision weights (the rest take None or a checkpoint path).
TORCHVISION_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")

#: File endings that mark a ``weights`` string as a path even when the file is absent (→ FileNotFoundError,
#: rather than "unknown torchvision weights").
_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".tar", ".ckpt", ".bin")


def _looks_like_path(weights: str) -> bool:
    return os.sep in weights or "/" in weights or weights.endswith(_CHECKPOINT_SUFFIXES) or Path(weights).exists()


def _fetch_torchvision_state_dict(weights_enum: Any) -> dict[str, torch.Tensor]:
    """Download (or read from torch hub's cache) the state dict of a torchvision weights enum member."""
    try:
        return weights_enum.get_state_dict(progress=True, check_hash=True)
    except OSError as error:  # URLError, connection and disk errors are all OSErrors
        raise OSError(
            f"cannot fetch torchvision weights {weights_enum} from {weights_enum.url}: {error}. Without network "
            f"access, download that file elsewhere and pass its local path as the weights instead."
        ) from error


def load_pretrained(model: nn.Module, arch: str, weights: str | os.PathLike[str] | None) -> None:
    """Initialise ``model`` from ``weights``: None/"none", a torchvision weights name, or a local checkpoint path."""
    if weights is None or (isinstance(weights, str) and weights.lower() == "none"):
        return
    if isinstance(weights, os.PathLike) or _looks_like_path(str(weights)):
        load_backbone_checkpoint(model, weights)
        return
    if arch not in TORCHVISION_ARCHS:
        raise ValueError(
            f"{arch} has no torchvision weights; weights must be None or a path to a checkpoint file, got {weights!r}"
        )
    member = resolve_torchvision_weights(arch, str(weights))
    load_state_into_backbone(model, _fetch_torchvision_state_dict(member), f"torchvision {member}")
