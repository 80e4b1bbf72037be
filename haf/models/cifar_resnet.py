"""CIFAR ResNets (He et al., CVPR 2016, §4.2; option-A shortcuts): ``resnet32``, the CIFAR-LT recipe's backbone
(widths 32/64/128, a 128-channel map), and the generic ``cifar_resnet`` (depth 6n + 2, base width w).
"""
from __future__ import annotations

import os

import torch
from torch import nn

from haf.models.backbone_registry import POOLED_FEATURE_HEAD_DEFAULTS, register_backbone
from haf.models.backbone_weights import load_pretrained

__all__ = ["CifarResNet"]


class _OptionAShortcut(nn.Module):
    """Parameter-free shortcut: x[:, :, ::2, ::2] zero-padded by ``pad`` channels on each side."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class _BasicBlock(nn.Module):
    """conv3×3(stride) → BN → ReLU → conv3×3 → BN, plus the (option-A) shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            if planes - in_planes != 2 * (planes // 4):
                raise ValueError(f"option-A shortcut pads planes // 4 per side: {in_planes} -> {planes} does not fit")
            self.shortcut = _OptionAShortcut(planes // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n + 2) for 32-px inputs: conv3×3(3 → w) → BN → ReLU, then 3 stages of n basic blocks with widths
    w, 2w, 4w (strides 1, 2, 2). ResNet-32 (n = 5) with w = 32 is the CIFAR-LT code's ``resnet32_fe_c100``:
    a 128-channel 8 × 8 map, which the type-I head average-pools into the 128-d feature."""

    def __init__(self, depth: int = 32, width: int = 32, in_channels: int = 3) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n ≥ 1 (8, 20, 32, 44, 56, ...), got {depth}")
        if width < 1 or width % 2:
            raise ValueError(f"CIFAR ResNet width must be a positive even number (option-A padding), got {width}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stages, in_planes = [], width
        for planes, stride in ((width, 1), (2 * width, 2), (4 * width, 2)):
            stage = []
            for index in range(blocks):
                stage.append(_BasicBlock(in_planes, planes, stride if index == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3 = stages
        self.out_channels: int = in_planes
        self.head_defaults = dict(POOLED_FEATURE_HEAD_DEFAULTS)
        for module in self.modules():  # the authors' init: kaiming_normal_ (fan_in) on every conv
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(images)))
        return self.layer3(self.layer2(self.layer1(x)))


@register_backbone("cifar_resnet")
def cifar_resnet(
    *, depth: int = 32, width: int = 32, in_channels: int = 3, weights: str | os.PathLike[str] | None = None
) -> CifarResNet:
    """Generic CIFAR ResNet-(6n + 2), option-A shortcuts; ``weights``: None or a checkpoint path."""
    model = CifarResNet(depth, width, in_channels)
    load_pretrained(model, f"cifar_resnet{depth}", weights)
    return model


@register_backbone("resnet32")
def resnet32(*, in_channels: int = 3, weights: str | os.PathLike[str] | None = None) -> CifarResNet:
    """CIFAR ResNet-32 with widths 32/64/128 (the CIFAR-LT code's resnet32_fe_c100): 128-channel map at 1/4."""
    model = CifarResNet(32, 32, in_channels)
    load_pretrained(model, "resnet32", weights)
    return model
