"""torchvision ResNet-18 … 152 as feature extractors: ``avgpool`` and ``fc`` removed, torchvision's parameter names
kept, so torchvision and self-supervised checkpoints load directly. ``weights``: None, a torchvision weights name
(``"IMAGENET1K_V2"``, ``"DEFAULT"``, ``"imagenet"``, ``"ResNet50_Weights.IMAGENET1K_V1"``) or a checkpoint path.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from haf.models.backbone_registry import BackboneFactory, register_backbone
from haf.models.backbone_weights import TORCHVISION_ARCHS, load_pretrained

__all__ = ["ResNetFeatures"]


class ResNetFeatures(nn.Module):
    """A torchvision ResNet without ``avgpool``/``fc``: images → layer4's map (stride 32, 2048 channels for R-50).

    The submodules keep torchvision's names (``conv1``, ``bn1``, ``layer1`` ... ``layer4``) so that torchvision and
    self-supervised checkpoints load key for key.
    """

    def __init__(self, arch: str = "resnet50", zero_init_residual: bool = False) -> None:
        super().__init__()
        import torchvision

        net = torchvision.models.get_model(arch, weights=None, zero_init_residual=zero_init_residual)
        self.arch = arch
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.out_channels: int = net.fc.in_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _resnet(arch: str) -> BackboneFactory:
    def factory(
        *, weights: str | os.PathLike[str] | None = None, zero_init_residual: bool = False
    ) -> ResNetFeatures:
        model = ResNetFeatures(arch, zero_init_residual=zero_init_residual)
        load_pretrained(model, arch, weights)
        return model

    factory.__name__ = arch
    factory.__doc__ = f"torchvision {arch} feature extractor; weights: None | torchvision weights name | file path."
    return factory


for _arch in TORCHVISION_ARCHS:
    register_backbone(_arch)(_resnet(_arch))
