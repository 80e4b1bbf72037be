"""HAFrame at speed: hierarchy -> frame -> loss -> model -> train.

Hierarchy-aware fixed-frame classification (Liang & Davis, ICCV 2023): the last linear layer is fixed to a
frame whose pairwise cosines encode a class hierarchy, and the penultimate features are trained to collapse
onto it. See ``docs/ARCHITECTURE.md`` for how the modules fit together.

The library's public names (``__all__``) are imported on first use (PEP 562), so ``import haf`` and the ``haf``
command stay light: nothing here imports torch until one of them is touched::

    import haf, torch
    tree = haf.load_hierarchy("fgvc_aircraft")   # a file path or a shipped hierarchy's name (haf.list_hierarchies())
    frame = haf.build_frame(tree, gamma=1.0, convention="lca-height")   # frame.W (K × K, fixed), frame.S
    criterion = haf.FrameLoss(torch.from_numpy(frame.W), torch.from_numpy(frame.S))
    loss = criterion(features, targets)           # features B × K from your model, targets B class indices
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    "Hierarchy": "haf.hierarchy",
    "ClassDistances": "haf.hierarchy",
    "load_hierarchy": "haf.hierarchy",
    "load_class_distances": "haf.hierarchy",
    "list_hierarchies": "haf.hierarchy",
    "build_frame": "haf.frame",
    "frame_loss": "haf.kernels",
    "FrameLoss": "haf.kernels",
    "MethodContext": "haf.methods.base",
    "HierarchyClassifier": "haf.models.classifier",
    "build_classifier": "haf.models.classifier",
    "load_classifier": "haf.inference",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports on first use
    from haf.frame import build_frame
    from haf.hierarchy import ClassDistances, Hierarchy, list_hierarchies, load_class_distances, load_hierarchy
    from haf.inference import load_classifier
    from haf.kernels import FrameLoss, frame_loss
    from haf.methods.base import MethodContext
    from haf.models.classifier import HierarchyClassifier, build_classifier


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        if not name.startswith("_") and importlib.util.find_spec(f"haf.{name}") is not None:
            return importlib.import_module(f"haf.{name}")  # a subpackage (haf.metrics) after a bare `import haf`
        raise AttributeError(f"module 'haf' has no attribute {name!r}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise
        raise AttributeError(f"haf.{name} is unavailable: its module {module_name} is not part of this "
                             f"installation of haf {__version__}") from error
    value = getattr(module, name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
