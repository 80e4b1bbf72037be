"""Wide-ResNets for 32-px inputs (Zagoruyko & Komodakis, BMVC 2016), pre-activation, as the CIFAR-100 reference
builds them (LeakyReLU(0.1), BN momentum 0.001), trained from scratch: ``wrn28_8`` (the reference model, a
512-channel map at 1/4 of the input size), ``wrn28_10``, ``wrn28_2``, ``wrn16_4`` and the generic ``wide_resnet``.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from haf.models.backbone_registry import POOLED_FEATURE_HEAD_DEFAULTS, BackboneFactory, register_backbone
from haf.models.backbone_weights import load_pretrained

__all__ = ["WRN_ACTIVATION_SLOPE", "WRN_BN_MOMENTUM", "WideResNet"]

# The CIFAR-100 reference WRN-28-8 (the HAFrame repository's wide_resnet): LeakyReLU(0.1) activations and BatchNorm
# momentum 0.001 (PyTorch's convention: running ← 0.999 · running + 0.001 · batch).
WRN_ACTIVATION_SLOPE = 0.1
WRN_BN_MOMENTUM = 0.001


class _PreActBlock(nn.Module):
    """Pre-activation basic block: BN → act → conv3×3(stride) → BN → act → dropout → conv3×3, plus shortcut.

    When the width or stride changes, the shortcut is a 1×1 conv. ``activate_before_residual`` (the first block of
    the first stage) feeds both convs the activated input; the first blocks of the later stages convolve the
    *un-activated* input in both branches, as the reference code does. Otherwise the skip is the identity on the
    raw input and conv1 reads the activated one.
    """

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float, activate_before_residual: bool,
                 slope: float, momentum: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes, momentum=momentum)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, momentum=momentum)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.act = nn.LeakyReLU(slope) if slope > 0 else nn.ReLU()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
        self.activate_before_residual = activate_before_residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut is None:
            out, skip = self.act(self.bn1(x)), x
        elif self.activate_before_residual:
            out = skip = self.act(self.bn1(x))
            skip = self.shortcut(skip)
        else:  # the reference computes bn1(x) here and discards it: both branches read the raw input
            out, skip = x, self.shortcut(x)
        out = self.conv1(out)
        out = self.conv2(self.dropout(self.act(self.bn2(out))))
        return out + skip


class WideResNet(nn.Module):
    """WRN-depth-k for 32-px inputs: 3 stages of (depth−4)/6 pre-activation blocks, widths 16k, 32k, 64k.

    Output: the final BN → LeakyReLU map, 64k channels at stride 4 (8 × 8 for CIFAR); WRN-28-8 gives 512 channels,
    which the type-I head average-pools into the 512-d feature of the reference. ``slope`` 0 gives ReLU.
    """

    def __init__(self, depth: int = 28, widen_factor: int = 8, dropout: float = 0.0, in_channels: int = 3,
                 slope: float = WRN_ACTIVATION_SLOPE, bn_momentum: float = WRN_BN_MOMENTUM) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"Wide-ResNet depth must be 6n + 4 with n ≥ 1 (10, 16, 22, 28, 40, ...), got {depth}")
        if widen_factor < 1:
            raise ValueError(f"Wide-ResNet widen_factor must be ≥ 1, got {widen_factor}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"Wide-ResNet dropout must lie in [0, 1), got {dropout}")
        if slope < 0 or not 0.0 < bn_momentum <= 1.0:
            raise ValueError(f"Wide-ResNet needs slope ≥ 0 and 0 < bn_momentum ≤ 1, got {slope}, {bn_momentum}")
        blocks_per_stage = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.depth, self.widen_factor = depth, widen_factor
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        stages: list[nn.Module] = []
        in_planes = widths[0]
        for stage, (planes, stride) in enumerate(zip(widths[1:], (1, 2, 2))):
            blocks = []
            for index in range(blocks_per_stage):
                blocks.append(_PreActBlock(in_planes, planes, stride if index == 0 else 1, dropout,
                                           activate_before_residual=stage == 0, slope=slope, momentum=bn_momentum))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = stages
        self.bn = nn.BatchNorm2d(in_planes, momentum=bn_momentum)
        self.act = nn.LeakyReLU(slope) if slope > 0 else nn.ReLU()
        self.out_channels: int = in_planes
        # Type-I: the 512-d pooled feature; type-II: the reference's BN1d momentum and He-normal 1×1 conv.
        self.head_defaults = {**POOLED_FEATURE_HEAD_DEFAULTS,
                              "type2": {"bn_momentum": bn_momentum, "conv_init": "he-normal"}}
        self._init_weights()

    def _init_weights(self) -> None:
        # He init (fan_out) for convs and identity BNs: the initialisation of the reference code.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(images))))
        return self.act(self.bn(x))


@register_backbone("wide_resnet")
def wide_resnet(
    *,
    depth: int = 28,
    widen_factor: int = 8,
    dropout: float = 0.0,
    in_channels: int = 3,
    weights: str | os.PathLike[str] | None = None,
) -> WideResNet:
    """Generic WRN-depth-k (pre-activation, 32-px stem); ``weights``: None or a checkpoint path."""
    model = WideResNet(depth, widen_factor, dropout, in_channels)
    load_pretrained(model, f"wide_resnet{depth}_{widen_factor}", weights)
    return model


def _wrn(depth: int, widen_factor: int) -> BackboneFactory:
    def factory(
        *, dropout: float = 0.0, in_channels: int = 3, weights: str | os.PathLike[str] | None = None
    ) -> WideResNet:
        model = WideResNet(depth, widen_factor, dropout, in_channels)
        load_pretrained(model, f"wrn{depth}_{widen_factor}", weights)
        return model

    factory.__name__ = f"wrn{depth}_{widen_factor}"
    factory.__doc__ = f"WRN-{depth}-{widen_factor}: {64 * widen_factor}-channel map at 1/4 of the input size."
    return factory


# wrn28_8 is the CIFAR-100 reference; wrn28_10 the usual CIFAR baseline; wrn28_2 / wrn16_4 are small enough for
# the CPU demo.
for _depth, _widen in ((28, 8), (28, 10), (28, 2), (16, 4)):
    register_backbone(f"wrn{_depth}_{_widen}")(_wrn(_depth, _widen))
