"""Figures people can read: hierarchy vs frame, HierDist@k curves, neural collapse and training curves.

Every function writes one PNG (matplotlib's Agg backend, no display needed) and returns the arrays it drew,
so tests check the content and not only that a file exists.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from haf.safe_files import json_number

DPI = 120  # readable on a README page without making the PNGs large


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    """Write the figure to a temporary name and rename it (format from the suffix, PNG without one)."""
    from haf.safe_files import atomic_write

    path = Path(path)
    try:
        atomic_write(path, lambda handle: fig.savefig(handle, format=path.suffix.lstrip(".").lower() or "png",
                                                      dpi=DPI, bbox_inches="tight"))
    finally:
        _pyplot().close(fig)
    return path


def plot_distance_vs_gram(distances: np.ndarray, frame: np.ndarray, path: str | Path,
                          classes: Sequence[str] | None = None, title: str = "") -> dict[str, np.ndarray]:
    """Hierarchical distance matrix beside the frame's Gram matrix W Wᵀ, rows in the same class order.

    HAFrame's Gram matrix is S = (1 − s_min)·exp(−γ d/d_max) + s_min, a decreasing function of d, so the two
    panels mirror each other (dark where the other is bright).
    """
    distances = np.asarray(distances, dtype=np.float64)
    frame = np.asarray(frame, dtype=np.float64)
    if distances.shape != (frame.shape[0],) * 2:
        raise ValueError(f"distances {distances.shape} do not match a frame of {frame.shape[0]} classes")
    gram = frame @ frame.T
    plt = _pyplot()
    labelled = classes is not None and len(classes) <= 40  # more names than that are unreadable anyway
    # constrained layout keeps each panel's colour bar clear of the next panel's class names
    fig, axes = plt.subplots(1, 2, figsize=(13, 6.2) if labelled else (10, 4.4), layout="constrained")
    panels = ((distances, "hierarchical distance d(i, j)", "viridis"), (gram, "frame Gram matrix W Wᵀ (cosines)", "viridis_r"))
    for ax, (matrix, label, cmap) in zip(axes, panels):
        image = ax.imshow(matrix, cmap=cmap, interpolation="nearest")
        ax.set_title(label)
        ax.set_xlabel("class j")
        ax.set_ylabel("class i")
        fig.colorbar(image, ax=ax, shrink=0.8)
        if labelled:
            ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=6)
            ax.set_yticks(range(len(classes)), classes, fontsize=6)
    fig.suptitle(title or f"{frame.shape[0]} classes: the frame mirrors the hierarchy")
    _save(fig, path)
    return {"distances": distances, "gram": gram}


def plot_hierdist_curves(curves: Mapping[str, Mapping[int, float | tuple[float, float | None]]],
                         path: str | Path, title: str = "") -> dict[str, np.ndarray]:
    """HierDist@k against k, one line per method; values may be a mean or (mean, 95% CI half-width)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    drawn = {}
    for method, points in sorted(curves.items()):
        ks = sorted(int(k) for k in points)
        if not ks:
            continue
        means, cis = [], []
        for k in ks:
            value = points[k]
            mean, ci = value if isinstance(value, tuple) else (value, None)
            means.append(mean)
            cis.append(0.0 if ci is None else ci)
        ax.errorbar(ks, means, yerr=cis, marker="o", capsize=3, label=method)
        drawn[method] = np.array([ks, means], dtype=np.float64)
    if not drawn:
        raise ValueError("no HierDist@k values to plot")
    ax.set_xscale("log")
    ax.set_xlabel("k (top-k predictions)")
    ax.set_ylabel("HierDist@k (lower is better)")
    ax.set_title(title or "Mean hierarchical distance of the top-k predictions")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)
    return drawn


def plot_shot_groups(results: Mapping[str, Mapping[str, float | tuple[float, float | None]]], path: str | Path,
                     groups: Sequence[str] = ("many", "medium", "few"),
                     metrics: Sequence[str] = ("top1", "mistake_severity")) -> dict[str, np.ndarray]:
    """Long-tail bars: one panel per metric, one bar group per shot group, one bar per method.

    ``results[method]["<group>/<metric>"]`` is a mean or (mean, 95% CI half-width); missing values are NaN gaps.
    Returns per method the (metrics × groups) array of means drawn.
    """
    methods = sorted(results)
    if not methods:
        raise ValueError("no shot-group results to plot")
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), layout="constrained", squeeze=False)
    width = 0.8 / len(methods)
    drawn = {m: np.full((len(metrics), len(groups)), np.nan) for m in methods}
    for row, (ax, metric) in enumerate(zip(axes[0], metrics)):
        for i, method in enumerate(methods):
            cis = []
            for j, group in enumerate(groups):
                value = results[method].get(f"{group}/{metric}")
                mean, ci = value if isinstance(value, tuple) else (value, None)
                drawn[method][row, j] = np.nan if mean is None else mean
                cis.append(0.0 if ci is None else ci)
            x = np.arange(len(groups)) + (i - (len(methods) - 1) / 2) * width
            ax.bar(x, drawn[method][row], width, yerr=cis, capsize=3, label=method)
        ax.set_xticks(range(len(groups)), [f"{g}-shot" for g in groups])
        ax.set_ylabel({"top1": "top-1 (%)", "mistake_severity": "mistake severity (lower is better)"}.get(metric, metric))
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("By shot group (training images per class: many > 100, medium 20–100, few < 20)")
    _save(fig, path)
    return drawn


def plot_risk_coverage(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | Path,
                       title: str = "") -> dict[str, np.ndarray]:
    """Hierarchical risk against hierarchical coverage (climbing over all thresholds), one line per label;
    ``curves[label] = (coverage, risk)`` (a metrics.json ``selective.<decoding>.curve``, or its mean over seeds).
    Returns per label the 2 × n array drawn."""
    if not curves:
        raise ValueError("no risk-coverage curves to plot")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    drawn = {}
    for label, (coverage, risk) in sorted(curves.items()):
        xy = np.array([coverage, risk], dtype=np.float64)
        area = float(np.sum(np.diff(xy[0]) * (xy[1][1:] + xy[1][:-1]) / 2))
        ax.plot(xy[0], xy[1], label=f"{label} (hAURC {area:.4f})")
        drawn[label] = xy
    ax.set_xlabel("hierarchical coverage (1 − ln|leaves| / ln K)")
    ax.set_ylabel("risk (1 − accuracy of the node predictions)")
    ax.set_title(title or "Hierarchical risk–coverage (climbing)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, path)
    return drawn


def read_jsonl(path: str | Path) -> list[dict]:
    """Records of a metrics.jsonl log, each (epoch, split) once: a later record replaces an earlier one (a run
    resumed over a log it had not cut back), keeping the first one's place. A torn last line (no newline: a
    killed run) is skipped; any other malformed line is an error naming the file and line."""
    records: dict[object, dict] = {}
    text = Path(path).read_text()
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                if number == len(lines) and not text.endswith("\n"):
                    break
                raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            except RecursionError:
                raise ValueError(f"{path}:{number}: JSON nested too deeply to read") from None
            if isinstance(record, dict):  # NaN/±inf as our writers spell them (haf.safe_files.NONFINITE_JSON)
                record = {k: json_number(v) for k, v in record.items()}
            key = (record.get("epoch"), record.get("split")) if isinstance(record, dict) else None
            records[key if key is not None and None not in key else number] = record
    return list(records.values())


def _series(records: Iterable[Mapping], split: str, key: str) -> np.ndarray:
    points = [(r["epoch"], r[key]) for r in records
              if r.get("split") == split and key in r and r[key] is not None and "epoch" in r]
    return np.array(sorted(points), dtype=np.float64).reshape(-1, 2)


def _finish_epoch_axis(ax, title: str, has_data: bool, missing: str) -> None:
    """Title, epoch axis and grid; a legend when lines were drawn, else a note saying what was missing."""
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    if has_data:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, missing, ha="center", va="center", transform=ax.transAxes)


def plot_training_curves(runs: Mapping[str, Sequence[Mapping]], path: str | Path,
                         keys: Sequence[tuple[str, str]] = (("train", "loss"), ("val", "top1"),
                                                            ("val", "mistake_severity"), ("val", "hierdist@5"))
                         ) -> dict[str, dict[str, np.ndarray]]:
    """One panel per (split, metric), one line per run label. Missing keys leave a panel saying so."""
    plt = _pyplot()
    cols = min(len(keys), 2)
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.6 * rows), squeeze=False, layout="constrained")
    drawn: dict[str, dict[str, np.ndarray]] = {}
    for ax, (split, key) in zip(axes.flat, keys):
        name = f"{split}/{key}"
        for label, records in sorted(runs.items()):
            series = _series(records, split, key)
            if len(series):
                ax.plot(series[:, 0], series[:, 1], marker=".", label=label)
                drawn.setdefault(name, {})[label] = series
        _finish_epoch_axis(ax, name, name in drawn, f"no '{key}' logged for {split}")
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    _save(fig, path)
    return drawn


def plot_neural_collapse(runs: Mapping[str, Sequence[Mapping]], path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """Neural-collapse diagnostics over epochs: mean ± std of |cos(μ_i, μ_j) − S_ij|, and self-duality."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    drawn: dict[str, dict[str, np.ndarray]] = {}
    for label, records in sorted(runs.items()):
        mean, std = _series(records, "val", "nc_mean"), _series(records, "val", "nc_std")
        if len(mean):
            axes[0].plot(mean[:, 0], mean[:, 1], marker=".", label=label)
            if len(std) == len(mean):
                axes[0].fill_between(mean[:, 0], mean[:, 1] - std[:, 1], mean[:, 1] + std[:, 1], alpha=0.2)
            drawn.setdefault("nc_mean", {})[label] = mean
        duality = _series(records, "val", "self_duality")
        if len(duality):
            axes[1].plot(duality[:, 0], duality[:, 1], marker=".", label=label)
            drawn.setdefault("self_duality", {})[label] = duality
    titles = ("mean ± std of |cos(μ_i, μ_j) − S_ij| over class pairs", "self-duality ‖W/‖W‖ − M/‖M‖‖_F")
    for ax, key, title in zip(axes, ("nc_mean", "self_duality"), titles):
        _finish_epoch_axis(ax, title, key in drawn, f"no '{key}' logged")
        ax.title.set_fontsize(10)
    if not drawn:
        plt.close(fig)
        raise ValueError("no neural-collapse diagnostics (nc_mean, self_duality) in the logs")
    _save(fig, path)
    return drawn
