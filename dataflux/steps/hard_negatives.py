"""Distractors for class labels that are hard to tell from the answer, not random ones.

`similar_labels(leaf, values, value, k)` ranks the other labels of a source: first those in the
answer's similarity group (dataflux/label_similarity.yaml, data not code), then by shared words
("alarm clock" ~ "clock tick"), then by shared letter trigrams, then by nearness in vocabulary order.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources

import yaml


@lru_cache(maxsize=1)
def similarity_groups() -> dict[str, list[frozenset[str]]]:
    """leaf id -> its groups of labels that sound alike (lower-cased)."""
    text = resources.files("dataflux").joinpath("label_similarity.yaml").read_text(encoding="utf-8")
    doc = yaml.safe_load(text) or {}
    return {leaf: [frozenset(str(v).lower() for v in group) for group in groups] for leaf, groups in doc.items()}


def _words(label: str) -> set[str]:
    return set(re.findall(r"[^\W_]+", label.lower()))


def _trigrams(label: str) -> set[str]:
    s = f"  {label.lower()} "
    return {s[i:i + 3] for i in range(len(s) - 2)}


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0


def similar_labels(leaf: str, values: Sequence[str], value: str, k: int = 3) -> list[str]:
    """Up to `k` labels of `values` other than `value`, the most confusable with it first."""
    groups = [g for g in similarity_groups().get(leaf, []) if value.lower() in g]
    order = {v: i for i, v in enumerate(values)}
    at = order.get(value, 0)

    def score(v: str) -> tuple:
        same_group = any(v.lower() in g for g in groups)
        return (-same_group, -_jaccard(_words(v), _words(value)), -_jaccard(_trigrams(v), _trigrams(value)),
                abs(order[v] - at), order[v])

    return sorted((v for v in values if v != value), key=score)[:k]


def has_similarity(leaf: str) -> bool:
    return leaf in similarity_groups()
