"""The question taxonomy: L0 > L1 > L2 > L3 leaves loaded from a YAML data file.

`load_taxonomy()` reads `dataflux/taxonomy.yaml` (or a user file), validates every leaf and
returns a `Taxonomy` of `Category` objects (defined here; the steps' contract in `dataflux.steps.base` uses them).

A leaf either has a fixed vocabulary (`values`, at least 4 words, so that a question always
has 3 distractors) or takes it from the source at run time (`values_from: labels`): the set
of class labels the source carries. `Taxonomy.bind_labels()` fills those vocabularies in.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from dataflux.text_metrics import wer, words


@dataclass
class Category:
    """One taxonomy leaf (L3) with what the steps need from the taxonomy file."""

    id: str
    path: tuple[str, str, str, str]  # (L0, L1, L2, L3)
    description: str
    values: list[str]  # closed answer vocabulary; distractors come from sibling values
    question_templates: list[str]
    judge_rules: list[str]
    exemplars: list[dict[str, Any]]
    measured_by: str | None  # fact key that can check this category, or None
    needs: list[str] = field(default_factory=list)  # costly descriptors this category needs
    claimed_from: str | None = None  # the metadata field (or "measurement") a clip's claim comes from

MIN_VALUES = 4
LEAF_KEYS = frozenset({
    "id", "path", "description", "values", "values_from", "measured_by", "needs",
    "question_templates", "judge_rules", "exemplars", "claimed_from",
})
REQUIRED_LEAF_KEYS = ("id", "path", "description", "question_templates", "judge_rules")
TOP_KEYS = frozenset({"version", "leaves"})
VALUES_FROM = frozenset({"labels", "metadata"})
# Metadata fields of a SourceItem a leaf's claim may come from, besides "measurement".
CLAIM_FIELDS = frozenset({"transcript", "language", "speaker", "gender", "age", "emotion", "labels", "caption",
                          "genre", "instrument", "measurement"})


class TaxonomyError(ValueError):
    """The taxonomy file is malformed; the message names the file and the leaf."""


@dataclasses.dataclass(frozen=True)
class Taxonomy:
    """The validated leaves of one taxonomy file, in file order."""

    categories: tuple[Category, ...]
    origin: str
    version: int
    sha256: str
    values_from: Mapping[str, str]  # leaf id -> where its vocabulary comes from ("labels")

    def __iter__(self):
        return iter(self.categories)

    def __len__(self) -> int:
        return len(self.categories)

    def leaves(self) -> list[Category]:
        """Every leaf, in file order."""
        return list(self.categories)

    @property
    def ids(self) -> list[str]:
        return [c.id for c in self.categories]

    def leaf(self, leaf_id: str) -> Category:
        for c in self.categories:
            if c.id == leaf_id:
                return c
        raise KeyError(f"{self.origin}: no taxonomy leaf {leaf_id!r}; known: {self.ids}")

    def leaves_for(self, branches: Iterable[str] | None) -> list[Category]:
        """The leaves a source asks about.

        Each entry is a leaf id ("tone_pitch") or a branch path with "/" or ">" between levels
        ("Sound", "Sound/Tonal", "Sound > Tonal > Pitch"). None or an empty list means every
        leaf. Order follows the taxonomy file; a leaf named twice appears once.
        """
        if not branches:
            return list(self.categories)
        wanted: set[str] = set()
        for entry in branches:
            matched = self._match(entry)
            if not matched:
                raise TaxonomyError(
                    f"{self.origin}: source taxonomy entry {entry!r} matches no leaf or branch; "
                    f"leaves: {self.ids}; top-level branches: {sorted({c.path[0] for c in self.categories})}"
                )
            wanted.update(matched)
        return [c for c in self.categories if c.id in wanted]

    def _match(self, entry: str) -> list[str]:
        entry = str(entry).strip()
        if any(c.id == entry for c in self.categories):
            return [entry]
        parts = [p.strip() for p in entry.replace(">", "/").split("/") if p.strip()]
        return [c.id for c in self.categories if list(c.path[: len(parts)]) == parts]

    def siblings(self, leaf_id: str) -> list[Category]:
        """Leaves sharing the same L0 > L1 > L2 parent as `leaf_id` (without it); if none, the same L0 > L1."""
        me = self.leaf(leaf_id)
        for depth in (3, 2):
            sib = [c for c in self.categories if c.id != leaf_id and c.path[:depth] == me.path[:depth]]
            if sib:
                return sib
        return []

    def sibling_values(self, leaf_id: str, value: str, k: int = 3) -> list[str]:
        """Up to `k` other values of the leaf's vocabulary, nearest to `value` in vocabulary order first."""
        return nearest_values(self.leaf(leaf_id).values, value, k)

    def label_driven(self) -> list[str]:
        """Ids of leaves whose vocabulary comes from the source's labels."""
        return [c.id for c in self.categories if c.id in self.values_from]

    def bind_labels(self, vocabularies: Mapping[str, Sequence[str]]) -> Taxonomy:
        """A copy where each label-driven leaf gets its vocabulary from `vocabularies[leaf_id]`.

        Label values are de-duplicated and sorted so that the vocabulary does not depend on the
        order a source happens to yield its items in; metadata values keep the order given
        (`dataflux.pipeline.metadata_vocabulary` orders them by language, then length). A label-driven leaf with fewer than 4
        labels keeps an empty vocabulary: the question writer reports it as not applicable.
        """
        cats = []
        for c in self.categories:
            if c.id in self.values_from and c.id in vocabularies:
                words = [" ".join(str(v).split()) for v in vocabularies[c.id] if v is not None and str(v).strip()]
                # metadata vocabularies come ordered (by language, then length: nearest = similar
                # phrases); label vocabularies are sorted so they do not depend on listing order
                vocab = list(dict.fromkeys(words)) if self.values_from[c.id] == "metadata" else sorted(set(words))
                # a metadata leaf with fixed values too: the source's values first (its nearest
                # distractors), then the fixed ones, so a single-language corpus still has options
                vocab = list(dict.fromkeys([*vocab, *c.values]))
                c = dataclasses.replace(c, values=vocab if len(vocab) >= MIN_VALUES else [])
            cats.append(c)
        return dataclasses.replace(self, categories=tuple(cats))


    def with_vocabulary(self, categories: Iterable[Category],
                        vocabularies: Mapping[str, Sequence[str]]) -> list[Category]:
        """`categories` with label-driven vocabularies filled from `vocabularies` (see `bind_labels`)."""
        bound = self.bind_labels(vocabularies)
        return [bound.leaf(c.id) if c.id in self.values_from else c for c in categories]


def length_order(value: str) -> tuple[int, int, str]:
    """Sort key that puts phrases of similar length next to each other (words, then characters)."""
    return (len(value.split()), len(value), value)


def distinct_neighbours(values: Sequence[str], value: str, k: int = 3, min_word_distance: float = 0.34) -> list[str]:
    """Like `nearest_values`, skipping phrases that differ from `value` (or from a phrase already
    chosen) in fewer than a third of their words ("You are now muted" for "You are now unmuted"): no listener or recognizer can
    be held to such a pair, so it makes an ambiguous question rather than a hard one."""
    chosen: list[str] = []
    for v in nearest_values(values, value, len(values)):
        if all(_word_distance(other, v) >= min_word_distance for other in [value, *chosen]):
            chosen.append(v)
            if len(chosen) == k:
                break
    return chosen


def _word_distance(a: str, b: str) -> float:
    """WER of `b` against `a`; a phrase without words is 0 from another such phrase, else 1."""
    return wer(a, b) if words(a) else float(bool(words(b)))


def nearest_values(values: Sequence[str], value: str, k: int = 3) -> list[str]:
    """Up to `k` values other than `value`, nearest in vocabulary order first (ties: lower index first).

    For an ordered vocabulary ("110 Hz" < "220 Hz" < ...) the nearest words are the most
    plausible distractors. A value missing from the vocabulary gets the first `k` words.
    """
    others = [v for v in values if v != value]
    if value not in values:
        return others[:k]
    i = list(values).index(value)
    return sorted(others, key=lambda v: (abs(list(values).index(v) - i), list(values).index(v)))[:k]


def default_taxonomy_path() -> Path:
    return Path(str(resources.files("dataflux").joinpath("taxonomy.yaml")))


def load_taxonomy(path: str | Path | None = None) -> Taxonomy:
    """Load and validate a taxonomy file (default: the packaged `dataflux/taxonomy.yaml`)."""
    path = Path(path) if path is not None else default_taxonomy_path()
    if not path.exists():
        raise TaxonomyError(f"{path}: taxonomy file not found")
    text = path.read_text(encoding="utf-8")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TaxonomyError(f"{path}: not valid YAML: {exc}") from exc
    return taxonomy_from_dict(doc, origin=str(path), sha256=hashlib.sha256(text.encode()).hexdigest())


def taxonomy_sha256(path: str | Path | None = None) -> str:
    """sha256 of the taxonomy file's bytes (recorded with every version built from it)."""
    path = Path(path) if path is not None else default_taxonomy_path()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def taxonomy_from_dict(doc: Any, *, origin: str = "<taxonomy>", sha256: str | None = None) -> Taxonomy:
    if not isinstance(doc, dict):
        raise TaxonomyError(f"{origin}: expected a mapping with 'version' and 'leaves', got {type(doc).__name__}")
    unknown = set(doc) - TOP_KEYS
    if unknown:
        raise TaxonomyError(f"{origin}: unknown top-level keys {sorted(unknown)}; allowed: {sorted(TOP_KEYS)}")
    leaves = doc.get("leaves")
    if not isinstance(leaves, list) or not leaves:
        raise TaxonomyError(f"{origin}: 'leaves' must be a non-empty list")
    cats: list[Category] = []
    values_from: dict[str, str] = {}
    seen: set[str] = set()
    for i, leaf in enumerate(leaves):
        cat, vf = _parse_leaf(leaf, i, origin)
        if cat.id in seen:
            raise TaxonomyError(f"{origin}: leaf {cat.id!r} (leaves[{i}]): duplicate id")
        seen.add(cat.id)
        cats.append(cat)
        if vf:
            values_from[cat.id] = vf
    if sha256 is None:
        sha256 = hashlib.sha256(yaml.safe_dump(doc, sort_keys=True).encode()).hexdigest()
    return Taxonomy(categories=tuple(cats), origin=origin, version=int(doc.get("version", 1)),
                    sha256=sha256, values_from=values_from)


def _parse_leaf(leaf: Any, i: int, origin: str) -> tuple[Category, str | None]:
    if not isinstance(leaf, dict):
        raise TaxonomyError(f"{origin}: leaves[{i}]: expected a mapping, got {type(leaf).__name__}")
    name = f"leaf {leaf.get('id')!r} (leaves[{i}])"

    def fail(msg: str) -> TaxonomyError:
        return TaxonomyError(f"{origin}: {name}: {msg}")

    unknown = set(leaf) - LEAF_KEYS
    if unknown:
        raise fail(f"unknown keys {sorted(unknown)}; allowed: {sorted(LEAF_KEYS)}")
    missing = [k for k in REQUIRED_LEAF_KEYS if k not in leaf or leaf[k] in (None, "", [])]
    if missing:
        raise fail(f"missing fields {missing}")
    if not isinstance(leaf["id"], str) or not leaf["id"].isidentifier():
        raise fail("id must be an identifier such as 'tone_pitch'")
    path = leaf["path"]
    if not (isinstance(path, list) and len(path) == 4 and all(isinstance(p, str) and p for p in path)):
        raise fail(f"path must list 4 non-empty names [L0, L1, L2, L3], got {path!r}")
    if path[3] != leaf["id"]:
        raise fail(f"path's last level {path[3]!r} must equal the id")
    has_values, vf = "values" in leaf and leaf["values"] is not None, leaf.get("values_from")
    if not has_values and vf is None:
        raise fail("give 'values' (a fixed vocabulary) or 'values_from' (labels or metadata)")
    if has_values and vf not in (None, "metadata"):
        raise fail("'values' with 'values_from: labels': give one of them (the labels are the vocabulary)")
    values: list[str] = []
    if vf is not None and vf not in VALUES_FROM:
        raise fail(f"values_from must be one of {sorted(VALUES_FROM)}, got {vf!r}")
    if has_values:
        raw = leaf["values"]
        if not isinstance(raw, list) or not all(isinstance(v, str) and v.strip() for v in raw):
            raise fail("values must be a list of non-empty strings")
        if len(set(raw)) != len(raw):
            raise fail(f"values contain duplicates: {raw}")
        if len(raw) < MIN_VALUES:
            raise fail(f"has {len(raw)} values; a question needs at least {MIN_VALUES} (1 answer + 3 distractors)")
        values = list(raw)
    for key in ("question_templates", "judge_rules"):
        seq = leaf[key]
        if not isinstance(seq, list) or not all(isinstance(s, str) and s.strip() for s in seq):
            raise fail(f"{key} must be a list of non-empty strings")
    needs = leaf.get("needs") or []
    if not isinstance(needs, list) or not all(isinstance(s, str) for s in needs):
        raise fail("needs must be a list of descriptor names")
    measured_by = leaf.get("measured_by")
    if measured_by is not None and not isinstance(measured_by, str):
        raise fail("measured_by must be a fact name or null")
    claimed_from = leaf.get("claimed_from")
    if claimed_from is not None and claimed_from not in CLAIM_FIELDS:
        raise fail(f"claimed_from must be one of {sorted(CLAIM_FIELDS)}, got {claimed_from!r}")
    if vf == "metadata" and (claimed_from is None or claimed_from == "measurement"):
        raise fail("values_from: metadata needs claimed_from naming the metadata field the values come from")
    exemplars = leaf.get("exemplars") or []
    if not isinstance(exemplars, list) or not all(isinstance(e, dict) for e in exemplars):
        raise fail("exemplars must be a list of mappings")
    for j, ex in enumerate(exemplars):
        miss = [k for k in ("question", "choices", "answer") if k not in ex]
        if miss:
            raise fail(f"exemplars[{j}] is missing {miss}")
        if ex["answer"] not in ex["choices"]:
            raise fail(f"exemplars[{j}]: answer {ex['answer']!r} is not among its choices")
    cat = Category(
        id=leaf["id"], path=tuple(path), description=str(leaf["description"]), values=values,
        question_templates=list(leaf["question_templates"]), judge_rules=list(leaf["judge_rules"]),
        exemplars=[dict(e) for e in exemplars], measured_by=measured_by, needs=list(needs),
        claimed_from=claimed_from,
    )
    return cat, vf
