"""YAML with bounds: a config may not be huge, deeply nested, recursive, an alias bomb (a
few hundred bytes whose anchors expand to billions of values), or repeat a key.

PyYAML's safe loader builds an aliased node once and shares it, but everything after it
(copies, overrides, validation) walks the expanded tree, so the bound is on the expanded
size, checked on the composed node graph before any value is constructed.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_CHARS = 1_000_000
"""Longest config text (configs are a few hundred bytes)."""
MAX_NODES = 100_000
"""Most values a config may hold once its aliases are expanded."""
MAX_DEPTH = 50
"""Deepest nesting of sections and lists."""

_MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlLimitError(yaml.YAMLError):
    """A YAML document over a bound, recursive, or with a repeated key."""


def _children(node: Node) -> list[Node]:
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, SequenceNode):
        return list(node.value)
    return []


def check_node_bounds(root: Node) -> None:
    """YamlLimitError if the node graph is recursive, or too big or deep once expanded."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    in_progress: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            kids = _children(node)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            in_progress.discard(key)
            if size[key] > MAX_NODES:
                raise YamlLimitError(
                    f"the document expands to more than {MAX_NODES} values (through its "
                    "aliases); configs are small, this looks like an alias bomb"
                )
            if depth[key] > MAX_DEPTH:
                raise YamlLimitError(f"the document nests deeper than {MAX_DEPTH} levels")
            continue
        if key in size:
            continue
        if key in in_progress:
            raise YamlLimitError("the document is recursive (an alias refers to itself)")
        in_progress.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in _children(node) if id(k) not in size)
    return None


class BoundedSafeLoader(yaml.SafeLoader):
    """PyYAML's safe loader with the bounds above and an error for a repeated key."""

    def get_single_node(self) -> Node | None:
        node = super().get_single_node()
        if node is not None:
            check_node_bounds(node)
        return node

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, ScalarNode):
                continue
            key = (key_node.tag, key_node.value)
            if key in seen:
                line = key_node.start_mark.line + 1 if key_node.start_mark else "?"
                raise YamlLimitError(
                    f"the key {key_node.value!r} is given twice in one mapping (line {line}); "
                    "give each setting once"
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_bounded(text: str, loader: type[BoundedSafeLoader]) -> Any:
    """Parse ``text`` with ``loader``; YamlLimitError for the bounds, any other YAMLError for
    bad syntax."""
    if len(text) > MAX_CHARS:
        raise YamlLimitError(f"the document is longer than {MAX_CHARS} characters")
    try:
        return yaml.load(text, Loader=loader)
    except RecursionError:
        raise YamlLimitError(f"the document nests deeper than {MAX_DEPTH} levels") from None
