"""The backbone registry: ``@register_backbone(name)`` on a factory ``(**options) -> nn.Module``.

A backbone maps images (B × 3 × H × W) to its last *spatial* feature map (B × C × h × w): no global pooling, no
classifier; pooling belongs to the head (:mod:`haf.models.heads`). It sets ``out_channels`` (C), so heads are built
without a dry run, and may set ``head_defaults`` ({head name: options}). The architectures register themselves
when :mod:`haf.models.backbones` imports them; build through :func:`haf.models.backbones.build_backbone`.

A *family* of backbones is named ``<prefix>:<model>`` (``timm:resnet50``): ``@register_backbone_family(prefix)`` on
a function ``(model) -> factory`` that checks the model name. A backbone of your own registers from any module
with ``@register_backbone``; the run config names that module (``model.backbone_module``: a dotted module name or
a ``.py`` file), and :func:`import_backbone_module` imports it before the name is looked up.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from torch import nn

__all__ = ["BACKBONES", "BACKBONE_FAMILIES", "POOLED_FEATURE_HEAD_DEFAULTS", "BackboneFactory", "backbone_factory",
           "check_factory_options", "close_matches", "import_backbone_module", "register_backbone",
           "register_backbone_family", "registrar"]

BackboneFactory = Callable[..., nn.Module]
BACKBONES: dict[str, BackboneFactory] = {}
#: ``prefix`` → ``(model name) -> factory`` for names ``prefix:model`` (``timm:resnet50``).
BACKBONE_FAMILIES: dict[str, Callable[[str], BackboneFactory]] = {}

#: Per-head option defaults a backbone sets (``backbone.head_defaults``, read by
#: ``haf.models.classifier.build_classifier``): on small 32-px networks the reference type-I feature is the plain
#: average-pooled map (WRN-28-8: 512-d), not ResNet-50's max-pool → BN → Linear(·, 600) → BN → ELU.
POOLED_FEATURE_HEAD_DEFAULTS: dict[str, dict[str, Any]] = {"type1": {"pool": "avg", "hidden_dim": None}}


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Register ``factory(**options) -> nn.Module`` (with ``out_channels``) under ``name``. Adding a backbone::

        @register_backbone("my_net")
        def my_net(*, width: int = 64) -> nn.Module:  # must set .out_channels
            ...

    and import its module in :mod:`haf.models.backbones` — or, outside this package, name the module in the run
    config as ``model.backbone_module`` (see :func:`import_backbone_module`).
    """
    if ":" in name:
        raise ValueError(f"backbone name {name!r}: ':' separates a backbone family from its model name")
    return registrar(BACKBONES, "backbone", name)


def register_backbone_family(prefix: str) -> Callable[[Callable[[str], BackboneFactory]], Callable]:
    """Register ``resolve(model) -> factory`` for the names ``prefix:model``; ``resolve`` raises ValueError on an
    unknown model (naming close matches)."""
    return registrar(BACKBONE_FAMILIES, "backbone family", prefix)


def close_matches(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """`` (did you mean a, b?)`` when some choices are close to ``name`` (difflib), else nothing."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def backbone_factory(name: str) -> BackboneFactory:
    """The factory of a registered name or of a family's ``prefix:model``; an unknown one is a one-line error
    with close matches."""
    prefix, sep, model = name.partition(":")
    if sep:
        if prefix not in BACKBONE_FAMILIES:
            families = sorted(BACKBONE_FAMILIES)
            raise ValueError(f"unknown backbone family {prefix!r} in {name!r}{close_matches(prefix, families)}; "
                             f"families: {', '.join(families) or '(none)'}")
        if not model:
            raise ValueError(f"backbone {name!r}: name a model after '{prefix}:'")
        return BACKBONE_FAMILIES[prefix](model)
    if name not in BACKBONES:
        families = ", ".join(f"{p}:<model>" for p in sorted(BACKBONE_FAMILIES))
        raise ValueError(f"unknown backbone {name!r}{close_matches(name, sorted(BACKBONES))}; valid choices: "
                         f"{', '.join(sorted(BACKBONES))}{', ' + families if families else ''} (one of your own: "
                         "register it and name its module in model.backbone_module)")
    return BACKBONES[name]


def import_backbone_module(module: str | None) -> None:
    """Import the module that registers a user's backbones: a dotted module name (importable: installed or on
    ``PYTHONPATH``) or a ``.py`` file. A module that is absent is a one-line ValueError; an error raised inside it
    propagates as it is (a bug in that module, not in the config)."""
    if module is None:
        return
    if module.endswith(".py"):
        path = Path(module).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"key 'model.backbone_module': file not found: {path}")
        name = f"haf_user_backbones.{path.resolve().with_suffix('').as_posix().strip('/').replace('/', '.')}"
        if name in sys.modules:
            return
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[name] = loaded
        try:
            spec.loader.exec_module(loaded)
        except BaseException:
            del sys.modules[name]
            raise
        return
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name is None or not module.startswith(error.name):
            raise
        raise ValueError(f"key 'model.backbone_module': no module named {module!r} (install it, put its folder on "
                         "PYTHONPATH, or name a .py file)") from None


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
