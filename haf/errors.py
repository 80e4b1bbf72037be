"""The project's exceptions, and which errors the command line reports as one line.

Bad input that the user can fix (a missing file, a wrong config key, a malformed hierarchy) is *expected*: the CLI
prints ``haf <cmd>: error: <message naming the file/key at fault>`` and exits 2. Anything else is a bug and keeps
its traceback. Expected are :class:`UserError` (and its subclasses), ``ValueError`` (the library's bad-input
error throughout), and ``OSError`` (missing, not a folder, permission, disk full): :func:`is_expected`. A bare
``KeyError``, ``TypeError``, ``AttributeError`` or ``IndexError`` is not — raise a :class:`UserError` subclass
where such an error means bad input.
"""
from __future__ import annotations


class UserError(ValueError):
    """Bad input or a refused request, fixable by the user; the message names the file, key or value at fault."""

    def __str__(self) -> str:
        # KeyError's str() is the repr of its argument; ours read as plain sentences.
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class ConfigError(UserError):
    """A run config that cannot be used: unknown key, wrong type, value out of range."""


class DataError(UserError):
    """A dataset that cannot be read as asked: missing split, malformed files, unknown options."""


class HierarchyError(UserError):
    """A hierarchy or distance file that cannot be used."""


class MissingSplitError(DataError, KeyError):
    """A dataset has no split of that name (a KeyError too, for ``dataset[split]`` lookups)."""


def is_expected(error: BaseException) -> bool:
    """Is ``error`` bad input or a user-caused OS error (one line, exit 2) rather than a bug (traceback)?"""
    return isinstance(error, (UserError, ValueError, OSError))
