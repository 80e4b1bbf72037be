"""Format dispatch: ``load_hierarchy`` and ``load_class_distances`` for every hierarchy file the project reads.

Formats, recognised by file name:

==========================  ==============================================  =========================
name                        content                                         reader
==========================  ==============================================  =========================
``*.json``                  our readable tree format (``haf.hierarchy.tree``)  ``Hierarchy.from_json``
``*.txt`` (``*_isa.txt``)   ``parent child`` edge lines                     ``read_isa``
``*.pkl`` (``*_tree.pkl``)  pickled ``nltk.Tree`` (restricted unpickler)    ``read_tree_pickle``
``*.pkl.xz``, ``*_distances.pkl``  pickled ``{(a, b): int}`` (restricted)   ``read_distances_pickle``
==========================  ==============================================  =========================

A hierarchy is named by a file path or by the name of a shipped hierarchy (``haf hierarchies`` lists them:
``fgvc_aircraft``, ``cifar100_l5``, ...; the file name and ``hierarchies/<file>`` are accepted too). A path that
exists always wins over a name: :func:`resolve_hierarchy_path`.

``classes`` is either a sequence of class names or a path to a text file with one class per line (blank lines
and ``#`` comments ignored). It fixes the class order; without it the order is the sorted leaf names.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .distances import ClassDistances
from .distances_pickle import read_distances_pickle
from .isa import read_isa
from .tree import Hierarchy, check_convention
from .tree_pickle import read_tree_pickle

ClassesArg = Sequence[str] | str | os.PathLike | None

#: File-name endings of the formats, longest first: the shipped name of a file is its name without one of them.
FORMAT_SUFFIXES = ("_distances.pkl.xz", "_distances.pkl", "_tree.pkl", "_isa.txt", ".pkl.lzma", ".pkl.xz", ".pickle",
                   ".json", ".txt", ".pkl")
#: The folder name under which configs refer to shipped hierarchies (``hierarchies/cifar100_l5.json``).
SHIPPED_FOLDER = "hierarchies"


def shipped_hierarchies() -> dict[str, Path]:
    """Shipped hierarchy files by name (the file name without its format suffix), sorted by name."""
    from haf.shipped import shipped_dir

    try:
        root = shipped_dir(SHIPPED_FOLDER)
    except FileNotFoundError:
        return {}
    found = {}
    for path in sorted(root.iterdir()):
        suffix = next((s for s in FORMAT_SUFFIXES if path.name.lower().endswith(s)), None)
        if suffix is not None and path.is_file():
            found[path.name[: -len(suffix)]] = path
    return dict(sorted(found.items()))


def list_hierarchies() -> list[str]:
    """Names of the shipped hierarchies, accepted wherever a hierarchy file is (``load_hierarchy("fgvc_aircraft")``)."""
    return list(shipped_hierarchies())


def resolve_hierarchy_path(name_or_path: str | os.PathLike) -> Path:
    """The file ``name_or_path`` names: the path itself when it is a file, else the shipped hierarchy of that name
    (``fgvc_aircraft``), file name (``fgvc_aircraft.json``) or config-style path (``hierarchies/fgvc_aircraft.json``).
    Anything else: FileNotFoundError naming the path and listing the shipped names."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    shipped = shipped_hierarchies()
    if not path.is_absolute() and path.parent.as_posix() in (".", SHIPPED_FOLDER):
        for name, file in shipped.items():
            if path.name in (name, file.name):
                return file  # also when a folder of that name is here (a dataset folder named like its hierarchy)
    if path.exists():
        return path  # not a regular file: the reader's own error names it
    if path.suffix:
        file_kind(path)  # a format no reader reads is the clearer error, whether or not the file exists
    raise FileNotFoundError(f"hierarchy file not found: {name_or_path} (nor a shipped hierarchy; shipped: "
                            f"{', '.join(shipped) or 'none'})")


def read_class_list(path: str | os.PathLike) -> tuple[str, ...]:
    """One class name per line; blank lines and lines starting with '#' are skipped; surrounding space stripped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class list not found: {path}")
    names = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        name = raw.strip()
        if not name or name.startswith("#"):
            continue
        if name in seen:
            raise ValueError(f"{path}:{number}: class {name!r} is listed twice (first on line {seen[name]})")
        seen[name] = number
        names.append(name)
    if not names:
        raise ValueError(f"{path}: the class list is empty")
    return tuple(names)


def _classes(classes: ClassesArg) -> tuple[str, ...] | None:
    if classes is None:
        return None
    if isinstance(classes, (str, os.PathLike)):
        return read_class_list(classes)
    names = tuple(classes)
    for name in names:
        if not isinstance(name, str):
            raise ValueError(f"class names must be strings, got {type(name).__name__} {name!r}")
    return names


def file_kind(path: Path) -> str:
    """The format of a hierarchy file from its name: "json", "isa", "tree-pickle" or "distances"."""
    name = path.name.lower()
    if name.endswith((".pkl.xz", ".pkl.lzma", "_distances.pkl")):
        return "distances"
    if name.endswith(".json"):
        return "json"
    if name.endswith(".txt"):
        return "isa"
    if name.endswith((".pkl", ".pickle")):
        return "tree-pickle"
    raise ValueError(
        f"{path}: unknown hierarchy format; expected .json (ours), *_isa.txt, *_tree.pkl or *_distances.pkl.xz"
    )


def load_hierarchy(path: str | os.PathLike, classes: ClassesArg = None) -> Hierarchy:
    """Read a tree from ``.json`` (ours), ``*_isa.txt`` or ``*_tree.pkl`` (a path or a shipped hierarchy's name),
    leaves in ``classes`` order."""
    path = resolve_hierarchy_path(path)
    kind = file_kind(path)
    if kind == "distances":
        raise ValueError(
            f"{path}: a distance file holds no tree; use load_class_distances for it (or give a tree file)"
        )
    if not path.is_file():
        raise FileNotFoundError(f"hierarchy file not found: {path}")
    names = _classes(classes)
    if kind == "json":
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"{path}: not UTF-8 text ({error})") from None
        return Hierarchy.from_json(text, names, source=str(path))
    if kind == "isa":
        return read_isa(path, names)
    return read_tree_pickle(path, names)


def load_class_distances(
    path: str | os.PathLike, classes: ClassesArg = None, convention: str = "lca-height"
) -> ClassDistances:
    """Leaf distances from any hierarchy file.

    Tree files give ``Hierarchy.distance_matrix(convention)`` ("lca-height" or "fixed-depth") with the tree's
    height. A distance-only file (``*_distances.pkl.xz``) has no tree: its values are used as stored whatever
    the convention, the result's ``convention`` is ``"file"`` and ``height`` is ``None``. ``path`` may name a
    shipped hierarchy (:func:`resolve_hierarchy_path`).
    """
    path = resolve_hierarchy_path(path)
    if convention != "file":
        check_convention(convention)
    if file_kind(path) == "distances":
        return read_distances_pickle(path, _classes(classes))
    if convention == "file":
        raise ValueError(f"{path}: convention 'file' applies only to distance files; a tree needs "
                         "'lca-height' or 'fixed-depth'")
    return ClassDistances.from_hierarchy(load_hierarchy(path, classes), convention, source=str(path))
