"""The backbone registry: ``@register_backbone(name)`` on a factory ``(**options) -> nn.Module``.

A backbone maps images (B × 3 × H × W) to its last *spatial* feature map (B × C × h × w): no global pooling, no
classifier; pooling belongs to the head (:mod:`haf.models.heads`). It sets ``out_channels`` (C), so heads are built
without a dry run, and may set ``head_defaults`` ({head name: options}). The architectures register themselves
when :mod:`haf.models.backbones` imports them; build through :func:`haf.models.backbones.build_backbone`.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

from torch import nn

__all__ = ["BACKBONES", "POOLED_FEATURE_HEAD_DEFAULTS", "BackboneFactory", "check_factory_options",
           "register_backbone", "registrar"]

BackboneFactory = Callable[..., nn.Module]
BACKBONES: dict[str, BackboneFactory] = {}

#: Per-head option defaults a backbone sets (``backbone.head_defaults``, read by
#: ``haf.models.classifier.build_classifier``): on small 32-px networks the reference type-I feature is the plain
#: average-pooled map (WRN-28-8: 512-d), not ResNet-50's max-pool → BN → Linear(·, 600) → BN → ELU.
POOLED_FEATURE_HEAD_DEFAULTS: dict[str, dict[str, Any]] = {"type1": {"pool": "avg", "hidden_dim": None}}


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Register ``factory(**options) -> nn.Module`` (with ``out_channels``) under ``name``. Adding a backbone::

        @register_backbone("my_net")
        def my_net(*, width: int = 64) -> nn.Module:  # must set .out_channels
            ...

    and import its module in :mod:`haf.models.backbones`.
    """

    return registrar(BACKBONES, "backbone", name)


def registrar(table: dict[str, Callable[..., Any]], kind: str, name: str) -> Callable[[Callable], Callable]:
    """The decorator that stores a factory as ``table[name]`` (backbones, heads); a second factory under one
    name is an error naming the ``kind``."""

    def decorate(factory: Callable[..., Any]) -> Callable[..., Any]:
        if name in table and table[name] is not factory:
            raise ValueError(f"{kind} {name!r} is registered twice")
        table[name] = factory
        return factory

    return decorate


def check_factory_options(kind: str, name: str, factory: Callable[..., Any], options: Mapping[str, Any]) -> None:
    """Unknown option keys are errors that name the key and the valid choices (not a bare TypeError)."""
    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = [p for p in params if params[p].kind is not inspect.Parameter.VAR_POSITIONAL]
    for key in options:
        if key not in valid:
            raise ValueError(f"{kind} {name!r} has no option {key!r}; valid options: {', '.join(valid) or '(none)'}")
