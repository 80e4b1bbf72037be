"""The demo's results in the docs: one rendered block, written to ``docs/demo/results.md`` and into the README.

``make demo`` (``python -m haf.reporting.demo --update-docs``) renders its comparison table, the seed-paired
differences, the machine that ran it and the wall time into one Markdown block (:func:`render_demo_results`), and
writes that same block to both files (:func:`write_demo_docs`): the README's copy sits between the
:data:`START` / :data:`END` comment markers, so the README can never state other numbers than the results file.
The plots the run drew are copied beside the results file.
"""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

__all__ = ["END", "PLOT_NAMES", "README", "RESULTS_DOC", "START", "Machine", "check_docs_root", "extract_block",
           "format_duration", "render_demo_results", "replace_block", "this_machine", "write_demo_docs"]

START = "<!-- demo-results:start -->"
END = "<!-- demo-results:end -->"
NOTICE = "<!-- written by `make demo` (haf/reporting/demo_doc.py) from one run: do not edit by hand -->"
RESULTS_DOC = Path("docs/demo/results.md")  # relative to the repository root
README = Path("README.md")
PLOT_NAMES = ("frame_vs_hierarchy.png", "hierdist_at_k.png", "training_curves.png", "neural_collapse.png",
              "risk_coverage.png")
RESULTS_TITLE = "# The demo's results (`make demo`)"


@dataclass(frozen=True)
class Machine:
    """What produced a result: enough to compare timings and to rerun on the same kind of machine."""

    cpu: str
    cores: int  # logical CPUs of the machine
    usable_cores: int  # those this process may run on (affinity, container limits)
    gpu: str | None  # the GPU the runs trained on, None for CPU runs
    torch: str
    python: str
    system: str

    def describe(self) -> str:
        device = f"GPU {self.gpu}" if self.gpu else "no GPU (CPU training)"
        return (f"{self.cpu}, {self.cores} logical cores ({self.usable_cores} usable), {device}; torch {self.torch}, "
                f"Python {self.python}, {self.system}")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "cpu model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def this_machine(gpu: bool) -> Machine:
    """This machine; ``gpu``: the runs trained on CUDA device 0 (its name is recorded)."""
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    return Machine(cpu=_cpu_model(), cores=os.cpu_count() or usable, usable_cores=usable,
                   gpu=torch.cuda.get_device_name(0) if gpu else None, torch=torch.__version__,
                   python=platform.python_version(), system=f"{platform.system()} {platform.release()}")


def format_duration(seconds: float) -> str:
    """``2 min 50 s`` (``45 s`` under a minute, ``1 h 02 min`` from an hour)."""
    if seconds < 0 or seconds != seconds:
        raise ValueError(f"a duration must be a non-negative number of seconds, got {seconds}")
    total = int(round(seconds))
    if total < 60:
        return f"{total} s"
    if total < 3600:
        return f"{total // 60} min {total % 60:02d} s"
    return f"{total // 3600} h {total % 3600 // 60:02d} min"


def render_demo_results(table: str, differences: str, machine: Machine | None, *, wall_seconds: float | None,
                        runs_trained: int, runs_total: int, date: str, schedule: str = "") -> str:
    """The block, markers included: the report's table (its ``#`` heading dropped: the documents give their own),
    the seed-paired differences, then which machine produced it, when, and in what wall time (``schedule``: how
    the runs shared the machine, e.g. "2 at a time, 1 CPU thread each")."""
    lines = table.strip().splitlines()
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    parts = [f"{START}\n{NOTICE}", "\n".join(lines).strip()]
    if differences.strip():
        parts.append("```\n" + differences.strip() + "\n```")
    if machine is None or wall_seconds is None:
        produced = "Produced by an earlier `make demo` that did not record its machine and wall time."
    else:
        reused = "" if runs_trained == runs_total else f"; {runs_total - runs_trained} finished run(s) reused"
        shared = f", {schedule}" if schedule and runs_trained else ""
        produced = (f"Produced by `make demo` on {date}: {machine.describe()}. Wall time "
                    f"{format_duration(wall_seconds)} ({runs_trained} of {runs_total} runs trained{shared}{reused}).")
    parts += [produced, END]
    return "\n\n".join(parts) + "\n"


def _span(text: str, source: str) -> tuple[int, int]:
    starts, ends = text.count(START), text.count(END)
    if starts != 1 or ends != 1:
        raise ValueError(f"{source}: expected one demo-results block ({START} ... {END}), found {starts} start and "
                         f"{ends} end marker(s)")
    start, end = text.index(START), text.index(END) + len(END)
    if end < start:
        raise ValueError(f"{source}: the demo-results end marker comes before the start marker")
    return start, end


def extract_block(text: str, source: str) -> str:
    """The block (markers included) in ``text``; ValueError naming ``source`` when it has not exactly one."""
    start, end = _span(text, source)
    return text[start:end] + "\n"


def replace_block(text: str, block: str, source: str) -> str:
    """``text`` with its block replaced by ``block`` (which carries its own markers)."""
    start, end = _span(text, source)
    return text[:start] + block.rstrip("\n") + text[end:]


def check_docs_root(root: Path) -> Path:
    """The README under ``root``, checked to hold one demo-results block (before a demo spends its time)."""
    readme = root / README
    if not readme.is_file():
        raise FileNotFoundError(f"README not found: {readme} (the docs root must be the repository root)")
    _span(readme.read_text(encoding="utf-8"), str(readme))
    return readme


def write_demo_docs(root: Path, block: str, plots: Mapping[str, Path] | None = None) -> list[Path]:
    """Write ``block`` as ``docs/demo/results.md`` and into the README under ``root`` (each atomically), and copy
    the plots named in :data:`PLOT_NAMES` beside the results file. Returns the files written."""
    from haf.safe_files import atomic_copy, atomic_write_text

    readme = check_docs_root(root)
    new_readme = replace_block(readme.read_text(encoding="utf-8"), block, str(readme))
    results = root / RESULTS_DOC
    results.parent.mkdir(parents=True, exist_ok=True)
    written = [atomic_write_text(results, f"{RESULTS_TITLE}\n\n{block}"), atomic_write_text(readme, new_readme)]
    for path in (plots or {}).values():
        if Path(path).name in PLOT_NAMES:
            written.append(atomic_copy(path, results.parent / Path(path).name))
    return written
