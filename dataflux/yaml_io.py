"""Read YAML that someone else wrote: safe types only, a bounded expansion, no duplicate keys.

PyYAML's `safe_load` shares the object an alias points to, so a 768-byte "billion laughs"
(nine anchors, each listing the previous one nine times) loads quickly and then explodes in
whatever walks it (validation, deep copy, JSON dumping): gigabytes, then MemoryError. Here the
composed node graph is measured before anything is built: the number of nodes it would hold with
every alias expanded must stay under `max_nodes`, else `YamlError` says so. A key given twice in
one mapping (a source defined twice) is an error naming both lines, not a silent replacement.

Used for `data_catalog.yaml` (dataflux.config) and the trainer's YAML configs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dataflux.regular_file import not_regular

MAX_NODES = 100_000  # a real config has hundreds; an alias bomb has billions


class YamlError(ValueError):
    """The text is not YAML we accept; the message names the file, the line and what to do."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:  # an unhashable key: SafeLoader reports it below
                    continue
                if first != key_node.start_mark.line + 1:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {cut(repr(key))} is given twice (first on line {first}); "
                                    "keep one of them", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def expanded_size(node: yaml.Node, memo: dict[int, int] | None = None) -> int:
    """How many nodes `node` stands for with every alias expanded (an alias counts its target again)."""
    memo = {} if memo is None else memo
    stack = [(node, False)]
    while stack:
        current, children_done = stack.pop()
        if id(current) in memo:
            continue
        if isinstance(current, yaml.ScalarNode):
            memo[id(current)] = 1
            continue
        children = ([n for pair in current.value for n in pair] if isinstance(current, yaml.MappingNode)
                    else list(current.value))
        if children_done:
            memo[id(current)] = min(1 + sum(memo[id(c)] for c in children), 1 << 62)
        else:
            stack.append((current, True))
            stack.extend((c, False) for c in children if id(c) not in memo)
    return memo[id(node)]


def cut(text: str, limit: int = 200) -> str:
    """`text` shortened to `limit` characters for a message, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def load_yaml(text: str, *, origin: str, max_nodes: int = MAX_NODES) -> Any:
    """Parse one YAML document from `text` (`origin` names it in errors) into plain Python values."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = expanded_size(node)
        if size > max_nodes:
            raise YamlError(f"{origin}: the YAML expands to over {max_nodes:,} values through its aliases "
                            f"(&anchor / *alias); write the values out or use fewer aliases")
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{origin}:{mark.line + 1}:{mark.column + 1}" if mark is not None else origin
        why = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise YamlError(f"{where}: not valid YAML: {cut(why, 300)}") from None
    except yaml.YAMLError as exc:
        raise YamlError(f"{origin}: not valid YAML: {cut(' '.join(str(exc).split()), 300)}") from None
    finally:
        loader.dispose()


def read_yaml(path: str | Path, *, max_nodes: int = MAX_NODES) -> Any:
    """`load_yaml` of a file (UTF-8); a FIFO or device is refused before it is opened."""
    path = Path(path)
    problem = not_regular(path)
    if problem is not None:
        raise YamlError(f"{path}: {problem}; point it at a YAML file")
    return load_yaml(path.read_text(encoding="utf-8"), origin=str(path), max_nodes=max_nodes)
