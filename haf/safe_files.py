"""Writing a user's files without losing any: temporary name + rename, OS errors that name their path, and the
check that an output folder never resolves into an input folder.

``atomic_write(path, write)`` writes through ``write(handle)`` to a temporary file beside ``path``, fsyncs it and
renames it over ``path``, so a kill at any moment leaves the old file or the new one, never half of one.
``naming(path)`` re-raises an ``OSError`` without a file name (a ``write`` on a full disk has none) with ``path``.
``lies_within(path, folder)`` compares resolved paths (symlinks and ``..``) and, for bind mounts and other aliases,
the (device, inode) identity of every existing ancestor.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, IO, Iterable, Iterator

TMP_SUFFIX = ".tmp"
# How the JSON we write spells a non-finite float: a string Python's float() reads back. JSON has no NaN or
# Infinity, and json.dumps' default (bare NaN) is invalid JSON that other tools refuse.
NONFINITE_JSON = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
_NONFINITE_SPELLINGS = frozenset(NONFINITE_JSON.values())


def _finite_or_marked(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return NONFINITE_JSON[str(value)]
    if isinstance(value, dict):
        return {key: _finite_or_marked(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_marked(item) for item in value]
    return value


def json_loads(text: str, source: str) -> object:
    """``json.loads`` whose every failure is one ``ValueError`` naming ``source``: invalid JSON (with the line),
    and nesting deeper than the parser's recursion allows (``[[[[…`` 10⁵ deep), which is a ``RecursionError``
    in the standard library."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{source}: not valid JSON (line {error.lineno}: {error.msg})") from None
    except RecursionError:
        raise ValueError(f"{source}: JSON nested too deeply to read (a damaged or hostile file?)") from None


def json_number(value: object) -> object:
    """A value read from our JSON with the non-finite spellings (:data:`NONFINITE_JSON`) turned back into floats."""
    if isinstance(value, str) and value in _NONFINITE_SPELLINGS:
        return float(value)
    return value


def json_text(value: object, **options: object) -> str:
    """``json.dumps`` that always writes valid JSON: NaN/±inf become the strings "NaN"/"Infinity"/"-Infinity"
    (:data:`NONFINITE_JSON`; ``float(s)`` reads them back), never bare ``NaN``."""
    return json.dumps(_finite_or_marked(value), allow_nan=False, **options)  # type: ignore[arg-type]


@contextlib.contextmanager
def naming(path: str | os.PathLike) -> Iterator[None]:
    """Attach ``path`` to an ``OSError`` raised inside the block that names no file."""
    try:
        yield
    except OSError as error:
        if error.filename is None and error.errno is not None:
            raise type(error)(error.errno, error.strerror or str(error), str(path)) from None
        raise


def _umask_mode() -> int:
    """The mode a plain ``open()`` gives a new file (mkstemp's 0600 would hide outputs from a team)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def fsync_directory(directory: str | os.PathLike) -> None:
    """Make a rename in ``directory`` durable (best effort: some platforms cannot open directories)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], mode: str = "wb") -> Path:
    """Write ``path`` through ``write(handle)`` via a temporary sibling and ``os.replace``; see the module doc."""
    path = Path(path)
    with naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
        try:
            os.fchmod(fd, _umask_mode())
            with os.fdopen(fd, mode) as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise
    fsync_directory(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """UTF-8, whatever the locale."""
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda handle: handle.write(data))


def atomic_copy(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Copy contents and times of ``source`` to ``target`` atomically (a symlink at ``target`` is replaced, its
    destination never written)."""
    with naming(source), open(source, "rb") as reader:
        target = atomic_write(target, lambda handle: shutil.copyfileobj(reader, handle, 1 << 20))
    with naming(target):
        shutil.copystat(source, target)
    return target


def _identity(path: str | os.PathLike) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def lies_within(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Is ``path`` (existing or not) ``folder`` itself or below it, after resolving symlinks, ``..`` and aliases
    such as bind mounts? A ``folder`` that does not exist holds nothing."""
    folder_id = _identity(folder)
    if folder_id is None:
        return False
    real_folder = Path(os.path.realpath(folder))
    real = Path(os.path.realpath(path))
    if real == real_folder or real_folder in real.parents:
        return True
    for candidate in (real, *real.parents):
        if _identity(candidate) == folder_id:
            return True
    return False


def refuse_existing(paths: Iterable[str | os.PathLike], overwrite: bool) -> None:
    """Nothing of the user's is replaced unless asked: an output path that exists is a ``FileExistsError`` naming it
    and ``--overwrite`` (the flag every command that writes a named output takes)."""
    if overwrite:
        return
    for path in paths:
        if os.path.lexists(path):
            raise FileExistsError(f"output file exists: {path} (pass --overwrite to replace it)")
