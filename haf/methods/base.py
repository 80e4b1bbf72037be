"""The method registry and the interface every training method implements.

A method sits on top of the feature extractor (backbone + head) and owns three things:
the last layer (a learnable linear map, a fixed frame, per-level classifiers, ...), the loss, and how its outputs
become class scores for evaluation. Training, evaluation and configs only talk to this interface, so a new method
is one new file (timm-style registry, not an if-chain).
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, TypeVar

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class MethodContext:
    """What a method may know about the task. Arrays share the dataset's class order."""

    classes: tuple[str, ...]
    # K × K hierarchical distances (int), the convention chosen by the dataset config; a TreeDistances (no matrix)
    # when the method's wants_tree_distances(options) is true and the dataset has a tree.
    distances: np.ndarray | Any
    level_labels: np.ndarray | None = None  # K × L ancestor index per level (coarse → fine), None if no tree
    seed: int = 0
    hierarchy: Any = None  # the class tree (haf.hierarchy.Hierarchy) when known; the tree-factorised frame needs it

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class Method(nn.Module):
    """Base class: subclasses set ``Options`` (a frozen dataclass) and implement forward/loss.

    forward(features) -> outputs       whatever the method needs later (logits, the features themselves, a tuple)
    loss(outputs, targets) -> scalar   mean over the batch; ``targets`` are leaf class indices
    scores(outputs) -> B × K           higher is better; used for top-1 and HierDist@k
    probabilities(outputs) -> B × K    for CRM decoding; softmax of scores unless the method knows better
    """

    name: ClassVar[str] = ""
    # True when probabilities() is a calibrated class posterior, so CRM's expected-cost decoding applies and
    # evaluation reports a CRM row beside the plain one (the paper does so for its cross-entropy baseline).
    supports_crm: ClassVar[bool] = False

    @dataclass(frozen=True)
    class Options:
        pass

    def __init__(self, in_features: int, context: MethodContext, options: Any = None) -> None:
        super().__init__()
        self.in_features = in_features
        self.context = context
        self.options = options if options is not None else type(self).Options()

    @classmethod
    def wants_tree_distances(cls, options: dict) -> bool:
        """True when, with these (config) options, the method reads distances only off the tree (large K)."""
        del options
        return False

    def loss(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def scores(self, outputs: Any) -> torch.Tensor:
        raise NotImplementedError

    def probabilities(self, outputs: Any) -> torch.Tensor:
        return torch.softmax(self.scores(outputs).float(), dim=1)

    def classifier_weights(self) -> torch.Tensor | None:
        """W (K × D): the one matrix whose rows score the K classes from the input features h, or None.

        Read by the neural-collapse diagnostics (``haf.training.evaluation.collapse_target``), which compare the class means
        of h with W: a fixed W (a buffer) is the target geometry itself, a learnable one (a parameter) is compared
        against the simplex ETF. Methods with one K-row classifier override this; per-level classifiers
        (Flamingo, HAFeature) have none and keep the default, so no diagnostics are logged for them.
        """
        return None

    def fixed_buffers(self) -> dict[str, torch.Tensor]:
        """Buffers that define the method (a frame, soft targets): saved, never trained, never rounded to half.

        None by default; methods that have such buffers derive from
        ``haf.methods._full_precision.FullPrecisionBuffersMethod`` and name them. Other buffers (BatchNorm
        statistics) follow the model's dtype like any weight.
        """
        return {}


_REGISTRY: dict[str, type[Method]] = {}
_DISCOVERED = False
M = TypeVar("M", bound=type[Method])


def register_method(name: str) -> Callable[[M], M]:
    def decorate(cls: M) -> M:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method {name!r} is registered twice ({_REGISTRY[name].__module__} and {cls.__module__})")
        if not dataclasses.is_dataclass(cls.Options):
            raise TypeError(f"method {name!r}: Options must be a dataclass")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    import haf.methods as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"haf.methods.{info.name}")
    _DISCOVERED = True


def available_methods() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def get_method(name: str) -> type[Method]:
    _discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; valid choices: {', '.join(sorted(_REGISTRY))}") from None
