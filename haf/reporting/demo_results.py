"""The `make demo` report: HierDist@k curves over every k, the figures, and the seed-paired differences.

HierDist@k for k = 1 … K comes from each run's test-set scores (cached beside its metrics, ``CURVE_NAME``);
the differences HAFrame − cross-entropy are paired by seed, mean ± t-based 95% CI
(:func:`haf.reporting.report.summarize`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from haf.safe_files import json_number, json_text
from haf.training.run_folder import LOG_NAME, METRICS_NAME

from .demo_runs import PlannedRun, resolved_config

CURVE_NAME = "hierdist_curve.json"


# ------------------------------------------------------------------------------------------- HierDist@k curves
def _tested_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any]]:
    """(path, state) of the checkpoint the run's metrics.json names as the one it tested, loaded on the CPU."""
    from haf.training.checkpoints import load_checkpoint

    record = json.loads((run_dir / METRICS_NAME).read_text())
    checkpoint = run_dir / record["run"]["checkpoint"]
    return checkpoint, load_checkpoint(checkpoint, map_location="cpu")


def test_scores(run_dir: Path, data: Any, tested: tuple[Path, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Class scores of the run's tested checkpoint on the test split (CPU), and CRM scores for probabilistic methods.

    The run's metrics.json names the checkpoint it tested; the model is rebuilt from the config stored in it.
    ``tested``: that checkpoint's (path, state) when the caller has already loaded it.
    """
    import torch

    from haf.training.evaluation import method_supports_crm
    from haf.metrics import crm_scores
    from haf.pipelines import make_loader
    from haf.training.run_config import config_from_dict
    from haf.training.assemble import build_model, transform_options

    checkpoint, state = tested or _tested_checkpoint(run_dir)
    config = config_from_dict(state["config"], source=str(checkpoint))
    if list(state.get("classes") or data.dataset.classes) != list(data.dataset.classes):
        raise ValueError(f"{checkpoint}: trained on other classes than the demo dataset now holds; use --force")
    model = build_model(config, data.dataset, data.distances)
    model.load_state_dict(state["model"])
    model.eval()
    loader = make_loader(data.dataset, config.dataset.test_split, backend="torch", train=False,
                         batch_size=config.train.eval_batch_size, image_size=config.data.image_size, workers=0,
                         rank=0, world_size=1, seed=config.seed, device=torch.device("cpu"),
                         **transform_options(config))
    loader.set_epoch(0)
    distances = torch.as_tensor(data.distances, dtype=torch.float32)
    scores, crm, targets = [], [], []
    crm_applies = method_supports_crm(model.method)
    with torch.no_grad():
        for images, labels in loader:
            outputs = model(images)
            scores.append(model.scores(outputs).float())
            if crm_applies:
                crm.append(crm_scores(model.probabilities(outputs).float(), distances))
            targets.append(labels)
    return {"scores": torch.cat(scores), "crm": torch.cat(crm) if crm else None, "targets": torch.cat(targets)}


def hierdist_curve(run_dir: Path, data: Any,
                   tested: tuple[Path, dict[str, Any]] | None = None) -> dict[str, dict[int, float]]:
    """{decoding: {k: HierDist@k}} for k = 1 … K, cached in the run folder next to the metrics it extends.

    ``tested``: the run's tested checkpoint as :func:`test_scores` takes it, when the caller has it loaded.
    """
    from haf.metrics import hierarchical_metrics
    from haf.safe_files import atomic_write_text

    cache = run_dir / CURVE_NAME
    metrics_mtime = (run_dir / METRICS_NAME).stat().st_mtime
    if cache.is_file() and cache.stat().st_mtime >= metrics_mtime:
        stored = json.loads(cache.read_text())
        return {name: {int(k): float(v) for k, v in points.items()} for name, points in stored.items()}
    result = test_scores(run_dir, data, tested)
    ks = tuple(range(1, result["scores"].shape[1] + 1))
    curves = {}
    for name, scores in (("plain", result["scores"]), ("crm", result["crm"])):
        if scores is not None:
            metrics = hierarchical_metrics(scores, result["targets"], data.distances, ks=ks)
            curves[name] = {k: float(metrics[f"hierdist@{k}"]) for k in ks}
    atomic_write_text(cache, json_text(curves, indent=1) + "\n")  # atomic: a torn cache would look fresh by its mtime
    return curves


# --------------------------------------------------------------------------------------------------- plots
def frame_of(run_dir: Path, tested: tuple[Path, dict[str, Any]] | None = None) -> tuple[Any, Any, list[str]]:
    """(W, distances, classes) of a HAFrame run's tested checkpoint: the very frame it was trained against."""
    _, state = tested or _tested_checkpoint(run_dir)
    frames = [value for key, value in state["model"].items() if key.split(".")[-1] == "frame"]
    if len(frames) != 1:
        raise ValueError(f"{run_dir}: expected one fixed-frame buffer in the checkpoint, found {len(frames)}")
    return frames[0].double().numpy(), state["distances"].numpy(), list(state["classes"])


def write_plots(runs: Sequence[PlannedRun], data: Any, plot_dir: Path) -> dict[str, Path]:
    from haf.reporting import plots
    from haf.reporting.report import summarize

    written: dict[str, Path] = {}
    frame_runs = [run for run in runs if run.method == "haframe"]
    frame_run, frame_tested = None, None
    if frame_runs:
        run = frame_run = min(frame_runs, key=lambda r: r.seed)
        frame_tested = _tested_checkpoint(run.output_dir)  # loaded once: the frame plot and its curve below
        frame, distances, classes = frame_of(run.output_dir, frame_tested)
        gamma = resolved_config(run).method.options.get("gamma")
        path = plot_dir / "frame_vs_hierarchy.png"
        plots.plot_distance_vs_gram(distances, frame, path, classes=classes,
                                    title=f"demo hierarchy ({len(classes)} classes) and the HAFrame of "
                                          f"{run.label} (γ = {gamma:g})")
        written["frame vs hierarchy"] = path

    values: dict[str, dict[int, list[float]]] = {}
    for run in runs:
        tested = frame_tested if run is frame_run else None
        for decoding, points in hierdist_curve(run.output_dir, data, tested).items():
            label = run.method if decoding == "plain" else f"{run.method}+{decoding}"
            for k, value in points.items():
                values.setdefault(label, {}).setdefault(k, []).append(value)

    def mean_ci(seed_values: list[float]) -> tuple[float, float | None]:
        summary = summarize(seed_values)
        return summary.mean, summary.ci

    curves = {label: {k: mean_ci(v) for k, v in by_k.items()} for label, by_k in values.items()}
    path = plot_dir / "hierdist_at_k.png"
    plots.plot_hierdist_curves(curves, path, title="HierDist@k on the demo test set (mean ± 95% CI over seeds)")
    written["HierDist@k"] = path

    # metrics.jsonl: one record per epoch and split, the format haf.reporting.plots reads.
    logs = {run.label: plots.read_jsonl(run.output_dir / LOG_NAME) for run in runs
            if (run.output_dir / LOG_NAME).is_file()}
    if logs:
        path = plot_dir / "training_curves.png"
        plots.plot_training_curves(logs, path)
        written["training curves"] = path
        if any("nc_mean" in r or "self_duality" in r for records in logs.values() for r in records):
            path = plot_dir / "neural_collapse.png"
            plots.plot_neural_collapse(logs, path)
            written["neural collapse"] = path
    return written


# ------------------------------------------------------------------------------------------------ the table
def paired_differences(runs: Sequence[PlannedRun], baseline: str = "cross-entropy", method: str = "haframe",
                       keys: Sequence[str] = ("top1", "mistake_severity", "hierdist@1", "hierdist@5", "hierdist@20")
                       ) -> str:
    """HAFrame − CE per seed, mean ± t-based 95% CI over seeds (pairing removes the seed-to-seed data noise
    both methods share: same dataset, same data order for the same seed)."""
    from haf.reporting.report import summarize

    metrics = {(run.method, run.seed): json.loads((run.output_dir / METRICS_NAME).read_text()) for run in runs}
    seeds = sorted({seed for (m, seed) in metrics if m == method} & {seed for (m, seed) in metrics if m == baseline})
    if not seeds:
        return ""
    cells = []
    for key in keys:
        pairs = ([json_number(metrics[(method, s)].get(key)) for s in seeds],
                 [json_number(metrics[(baseline, s)].get(key)) for s in seeds])
        if any(v is None for v in (*pairs[0], *pairs[1])):
            continue
        summary = summarize([a - b for a, b in zip(*pairs)])
        better = summary.mean > 0 if key == "top1" else summary.mean < 0
        significant = summary.ci is not None and abs(summary.mean) > summary.ci
        verdict = ("better" if better else "worse") if significant else "no clear difference"
        ci = "" if summary.ci is None else f" ± {summary.ci:.3f}"
        cells.append(f"  {key:<17} {summary.mean:+.3f}{ci}  ({verdict})")
    header = (f"{method} − {baseline}, paired by seed ({len(seeds)} seed{'s' if len(seeds) != 1 else ''}; "
              "mean ± 95% CI; lower is better except top-1):")
    return "\n".join([header, *cells])


# ------------------------------------------------------------------------------ hierarchical selective prediction
def selective_section(runs: Sequence[PlannedRun], plot_dir: Path, baseline: str = "cross-entropy",
                      method: str = "haframe") -> tuple[str, dict[str, Path]]:
    """Does a model that makes better mistakes also hedge more cheaply? The text and figure of the answer.

    From each run's metrics.json "selective" section (climbing over all thresholds, docs/PREDICTION.md): hAURC and
    coverage at 90 % accuracy per method (mean ± 95% CI over seeds), the paired difference HAFrame − CE and its
    verdict, and the mean risk–coverage curves (``risk_coverage.png``). Empty when the runs have no section.
    """
    from haf.reporting import plots
    from haf.reporting.report import summarize

    records = {(run.method, run.seed): json.loads((run.output_dir / METRICS_NAME).read_text()) for run in runs}
    per_label: dict[str, dict[int, dict]] = {}
    for (name, seed), record in records.items():
        for decoding, section in (record.get("selective") or {}).items():
            if isinstance(section, dict) and "haurc" in section:
                per_label.setdefault(name if decoding == "plain" else f"{name}+{decoding}", {})[seed] = section
    if not per_label:
        return "", {}
    lines = ["Hierarchical selective prediction (climb to the first ancestor with probability ≥ θ, all θ; "
             "hAURC: area under risk vs coverage, lower = cheaper hedging):"]
    for label, by_seed in sorted(per_label.items()):
        haurc = summarize([s["haurc"] for s in by_seed.values()])
        cover = summarize([s.get("coverage@0.9", float("nan")) for s in by_seed.values()])
        lines.append(f"  {label:<24} hAURC {haurc.format(4)}   coverage at 90% accuracy {cover.format(3)}")
    ours, theirs = per_label.get(method, {}), per_label.get(baseline, {})
    seeds = sorted(set(ours) & set(theirs))
    if seeds:
        diff = summarize([ours[s]["haurc"] - theirs[s]["haurc"] for s in seeds])
        significant = diff.ci is not None and abs(diff.mean) > diff.ci
        if not significant:
            verdict = "no clear difference: the better mistakes do not (measurably) make hedging cheaper here"
        elif diff.mean < 0:
            verdict = f"{method} hedges more cheaply (lower risk at the same hierarchical coverage)"
        else:
            verdict = f"{method} hedges more expensively than {baseline} (higher risk at the same coverage)"
        lines.append(f"  {method} − {baseline} hAURC, paired by seed ({len(seeds)}): {diff.format(4)} → {verdict}")
    curves = {}
    for label, by_seed in per_label.items():
        grids = [s["curve"] for s in by_seed.values() if isinstance(s.get("curve"), dict)]
        if grids and all(g["coverage"] == grids[0]["coverage"] for g in grids):
            risk = [sum(g["risk"][i] for g in grids) / len(grids) for i in range(len(grids[0]["risk"]))]
            curves[label] = (grids[0]["coverage"], risk)
    written = {}
    if curves:
        path = plot_dir / "risk_coverage.png"
        plots.plot_risk_coverage(curves, path, title="Hierarchical risk–coverage on the demo test set (mean over "
                                                     "seeds)")
        written["risk-coverage"] = path
    return "\n".join(lines), written
