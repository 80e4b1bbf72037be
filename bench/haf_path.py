"""Import ``haf`` from this checkout without installing it (a bare GPU machine: torch, Triton, pytest only).

setup.py installs the top-level folders ``kernels/`` and ``pipelines/`` as ``haf.kernels`` and ``haf.pipelines``;
:func:`install` puts the checkout first on ``sys.path`` and maps those two names onto their folders with a
meta-path finder, so ``import haf.kernels`` works from a plain ``python3`` here as it does after ``pip install``.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Subpackage name → folder of the checkout (as setup.py's MAPPED, code folders only).
MAPPED = {"haf.kernels": "kernels", "haf.pipelines": "pipelines"}


class _CheckoutFinder(importlib.abc.MetaPathFinder):
    def __init__(self, root: Path) -> None:
        self.root = root

    def find_spec(self, name, path=None, target=None):
        folder = MAPPED.get(name)
        if folder is None:
            return None
        package = self.root / folder
        return importlib.util.spec_from_file_location(name, package / "__init__.py",
                                                      submodule_search_locations=[str(package)])


def install(root: Path = ROOT) -> None:
    """Make ``haf`` (and its mapped subpackages) import from ``root``; idempotent."""
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    if not any(isinstance(finder, _CheckoutFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _CheckoutFinder(root))
    import haf

    if Path(haf.__file__).resolve().parent != root / "haf":
        raise ImportError(f"haf was already imported from {haf.__file__}, not from the checkout {root}")
