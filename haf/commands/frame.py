"""`haf frame FILE --gamma G`: build the HAFrame of a hierarchy file and report how well it was built.

FILE is any hierarchy format ``haf.hierarchy.load_class_distances`` reads (our ``.json``, ``*_isa.txt``,
``*_tree.pkl``, ``*_distances.pkl.xz``). The report gives K, the tree height, d_max, γ, s_min (the reference's
100-point grid choice unless ``--s-min`` is given), the smallest eigenvalue of S, max |W Wᵀ − S| and the time
taken; ``--json`` prints it as one JSON object. ``--out`` saves W, S, the distances, the class order and the
settings as ``.pt`` (``torch.load(..., weights_only=True)``) or ``.npz`` (``np.load(..., allow_pickle=False)``).

``--factorization tree`` builds the exact tree-structured frame of width N − 1 in O(N) (needs a tree file, not a
distance file; ``--out`` must be ``.npz``, read back by ``haf.frame.load_tree_frame``); ``auto`` picks it for large
trees. Its Gram error is over all pairs for K ≤ 4000, else over ≥ 10⁵ sampled pairs plus sibling pairs.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

HELP = "build the hierarchy-aware frame of a hierarchy file: s_min, eigenvalues, Gram error (--out saves it)"
OUT_SUFFIXES = (".pt", ".pth", ".npz")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="hierarchy file (.json, *_isa.txt, *_tree.pkl or "
                        "*_distances.pkl.xz) or a shipped hierarchy's name (haf hierarchies)")
    parser.add_argument("--gamma", type=float, required=True, help="γ of S = (1−s_min)·exp(−γ·d/d_max) + s_min "
                        "(paper: FGVC 1, CIFAR-100 2, tieredImageNet-H 3, iNat2019 5)")
    parser.add_argument("--s-min", type=float, default=None, dest="s_min",
                        help="use this s_min instead of the reference's grid choice")
    parser.add_argument("--seed", type=int, default=0, help="seed of the frame's random rotation (default 0)")
    # No argparse choices: `haf --help` imports every command module, and haf.hierarchy (where the conventions
    # live) would pull numpy into each; run() checks the name against haf.hierarchy.distance_conventions.
    parser.add_argument("--distance", default=None, metavar="CONVENTION",
                        help="tree distance: lca-height (default; height of the LCA's subtree) or fixed-depth "
                        "(H − depth of the LCA, the tieredImageNet-H files' scale); distance files are taken as "
                        "stored")
    parser.add_argument("--classes", metavar="FILE", default=None,
                        help="the class names, one a line, in class order (needed for distance files that also "
                        "hold inner nodes; prunes/reorders a tree)")
    parser.add_argument("--factorization", choices=("dense", "tree", "auto"), default="dense",
                        help="dense (K × K eigendecomposition, default), tree (exact, width N − 1, O(N); needs a "
                        "tree file) or auto (tree for large trees)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument("--out", metavar="FILE", default=None,
                        help="save W, S, distances, classes and settings (.pt for torch, .npz for numpy)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def _save(path: Path, report: dict[str, Any], result, distances) -> None:
    """Only tensors/arrays, strings and numbers: loadable without unpickling arbitrary objects."""
    import numpy as np

    from haf.safe_files import atomic_write

    settings = {key: report[key] for key in ("gamma", "s_min", "seed", "d_max", "convention", "source",
                                              "min_eigenvalue", "max_gram_error", "s_min_searched")}
    if path.suffix == ".npz":
        arrays = {
            "frame": result.W,
            "similarity": result.S,
            "distances": distances.matrix,
            "classes": np.array(distances.classes, dtype=str),
            **{key: np.array(value) for key, value in settings.items()},
        }
        if distances.height is not None:  # npz has no None: the key is absent when the height is unknown
            arrays["height"] = np.array(distances.height)
        # Through a handle: np.savez(path) would append ".npz" to other names.
        atomic_write(path, lambda handle: np.savez(handle, **arrays))
        return
    import torch

    payload = {
        "frame": torch.from_numpy(result.W),
        "similarity": torch.from_numpy(result.S),
        "distances": torch.from_numpy(distances.matrix),
        "classes": list(distances.classes),
        "height": distances.height,
        **settings,
    }
    atomic_write(path, lambda handle: torch.save(payload, handle))


def _format_text(report: dict[str, Any]) -> str:
    height = report["height"] if report["height"] is not None else "unknown (distance file)"
    how = "reference grid" if report["s_min_searched"] else "given"
    rows = [
        ("file", report["source"]),
        ("K", report["K"]),
        ("factorization", f"{report['factorization']} (width {report['width']})"),
        ("height", height),
        ("distance", report["convention"]),
        ("d_max", report["d_max"]),
        ("gamma", f"{report['gamma']:g}"),
        ("s_min", f"{report['s_min']:.6g} ({how})"),
        ("min eigenvalue of S", "not computed (the tree test certifies PSD in O(N))"
         if report["min_eigenvalue"] is None else f"{report['min_eigenvalue']:.6g}"),
        ("max |W Wᵀ − S|", f"{report['max_gram_error']:.3g} over {report['gram_pairs']} pairs"),
        ("seed", report["seed"] if report["seed"] is not None else "none (no rotation)"),
        ("seconds", f"{report['seconds']:.3f} (frame) + {report['load_seconds']:.3f} (reading the file)"),
    ]
    if report.get("out"):
        rows.append(("saved", report["out"]))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def run(args: argparse.Namespace) -> int:
    from haf.safe_files import json_text, refuse_existing

    out = Path(args.out) if args.out else None
    if out is not None and out.suffix not in OUT_SUFFIXES:
        raise ValueError(f"--out {out}: unknown format; use one of {', '.join(OUT_SUFFIXES)}")
    if out is not None and args.factorization == "tree" and out.suffix != ".npz":  # before minutes of building
        raise ValueError(f"--out {out}: a tree frame is saved as .npz")
    if out is not None:
        refuse_existing([out], args.overwrite)
    report, saver = _dense(args) if args.factorization == "dense" else _tree(args)
    if out is not None:
        if report["factorization"] == "tree" and out.suffix != ".npz":
            raise ValueError(f"--out {out}: a tree frame is saved as .npz")
        saver(out, report)
        report["out"] = str(out)
    print(json_text(report) if args.json else _format_text(report))
    return 0


def _convention(args: argparse.Namespace) -> str:
    """``--distance`` checked, or the library's default."""
    from haf.hierarchy.distance_conventions import DEFAULT_CONVENTION, check_convention

    return check_convention(args.distance) if args.distance else DEFAULT_CONVENTION


def _dense(args: argparse.Namespace, hierarchy=None, load_seconds: float = 0.0):
    """The dense frame of ``args.file``, or of ``hierarchy`` when the caller has read the file already."""
    from haf.frame import build_frame
    from haf.hierarchy import ClassDistances, load_class_distances

    start = time.perf_counter()
    convention = _convention(args)
    if hierarchy is not None:
        distances = ClassDistances.from_hierarchy(hierarchy, convention, source=str(args.file))
    else:
        distances = load_class_distances(args.file, classes=args.classes, convention=convention)
    load_seconds += time.perf_counter() - start
    if args.distance and distances.convention == "file":
        print(f"haf frame: note: {args.file} holds distances, not a tree; --distance {args.distance} does not "
              "apply (values are used as stored)", file=sys.stderr)

    start = time.perf_counter()
    result = build_frame(distances.matrix, args.gamma, s_min=args.s_min, seed=args.seed)
    seconds = time.perf_counter() - start

    report: dict[str, Any] = {
        "source": str(args.file),
        "factorization": "dense",
        "K": distances.num_classes,
        "width": int(result.W.shape[1]),
        "height": distances.height,
        "convention": distances.convention,
        "d_max": int(distances.d_max),
        "gamma": result.gamma,
        "s_min": result.s_min,
        "s_min_searched": result.s_min_searched,
        "seed": result.seed,
        "min_eigenvalue": result.min_eigenvalue,
        "max_gram_error": result.max_gram_error,
        "gram_pairs": distances.num_classes ** 2,
        "seconds": seconds,
        "load_seconds": load_seconds,
    }
    return report, lambda path, rep: _save(path, rep, result, distances)


def _tree(args: argparse.Namespace):
    from haf.frame import TreeArrays, build_tree_frame, resolve_factorization, save_tree_frame
    from haf.hierarchy import load_hierarchy

    start = time.perf_counter()
    try:
        hierarchy = load_hierarchy(args.file, classes=args.classes)
    except ValueError as error:
        if "holds no tree" not in str(error):
            raise
        if args.factorization == "tree":
            raise ValueError(f"{args.file}: a distance file holds no tree, and --factorization tree needs one "
                             "(.json, *_isa.txt or *_tree.pkl); use --factorization dense") from None
        return _dense(args)  # auto on a distance-only file
    tree = TreeArrays.from_hierarchy(hierarchy)
    load_seconds = time.perf_counter() - start
    if resolve_factorization(args.factorization, tree.num_classes, has_tree=True) == "dense":
        return _dense(args, hierarchy=hierarchy, load_seconds=load_seconds)
    convention = _convention(args)
    start = time.perf_counter()
    frame = build_tree_frame(tree, args.gamma, convention, s_min=args.s_min)
    seconds = time.perf_counter() - start
    report: dict[str, Any] = {
        "source": str(args.file),
        "factorization": "tree",
        "K": frame.num_classes,
        "width": frame.width,
        "height": tree.height,
        "convention": convention,
        "d_max": int(frame.d_max),
        "gamma": frame.gamma,
        "s_min": frame.s_min,
        "s_min_searched": frame.s_min_searched,
        "seed": None,  # the tree frame has no random rotation
        "min_eigenvalue": None,
        "max_gram_error": frame.max_gram_error,
        "gram_pairs": frame.gram_pairs,
        "seconds": seconds,
        "load_seconds": load_seconds,
    }
    return report, lambda path, rep: save_tree_frame(frame, path)
