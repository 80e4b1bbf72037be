"""Class hierarchies: the tree, leaf distance matrices, the field's file formats and dataset builders.

Public API (docs/ARCHITECTURE.md): :class:`Hierarchy`, :class:`ClassDistances`, :func:`load_hierarchy`,
:func:`load_class_distances` (a file path or a shipped hierarchy's name: :func:`list_hierarchies`); writers for round trips (``Hierarchy.to_json``, :func:`write_isa`,
:func:`write_tree_pickle`, :func:`write_distances_pickle`); builders from raw dataset metadata
(:func:`inat2019_hierarchy`, :func:`fgvc_aircraft_hierarchy`).
"""

from .builders import FGVC_LEVELS, INAT2019_RANKS, fgvc_aircraft_hierarchy, inat2019_hierarchy
from .distances import DISTANCE_KINDS, ClassDistances
from .distances_pickle import distances_from_pairs, read_distances_pickle, write_distances_pickle
from .isa import read_isa, write_isa
from .loading import (
    list_hierarchies,
    load_class_distances,
    load_hierarchy,
    read_class_list,
    resolve_hierarchy_path,
    shipped_hierarchies,
)
from .tree import CONVENTIONS, Hierarchy
from .tree_pickle import read_tree_pickle, write_tree_pickle

write_distances_pkl_xz = write_distances_pickle  # the name used for the field's *_distances.pkl.xz files

__all__ = [
    "CONVENTIONS",
    "DISTANCE_KINDS",
    "FGVC_LEVELS",
    "INAT2019_RANKS",
    "ClassDistances",
    "Hierarchy",
    "distances_from_pairs",
    "fgvc_aircraft_hierarchy",
    "inat2019_hierarchy",
    "list_hierarchies",
    "load_class_distances",
    "load_hierarchy",
    "read_class_list",
    "read_distances_pickle",
    "read_isa",
    "read_tree_pickle",
    "resolve_hierarchy_path",
    "shipped_hierarchies",
    "write_distances_pickle",
    "write_distances_pkl_xz",
    "write_isa",
    "write_tree_pickle",
]
