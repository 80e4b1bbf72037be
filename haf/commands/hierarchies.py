"""``haf hierarchies``: the hierarchy files shipped with the package, usable by name wherever a hierarchy file is.

A table of name, format, number of classes K, height and file; ``--json`` for the same as records; ``haf
hierarchies NAME`` prints one file's path (to copy it, or to read it).
"""
from __future__ import annotations

import argparse

HELP = "list the shipped hierarchy files (accepted by name wherever a hierarchy file is), or print one's path"

#: Format names for the kinds ``haf.hierarchy.loading`` recognises.
FORMATS = {"json": "json", "isa": "isa edges", "tree-pickle": "nltk tree pickle", "distances": "distances pickle"}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", metavar="NAME", help="print the path of this shipped hierarchy")
    parser.add_argument("--json", action="store_true", help="print JSON records instead of a table")


def describe() -> list[dict]:
    """One record per shipped hierarchy: name, format, classes (K), height (None for a distance-only file), file."""
    from haf.hierarchy.loading import file_kind, load_hierarchy, shipped_hierarchies

    records = []
    for name, path in shipped_hierarchies().items():
        kind = file_kind(path)
        tree = None if kind == "distances" else load_hierarchy(path)
        records.append({"name": name, "format": FORMATS[kind], "classes": None if tree is None else tree.num_classes,
                        "height": None if tree is None else tree.height, "file": str(path)})
    return records


def run(args: argparse.Namespace) -> int:
    import json

    if args.name is not None:
        from haf.hierarchy.loading import resolve_hierarchy_path

        print(resolve_hierarchy_path(args.name).resolve())  # unknown: one line listing the shipped names
        return 0
    records = describe()
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    header = {"name": "NAME", "format": "FORMAT", "classes": "CLASSES", "height": "HEIGHT", "file": "FILE"}
    rows = [header] + [{key: "-" if value is None else str(value) for key, value in r.items()} for r in records]
    widths = {key: max(len(row[key]) for row in rows) for key in header}
    for row in rows:
        print("  ".join(row[key].ljust(widths[key]) for key in header).rstrip())
    return 0
