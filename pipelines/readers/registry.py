"""``load_dataset(kind, root, **options)``: one entry point over every dataset reader.

Each kind names an on-disk format (the kinds, their layouts and default distance conventions: docs/ARCHITECTURE.md,
``haf.pipelines``); its reader returns a :class:`~haf.pipelines.readers.splits.DatasetSplits` (classes in one order, the
hierarchy, the distances under the dataset's default convention, and the labelled splits). Readers are imported
when chosen, so listing the kinds costs nothing. Options are the reader's keyword arguments; an unknown one is an
error naming it and the valid ones.

The ``demo`` reader generates its dataset on first use only at the cache location ``.cache/demo-data``; any
other missing root is an error naming it and the ``haf demo-data`` command that makes it.
"""
from __future__ import annotations

import importlib
import inspect
import os
import typing
from typing import Any, Callable

from haf.pipelines.readers.splits import DatasetSplits

# kind -> (module in haf.pipelines, reader function)
DATASET_READERS: dict[str, tuple[str, str]] = {
    "image-folder": ("readers.image_folder", "read_image_folder"),
    "fgvc-aircraft": ("readers.fgvc_aircraft", "read_fgvc_aircraft"),
    "inat2019": ("readers.inat2019", "read_inat2019"),
    "tiered-imagenet": ("readers.tiered_imagenet", "read_tiered_imagenet"),
    "cifar100": ("readers.cifar100", "read_cifar100"),
    "demo": ("demo.dataset", "read_demo"),
    "synthetic-tree": ("readers.synthetic_tree", "read_synthetic_tree"),
}
DATASET_KINDS = tuple(DATASET_READERS)
# Readers that forward ``**options`` to a dataclass: kind -> (module, class); its fields are their options.
FORWARDED_OPTIONS: dict[str, tuple[str, str]] = {"demo": ("demo.spec", "DemoSpec")}


def dataset_reader(kind: str) -> Callable[..., DatasetSplits]:
    """The reader function of ``kind``; an unknown kind is an error listing the known ones."""
    if kind not in DATASET_READERS:
        raise ValueError(f"unknown dataset kind {kind!r}; choose one of {', '.join(DATASET_KINDS)}")
    module_name, function_name = DATASET_READERS[kind]
    module = importlib.import_module(f"haf.pipelines.{module_name}")
    return getattr(module, function_name)


def reader_options(kind: str) -> dict[str, Any]:
    """The options of ``kind``'s reader, name -> type hint, read off its signature (after ``root``) and, for a
    reader that forwards ``**options``, off the dataclass it forwards them to (:data:`FORWARDED_OPTIONS`). A reader
    that takes any other ``**options`` gets the entry ``"**"`` (no name is then unknown)."""
    reader = dataset_reader(kind)
    hints = typing.get_type_hints(reader)
    parameters = list(inspect.signature(reader).parameters.values())[1:]
    options = {p.name: hints.get(p.name, Any) for p in parameters
               if p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)}
    if kind in FORWARDED_OPTIONS:
        module_name, class_name = FORWARDED_OPTIONS[kind]
        target = getattr(importlib.import_module(f"haf.pipelines.{module_name}"), class_name)
        options.update(typing.get_type_hints(target))
    elif any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        options["**"] = Any  # takes any further keyword
    return options


def is_path_option(hint: Any) -> bool:
    """Does an option of this type name a file or folder (``os.PathLike`` among its types)?"""
    return hint is os.PathLike or os.PathLike in typing.get_args(hint)


def load_dataset(kind: str, root: str | os.PathLike, **options) -> DatasetSplits:
    """Read the dataset of format ``kind`` at ``root`` with the reader's keyword ``options`` (kinds: module
    docstring)."""
    reader = dataset_reader(kind)
    known = reader_options(kind)
    unknown = sorted(set(options) - set(known)) if "**" not in known else []
    if unknown:
        raise ValueError(
            f"dataset kind {kind!r}: unknown option {unknown[0]!r}; valid options: {', '.join(known)}"
        )
    parameters = inspect.signature(reader).parameters
    for option, value in options.items():
        parameter = parameters.get(option)
        if parameter is not None:
            _check_option_type(kind, parameter, value)
    return reader(root, **options)


# Annotation words a reader option's type is checked against (others, e.g. Sequence[str], are left to the reader).
_OPTION_TYPES: dict[str, tuple[type, ...]] = {
    "None": (type(None),), "str": (str,), "int": (int,), "float": (int, float), "bool": (bool,),
    "os.PathLike": (os.PathLike,), "Path": (os.PathLike,),
}


def _check_option_type(kind: str, parameter: inspect.Parameter, value: object) -> None:
    """A wrong-typed option (``validation_per_class: "5"``) is an error naming it, not a ``TypeError`` inside the
    reader. Checked from the reader's annotation when it is a union of simple types."""
    annotation = parameter.annotation if isinstance(parameter.annotation, str) else ""
    words = [word.strip() for word in annotation.split("|")] if annotation else []
    if not words or any(word not in _OPTION_TYPES for word in words):
        return
    allowed = tuple(t for word in words for t in _OPTION_TYPES[word])
    bad_bool = isinstance(value, bool) and "bool" not in words
    if bad_bool or not isinstance(value, allowed):
        raise ValueError(f"dataset kind {kind!r}: option {parameter.name!r} must be {' or '.join(words)}, got "
                         f"{type(value).__name__} {value!r}")
