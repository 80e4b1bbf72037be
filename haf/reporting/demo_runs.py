"""Running the `make demo` experiment: plan one training run per (method, seed), train what is not done yet.

Each run goes through the one training entry point (``haf/train.py``), one subprocess per run, so no state leaks
from one run into the next. A run whose ``metrics.json`` exists and whose resolved config equals the one it would
run now is kept (:func:`run_state`); an interrupted run continues from its ``last.pt``. On a CPU the runs go one per
usable core at a time, each with one intra-op thread (2 cores: two runs at once); on a GPU one after another.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from haf.training.run_config import shipped_dir
from haf.training.run_folder import CONFIG_NAME, LAST_NAME, METRICS_NAME

PACKAGE_PARENT = Path(__file__).resolve().parents[2]  # the folder holding the haf package (a checkout, site-packages)
CONFIG_DIR = shipped_dir("configs")
TRAIN_SCRIPT = Path(__file__).resolve().parents[1] / "train.py"

# Method name (as haf.reporting.report labels it) → config. The baseline first: it is the reference the table compares to.
DEMO_CONFIGS: dict[str, Path] = {
    "cross-entropy": CONFIG_DIR / "demo-cross-entropy.yaml",
    "haframe": CONFIG_DIR / "demo.yaml",
}


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
    when it imports (:func:`haf.pipelines.loaders.backends.resolve_data_backend`). What is left is DALI's CPU threads.
    """
    import torch

    from haf.pipelines.loaders.backends import resolve_data_backend

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
    from haf.training.engine import with_resolved_engine
    from haf.training.run_config import load_config

    # As the run stores it: deepspeed.enabled auto decided for this launch (one process: the plain engine).
    return with_resolved_engine(load_config(run.config, run.overrides, output_dir=str(run.output_dir)))


def run_state(run: PlannedRun) -> str:
    """"done" (metrics.json of this very config), "resume" (interrupted, same config) or "new"."""
    from haf.training.yaml_load import load_yaml

    config_file = run.output_dir / CONFIG_NAME
    if not config_file.is_file():
        return "new"
    stored = load_yaml(config_file.read_text(), str(config_file)) or {}
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
    """Generate (first time only) and read the demo dataset once, before any run needs it: (data, root, seconds).

    The dataset is generated here explicitly (where ``--data-root``/``--quick`` put it): the reader itself
    generates only at the default cache location."""
    from dataclasses import fields

    from haf.pipelines import ensure_demo_dataset
    from haf.pipelines.demo.dataset import DemoSpec
    from haf.training.run_config import load_config
    from haf.training.assemble import prepare_dataset

    start = time.perf_counter()
    config = load_config(config_path, overrides)
    options = config.dataset.options
    spec = {f.name: options[f.name] for f in fields(DemoSpec) if f.name in options}
    ensure_demo_dataset(config.dataset.root, seed=options.get("seed", 0), **spec)
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
