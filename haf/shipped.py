"""Folders shipped with the package: the run configs and the paper's hierarchy files.

In an installed wheel they are ``haf/configs`` and ``haf/hierarchies`` (package data, see setup.py); in a checkout
(editable install) the repository's top-level ``configs/`` and ``hierarchies/``.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["shipped_dir"]


def shipped_dir(name: str) -> Path:
    """The shipped folder ``name`` (``configs``, ``hierarchies``): ``haf/<name>`` in a wheel, ``<repo>/<name>`` in
    a checkout."""
    package = Path(__file__).resolve().parent
    for candidate in (package / name, package.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"no shipped '{name}' folder beside {package}")
