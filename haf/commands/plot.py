"""`haf plot frame FILE --gamma G --out PNG` and `haf plot runs DIR... --out-dir D`."""
from __future__ import annotations

import argparse
from pathlib import Path

# The PNGs `haf plot runs` may write into --out-dir.
RUN_PLOTS = ("hierdist_at_k.png", "shot_groups.png", "risk_coverage.png", "training_curves.png", "neural_collapse.png")

HELP = "draw the hierarchy beside its frame, or training / HierDist@k / neural-collapse curves of runs"


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="what", metavar="WHAT", required=True)
    frame = sub.add_parser("frame", help="distance matrix beside the frame's Gram matrix",
                           description="draw a hierarchy's distance matrix beside its frame's Gram matrix W Wᵀ")
    frame.add_argument("file", help="hierarchy file (JSON, *_isa.txt, *_tree.pkl, *_distances.pkl.xz) or "
                       "a shipped hierarchy's name (haf hierarchies)")
    frame.add_argument("--gamma", type=float, required=True, help="γ of S = (1−s_min)·exp(−γ·d/d_max) + s_min")
    frame.add_argument("--s-min", type=float, default=None,
                       help="use this s_min instead of the reference's grid choice")
    frame.add_argument("--seed", type=int, default=0, help="seed of the frame's random rotation (default 0)")
    frame.add_argument("--distance", default=None, metavar="CONVENTION",
                       help="tree distance convention: lca-height (default) or fixed-depth")
    frame.add_argument("--classes", help="file with one class name a line (needed for distance files)")
    frame.add_argument("--out", required=True, metavar="PNG", help="PNG to write")
    frame.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    runs = sub.add_parser("runs", help="curves from run folders (metrics.jsonl, metrics.json)",
                          description="draw HierDist@k, risk-coverage, training and neural-collapse curves of runs "
                                      "(shot groups on long-tailed data); prints the PNGs written as a JSON list")
    runs.add_argument("runs", nargs="+", help="run folders, searched recursively")
    runs.add_argument("--out-dir", required=True, metavar="DIR", help="folder for the PNGs (created)")
    runs.add_argument("--overwrite", action="store_true", help="replace PNGs of these names already in --out-dir")


def _run_label(metrics_path: Path) -> str:
    from haf.safe_files import json_loads

    data = json_loads(metrics_path.read_text(), str(metrics_path))
    run = data.get("run") if isinstance(data, dict) else None
    run = run if isinstance(run, dict) else {}
    return f"{run.get('method', metrics_path.parent.name)} seed {run.get('seed', '?')}"


def _collect_selective(metrics_path: Path, into: dict) -> None:
    """The risk-coverage curves of a metrics.json "selective" section, keyed like the report's rows."""
    import json

    data = json.loads(metrics_path.read_text())
    method = data.get("run", {}).get("method", metrics_path.parent.name)
    for decoding, section in (data.get("selective") or {}).items():
        curve = section.get("curve") if isinstance(section, dict) else None
        if isinstance(curve, dict) and curve.get("coverage") and curve.get("risk"):
            label = method if decoding == "plain" else f"{method}+{decoding}"
            into.setdefault(label, []).append((curve["coverage"], curve["risk"]))


def mean_curves(curves: dict) -> dict:
    """Per label: the common coverage grid and the mean risk over seeds (curves on other grids are left out)."""
    import numpy as np

    out = {}
    for label, runs in curves.items():
        grid = runs[0][0]
        same = [risk for coverage, risk in runs if coverage == grid]
        out[label] = (grid, list(np.mean(np.array(same, dtype=float), axis=0)))
    return out


def run(args: argparse.Namespace) -> int:
    from haf.reporting import plots
    from haf.safe_files import refuse_existing

    if args.what == "frame":
        refuse_existing([args.out], args.overwrite)
        from haf.frame import build_frame
        from haf.hierarchy import load_class_distances

        classes = None
        if args.classes:
            classes = [ln.strip() for ln in Path(args.classes).read_text().splitlines() if ln.strip()]
        from haf.hierarchy.distance_conventions import DEFAULT_CONVENTION, check_convention

        convention = check_convention(args.distance) if args.distance else DEFAULT_CONVENTION
        dist = load_class_distances(args.file, classes=classes, convention=convention)
        result = build_frame(dist.matrix, args.gamma, s_min=args.s_min, seed=args.seed)
        plots.plot_distance_vs_gram(dist.matrix, result.W, args.out, classes=dist.classes,
                                    title=f"{Path(args.file).name}: γ = {args.gamma:g}, s_min = {result.s_min:.4f}")
        print(f"wrote {args.out}")
        return 0

    import json

    from haf.reporting.report import find_metric_files, load_run, summarize
    from haf.training.run_folder import LOG_NAME

    out = Path(args.out_dir)
    refuse_existing([out / name for name in RUN_PLOTS], args.overwrite)
    logs: dict[str, list[dict]] = {}
    hierdist: dict[str, dict[int, list[float]]] = {}  # method -> k -> values over seeds
    shots: dict[str, dict[str, list[float]]] = {}  # method -> "<group>/<metric>" -> values over seeds
    selective: dict[str, list[tuple[list, list]]] = {}  # method[+crm] -> risk-coverage curves over seeds
    for metrics_path in find_metric_files(args.runs):
        results = load_run(metrics_path)  # first: refuses a file that is not a metrics record, naming it
        if (metrics_path.parent / LOG_NAME).exists():
            logs[_run_label(metrics_path)] = plots.read_jsonl(metrics_path.parent / LOG_NAME)
        _collect_selective(metrics_path, selective)
        for result in results:
            for key, value in result.metrics.items():
                if key.startswith("selective/"):
                    continue
                if "/" in key:
                    shots.setdefault(result.method, {}).setdefault(key, []).append(value)
                elif key.startswith("hierdist@"):
                    hierdist.setdefault(result.method, {}).setdefault(int(key.split("@")[1]), []).append(value)

    def mean_ci(values: list[float]) -> tuple[float, float | None]:
        summary = summarize(values)
        return summary.mean, summary.ci

    curves = {}
    for method, by_k in hierdist.items():
        curves[method] = {k: mean_ci(values) for k, values in by_k.items()}
    written = [out / "hierdist_at_k.png"]
    plots.plot_hierdist_curves(curves, written[0])
    if shots:
        written.append(out / "shot_groups.png")
        plots.plot_shot_groups({method: {key: mean_ci(v) for key, v in by_key.items()}
                                for method, by_key in shots.items()}, written[-1])
    if selective:
        written.append(out / "risk_coverage.png")
        plots.plot_risk_coverage(mean_curves(selective), written[-1])
    if logs:
        written.append(out / "training_curves.png")
        plots.plot_training_curves(logs, written[-1])
        if any("nc_mean" in r or "self_duality" in r for records in logs.values() for r in records):
            written.append(out / "neural_collapse.png")
            plots.plot_neural_collapse(logs, written[-1])
    print(json.dumps([str(p) for p in written]))
    return 0
