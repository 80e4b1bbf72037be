"""Heads: backbone feature map (B × C × h × w) → feature vector h (B × D), found through a registry.

The head is everything between the backbone and the method's last layer (docs/METHOD.md §5):

* ``type1`` — the baseline head. ResNet-50: global **max** pool → BN1d(C) → Linear(C, 600) → BN1d(600) → ELU
  (D = 600). Wide-ResNet-28-8: the 512-d global **average**-pooled feature (``pool="avg", hidden_dim=None``).
* ``type2`` — the HAFrame head: 1×1 conv C → K (no bias) → global average pool → BN1d(K) → two residual blocks,
  each ``x + f(x)`` with f = [Linear(K, K, no bias) → BN1d(K) → PReLU(K)] × 2 (D = K).
* ``mlp`` — global average pool → Linear(C, width) → BN1d → PReLU → residual blocks at ``width`` (D = width,
  fixed): its cost does not grow with K, so with the tree-factorised HAFrame (the method projects D → N − 1) the
  head-to-frame path costs O(width·N) instead of the type-II head's O(K²).

Every head exposes ``out_features`` (D) and splits its parameters for the optimizer (:class:`Head`).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from haf.models.backbone_registry import check_factory_options, registrar

__all__ = [
    "Head",
    "ResidualBlock",
    "Type1Head",
    "MLPHead",
    "Type2Head",
    "available_heads",
    "build_head",
    "register_head",
]

HeadFactory = Callable[..., "Head"]
_HEADS: dict[str, HeadFactory] = {}

#: Width of the type-I ResNet-50 feature (docs/METHOD.md: Linear(2048, 600)).
TYPE1_HIDDEN_DIM = 600

POOLS = ("max", "avg")
CONV_INITS = ("default", "he-normal")  # PyTorch's default, or kaiming_normal_(fan_out) as the WRN reference


def register_head(name: str) -> Callable[[HeadFactory], HeadFactory]:
    """Register ``factory(in_channels, num_classes, **options) -> Head`` under ``name``."""
    return registrar(_HEADS, "head", name)


def available_heads() -> list[str]:
    return sorted(_HEADS)


def build_head(name: str, in_channels: int, num_classes: int, **options: Any) -> "Head":
    """Build the head registered as ``name`` on a backbone with ``in_channels`` output channels."""
    try:
        factory = _HEADS[name]
    except KeyError:
        raise ValueError(f"unknown head {name!r}; valid choices: {', '.join(available_heads())}") from None
    check_factory_options("head", name, factory, {"in_channels": in_channels, "num_classes": num_classes, **options})
    return factory(in_channels=in_channels, num_classes=num_classes, **options)


class Head(nn.Module):
    """Base class: feature map → feature vector; subclasses set ``out_features`` and split their modules.

    The split feeds :meth:`haf.models.classifier.HierarchyClassifier.param_groups`:

    * :meth:`backbone_modules` — trained like the backbone (the type-II 1×1 conv: the reference puts it in the
      backbone's lr/10 group);
    * :meth:`transformation_modules` — the "transformation layers" (type-I: BN–Linear–BN; type-II: the BN and the
      residual blocks), which the iNat2019 / tieredImageNet-H recipe also trains at lr/10.

    Together the two lists cover every parameter of the head exactly once (checked by the tests).
    """

    out_features: int

    def backbone_modules(self) -> list[nn.Module]:
        """Submodules optimised with the backbone (its learning-rate scale)."""
        return []

    def transformation_modules(self) -> list[nn.Module]:
        """The transformation layers (their own learning-rate scale in the iNat/tiered recipe)."""
        return [self]


def _global_pool(kind: str) -> nn.Module:
    if kind not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {kind!r}")
    return nn.AdaptiveMaxPool2d(1) if kind == "max" else nn.AdaptiveAvgPool2d(1)


def _check_map(features: torch.Tensor, channels: int, head: str) -> None:
    if features.dim() != 4 or features.shape[1] != channels:
        raise ValueError(f"{head} head expects a B × {channels} × h × w feature map, got shape {tuple(features.shape)}")


class Type1Head(Head):
    """Global pool → [BN1d(C) → Linear(C, hidden) → BN1d(hidden) → ELU] (the bracket only if ``hidden_dim``)."""

    def __init__(self, in_channels: int, pool: str = "max", hidden_dim: int | None = TYPE1_HIDDEN_DIM) -> None:
        super().__init__()
        if hidden_dim is not None and hidden_dim < 1:
            raise ValueError(f"type1 head hidden_dim must be a positive int or None, got {hidden_dim}")
        self.in_channels = in_channels
        self.pool = _global_pool(pool)
        self.transform: nn.Module | None = None
        if hidden_dim is not None:
            self.transform = nn.Sequential(
                nn.BatchNorm1d(in_channels),
                nn.Linear(in_channels, hidden_dim),
                nn.BatchNorm1d(hidden_dim),
                nn.ELU(),
            )
        self.out_features: int = in_channels if hidden_dim is None else hidden_dim

    def transformation_modules(self) -> list[nn.Module]:
        return [] if self.transform is None else [self.transform]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        _check_map(features, self.in_channels, "type1")
        pooled = torch.flatten(self.pool(features), 1)
        return pooled if self.transform is None else self.transform(pooled)


class ResidualBlock(nn.Module):
    """x + f(x), f = [Linear(K, K, no bias) → BN1d(K) → PReLU(K)] × ``depth`` (identity skip, no post-activation)."""

    def __init__(self, width: int, depth: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(depth):
            # No bias: the BN right after would cancel it.
            layers += [nn.Linear(width, width, bias=False), nn.BatchNorm1d(width), nn.PReLU(width)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Type2Head(Head):
    """1×1 conv C → D (no bias) → global avg pool → BN1d(D) → ``num_blocks`` residual blocks; D = K by default."""

    def __init__(self, in_channels: int, out_features: int, num_blocks: int = 2, block_depth: int = 2,
                 bn_momentum: float = 0.1, conv_init: str = "default") -> None:
        super().__init__()
        if conv_init not in CONV_INITS:
            raise ValueError(f"type2 head conv_init must be one of {CONV_INITS}, got {conv_init!r}")
        if out_features < 1 or num_blocks < 0 or block_depth < 1:
            raise ValueError(
                f"type2 head needs out_features ≥ 1, num_blocks ≥ 0, block_depth ≥ 1; got out_features={out_features}, "
                f"num_blocks={num_blocks}, block_depth={block_depth}"
            )
        self.in_channels = in_channels
        self.conv = nn.Conv2d(in_channels, out_features, kernel_size=1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.norm = nn.BatchNorm1d(out_features, momentum=bn_momentum)
        if conv_init == "he-normal":  # the CIFAR reference initialises every conv of its WRN model so
            nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="leaky_relu")
        self.blocks = nn.Sequential(*(ResidualBlock(out_features, block_depth) for _ in range(num_blocks)))
        self.out_features: int = out_features

    def backbone_modules(self) -> list[nn.Module]:
        return [self.conv]

    def transformation_modules(self) -> list[nn.Module]:
        return [self.norm, self.blocks]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        _check_map(features, self.in_channels, "type2")
        pooled = torch.flatten(self.pool(self.conv(features)), 1)
        return self.blocks(self.norm(pooled))


@register_head("type1")
def type1(
    *, in_channels: int, num_classes: int, pool: str = "max", hidden_dim: int | None = TYPE1_HIDDEN_DIM
) -> Type1Head:
    """Baseline head; defaults are the ResNet-50 ones, use ``pool="avg", hidden_dim=None`` for WRN-28-8."""
    del num_classes  # the feature width does not depend on K
    return Type1Head(in_channels, pool=pool, hidden_dim=hidden_dim)


@register_head("type2")
def type2(
    *, in_channels: int, num_classes: int, out_features: int | None = None, num_blocks: int = 2, block_depth: int = 2,
    bn_momentum: float = 0.1, conv_init: str = "default",
) -> Type2Head:
    """HAFrame head; ``out_features`` defaults to K (the frame is K × K). ``bn_momentum`` of the BN1d after
    pooling and ``conv_init`` of the 1×1 conv: Wide-ResNets default them to the reference's 0.001 / he-normal."""
    return Type2Head(in_channels, num_classes if out_features is None else out_features, num_blocks, block_depth,
                     bn_momentum, conv_init)


class MLPHead(Head):
    """Global avg pool → Linear(C, width, no bias) → BN1d → PReLU → ``num_blocks`` residual blocks (D = width)."""

    def __init__(self, in_channels: int, width: int = 512, num_blocks: int = 2, block_depth: int = 2) -> None:
        super().__init__()
        if width < 1 or num_blocks < 0 or block_depth < 1:
            raise ValueError(f"mlp head needs width ≥ 1, num_blocks ≥ 0, block_depth ≥ 1; got width={width}, "
                             f"num_blocks={num_blocks}, block_depth={block_depth}")
        self.in_channels = in_channels
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.stem = nn.Sequential(nn.Linear(in_channels, width, bias=False), nn.BatchNorm1d(width), nn.PReLU(width))
        self.blocks = nn.Sequential(*(ResidualBlock(width, block_depth) for _ in range(num_blocks)))
        self.out_features: int = width

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        _check_map(features, self.in_channels, "mlp")
        return self.blocks(self.stem(torch.flatten(self.pool(features), 1)))


@register_head("mlp")
def mlp(*, in_channels: int, num_classes: int, width: int = 512, num_blocks: int = 2, block_depth: int = 2) -> MLPHead:
    """Fixed-width residual MLP head (cost independent of K); pair with ``haframe`` ``factorization: tree``."""
    del num_classes  # the width does not depend on K
    return MLPHead(in_channels, width, num_blocks, block_depth)
