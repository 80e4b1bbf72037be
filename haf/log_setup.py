"""How the tools talk: results on stdout, diagnostics on stderr through the ``haf`` logger, progress as a bar on a
terminal and as plain lines elsewhere.

:func:`configure_logging` is called once by each entry point (``haf``, ``haf/train.py``): INFO by default,
WARNING with ``--quiet``, DEBUG with ``--verbose``. Library modules log through ``logging.getLogger(__name__)``
(children of ``haf``) and never print diagnostics. :func:`progress_bar`: tqdm when stderr is a terminal; otherwise
:class:`LineProgress`, one line each time another tenth of the pass is done and at least ``HAF_PROGRESS_SECONDS``
(default 10) seconds have passed since the last, so logs hold no carriage returns.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Any, Callable

LOGGER_NAME = "haf"
DEFAULT_PROGRESS_SECONDS = 10.0


class _StderrHandler(logging.StreamHandler):
    """Writes to the *current* ``sys.stderr`` (redirected or captured later, as tests and notebooks do)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


class _Formatter(logging.Formatter):
    """INFO as the bare message; other levels prefixed, as a command-line tool writes them."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.levelno == logging.INFO:
            return message
        return f"{record.levelname.lower()}: {message}"


def add_verbosity_arguments(parser: argparse.ArgumentParser) -> None:
    """``-q/--quiet`` (warnings and errors only) and ``-v/--verbose`` (debug, and the libraries' INFO lines)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", help="print warnings and errors only (results still go "
                       "to stdout)")
    group.add_argument("-v", "--verbose", action="store_true", help="print debug messages too")


def verbosity_level(quiet: bool = False, verbose: bool = False) -> int:
    return logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO


def configure_logging(quiet: bool = False, verbose: bool = False) -> logging.Logger:
    """Route the ``haf`` logger to stderr at the chosen level (idempotent: a second call replaces the first)."""
    logger = logging.getLogger(LOGGER_NAME)
    for handler in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(_Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(verbosity_level(quiet, verbose))
    logger.propagate = False
    # DeepSpeed logs INFO lines on every start; shown under --verbose only (haf.training.engine.import_deepspeed).
    logging.getLogger("DeepSpeed").setLevel(logging.DEBUG if verbose else logging.WARNING)
    return logger


def progress_seconds() -> float:
    """``HAF_PROGRESS_SECONDS``: the least time between two plain progress lines."""
    value = os.environ.get("HAF_PROGRESS_SECONDS", "")
    try:
        return max(0.0, float(value)) if value else DEFAULT_PROGRESS_SECONDS
    except ValueError:
        return DEFAULT_PROGRESS_SECONDS


class LineProgress:
    """tqdm's ``update`` / ``set_postfix`` / ``close`` as whole log lines (for logs and pipes).

    A line is written when the count crosses another tenth of ``total`` and ``interval`` seconds have passed since
    the previous line (or the start); ``close`` writes the final count if any line was written, so a short pass is
    silent and a long one ends at 100%.
    """

    STEPS = 10

    def __init__(self, total: int, description: str, *, interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic, logger: logging.Logger | None = None) -> None:
        self.total, self.description = max(int(total), 0), description
        self.interval = progress_seconds() if interval is None else interval
        self.clock = clock
        self.logger = logger or logging.getLogger(f"{LOGGER_NAME}.progress")
        self.count, self.postfix = 0, ""
        self.start = self.last_time = clock()
        self.last_tenth, self.written = 0, 0

    def update(self, n: int = 1) -> None:
        self.count += n
        tenth = self.count * self.STEPS // self.total if self.total else self.STEPS
        now = self.clock()
        if tenth > self.last_tenth and now - self.last_time >= self.interval:
            self.last_tenth = tenth
            self._write(now)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{key} {value}" for key, value in values.items())

    def close(self) -> None:
        if self.written and self.last_written != self.count:
            self._write(self.clock())

    def _write(self, now: float) -> None:
        percent = f"{100 * self.count // self.total:3d}% " if self.total else ""
        rest = f", {self.postfix}" if self.postfix else ""
        self.logger.info(f"{self.description}: {percent}({self.count}/{self.total}){rest}, "
                         f"{now - self.start:.0f} s")
        self.last_time, self.written, self.last_written = now, self.written + 1, self.count


def progress_bar(total: int, description: str, enabled: bool, *, initial: int = 0, leave: bool = False,
                 unit: str = "it") -> Any:
    """A progress reporter with tqdm's interface on stderr, or None when disabled (callers check): a tqdm bar
    when stderr is a terminal, else :class:`LineProgress`. ``initial``: work already done (a resumed job)."""
    if not enabled:
        return None
    if not _is_terminal(sys.stderr):
        progress = LineProgress(total, description)
        progress.count = initial
        progress.last_tenth = initial * LineProgress.STEPS // max(total, 1)
        return progress
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, initial=initial, leave=leave, unit=unit, dynamic_ncols=True,
                file=sys.stderr)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
