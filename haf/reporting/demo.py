"""`make demo` / ``python -m haf.reporting.demo``: HAFrame against its cross-entropy baseline, end to end, anywhere.

On a fresh checkout, CPU only: generate the embedded hierarchical image dataset (``pipelines/demo_dataset.py``),
train cross-entropy with the type-I head (``configs/demo-cross-entropy.yaml``) and HAFrame with the type-II head
(``configs/demo.yaml``) for several seeds through the one training entry point (``haf/train.py``, one subprocess
per run, so no state leaks from one run into the next), then

* print the comparison table (:func:`haf.reporting.report.make_report`: mean ± t-based 95% CI over seeds, CE also decoded
  with CRM) and the seed-paired differences HAFrame − CE,
* draw the frame beside the hierarchy, HierDist@k for every k = 1 … K (from each run's test-set scores), the
  training curves, and the neural-collapse curves when the runs logged them.

Layout (``--output-dir``, default ``runs/make-demo``)::

    <method>/seed<k>/          one training run (metrics.json, metrics.jsonl, best.pt, ...; see haf.training.loop)
    <method>/seed<k>/hierdist_curve.json   HierDist@k, k = 1 … K, of the tested checkpoint (a cache for re-runs)
    results.md, results.csv    the comparison table
    plots/*.png                the figures

On a CPU the runs go one per usable core at a time, each with one intra-op thread (2 cores: two runs at once).
Re-running is cheap: a run whose ``metrics.json`` exists and whose resolved config equals the one it would run
now is kept (``--force`` retrains); an interrupted run continues from its ``last.pt``. On a machine with a GPU
the configs' ``train.device: auto`` trains there, the HAFrame loss dispatches to the fused Triton kernel
(``backend: auto`` on CUDA tensors), and ``data.backend: auto`` switches the input pipeline to DALI when it is
installed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from haf.training.run_config import shipped_dir
from haf.training.run_folder import CONFIG_NAME, LAST_NAME, LOG_NAME, METRICS_NAME

PACKAGE_PARENT = Path(__file__).resolve().parents[2]  # the folder holding the haf package (a checkout, site-packages)
CONFIG_DIR = shipped_dir("configs")
TRAIN_SCRIPT = Path(__file__).resolve().parents[1] / "train.py"

# Method name (as haf.reporting.report labels it) → config. The baseline first: it is the reference the table compares to.
DEMO_CONFIGS: dict[str, Path] = {
    "cross-entropy": CONFIG_DIR / "demo-cross-entropy.yaml",
    "haframe": CONFIG_DIR / "demo.yaml",
}
DEFAULT_SEEDS = (0, 1, 2)  # at least 3 seeds: the fewest that give a t-based interval any meaning
DEFAULT_OUTPUT_DIR = "runs/make-demo"  # apart from single runs of configs/demo*.yaml: runs/demo/<config>-seed<k>
QUICK_OUTPUT_DIR = "runs/demo-quick"  # never mixed with the full demo's runs (those would then be "up to date")

# Settings every demo run gets on top of its config (same for both methods, so the comparison stays fair). The
# budget (30 epochs) and its measured cost are in configs/demo.yaml.
# No progress bars: several runs' bars interleaved with the per-epoch lines are unreadable in a `make` log.
COMMON_OVERRIDES: tuple[str, ...] = ("logging.progress=false",)

# --quick: a smoke run of the whole pipeline, not a measurement. A dataset of 36 classes (HierDist@20 needs
# K >= 20) with a handful of images each (generated in about a second), one epoch of a few steps.
QUICK_DATASET = {"train_per_class": 4, "val_per_class": 2, "test_per_class": 2}
QUICK_OVERRIDES: tuple[str, ...] = (
    "train.epochs=1",
    "train.batch_size=32",
    "train.max_steps_per_epoch=3",
    "logging.tensorboard=false",
    "logging.log_every=1",
)

CURVE_NAME = "hierdist_curve.json"


@dataclass(frozen=True)
class PlannedRun:
    method: str
    seed: int
    config: Path
    output_dir: Path
    overrides: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.method} seed {self.seed}"


# ------------------------------------------------------------------------------------------------ planning
def accelerator_overrides() -> tuple[list[str], str]:
    """Overrides for a GPU machine, and a line saying what the runs will use.

    The configs already choose the fast paths themselves: ``train.device: auto`` trains on the GPU, the HAFrame
    loss's ``backend: auto`` picks the fused Triton kernel for CUDA tensors, and ``data.backend: auto`` picks DALI
    when it imports (:func:`haf.pipelines.backends.resolve_data_backend`). What is left is DALI's CPU threads.
    """
    import torch

    from haf.pipelines.backends import resolve_data_backend

    if not torch.cuda.is_available():
        return [], "device: CPU (PyTorch DataLoader, reference HAFrame loss)"
    name = torch.cuda.get_device_name(0)
    if resolve_data_backend("auto", "cuda") != "dali":
        return [], f"device: {name} (fused Triton HAFrame loss; DALI not installed: PyTorch DataLoader)"
    # DALI's CPU stage threads (decode is on the GPU, "mixed"); a few suffice for 32-px images.
    threads = max(1, min(4, usable_cpus()))
    return [f"data.workers={threads}"], f"device: {name} (fused Triton HAFrame loss, DALI input)"


def plan_runs(output_dir: Path, seeds: Sequence[int], overrides: Sequence[str]) -> list[PlannedRun]:
    return [PlannedRun(method, seed, config, output_dir / method / f"seed{seed}", (*overrides, f"seed={seed}"))
            for seed in seeds for method, config in DEMO_CONFIGS.items()]


def resolved_config(run: PlannedRun) -> Any:
    from haf.training.run_config import load_config

    return load_config(run.config, run.overrides, output_dir=str(run.output_dir))


def run_state(run: PlannedRun) -> str:
    """"done" (metrics.json of this very config), "resume" (interrupted, same config) or "new"."""
    import yaml

    config_file = run.output_dir / CONFIG_NAME
    if not config_file.is_file():
        return "new"
    stored = yaml.safe_load(config_file.read_text()) or {}
    wanted = resolved_config(run).to_dict()
    # Where the folder is does not change what was trained (a moved or differently spelled --output-dir).
    stored.pop("output_dir", None)
    wanted.pop("output_dir", None)
    if stored != wanted:
        return "new"  # trained with other settings (an edited config, other overrides): retrain
    if (run.output_dir / METRICS_NAME).is_file():
        return "done"
    return "resume" if (run.output_dir / LAST_NAME).is_file() else "new"


def ensure_dataset(config_path: Path, overrides: Sequence[str]) -> tuple[Any, str, float]:
    """Generate (first time only) and read the demo dataset once, before any run needs it: (data, root, seconds)."""
    from haf.training.run_config import load_config
    from haf.training.assemble import prepare_dataset

    start = time.perf_counter()
    config = load_config(config_path, overrides)
    data = prepare_dataset(config)
    return data, config.dataset.root, time.perf_counter() - start


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def train(run: PlannedRun, state: str, *, log_file: Path | None, threads: int | None) -> None:
    """One run through the public entry point, in its own process; output to ``log_file`` or this terminal."""
    if state == "new" and run.output_dir.exists():
        shutil.rmtree(run.output_dir)  # stale (other config) or forced: a fresh metrics.jsonl, no old best.pt
    command = [sys.executable, str(TRAIN_SCRIPT), "--config", str(run.config), "--output-dir", str(run.output_dir)]
    for override in run.overrides:
        command += ["--set", override]
    if state == "resume":
        command.append("--resume")
    env = dict(os.environ)
    # The child must import this very checkout's `haf` whatever the caller's working directory.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_PARENT), env.get("PYTHONPATH")) if p)
    if threads is not None and "OMP_NUM_THREADS" not in os.environ:
        # One intra-op thread per concurrent CPU run: OpenMP threads that outnumber the cores spin-wait for each
        # other (measured here: 2 threads on a busy 2-core machine cost ~6x the CPU time of 1 thread).
        env["OMP_NUM_THREADS"] = str(threads)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "w") as log:
            result = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    else:
        result = subprocess.run(command, env=env)
    if result.returncode != 0:
        tail = ""
        if log_file is not None:
            tail = "\n" + "\n".join(log_file.read_text(errors="replace").splitlines()[-30:])
        where = f" (log: {log_file})" if log_file is not None else ""
        raise RuntimeError(f"training {run.label} failed with exit code {result.returncode}{where}: "
                           f"{' '.join(command)}{tail}")
    if not (run.output_dir / METRICS_NAME).is_file():
        raise RuntimeError(f"training {run.label} exited 0 but wrote no {run.output_dir / METRICS_NAME}")


def train_all(pending: Sequence[tuple[int, PlannedRun, str]], total: int, *, jobs: int, threads: int | None,
              quiet: bool) -> dict[PlannedRun, float]:
    """Train the pending runs, ``jobs`` at a time; returns each run's wall time. Stops at the first failure."""
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    import threading

    timings: dict[PlannedRun, float] = {}
    print_lock = threading.Lock()  # print() writes the text and the newline separately: lines of two runs interleave

    def say(line: str) -> None:
        with print_lock:
            print(line, flush=True)

    def one(index: int, run: PlannedRun, state: str) -> None:
        # Concurrent runs write their output to a log each (interleaved output would be unreadable).
        log_file = run.output_dir.parent / f"seed{run.seed}.log" if (jobs > 1 or quiet) else None
        what = "resuming" if state == "resume" else "training"
        say(f"[{index}/{total}] {what} {run.label} → {run.output_dir}"
            + (f" (log: {log_file})" if log_file is not None else ""))
        start = time.perf_counter()
        train(run, state, log_file=log_file, threads=threads)
        timings[run] = time.perf_counter() - start
        say(f"[{index}/{total}] {run.label} done in {timings[run]:.0f} s")

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(one, *item) for item in pending]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in done if f.exception() is not None]
        if failed:
            for future in futures:
                future.cancel()
            raise failed[0].exception()
    return timings


# ------------------------------------------------------------------------------------------- HierDist@k curves
def test_scores(run_dir: Path, data: Any) -> dict[str, Any]:
    """Class scores of the run's tested checkpoint on the test split (CPU), and CRM scores for probabilistic methods.

    The run's metrics.json names the checkpoint it tested; the model is rebuilt from the config stored in it.
    """
    import torch

    from haf.training.checkpoints import load_checkpoint
    from haf.training.evaluation import method_supports_crm
    from haf.metrics import crm_scores
    from haf.pipelines import make_loader
    from haf.training.run_config import config_from_dict
    from haf.training.assemble import build_model

    record = json.loads((run_dir / METRICS_NAME).read_text())
    checkpoint = run_dir / record["run"]["checkpoint"]
    state = load_checkpoint(checkpoint, map_location="cpu")
    config = config_from_dict(state["config"], source=str(checkpoint))
    if list(state.get("classes") or data.dataset.classes) != list(data.dataset.classes):
        raise ValueError(f"{checkpoint}: trained on other classes than the demo dataset now holds; use --force")
    model = build_model(config, data.dataset, data.distances)
    model.load_state_dict(state["model"])
    model.eval()
    loader = make_loader(data.dataset, config.dataset.test_split, backend="torch", train=False,
                         batch_size=config.train.eval_batch_size, image_size=config.data.image_size, workers=0,
                         rank=0, world_size=1, seed=config.seed, device=torch.device("cpu"))
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


def hierdist_curve(run_dir: Path, data: Any) -> dict[str, dict[int, float]]:
    """{decoding: {k: HierDist@k}} for k = 1 … K, cached in the run folder next to the metrics it extends."""
    from haf.metrics import hierarchical_metrics

    cache = run_dir / CURVE_NAME
    metrics_mtime = (run_dir / METRICS_NAME).stat().st_mtime
    if cache.is_file() and cache.stat().st_mtime >= metrics_mtime:
        stored = json.loads(cache.read_text())
        return {name: {int(k): float(v) for k, v in points.items()} for name, points in stored.items()}
    result = test_scores(run_dir, data)
    ks = tuple(range(1, result["scores"].shape[1] + 1))
    curves = {}
    for name, scores in (("plain", result["scores"]), ("crm", result["crm"])):
        if scores is not None:
            metrics = hierarchical_metrics(scores, result["targets"], data.distances, ks=ks)
            curves[name] = {k: float(metrics[f"hierdist@{k}"]) for k in ks}
    cache.write_text(json.dumps(curves, indent=1) + "\n")
    return curves


# --------------------------------------------------------------------------------------------------- plots
def frame_of(run_dir: Path) -> tuple[Any, Any, list[str]]:
    """(W, distances, classes) of a HAFrame run's tested checkpoint: the very frame it was trained against."""
    from haf.training.checkpoints import load_checkpoint

    record = json.loads((run_dir / METRICS_NAME).read_text())
    state = load_checkpoint(run_dir / record["run"]["checkpoint"], map_location="cpu")
    frames = [value for key, value in state["model"].items() if key.split(".")[-1] == "frame"]
    if len(frames) != 1:
        raise ValueError(f"{run_dir}: expected one fixed-frame buffer in the checkpoint, found {len(frames)}")
    return frames[0].double().numpy(), state["distances"].numpy(), list(state["classes"])


def write_plots(runs: Sequence[PlannedRun], data: Any, plot_dir: Path) -> dict[str, Path]:
    from haf.reporting import plots
    from haf.reporting.report import summarize

    written: dict[str, Path] = {}
    frame_runs = [run for run in runs if run.method == "haframe"]
    if frame_runs:
        run = min(frame_runs, key=lambda r: r.seed)
        frame, distances, classes = frame_of(run.output_dir)
        gamma = resolved_config(run).method.options.get("gamma")
        path = plot_dir / "frame_vs_hierarchy.png"
        plots.plot_distance_vs_gram(distances, frame, path, classes=classes,
                                    title=f"demo hierarchy ({len(classes)} classes) and the HAFrame of "
                                          f"{run.label} (γ = {gamma:g})")
        written["frame vs hierarchy"] = path

    values: dict[str, dict[int, list[float]]] = {}
    for run in runs:
        for decoding, points in hierdist_curve(run.output_dir, data).items():
            label = run.method if decoding == "plain" else f"{run.method}+{decoding}"
            for k, value in points.items():
                values.setdefault(label, {}).setdefault(k, []).append(value)
    curves = {label: {k: (summarize(v).mean, summarize(v).ci) for k, v in by_k.items()}
              for label, by_k in values.items()}
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
        pairs = [metrics[(method, s)].get(key) for s in seeds], [metrics[(baseline, s)].get(key) for s in seeds]
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


# ------------------------------------------------------------------------------------------------------ CLI
def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m haf.reporting.demo",
        description="Train cross-entropy (type-I) and HAFrame on the generated demo dataset over several seeds, "
                    "print the comparison table and write the plots.")
    parser.add_argument("--output-dir", default=None,
                        help=f"runs, table and plots (default {DEFAULT_OUTPUT_DIR}; {QUICK_OUTPUT_DIR} with --quick)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help=f"seeds per method (default {' '.join(map(str, DEFAULT_SEEDS))}; 0 with --quick)")
    parser.add_argument("--data-root", default=None, help="where the demo dataset is (generated) instead of the "
                        "configs' dataset.root (default: OUTPUT_DIR/data with --quick)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every run, e.g. --set train.epochs=20 (repeatable)")
    parser.add_argument("--force", action="store_true", help="retrain runs that are already done")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke test of the whole pipeline: tiny dataset, one epoch of a few steps, seed 0")
    parser.add_argument("--jobs", type=int, default=None,
                        help="CPU runs trained at once (default: one per usable core; GPU runs go one at a time)")
    parser.add_argument("--quiet", action="store_true", help="write the training runs' own output to log files only")
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    started = time.perf_counter()
    output_dir = Path(args.output_dir or (QUICK_OUTPUT_DIR if args.quick else DEFAULT_OUTPUT_DIR))
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else list(DEFAULT_SEEDS))
    if len(set(seeds)) != len(seeds) or any(seed < 0 for seed in seeds):
        print(f"haf.reporting.demo: error: --seeds must be distinct and >= 0, got {seeds}", file=sys.stderr)
        return 2
    if args.jobs is not None and args.jobs < 1:
        print(f"haf.reporting.demo: error: --jobs must be >= 1, got {args.jobs}", file=sys.stderr)
        return 2

    overrides = list(COMMON_OVERRIDES)
    if args.cpu:
        overrides.append("train.device=cpu")
        on_gpu, device_line = False, "device: CPU (--cpu)"
    else:
        extra, device_line = accelerator_overrides()
        overrides += extra
        on_gpu = not device_line.startswith("device: CPU")
    data_root = args.data_root or (str(output_dir / "data") if args.quick else None)
    if args.quick:
        overrides += [*QUICK_OVERRIDES, "dataset.options=" + json.dumps(QUICK_DATASET)]
    if data_root is not None:
        overrides.append(f"dataset.root={data_root}")
    overrides += args.overrides  # the user's last: they win

    try:
        data, data_root, data_seconds = ensure_dataset(DEMO_CONFIGS["haframe"], overrides)
        runs = plan_runs(output_dir, seeds, overrides)
        states = {run: ("new" if args.force else run_state(run)) for run in runs}
    except (ValueError, FileNotFoundError) as error:
        print(f"haf.reporting.demo: error: {error}", file=sys.stderr)
        return 2
    print(f"demo dataset: {data_root} "
          f"({len(data.dataset.classes)} classes; ready in {data_seconds:.1f} s)")
    print(device_line)

    pending = []
    for index, run in enumerate(runs, start=1):
        if states[run] == "done":
            print(f"[{index}/{len(runs)}] {run.label}: up to date in {run.output_dir}", flush=True)
        else:
            pending.append((index, run, states[run]))
    if on_gpu:
        jobs, threads = 1, None  # one GPU: runs one after another, each with the default CPU threads
    else:
        jobs = args.jobs or usable_cpus()
        jobs = max(1, min(jobs, len(pending)))
        threads = max(1, usable_cpus() // jobs)
    if pending:
        print(f"{len(pending)} run(s) to train, {jobs} at a time" + (f", {threads} CPU thread(s) each" if threads else ""),
              flush=True)
    try:
        timings = train_all(pending, len(runs), jobs=jobs, threads=threads, quiet=args.quiet)
    except RuntimeError as error:
        print(f"haf.reporting.demo: error: {error}", file=sys.stderr)
        return 1

    from haf.reporting.report import make_report

    markdown, csv_text = make_report([run.output_dir / METRICS_NAME for run in runs])
    differences = paired_differences(runs)
    (output_dir / "results.md").write_text(markdown + ("\n```\n" + differences + "\n```\n" if differences else ""))
    (output_dir / "results.csv").write_text(csv_text)
    plot_start = time.perf_counter()
    written = write_plots(runs, data, output_dir / "plots")
    plot_seconds = time.perf_counter() - plot_start

    print()
    print(markdown)
    if differences:
        print(differences)
        print()
    print(f"table:  {output_dir / 'results.md'}, {output_dir / 'results.csv'}")
    for name, path in written.items():
        print(f"plot:   {path}  ({name})")
    print(f"runs:   {output_dir}/<method>/seed<k>/ (metrics.json, metrics.jsonl, best.pt; "
          f"tensorboard --logdir {output_dir})")
    trained = sum(timings.values())
    print(f"time:   {time.perf_counter() - started:.0f} s in all ({len(timings)} run(s) trained, {trained:.0f} s of "
          f"run time; {len(runs) - len(timings)} up to date; dataset {data_seconds:.0f} s; plots {plot_seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
