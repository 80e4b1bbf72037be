"""``timm:<model>`` backbones: any model of the optional ``timm`` package as a feature extractor.

The model is built with ``num_classes=0`` (no classifier). A convolutional model's last feature map
(``forward_features``, B × C × h × w) goes to the head as it is, so the heads pool it as they pool a ResNet's; a
model whose features are not a channels-first map (ViT tokens, NHWC maps) gives its own globally pooled feature
(``forward_head(pre_logits=True)``, B × C) as a 1 × 1 map. Either way ``out_channels`` = the model's
``num_features``, read off the model without a dry run. ``weights``: None (random init), ``"timm"`` / ``"DEFAULT"``
(timm's pretrained weights, downloaded through timm), or a local checkpoint file (loaded by timm, classifier
dropped). Other options go to ``timm.create_model`` (``drop_path_rate``, ``in_chans``, ...). timm is imported on
first use; without it the error names the extra to install.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from haf.models.backbone_registry import BackboneFactory, close_matches, register_backbone_family

__all__ = ["PRETRAINED_NAMES", "TimmBackbone", "import_timm", "timm_backbone"]

#: ``weights`` values that ask for timm's own pretrained weights.
PRETRAINED_NAMES = ("timm", "DEFAULT")


def import_timm() -> Any:
    from haf.optional_deps import require

    return require("timm", purpose="timm: backbones")


class TimmBackbone(nn.Module):
    """A timm model without its classifier, giving a B × C × h × w map (h = w = 1 for pooled features)."""

    def __init__(self, model: nn.Module, name: str) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.out_channels: int = int(model.num_features)
        # Channels-first spatial maps go to the head unpooled; anything else is pooled by the model itself.
        self.spatial = getattr(model, "output_fmt", "NCHW") in ("NCHW", None) and hasattr(model, "forward_features")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.model.forward_features(images)
        if self.spatial and features.dim() == 4 and features.shape[1] == self.out_channels:
            return features
        pooled = self.model.forward_head(features, pre_logits=True)
        if pooled.dim() != 2 or pooled.shape[1] != self.out_channels:
            raise ValueError(f"timm:{self.name}: pooled features of shape {tuple(pooled.shape)}, expected "
                             f"(batch, {self.out_channels})")
        return pooled[:, :, None, None]


@register_backbone_family("timm")
def timm_backbone(model_name: str) -> BackboneFactory:
    """The factory of ``timm:<model_name>``; an unknown model is an error naming close matches."""
    timm = import_timm()
    if not timm.is_model(model_name):
        raise ValueError(f"unknown timm model {model_name!r}{close_matches(model_name, timm.list_models())}"
                         " (timm.list_models() lists them)")

    def build(*, weights: str | os.PathLike[str] | None = None, **options: Any) -> TimmBackbone:
        for reserved in ("num_classes", "pretrained", "pretrained_cfg_overlay"):
            if reserved in options:
                raise ValueError(f"timm:{model_name}: option {reserved!r} is set by haf (use weights=... for "
                                 "pretrained weights)")
        pretrained: dict[str, Any] = {}
        if weights is not None and str(weights).lower() != "none":
            if str(weights) in PRETRAINED_NAMES:
                pretrained = {"pretrained": True}
            else:
                path = Path(weights).expanduser()
                if not path.is_file():
                    raise FileNotFoundError(f"timm:{model_name}: weights file not found: {path} (or use "
                                            f"{' / '.join(PRETRAINED_NAMES)} for timm's pretrained weights)")
                pretrained = {"pretrained": True, "pretrained_cfg_overlay": {"file": str(path)}}
        try:
            model = timm.create_model(model_name, num_classes=0, **pretrained, **options)
        except TypeError as error:
            raise ValueError(f"timm:{model_name}: bad backbone option: {error}") from None
        return TimmBackbone(model, model_name)

    return build
