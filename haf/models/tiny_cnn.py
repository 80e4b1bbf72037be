"""``tiny_cnn``: three conv layers of configurable width, milliseconds per batch on a CPU, for tests and the demo."""
from __future__ import annotations

import os

import torch
from torch import nn

from haf.models.backbone_registry import POOLED_FEATURE_HEAD_DEFAULTS, register_backbone
from haf.models.backbone_weights import load_pretrained

__all__ = ["TinyCNN"]


class TinyCNN(nn.Module):
    """conv3×3 → BN → ReLU, ``depth`` times; the width doubles and the map halves after the first layer.

    Milliseconds per batch on a CPU: for tests and the demo, not for accuracy.
    """

    def __init__(self, width: int = 16, depth: int = 3, in_channels: int = 3) -> None:
        super().__init__()
        if width < 1 or depth < 1:
            raise ValueError(f"tiny_cnn needs width ≥ 1 and depth ≥ 1, got width={width}, depth={depth}")
        layers: list[nn.Module] = []
        channels = in_channels
        for index in range(depth):
            out = width if index == 0 else width * 2 ** min(index, 2)
            stride = 1 if index == 0 else 2
            conv = nn.Conv2d(channels, out, 3, stride=stride, padding=1, bias=False)
            layers += [conv, nn.BatchNorm2d(out), nn.ReLU()]
            channels = out
        self.layers = nn.Sequential(*layers)
        self.out_channels: int = channels
        self.head_defaults = dict(POOLED_FEATURE_HEAD_DEFAULTS)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)


@register_backbone("tiny_cnn")
def tiny_cnn(
    *, width: int = 16, depth: int = 3, in_channels: int = 3, weights: str | os.PathLike[str] | None = None
) -> TinyCNN:
    """A few-layer CNN for tests and the CPU demo; ``weights``: None or a checkpoint path."""
    model = TinyCNN(width, depth, in_channels)
    load_pretrained(model, "tiny_cnn", weights)
    return model
