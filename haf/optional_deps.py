"""Optional dependencies: import one, or say in one line which ``haf[extra]`` provides it.

The core install (pyproject.toml ``dependencies``) runs everything on a plain PyTorch environment; DeepSpeed, DALI,
timm and ONNX come with the extras of :data:`EXTRAS`. Every import of them goes through :func:`require` (the
feature needs it) or :func:`available` (a probe choosing a default), so a missing one is reported the same way
everywhere.
"""
from __future__ import annotations

import sys
from types import ModuleType

__all__ = ["EXTRAS", "MissingExtraError", "available", "missing_extra", "require"]

#: Top-level module -> the extra of the ``haf`` distribution that installs it.
EXTRAS: dict[str, str] = {
    "deepspeed": "deepspeed",
    "nvidia.dali": "dali",
    "timm": "timm",
    "onnx": "onnx",
    "onnxruntime": "onnx",
}


class MissingExtraError(ImportError, ValueError):
    """An optional dependency is missing (or broken). An ImportError for code that guards imports, and a ValueError
    so the command line prints it as one line (``haf <cmd>: error: ...``) instead of a traceback."""


def _extra_of(module: str) -> str | None:
    for name, extra in EXTRAS.items():
        if module == name or module.startswith(name + "."):
            return extra
    return None


def require(module: str, *, purpose: str, extra: str | None = None) -> ModuleType:
    """``import module`` for ``purpose`` (e.g. "the DeepSpeed engine"); a :class:`MissingExtraError` naming the
    extra to install when it is missing, or the import's own error when it is installed but fails to load."""
    extra = extra or _extra_of(module)
    if extra is None:
        raise ValueError(f"{module!r} is not an optional dependency of haf (known: {', '.join(EXTRAS)})")
    try:
        __import__(module)  # the import statement's own hook, as `import module` would call it
        return sys.modules[module]
    except ImportError as error:
        missing = error.name is not None and (module == error.name or module.startswith(error.name + "."))
        if missing:
            raise missing_extra(module, purpose=purpose, extra=extra) from error
        # installed, but one of its own imports fails: a broken install, not a missing extra
        message = f"{purpose} needs {module}, which is installed but fails to import ({error}); reinstall it " \
                  f"with pip install --force-reinstall 'haf[{extra}]'"
        raise MissingExtraError(message, name=module) from error


def missing_extra(module: str, *, purpose: str, extra: str | None = None, hint: str = "") -> MissingExtraError:
    """The error for ``module`` not being installed: ``PURPOSE needs MODULE, which is not installed: pip install
    'haf[EXTRA]'`` (+ ``hint``), for :func:`require` and for code that only probes (``find_spec``) before needing it."""
    message = f"{purpose} needs {module}, which is not installed: pip install 'haf[{extra or _extra_of(module)}]'"
    return MissingExtraError(message + hint, name=module)


def available(module: str) -> bool:
    """Whether ``module`` imports (a probe for defaults such as ``data.backend: auto``; never raises)."""
    try:
        __import__(module)
    except ImportError:
        return False
    return True
