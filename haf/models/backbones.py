"""Backbones: images (B × 3 × H × W) → feature map (B × C × h × w), built by name through a registry.

Each architecture lives in its own module and registers itself (:mod:`haf.models.backbone_registry`); this module
imports them all and builds one by name. Registered names (``available_backbones()``):

* ``resnet18`` … ``resnet152`` — torchvision ResNets (:mod:`haf.models.resnet`);
* ``wrn28_8`` (the CIFAR-100 reference), ``wrn28_10``, ``wrn28_2``, ``wrn16_4``, ``wide_resnet``
  (:mod:`haf.models.wide_resnet`);
* ``resnet32`` (the CIFAR-LT recipe), ``cifar_resnet`` (:mod:`haf.models.cifar_resnet`);
* ``tiny_cnn`` — for tests and the CPU demo (:mod:`haf.models.tiny_cnn`);
* ``timm:<model>`` — any timm model, with the optional ``timm`` extra (:mod:`haf.models.timm_backbone`).

Every backbone takes ``weights=None`` or a local checkpoint path, the ResNets also a torchvision weights name
(:mod:`haf.models.backbone_weights`). Wide-ResNets, CIFAR ResNets and ``tiny_cnn`` set ``head_defaults`` so that
the type-I head is the plain average-pooled map, the reference's type-I feature on 32-px networks.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from haf.models.backbone_registry import (BACKBONES, backbone_factory, check_factory_options, import_backbone_module,
                                          register_backbone, register_backbone_family)
from haf.models.backbone_weights import CHECKPOINT_PREFIXES, load_backbone_checkpoint, resolve_torchvision_weights

# Importing an architecture's module registers its backbones.
from haf.models.cifar_resnet import CifarResNet
from haf.models.resnet import ResNetFeatures
from haf.models.tiny_cnn import TinyCNN
from haf.models import timm_backbone  # noqa: F401  (registers the timm: family; timm itself is imported on use)
from haf.models.wide_resnet import WideResNet

__all__ = [
    "CHECKPOINT_PREFIXES",
    "CifarResNet",
    "ResNetFeatures",
    "TinyCNN",
    "WideResNet",
    "available_backbones",
    "backbone_factory",
    "build_backbone",
    "check_factory_options",
    "import_backbone_module",
    "load_backbone_checkpoint",
    "register_backbone",
    "register_backbone_family",
    "resolve_torchvision_weights",
]


def available_backbones() -> list[str]:
    return sorted(BACKBONES)


def build_backbone(name: str, **options: Any) -> nn.Module:
    """Build the backbone registered as ``name`` (or a family's ``prefix:model``) with its keyword ``options``."""
    factory = backbone_factory(name)
    check_factory_options("backbone", name, factory, options)
    model = factory(**options)
    if not isinstance(getattr(model, "out_channels", None), int):
        raise TypeError(f"backbone {name!r} must set an integer attribute out_channels")
    return model
