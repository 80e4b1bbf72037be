"""Paper-style result tables from many runs (methods × seeds).

Input: the ``metrics.json`` each training run writes (keys of :func:`haf.metrics.hierarchical_metrics`, an
optional ``"crm"`` sub-dict for probabilistic methods decoded with CRM, and a ``"run"`` record naming dataset,
method, model and seed). Output: per (dataset, method, model) the mean ± t-based 95% confidence interval over
seeds, as Markdown and CSV, optionally beside the paper's published row.

Confidence interval: half-width = t_{0.975, n−1} · s / √n with s the sample standard deviation (ddof = 1), the
paper's convention for its 5 seeds. With one run there is no interval; it is reported as missing, not as 0.

Long-tailed runs (a ``"shots"`` section: metrics per many / medium / few-shot group of the training counts) get a
second table per dataset, "<dataset> by shot group", with top-1, mistake severity and HierDist@1 of each group;
the CSV carries the same columns (``many/top1_mean``, ...).
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from haf.metrics import SHOT_GROUPS
from haf.safe_files import json_loads, json_number
from haf.reporting.paper_results import METRIC_KEYS, paper_row
from haf.training.run_folder import METRICS_NAME

CRM_SUFFIX = "+crm"
# Lower is better for every metric but top-1; used to state the sign of "better" in differences.
HIGHER_IS_BETTER = {"top1": True}
#: Columns of the shot-group table: "<group>/<metric>" for each group and metric.
SHOT_METRICS = ("top1", "mistake_severity", "hierdist@1")
SHOT_KEYS = tuple(f"{group}/{metric}" for metric in SHOT_METRICS for group in SHOT_GROUPS)
#: Columns of the hierarchical selective table (a metrics.json "selective" section, docs/PREDICTION.md).
SELECTIVE_PREFIX = "selective/"
SELECTIVE_KEYS = tuple(f"{SELECTIVE_PREFIX}{k}" for k in ("haurc", "coverage@0.9", "coverage@0.95", "coverage@0.99"))


@dataclass(frozen=True)
class RunResult:
    path: Path
    dataset: str
    method: str
    model: str
    seed: int | None
    metrics: Mapping[str, float]


@dataclass(frozen=True)
class Summary:
    """Mean and 95% CI half-width of one metric over the n runs where it is finite (``ci`` is None when n < 2);
    ``nonfinite`` holds the NaN/±inf values of the other runs (a diverged run), shown, never averaged in."""

    mean: float
    ci: float | None
    n: int
    nonfinite: tuple[float, ...] = ()

    def format(self, digits: int = 2) -> str:
        marks = _nonfinite_marks(self.nonfinite)
        if self.n == 0:
            return marks or "n/a"  # "n/a": no run has the metric; "nan"/"inf": runs have it, not finite
        text = f"{self.mean:.{digits}f}"
        text = text if self.ci is None else f"{text} ± {self.ci:.{digits}f}"
        return f"{text} (+{len(self.nonfinite)} {marks})" if marks else text


def _nonfinite_marks(values: Sequence[float]) -> str:
    names = sorted({"nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") for v in values})
    return "/".join(names)


@dataclass
class Group:
    dataset: str
    method: str
    model: str
    runs: list[RunResult] = field(default_factory=list)

    @property
    def seeds(self) -> list[int | None]:
        return [run.seed for run in self.runs]

    def summary(self, key: str) -> Summary:
        return summarize([run.metrics[key] for run in self.runs if key in run.metrics])


def t_quantile_975(dof: int) -> float:
    """Two-sided 95% Student-t quantile t_{0.975, dof}."""
    from scipy.stats import t

    return float(t.ppf(0.975, dof))


def summarize(values: Sequence[float]) -> Summary:
    present = [float(v) for v in values if v is not None]
    finite = [v for v in present if math.isfinite(v)]
    nonfinite = tuple(v for v in present if not math.isfinite(v))
    n = len(finite)
    if n == 0:
        return Summary(float("nan"), None, 0, nonfinite)
    mean = sum(finite) / n
    if n < 2:
        return Summary(mean, None, n, nonfinite)
    variance = sum((v - mean) ** 2 for v in finite) / (n - 1)
    return Summary(mean, t_quantile_975(n - 1) * math.sqrt(variance) / math.sqrt(n), n, nonfinite)


def _require(mapping: Mapping, key: str, path: Path, where: str = "") -> object:
    if key not in mapping:
        raise ValueError(f"{path}: missing key {where}{key!r}")
    return mapping[key]


def _metrics_from(mapping: Mapping, path: Path, where: str) -> dict[str, float]:
    """The metric values of one section: numbers, or the strings our JSON writers put for NaN/±inf
    (``haf.safe_files.json_text``); null is a metric without a value (missing, shown "n/a")."""
    metrics = {}
    for key, value in mapping.items():
        if key in METRIC_KEYS or key.startswith("hierdist@"):
            if value is None:
                continue
            value = json_number(value)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{path}: key {where}{key!r} should be a number, got {value!r}")
            metrics[key] = float(value)
    for key in ("top1", "mistake_severity", "hierdist@1"):
        _require(mapping, key, path, where)
    return metrics


def load_run(path: str | Path, include_crm: bool = True) -> list[RunResult]:
    """One metrics.json → one result, plus a ``<method>+crm`` result when the file has a "crm" section."""
    path = Path(path)
    data = json_loads(path.read_text(), str(path))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with the metrics and a 'run' record, got a "
                         f"{type(data).__name__}")
    run = _require(data, "run", path)
    if not isinstance(run, dict):
        raise ValueError(f"{path}: key 'run' should be an object")
    dataset, method = str(_require(run, "dataset", path, "run.")), str(_require(run, "method", path, "run."))
    model = str(run.get("model", ""))
    seed = run.get("seed")
    if seed is not None and not isinstance(seed, int):
        raise ValueError(f"{path}: key 'run.seed' should be an integer, got {seed!r}")
    metrics = _metrics_from(data, path, "")
    shots = data.get("shots")
    if shots is not None:
        if not isinstance(shots, dict) or not all(isinstance(v, dict) for v in shots.values()):
            raise ValueError(f"{path}: key 'shots' should map a shot group to its metrics")
        for group, values in shots.items():
            metrics.update({f"{group}/{k}": v for k, v in _metrics_from(values, path, f"shots.{group}.").items()})
    selective = data.get("selective") if isinstance(data.get("selective"), dict) else {}
    metrics.update(_selective_metrics(selective.get("plain"), path, "selective.plain."))
    results = [RunResult(path, dataset, method, model, seed, metrics)]
    if include_crm and isinstance(data.get("crm"), dict):
        crm = _metrics_from(data["crm"], path, "crm.")
        crm.update(_selective_metrics(selective.get("crm"), path, "selective.crm."))
        results.append(RunResult(path, dataset, method + CRM_SUFFIX, model, seed, crm))
    return results


def _selective_metrics(section: object, path: Path, where: str) -> dict[str, float]:
    """``selective/<key>`` numbers of one decoding's selective section (empty when there is none)."""
    if not isinstance(section, dict):
        return {}
    out = {}
    for key in SELECTIVE_KEYS:
        value = section.get(key[len(SELECTIVE_PREFIX):])
        if value is None:
            continue
        if not isinstance(value, (int, float)):
            raise ValueError(f"{path}: key {where}{key[len(SELECTIVE_PREFIX):]!r} should be a number, got {value!r}")
        out[key] = float(value)
    return out


def find_metric_files(inputs: Iterable[str | Path]) -> list[Path]:
    """Expand directories (recursively) and globs into metrics.json files, sorted, without duplicates."""
    found: set[Path] = set()
    for item in inputs:
        item = str(item)
        paths = [Path(p) for p in sorted(Path().glob(item))] if any(c in item for c in "*?[") else [Path(item)]
        if not paths:
            raise FileNotFoundError(f"no files match {item!r}")
        for path in paths:
            if path.is_dir():
                found.update(path.rglob(METRICS_NAME))
            elif path.is_file():
                found.add(path)
            else:
                raise FileNotFoundError(f"{path}: no such file or directory")
    if not found:
        raise FileNotFoundError(f"no metrics.json under {', '.join(map(str, inputs))}")
    return sorted(found)


def group_runs(results: Iterable[RunResult], by_model: bool = True) -> list[Group]:
    groups: dict[tuple[str, str, str], Group] = {}
    for result in results:
        key = (result.dataset, result.method, result.model if by_model else "")
        group = groups.setdefault(key, Group(*key))
        if result.seed is not None and result.seed in group.seeds:
            raise ValueError(
                f"{result.path}: seed {result.seed} of {result.dataset}/{result.method} also in "
                f"{group.runs[group.seeds.index(result.seed)].path}; each seed should count once")
        group.runs.append(result)
    return [groups[key] for key in sorted(groups)]


def _paper_key(method: str) -> str:
    # Our "cross-entropy+crm" rows correspond to the paper's "CRM (type-I)" rows.
    return "crm" if method == "cross-entropy" + CRM_SUFFIX else method


@dataclass(frozen=True)
class TableRow:
    label: str
    cells: dict[str, str]
    values: dict[str, Summary | float | None]
    runs: int


def build_table(groups: Sequence[Group], keys: Sequence[str] = METRIC_KEYS, paper: bool = False) -> list[TableRow]:
    rows = []
    for group in groups:
        label = group.method + (f" ({group.model})" if group.model else "")
        summaries = {key: group.summary(key) for key in keys}
        rows.append(TableRow(label, {k: s.format() for k, s in summaries.items()}, dict(summaries), len(group.runs)))
        published = paper_row(group.dataset, _paper_key(group.method)) if paper else None
        if published is not None:
            cells, values = {}, {}
            for key in keys:
                theirs = published.get(key)
                ours = summaries[key].mean
                values[key] = theirs
                if theirs is None:
                    cells[key] = ""
                else:
                    delta = "" if math.isnan(ours) else f" (Δ {ours - theirs:+.2f})"
                    cells[key] = f"{theirs:.2f}{delta}"
            rows.append(TableRow(f"  paper: {_paper_key(group.method)}", cells, values, 5))
    return rows


_HEADERS = {"top1": "top-1 (%)", "mistake_severity": "mistake severity", "haurc": "hAURC"}


def _header(key: str) -> str:
    group, _, metric = key.rpartition("/")
    text = _HEADERS.get(metric, metric.replace("hierdist@", "HierDist@"))
    return f"{group}: {text}" if group else text


def markdown_table(dataset: str, rows: Sequence[TableRow], keys: Sequence[str] = METRIC_KEYS,
                   digits: int | None = None) -> str:
    lines = [f"### {dataset}", "", "| method | runs | " + " | ".join(_header(k) for k in keys) + " |",
             "|---|---|" + "---|" * len(keys)]
    for row in rows:
        cells = row.cells if digits is None else {
            k: v.format(digits) if isinstance(v, Summary) else row.cells.get(k, "") for k, v in row.values.items()}
        lines.append(f"| {row.label.strip()} | {row.runs} | " + " | ".join(cells.get(k, "") for k in keys) + " |")
    return "\n".join(lines) + "\n"


def csv_table(tables: Mapping[str, Sequence[TableRow]], keys: Sequence[str] = METRIC_KEYS) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    header = ["dataset", "method", "runs"]
    for key in keys:
        header += [f"{key}_mean", f"{key}_ci95"]
    writer.writerow(header)
    for dataset, rows in tables.items():
        for row in rows:
            line = [dataset, row.label.strip(), row.runs]
            for key in keys:
                value = row.values.get(key)
                if isinstance(value, Summary):
                    line += [f"{value.mean:.6g}", "" if value.ci is None else f"{value.ci:.6g}"]
                else:
                    line += ["" if value is None else f"{value:.6g}", ""]
            writer.writerow(line)
    return out.getvalue()


def _with_shots(row: TableRow, shot_rows: Mapping[str, TableRow]) -> TableRow:
    """The CSV row of a group: its main metrics and, where it has them, its shot-group metrics."""
    shot_row = shot_rows.get(row.label)
    if shot_row is None:
        return row
    return TableRow(row.label, {**row.cells, **shot_row.cells}, {**row.values, **shot_row.values}, row.runs)


def make_report(inputs: Iterable[str | Path], *, paper: bool = False, include_crm: bool = True,
                by_model: bool = True, keys: Sequence[str] = METRIC_KEYS) -> tuple[str, str]:
    """Markdown and CSV text for every dataset found under ``inputs``."""
    results = [r for path in find_metric_files(inputs) for r in load_run(path, include_crm=include_crm)]
    by_dataset: dict[str, list[RunResult]] = {}
    for result in results:
        by_dataset.setdefault(result.dataset, []).append(result)
    tables = {dataset: build_table(group_runs(runs, by_model), keys, paper) for dataset, runs in sorted(by_dataset.items())}
    markdown = "\n".join(markdown_table(dataset, rows, keys) for dataset, rows in tables.items())
    shot_keys = [k for k in SHOT_KEYS if any(k in r.metrics for r in results)]
    if shot_keys:
        shot_tables = {dataset: build_table(group_runs([r for r in runs if any(k in r.metrics for k in shot_keys)],
                                                       by_model), shot_keys)
                       for dataset, runs in sorted(by_dataset.items())
                       if any(k in r.metrics for r in runs for k in shot_keys)}
        markdown += "\n" + "\n".join(markdown_table(f"{dataset} by shot group", rows, shot_keys)
                                      for dataset, rows in shot_tables.items())
        tables = {d: [_with_shots(row, {r.label: r for r in shot_tables.get(d, [])}) for row in rows]
                  for d, rows in tables.items()}
        keys = (*keys, *shot_keys)
    selective_keys = [k for k in SELECTIVE_KEYS if any(k in r.metrics for r in results)]
    if selective_keys:
        selective_tables = {dataset: build_table(group_runs([r for r in runs if any(k in r.metrics
                                                                                       for k in selective_keys)],
                                                            by_model), selective_keys)
                            for dataset, runs in sorted(by_dataset.items())
                            if any(k in r.metrics for r in runs for k in selective_keys)}
        markdown += "\n" + "\n".join(markdown_table(f"{dataset} hierarchical selective", rows, selective_keys,
                                                     digits=4) for dataset, rows in selective_tables.items())
        tables = {d: [_with_shots(row, {r.label: r for r in selective_tables.get(d, [])}) for row in rows]
                  for d, rows in tables.items()}
        keys = (*keys, *selective_keys)
    note = ("\nMean ± t-based 95% confidence interval over seeds (t_{0.975,n−1}·s/√n); "
            "`+crm`: the same model decoded with CRM (argmin of expected hierarchical distance).\n")
    if shot_keys:
        note += ("Shot groups by training images per class: many > 100, medium 20–100, few < 20 (plain decoding).\n")
    if selective_keys:
        note += ("Hierarchical selective: climbing from the prediction to the first ancestor with probability ≥ θ "
                 "over all θ; hAURC = area under risk vs coverage (coverage = 1 − ln|leaves| / ln K; lower is "
                 "better); coverage@A = the largest coverage with accuracy ≥ A (docs/PREDICTION.md).\n")
    return markdown + note, csv_table(tables, keys)
