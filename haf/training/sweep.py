"""A sweep: the grid config × seed run as one training process per run, resumable.

Each run is ``haf train --config CONFIG --set seed=S [--set ...] --output-dir ROOT/<dataset>/<stem>-seed<S>``
(the layout of :func:`haf.training.run_folder.default_output_dir` under ROOT). A run folder with ``metrics.json``
is finished — the training loop writes it atomically as its very last step, after the test — and is skipped; any
other run is started with ``--resume``, which continues a killed run from its ``last.pt`` (and starts from
scratch where there is none). With several visible GPUs the runs go one per GPU in parallel
(``CUDA_VISIBLE_DEVICES`` set per child process); otherwise one after the other. docs/ARCHITECTURE.md describes
the run folder.
"""
from __future__ import annotations

import logging
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from haf.training.run_folder import CONFIG_NAME, LAST_NAME, METRICS_NAME

SWEEP_LOG_NAME = "sweep.log"  # a run's stdout + stderr under the sweep, appended per attempt


@dataclass(frozen=True)
class SweepRun:
    config: str  # the config's name or path, as given
    seed: int
    output_dir: Path
    overrides: tuple[str, ...]

    @property
    def state(self) -> str:
        """``finished`` (metrics.json written), ``partial`` (a started run: resumed) or ``new``."""
        if (self.output_dir / METRICS_NAME).is_file():
            return "finished"
        if (self.output_dir / LAST_NAME).is_file() or (self.output_dir / CONFIG_NAME).is_file():
            return "partial"
        return "new"

    def train_arguments(self) -> list[str]:
        """The arguments after ``haf train`` (``--resume`` always: it starts from scratch without a last.pt)."""
        arguments = ["--config", self.config, "--set", f"seed={self.seed}"]
        for override in self.overrides:
            arguments += ["--set", override]
        return arguments + ["--output-dir", str(self.output_dir), "--resume"]

    def shell_command(self) -> str:
        return shlex.join(["haf", "train", *self.train_arguments()])


def parse_seeds(text: str) -> list[int]:
    """``"0-4"`` → [0, 1, 2, 3, 4]; ``"0,2,7"`` and mixtures (``"0-2,5"``) too; each seed once, in order."""
    seeds: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if match is None or (match.group(2) is not None and int(match.group(2)) < int(match.group(1))):
            raise ValueError(f"--seeds: {part.strip()!r} is not a seed >= 0 or a range FIRST-LAST (in {text!r})")
        first = int(match.group(1))
        last = first if match.group(2) is None else int(match.group(2))
        seeds += [seed for seed in range(first, last + 1) if seed not in seeds]
    return seeds


def plan_sweep(configs: Sequence[str], seeds: Sequence[int], output_root: str | Path,
               overrides: Sequence[str] = ()) -> list[SweepRun]:
    """Every (config, seed), configs in the given order; each config is loaded (and so validated) once."""
    from haf.training.run_config import load_config

    if not configs:
        raise ValueError("haf sweep needs at least one config")
    if any(override.split("=", 1)[0].strip() == "seed" for override in overrides):
        raise ValueError("--set seed=...: the sweep sets each run's seed; give them with --seeds")
    runs: list[SweepRun] = []
    folders: dict[Path, str] = {}
    for name in configs:
        config = load_config(name, list(overrides))
        if config.output_dir is not None:
            logging.getLogger(__name__).warning(
                f"haf sweep: {name}: output_dir {config.output_dir} is replaced by the sweep's folder")
        stem = Path(config.source).stem if config.source else Path(name).stem
        for seed in seeds:
            folder = Path(output_root) / config.dataset.kind / f"{stem}-seed{seed}"
            if folder in folders:
                raise ValueError(f"{name} and {folders[folder]} would both write {folder}: give the configs "
                                 "distinct file names")
            folders[folder] = name
            runs.append(SweepRun(name, seed, folder, tuple(overrides)))
    return runs


def visible_gpus() -> list[str]:
    """The GPUs a child may be given: ``CUDA_VISIBLE_DEVICES`` when set, else every device torch sees."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a requirement
        return []
    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def _child_command(run: SweepRun) -> list[str]:
    return [sys.executable, "-m", "haf.cli", "train", *run.train_arguments()]


def _start(run: SweepRun, device: str | None) -> subprocess.Popen:
    run.output_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
    log = open(run.output_dir / SWEEP_LOG_NAME, "a", buffering=1)
    log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(_child_command(run))}\n")
    try:
        return subprocess.Popen(_child_command(run), stdout=log, stderr=subprocess.STDOUT, env=env)
    finally:
        log.close()  # the child holds its own descriptor


def run_sweep(runs: Sequence[SweepRun], *, devices: Sequence[str] | None = None,
              report: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> list[SweepRun]:
    """Run every unfinished run (one per device in parallel when there are several); return the failed ones."""
    devices = list(visible_gpus() if devices is None else devices)
    slots: list[str | None] = devices if len(devices) > 1 else [None]
    todo = []
    for index, run in enumerate(runs, 1):
        state = run.state
        if state == "finished":
            report(f"[{index}/{len(runs)}] {run.config} seed {run.seed}: finished, skipped ({run.output_dir})")
        else:
            todo.append((index, run, state))
    running: dict[str | None, tuple[int, SweepRun, subprocess.Popen]] = {}
    failed: list[SweepRun] = []
    try:
        while todo or running:
            free = [slot for slot in slots if slot not in running]
            while todo and free:
                index, run, state = todo.pop(0)
                slot = free.pop(0)
                where = f" on GPU {slot}" if slot is not None else ""
                verb = "resuming" if state == "partial" else "starting"
                report(f"[{index}/{len(runs)}] {run.config} seed {run.seed}: {verb}{where} → {run.output_dir}")
                running[slot] = (index, run, _start(run, slot))
            time.sleep(0.2)
            for slot, (index, run, process) in list(running.items()):
                code = process.poll()
                if code is None:
                    continue
                del running[slot]
                if code == 0 and run.state == "finished":
                    report(f"[{index}/{len(runs)}] {run.config} seed {run.seed}: done")
                else:
                    failed.append(run)
                    report(f"[{index}/{len(runs)}] {run.config} seed {run.seed}: failed (exit {code}; log "
                           f"{run.output_dir / SWEEP_LOG_NAME})")
    finally:
        for _, _, process in running.values():  # interrupted: no orphaned training processes
            process.terminate()
        for _, _, process in running.values():
            process.wait()
    return failed
