"""The whole model: backbone → head → method, one ``nn.Module``, with the reference's optimizer parameter groups.

::

    images ──backbone──▶ map (B × C × h × w) ──head──▶ h (B × D) ──method──▶ outputs ──▶ loss / scores

Learning rates (docs/METHOD.md "Recipe"): the backbone — including the type-II head's 1×1 conv, as in the
reference — trains at ``lr · backbone_lr_scale`` (0.1), the head's transformation layers at
``lr · transform_lr_scale`` (1.0; 0.1 for iNat2019 / tieredImageNet-H), the method's own parameters (a learnable
last layer) at ``lr``. Fixed frames are buffers: they are in ``state_dict()`` (so in checkpoints) and in no
parameter group (so never stepped, never weight-decayed).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import torch
from torch import nn

from haf.models.backbones import build_backbone
from haf.models.heads import Head, build_head
from haf.methods.base import Method, MethodContext, get_method

__all__ = ["HierarchyClassifier", "build_classifier", "build_method_options"]


class HierarchyClassifier(nn.Module):
    """``backbone`` (images → map), ``head`` (map → h), ``method`` (h → outputs, loss, scores)."""

    def __init__(self, backbone: nn.Module, head: Head, method: Method) -> None:
        super().__init__()
        if method.in_features != head.out_features:
            raise ValueError(
                f"method {method.name!r} expects {method.in_features}-d features but the head gives {head.out_features}"
            )
        self.backbone = backbone
        self.head = head
        self.method = method

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The penultimate feature h (B × D): what neural-collapse diagnostics look at."""
        return self.head(self.backbone(images))

    def forward(self, images: torch.Tensor) -> Any:
        return self.method(self.features(images))

    # The method's interface, so training and evaluation need only the classifier.
    def loss(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        return self.method.loss(outputs, targets)

    def scores(self, outputs: Any) -> torch.Tensor:
        return self.method.scores(outputs)

    def probabilities(self, outputs: Any) -> torch.Tensor:
        return self.method.probabilities(outputs)

    def param_groups(
        self,
        base_lr: float,
        weight_decay: float,
        backbone_lr_scale: float = 0.1,
        transform_lr_scale: float = 1.0,
        no_decay_norm_and_bias: bool = False,
    ) -> list[dict[str, Any]]:
        """Optimizer groups ``backbone``, ``transformation``, ``last_layer`` (the method's); empty ones left out.

        Each group carries ``lr`` (= base_lr · lr_scale), ``weight_decay``, and two extra keys torch optimizers and
        DeepSpeed pass through untouched: ``name`` and ``lr_scale``, so a scheduler sets ``lr = lr_t · lr_scale``.
        With ``no_decay_norm_and_bias`` each group splits into a decayed part and a ``<name>/no_decay`` part for
        1-d parameters (BatchNorm/PReLU weights, biases); the reference decays everything trained (False).
        Only parameters with ``requires_grad`` are included; every one appears in exactly one group.
        """
        head_backbone_side = {id(p) for m in self.head.backbone_modules() for p in m.parameters()}
        head_params = list(self.head.parameters())
        sections: list[tuple[str, float, list[nn.Parameter]]] = [
            ("backbone", backbone_lr_scale, list(self.backbone.parameters())),
            ("backbone", backbone_lr_scale, [p for p in head_params if id(p) in head_backbone_side]),
            ("transformation", transform_lr_scale, [p for p in head_params if id(p) not in head_backbone_side]),
            ("last_layer", 1.0, list(self.method.parameters())),
        ]
        grouped: dict[str, tuple[float, list[nn.Parameter]]] = {}
        for name, scale, params in sections:
            grouped.setdefault(name, (scale, []))[1].extend(p for p in params if p.requires_grad)

        groups: list[dict[str, Any]] = []
        for name, (scale, params) in grouped.items():
            splits = [(name, params, weight_decay)]
            if no_decay_norm_and_bias:
                splits = [
                    (name, [p for p in params if p.dim() > 1], weight_decay),
                    (f"{name}/no_decay", [p for p in params if p.dim() <= 1], 0.0),
                ]
            for group_name, group_params, decay in splits:
                if group_params:
                    groups.append(
                        {"params": group_params, "name": group_name, "lr": base_lr * scale, "lr_scale": scale,
                         "weight_decay": decay}
                    )
        self._check_groups(groups)
        return groups

    def _check_groups(self, groups: list[dict[str, Any]]) -> None:
        """Every trainable parameter once, no buffer anywhere: a silent miss would freeze or double-step a layer."""
        seen: dict[int, str] = {}
        for group in groups:
            for param in group["params"]:
                if id(param) in seen:
                    raise RuntimeError(f"parameter in groups {seen[id(param)]!r} and {group['name']!r}")
                seen[id(param)] = group["name"]
        trainable = {id(p): n for n, p in self.named_parameters() if p.requires_grad}
        left_out = [n for i, n in trainable.items() if i not in seen]
        if left_out:
            raise RuntimeError(f"trainable parameters in no optimizer group: {', '.join(left_out)}")
        buffers = {id(b): n for n, b in self.named_buffers()}
        in_groups = [buffers[i] for i in seen if i in buffers]
        if in_groups:
            raise RuntimeError(f"buffers must never be optimised, found in groups: {', '.join(in_groups)}")


def build_method_options(method_cls: type[Method], options: Any) -> Any:
    """An ``Options`` instance from None, a mapping (checked: unknown keys name the valid ones) or an instance."""
    if options is None:
        return method_cls.Options()
    if isinstance(options, method_cls.Options):
        return options
    if not isinstance(options, Mapping):
        raise ValueError(
            f"method {method_cls.name!r}: options must be a mapping or {method_cls.__name__}.Options, "
            f"got {type(options).__name__}"
        )
    valid = [f.name for f in dataclasses.fields(method_cls.Options)]
    for key in options:
        if key not in valid:
            raise ValueError(
                f"method {method_cls.name!r} has no option {key!r}; valid options: {', '.join(valid) or '(none)'}"
            )
    return method_cls.Options(**options)


def build_classifier(
    *,
    backbone: str,
    head: str,
    method: str,
    context: MethodContext,
    backbone_options: Mapping[str, Any] | None = None,
    head_options: Mapping[str, Any] | None = None,
    method_options: Any = None,
) -> HierarchyClassifier:
    """Build backbone, head and method from their registries.

    ``head_options`` are laid over the backbone's own defaults for that head (``backbone.head_defaults``; e.g.
    Wide-ResNets default the type-I head to the 512-d average-pooled feature of the reference), which are laid
    over the head's defaults (the ResNet-50 ones). ``method_options``: None, a mapping, or the method's Options.
    """
    feature_extractor = build_backbone(backbone, **dict(backbone_options or {}))
    defaults = dict(getattr(feature_extractor, "head_defaults", {}).get(head, {}))
    head_module = build_head(
        head, feature_extractor.out_channels, context.num_classes, **{**defaults, **dict(head_options or {})}
    )
    method_cls = get_method(method)
    method_module = method_cls(head_module.out_features, context, build_method_options(method_cls, method_options))
    return HierarchyClassifier(feature_extractor, head_module, method_module)
