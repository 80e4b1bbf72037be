"""Named points of a checkpoint save and a log append where a test can kill the run (SIGKILL, as ``kill -9``).

Test-only: with ``HAF_CRASH_AT=NAME`` (or ``NAME@N`` for the N-th time the point is reached, default 1) in the
environment, the process sends itself SIGKILL at that point; nothing runs after it (no ``finally``, no cleanup),
which is what a kill or a power cut leaves. Unset, :func:`crash_point` is one dictionary lookup.
Points: ``checkpoint-temp-written``, ``last-replaced``, ``best-link-made``, ``best-replaced``, ``log-append``.
"""
from __future__ import annotations

import os
import signal

ENV = "HAF_CRASH_AT"
_reached: dict[str, int] = {}


def armed(name: str) -> bool:
    """Is ``name`` the point the environment names (whatever its count)?"""
    target = os.environ.get(ENV)
    return target is not None and target.split("@")[0] == name


def crash_point(name: str) -> None:
    if not armed(name):
        return
    target = os.environ[ENV]
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] == int(target.partition("@")[2] or 1):
        os.kill(os.getpid(), signal.SIGKILL)
