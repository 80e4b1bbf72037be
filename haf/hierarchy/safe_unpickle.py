"""A restricted unpickler for the field's hierarchy pickles, which are untrusted input (docs/METHOD.md §9).

``pickle.load`` executes whatever callable a file names; a hierarchy downloaded from the internet must not be
able to. :class:`RestrictedUnpickler` resolves only the globals listed in its ``allowed`` map (module, name) →
object and raises ``ValueError`` naming the file and the global for anything else (``os.system``,
``builtins.eval``, ``subprocess.Popen``, even a harmless-looking ``collections.OrderedDict``). Persistent ids
are refused too. The distance dicts need no global at all (:data:`DISTANCES_GLOBALS`); nltk trees need the few
in :data:`TREE_GLOBALS`, mapped to :class:`TreeNode`, a stand-in that needs no nltk. Size is bounded too:
:func:`read_capped` refuses a file (decompressed as a stream) as soon as it holds more than ``max_bytes``, so a
small "bomb" that expands to gigabytes never allocates more than the cap. Before unpickling,
:func:`check_pickle_bounds` walks the opcodes (``pickletools.genops``, which allocates nothing beyond the data)
and refuses what would make the unpickler allocate more than the data's own size: a memo index beyond the number
of opcodes read (CPython grows the memo to twice the index), a length or frame that claims more bytes than remain
(CPython allocates the claimed length before reading it).
"""

from __future__ import annotations

import io
import lzma
import os
import pickle
import pickletools
from collections.abc import Mapping
from typing import Any, BinaryIO


class TreeNode(list):
    """Stand-in for ``nltk.Tree`` when reading a pickle: the children are the list items, the label is ``_label``.

    Unpickling restores the instance ``__dict__`` (nltk stores ``{"_label": ...}``); anything else in it is
    ignored by the readers.
    """

    _label: Any = None

    def __setstate__(self, state: Any) -> None:
        # Called by BUILD. nltk pickles carry a plain dict; refuse anything else instead of guessing.
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"tree node state must be a dict, got {type(state).__name__}")
        self.__dict__.update(state)

    def __reduce_ex__(self, protocol: Any) -> Any:  # pragma: no cover - the stand-in is never written back
        raise TypeError("TreeNode is a read-only stand-in for nltk.Tree; convert to nltk.Tree to pickle it")

    @property
    def label(self) -> Any:
        return self._label


def _reconstruct_tree_node(cls: Any, base: Any, state: Any) -> TreeNode:
    """Safe replacement for ``copyreg._reconstructor`` at protocols 0-1: only ever builds a :class:`TreeNode`."""
    if cls is not TreeNode or base not in (list, object):
        raise pickle.UnpicklingError(f"refusing to reconstruct {cls!r} from {base!r}")
    node = TreeNode()
    if base is list and state is not None:
        node.extend(state)
    return node


#: ``*_distances.pkl.xz`` holds a dict of ``(str, str) → int``: dicts, tuples, strings and ints are pickle opcodes,
#: not globals.
DISTANCES_GLOBALS: Mapping[tuple[str, str], Any] = {}

#: ``*_tree.pkl`` holds an ``nltk.Tree`` (a ``list`` subclass with a ``_label`` attribute). Depending on the protocol
#: the pickle names ``nltk.tree.Tree`` or ``nltk.tree.tree.Tree`` (nltk ≥ 3.6 moved it), and at protocols 0-1
#: ``copy_reg._reconstructor`` with ``__builtin__.list``/``object``: all mapped to :class:`TreeNode` and a
#: reconstructor that builds only a ``TreeNode``.
TREE_GLOBALS: Mapping[tuple[str, str], Any] = {
    ("nltk.tree", "Tree"): TreeNode,
    ("nltk.tree.tree", "Tree"): TreeNode,
    ("nltk", "Tree"): TreeNode,
    ("copy_reg", "_reconstructor"): _reconstruct_tree_node,
    ("copyreg", "_reconstructor"): _reconstruct_tree_node,
    ("__builtin__", "list"): list,
    ("builtins", "list"): list,
    ("__builtin__", "object"): object,
    ("builtins", "object"): object,
}


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only the (module, name) pairs in ``allowed``."""

    def __init__(self, file: BinaryIO, allowed: Mapping[tuple[str, str], Any], *, source: str) -> None:
        super().__init__(file)
        self._allowed = allowed
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            admitted = sorted({f"{m}.{n}" for m, n in self._allowed}) or ["no globals at all"]
            raise ValueError(
                f"{self._source}: refusing to unpickle global {module}.{name}: this file may only contain "
                f"{', '.join(admitted)} (pickles are untrusted input)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise ValueError(f"{self._source}: refusing persistent id {pid!r} in an untrusted pickle")


_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})


def check_pickle_bounds(data: bytes, *, source: str) -> None:
    """Refuse a pickle whose opcodes would make the unpickler allocate beyond ``len(data)`` (module docstring).

    A pickler numbers its memo entries 0, 1, 2, … with one opcode each, so a real file's memo index never exceeds
    the number of opcodes before it; every length is followed by that many bytes. Raises ``ValueError`` naming
    ``source`` and the opcode's offset.
    """
    stream = io.BytesIO(data)
    count = 0
    try:
        for count, (opcode, arg, position) in enumerate(pickletools.genops(stream)):
            if opcode.name in _MEMO_PUTS and isinstance(arg, int) and arg > count:
                raise ValueError(
                    f"{source}: memo index {arg} at byte {position} exceeds the {count} opcodes before it "
                    "(a hostile pickle asking for a huge memo?); refusing it"
                )
            if opcode.name == "FRAME" and isinstance(arg, int) and arg > len(data) - stream.tell():
                raise ValueError(
                    f"{source}: frame at byte {position} claims {arg} bytes, only {len(data) - stream.tell()} "
                    "remain; refusing it"
                )
    except ValueError as error:
        message = str(error)
        if message.startswith(source):
            raise
        raise ValueError(f"{source}: not a readable pickle: {message}") from None


def restricted_loads(data: bytes, allowed: Mapping[tuple[str, str], Any], *, source: str) -> Any:
    """Unpickle ``data`` admitting only ``allowed`` globals; every failure is a ``ValueError`` naming ``source``.

    The opcodes are checked first (:func:`check_pickle_bounds`), so memory stays within a small multiple of
    ``len(data)``."""
    check_pickle_bounds(data, source=source)
    try:
        return RestrictedUnpickler(io.BytesIO(data), allowed, source=source).load()
    except ValueError:
        raise
    except (pickle.UnpicklingError, EOFError, TypeError, AttributeError, IndexError, KeyError) as error:
        raise ValueError(f"{source}: not a readable pickle of the expected kind: {error}") from None
    except MemoryError:
        raise ValueError(f"{source}: unpickling it needs more memory than there is; refusing it") from None
    except RecursionError:
        raise ValueError(f"{source}: nested too deeply to unpickle; refusing it") from None


_CHUNK = 1 << 20
COMPRESSED_SUFFIXES = (".xz", ".lzma")


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n} bytes"


def read_capped(path: str | os.PathLike, max_bytes: int, *, why: str) -> bytes:
    """The bytes of ``path`` (lzma/xz-decompressed when its name ends in .xz/.lzma), at most ``max_bytes``.

    Compressed files are decompressed one chunk at a time with ``LZMADecompressor.decompress(max_length=...)``.

    Beyond the cap: ``ValueError`` naming the file, the cap and ``why`` (what the cap stands for), after holding
    at most ``max_bytes`` + one chunk. Concatenated xz streams are read like ``lzma.decompress`` reads them.
    """
    source = str(path)
    too_big = f"{source}: holds more than {_mib(max_bytes)} ({why}); refusing to read it (a damaged or hostile file?)"
    with open(path, "rb") as handle:
        if not source.endswith(COMPRESSED_SUFFIXES):
            # read(n) allocates n bytes up front: ask for no more than the file holds (plus one, to see growth).
            data = handle.read(min(max_bytes, os.fstat(handle.fileno()).st_size) + 1)
            if len(data) > max_bytes:
                raise ValueError(too_big)
            return data
        out = bytearray()
        decompressor = lzma.LZMADecompressor()
        streams = 0
        while True:
            if decompressor.eof:
                streams += 1
                data = decompressor.unused_data or handle.read(_CHUNK)
                if not data.strip(b"\0"):  # end of file (xz allows null padding between streams)
                    break
                decompressor = lzma.LZMADecompressor()
            elif decompressor.needs_input:
                data = handle.read(_CHUNK)
                if not data:
                    raise ValueError(f"{source}: not an lzma/xz file (truncated: the stream ends early)")
            else:
                data = b""
            try:
                out += decompressor.decompress(data, max_length=min(_CHUNK, max_bytes + 1 - len(out)))
            except lzma.LZMAError as error:
                if streams:  # trailing bytes after a complete stream: ignored, as lzma.decompress does
                    break
                raise ValueError(f"{source}: not an lzma/xz file ({error})") from None
            if len(out) > max_bytes:
                raise ValueError(too_big)
    return bytes(out)
