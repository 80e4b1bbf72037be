"""The package layout: nothing directly in haf/ shadows a standard-library or installed top-level module (running
``deepspeed haf/train.py`` puts haf/ first on sys.path), and no module or package is missing from the walk."""
from __future__ import annotations

import pkgutil
import sys
from pathlib import Path

import haf

HAF_DIR = Path(haf.__file__).resolve().parent


def test_no_module_or_package_in_haf_shadows_a_top_level_module():
    ours = {info.name for info in pkgutil.iter_modules([str(HAF_DIR)])}
    assert {"models", "training", "reporting", "commands", "methods", "hierarchy"} <= ours
    others = {info.name for info in pkgutil.iter_modules() if Path(getattr(info.module_finder, "path", "")).resolve()
              != HAF_DIR}
    clashes = sorted(ours & (set(sys.stdlib_module_names) | others))
    assert clashes == [], f"modules in haf/ named like top-level modules: {clashes}"
