"""`make demo` / ``python -m haf.reporting.demo``: HAFrame against its cross-entropy baseline, end to end, anywhere.

On a fresh checkout, CPU only: generate the embedded hierarchical image dataset (``pipelines/demo/dataset.py``),
train cross-entropy with the type-I head (``configs/demo-cross-entropy.yaml``) and HAFrame with the type-II head
(``configs/demo.yaml``) for several seeds (``demo_runs``), then print the comparison table
(:func:`haf.reporting.report.make_report`: mean ± t-based 95% CI over seeds, CE also decoded with CRM) and the
seed-paired differences HAFrame − CE, and draw the frame beside the hierarchy, HierDist@k for every k = 1 … K, the
training curves and the neural-collapse curves when the runs logged them (``demo_results``). Re-running is cheap
(finished runs are kept; ``--force`` retrains). ``--update-docs`` (``make demo``) also writes the results, the
machine and the wall time to docs/demo/results.md and the README (``demo_doc``). On a machine with a GPU the
configs' ``auto`` settings train there, with the fused Triton loss and DALI input when installed. The output
folder's layout: docs/ARCHITECTURE.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

from haf.training.run_folder import METRICS_NAME

from .demo_results import (  # noqa: F401 - re-exported: the public names of haf.reporting.demo
    CURVE_NAME,
    frame_of,
    hierdist_curve,
    paired_differences,
    selective_section,
    test_scores,
    write_plots,
)
from .demo_runs import (  # noqa: F401 - re-exported
    CONFIG_DIR,
    DEMO_CONFIGS,
    PACKAGE_PARENT,
    TRAIN_SCRIPT,
    PlannedRun,
    accelerator_overrides,
    ensure_dataset,
    plan_runs,
    resolved_config,
    run_state,
    train,
    train_all,
    usable_cpus,
)

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
    parser.add_argument("--update-docs", action="store_true",
                        help="also write the results (with this machine and the wall time) to docs/demo/results.md "
                             "and the README's demo block, and copy the plots to docs/demo/ (`make demo` does)")
    parser.add_argument("--docs-root", default=str(PACKAGE_PARENT),
                        help="the repository whose docs --update-docs writes (default: this checkout)")
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

    if args.update_docs:  # before any training: a wrong docs root must not cost a whole demo
        from haf.reporting.demo_doc import check_docs_root

        try:
            check_docs_root(Path(args.docs_root))
        except (ValueError, OSError) as error:
            print(f"haf.reporting.demo: error: {error}", file=sys.stderr)
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
    from haf.safe_files import atomic_write_text

    markdown, csv_text = make_report([run.output_dir / METRICS_NAME for run in runs])
    differences = paired_differences(runs)
    atomic_write_text(output_dir / "results.md",
                      markdown + ("\n```\n" + differences + "\n```\n" if differences else ""))
    atomic_write_text(output_dir / "results.csv", csv_text)
    plot_start = time.perf_counter()
    written = write_plots(runs, data, output_dir / "plots")
    selective_text, selective_plots = selective_section(runs, output_dir / "plots")
    written.update(selective_plots)
    if selective_text:
        atomic_write_text(output_dir / "results.md", (output_dir / "results.md").read_text()
                          + "\n```\n" + selective_text + "\n```\n")
    plot_seconds = time.perf_counter() - plot_start

    print()
    print(markdown)
    if differences:
        print(differences)
        print()
    if selective_text:
        print(selective_text)
        print()
    print(f"table:  {output_dir / 'results.md'}, {output_dir / 'results.csv'}")
    for name, path in written.items():
        print(f"plot:   {path}  ({name})")
    print(f"runs:   {output_dir}/<method>/seed<k>/ (metrics.json, metrics.jsonl, best.pt; "
          f"tensorboard --logdir {output_dir})")
    trained = sum(timings.values())
    wall_seconds = time.perf_counter() - started
    if args.update_docs:
        import datetime

        from haf.reporting.demo_doc import render_demo_results, this_machine, write_demo_docs

        schedule = f"{jobs} at a time" + (f", {threads} CPU thread(s) each" if threads else "")
        block = render_demo_results(markdown, differences, this_machine(gpu=on_gpu), wall_seconds=wall_seconds,
                                    runs_trained=len(timings), runs_total=len(runs), schedule=schedule,
                                    date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"))
        try:
            for path in write_demo_docs(Path(args.docs_root), block, written):
                print(f"docs:   {path}")
        except (ValueError, OSError) as error:
            print(f"haf.reporting.demo: error: {error}", file=sys.stderr)
            return 2
    print(f"time:   {wall_seconds:.0f} s in all ({len(timings)} run(s) trained, {trained:.0f} s of "
          f"run time; {len(runs) - len(timings)} up to date; dataset {data_seconds:.0f} s; plots {plot_seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
