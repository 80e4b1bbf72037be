"""The one YAML reader for user files: PyYAML's safe loader, refusing what it would accept silently or blow up on.

* Duplicate keys in one mapping (PyYAML keeps the last and drops the first without a word) → ``ValueError``
  "FILE line N: duplicate key 'k' (first at line M)". Keys merged in with ``<<:`` may be overridden, as YAML
  intends.
* Aliases: PyYAML shares an aliased node, but every consumer (merging, validation, printing) walks the expanded
  tree, so nine nested aliases of nine items each ("billion laughs") are ~10⁹ nodes. The expanded size is counted
  on the node graph (each distinct node once, memoised) before anything is constructed; beyond
  :data:`MAX_EXPANDED_NODES` → refused, naming the file and the line of the anchor that grew past it.
* A recursive anchor (``&a [*a]``) → refused naming its line (it would be an infinite structure).
* Nesting deeper than Python's recursion allows → refused with one line, not a ``RecursionError``; flow
  brackets nested beyond :data:`MAX_FLOW_DEPTH` are refused by a one-pass scan before parsing.
"""
from __future__ import annotations

from typing import Any

import yaml

# A real run config expands to a few hundred nodes; the paper configs with every base to under 2,000.
MAX_EXPANDED_NODES = 100_000
# Flow collections ([…], {…}) or indented blocks nested deeper than this are refused before parsing (a config
# needs a handful; the pure-Python parser needs seconds to reach its recursion limit).
MAX_FLOW_DEPTH = 100


class _Refused(Exception):
    """A refusal raised inside PyYAML's machinery, turned into a ``ValueError`` naming the file by :func:`load_yaml`."""


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _expanded_size(root: yaml.Node, budget: int) -> None:
    """Raise :class:`_Refused` when the tree under ``root`` (aliases expanded) has more than ``budget`` nodes or
    a node contains itself. Iterative: the depth of the document does not matter."""
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        if done:
            on_path.discard(key)
            size[key] = 1 + sum(size[id(child)] for child in children)
            if size[key] > budget:
                raise _Refused(f"line {_line(node)}: expands (through aliases) to more than {budget} nodes; "
                               "refusing it (nested aliases?)")
            continue
        if key in size:
            continue
        if key in on_path:
            raise _Refused(f"line {_line(node)}: a recursive anchor (a node that contains itself)")
        on_path.add(key)
        stack.append((node, True))
        for child in children:
            if id(child) in on_path:
                raise _Refused(f"line {_line(child)}: a recursive anchor (a node that contains itself)")
            if id(child) not in size:
                stack.append((child, False))


class StrictSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with the checks of the module docstring."""

    max_expanded_nodes = MAX_EXPANDED_NODES

    def construct_document(self, node: yaml.Node) -> Any:
        _expanded_size(node, self.max_expanded_nodes)
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    if key in seen:
                        raise _Refused(f"line {_line(key_node)}: duplicate key {key!r} (first at line {seen[key]})")
                    seen[key] = _line(key_node)
                except TypeError:
                    continue  # an unhashable key: construct_mapping refuses it below
        return super().construct_mapping(node, deep=deep)


class YamlRefused(ValueError):
    """A document that parses but is refused (a duplicate key, an alias bomb, a recursive anchor, deep nesting)."""


def _flow_depth_refusal(text: str) -> str | None:
    """Where flow brackets nest deeper than :data:`MAX_FLOW_DEPTH` ("line N: …"), quoted text and comments
    skipped; None when they do not. One pass, no allocation."""
    depth, quote, line = 0, "", 1
    comment = False
    previous = "\n"
    for char in text:
        if char == "\n":
            line, comment = line + 1, False
        elif comment:
            pass
        elif quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "#" and previous in " \t\n":
            comment = True
        elif char in "[{":
            depth += 1
            if depth > MAX_FLOW_DEPTH:
                return f"line {line}: collections nested more than {MAX_FLOW_DEPTH} deep; refusing it"
        elif char in "]}":
            depth = max(0, depth - 1)
        previous = char
    indents: list[int] = [-1]  # block nesting: the stack of indentations of the enclosing lines
    for number, text_line in enumerate(text.splitlines(), start=1):
        stripped = text_line.lstrip(" ")
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(text_line) - len(stripped)
        while indent < indents[-1]:
            indents.pop()
        if indent > indents[-1]:
            indents.append(indent)
            if len(indents) > MAX_FLOW_DEPTH:
                return f"line {number}: blocks nested more than {MAX_FLOW_DEPTH} deep; refusing it"
    return None


def load_yaml(text: str, source: str) -> Any:
    """Parse ``text`` (the contents of ``source``) with :class:`StrictSafeLoader`; every refusal and syntax
    error is one ``ValueError`` line naming ``source`` (and the line where known)."""
    refusal = _flow_depth_refusal(text)
    if refusal is not None:
        raise YamlRefused(f"{source} {refusal}")
    loader = StrictSafeLoader(text)
    try:
        return loader.get_single_data()
    except _Refused as refusal:
        raise YamlRefused(f"{source} {refusal}") from None
    except RecursionError:
        raise YamlRefused(f"{source}: nested too deeply to read (more levels than any config needs)") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"{source}{where}: not valid YAML ({getattr(error, 'problem', None) or error})") from None
    finally:
        loader.dispose()
