"""`haf plot frame FILE --gamma G --out PNG` and `haf plot runs DIR... --out-dir D`."""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = "draw the hierarchy beside its frame, or training / HierDist@k / neural-collapse curves of runs"


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="what", metavar="WHAT", required=True)
    frame = sub.add_parser("frame", help="distance matrix beside the frame's Gram matrix")
    frame.add_argument("file", help="hierarchy file (JSON, *_isa.txt, *_tree.pkl, *_distances.pkl.xz)")
    frame.add_argument("--gamma", type=float, required=True)
    frame.add_argument("--s-min", type=float, default=None)
    frame.add_argument("--seed", type=int, default=0)
    frame.add_argument("--distance", choices=("lca-height", "fixed-depth"), default="lca-height")
    frame.add_argument("--classes", help="file with one class name a line (needed for distance files)")
    frame.add_argument("--out", required=True, help="PNG to write")
    runs = sub.add_parser("runs", help="curves from run folders (metrics.jsonl, metrics.json)")
    runs.add_argument("runs", nargs="+", help="run folders, searched recursively")
    runs.add_argument("--out-dir", required=True)


def _run_label(metrics_path: Path) -> str:
    from haf.safe_files import json_loads

    data = json_loads(metrics_path.read_text(), str(metrics_path))
    run = data.get("run") if isinstance(data, dict) else None
    run = run if isinstance(run, dict) else {}
    return f"{run.get('method', metrics_path.parent.name)} seed {run.get('seed', '?')}"


def run(args: argparse.Namespace) -> int:
    from haf.reporting import plots

    if args.what == "frame":
        from haf.frame import build_frame
        from haf.hierarchy import load_class_distances

        classes = None
        if args.classes:
            classes = [ln.strip() for ln in Path(args.classes).read_text().splitlines() if ln.strip()]
        dist = load_class_distances(args.file, classes=classes, convention=args.distance)
        result = build_frame(dist.matrix, args.gamma, s_min=args.s_min, seed=args.seed)
        plots.plot_distance_vs_gram(dist.matrix, result.W, args.out, classes=dist.classes,
                                    title=f"{Path(args.file).name}: γ = {args.gamma:g}, s_min = {result.s_min:.4f}")
        print(f"wrote {args.out}")
        return 0

    import json

    from haf.reporting.report import find_metric_files, load_run, summarize
    from haf.training.run_folder import LOG_NAME

    out = Path(args.out_dir)
    logs: dict[str, list[dict]] = {}
    hierdist: dict[str, dict[int, list[float]]] = {}  # method -> k -> values over seeds
    shots: dict[str, dict[str, list[float]]] = {}  # method -> "<group>/<metric>" -> values over seeds
    for metrics_path in find_metric_files(args.runs):
        results = load_run(metrics_path)  # first: refuses a file that is not a metrics record, naming it
        if (metrics_path.parent / LOG_NAME).exists():
            logs[_run_label(metrics_path)] = plots.read_jsonl(metrics_path.parent / LOG_NAME)
        for result in results:
            for key, value in result.metrics.items():
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
    if logs:
        written.append(out / "training_curves.png")
        plots.plot_training_curves(logs, written[-1])
        if any("nc_mean" in r or "self_duality" in r for records in logs.values() for r in records):
            written.append(out / "neural_collapse.png")
            plots.plot_neural_collapse(logs, written[-1])
    print(json.dumps([str(p) for p in written]))
    return 0
