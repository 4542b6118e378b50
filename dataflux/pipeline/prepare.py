"""Phase 1, prepare: from a partition's config to everything the later phases need.

`prepare` opens the source, settles the leaves and their option vocabularies (surveying the run's
sources for identical audio and label values), builds the steps and reads the partition's items.
It is the only phase that reads the config; the phases below get what it hands them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from dataflux.audio.recognizer_facts import set_recognizer
from dataflux.backends import build_steps, uses_models
from dataflux.config import Config
from dataflux.llm.catalog_cache import CatalogCallCache
from dataflux.llm.transcription import TranscriptionEndpoint
from dataflux.loop import LoopConfig, Steps
from dataflux.records import SourceItem
from dataflux.sources.planting import plant_errors
from dataflux.sources.registry import open_source
from dataflux.sources.survey import survey_source
from dataflux.claims import metadata_claim
from dataflux.steps.filter import FilterConfig
from dataflux.steps.task_rows import check_tasks
from dataflux.taxonomy import length_order, load_taxonomy

MAX_OPTION_CHARS = 200  # schemas/question.schema.json: an option longer than this cannot be asked


@dataclass
class Prepared:
    """What the phases below `prepare` work from; none of them reads the config."""

    source_name: str
    items: Iterable  # SourceItem | Reject, planted errors applied
    survey: Any  # dataflux.sources.survey result, or None (the demo)
    categories: list  # the source's leaves, with their vocabularies
    leaf_ids: list[str]
    vocabularies: dict[str, list[str]]
    limits: dict[str, float]  # analyse_item's max_seconds, min_seconds
    claims_only: bool  # the reference captioner: measure only the leaves a clip can claim
    filters: FilterConfig
    steps: Steps
    pool: Any  # the model endpoint pool, or None when every step is a reference backend
    loop_cfg: LoopConfig
    concurrency: int
    require_measured: bool
    tasks: tuple[str, ...]
    storage_root: str


def prepare(config: Config, source_name: str, partition: int, n_partitions: int, run_id: str,
            run_sources: list[str]) -> Prepared:
    spec = config.sources[source_name]
    source = open_source(config, source_name)
    taxonomy = load_taxonomy(config.data.get("taxonomy"))
    categories = source_leaves(config, source_name, taxonomy)
    filters = FilterConfig.from_dict(config.data["filters"])
    limits = {"max_seconds": float(filters.max_duration_s or 600.0),
              "min_seconds": min(0.05, float(filters.min_duration_s or 0.05))}
    choose_recognizer(config)  # before the survey: a recognizer folder also embeds for the label check
    survey = _survey(config, source_name, source, limits, run_sources)
    vocab = survey.vocabulary if survey is not None else source.vocabulary()
    if spec["kind"] != "demo":  # the demo's items carry leaf values only
        vocab = {**vocab, **metadata_vocabulary(source, categories, taxonomy)}
    if vocab:
        categories = taxonomy.with_vocabulary(categories, vocab)
    cache = CatalogCallCache(config.catalog_path) if uses_models(config) else None
    steps, pool = build_steps(config, categories, run_id=run_id, cache=cache)
    items = source.iter_items(partition, n_partitions)
    if spec.get("plant_errors") and survey is None:  # elsewhere the survey plants, over the whole source
        items = plant_errors(list(items), float(spec["plant_errors"]), int(spec.get("seed", 0)))
    return Prepared(
        source_name=source_name, items=items, survey=survey, categories=categories,
        leaf_ids=[c.id for c in categories],
        vocabularies={c.id: list(c.values) for c in categories if c.id in taxonomy.values_from},
        limits=limits,
        # The reference captioner states only what the source claims, so only claimed leaves get
        # questions and need measuring; a model captioner may describe anything, so measure all.
        claims_only=config.data["steps"]["caption"]["backend"] == "reference",
        filters=filters, steps=steps, pool=pool, loop_cfg=LoopConfig(**config.data["loop"]),
        concurrency=int(config.data["run"].get("concurrency", 16)),
        require_measured=spec.get("require") == "measured",
        tasks=source_tasks(config, source_name), storage_root=config.storage_root)


def choose_recognizer(config: Config) -> None:
    """Who hears speech in this process (`recognizer` in the config): the packaged Whisper base, a
    faster-whisper folder (relative to the config's folder), on the CPU or a CUDA device, or an
    endpoint whose replies the catalog's call cache keeps."""
    choice = dict(config.data.get("recognizer") or {})
    folder = choice.pop("folder", None)
    local = {key: choice.pop(key) for key in ("device", "compute_type") if key in choice}
    endpoint = TranscriptionEndpoint(choice, CatalogCallCache(config.catalog_path)) if choice else None
    set_recognizer(config.resolve_source_path(folder) if folder else None, endpoint, **local)


def source_leaves(config: Config, source_name: str, taxonomy) -> list:
    branches = config.sources[source_name].get("taxonomy") or []
    return taxonomy.leaves_for(branches) if branches else list(taxonomy.leaves())


def source_tasks(config: Config, source_name: str) -> tuple[str, ...]:
    """The tasks a source emits (`sources.<name>.tasks`, default mcq only)."""
    return check_tasks(config.sources[source_name].get("tasks") or ["mcq"], f"sources.{source_name}.tasks")


def _survey(config: Config, source_name: str, source, limits: dict, run_sources: list[str]):
    """Identical audio and the option vocabulary over the run's sources (dataflux.sources.survey).
    The demo source makes distinct clips and carries no label vocabulary: nothing to survey."""
    if config.sources[source_name]["kind"] == "demo":
        return None
    before = run_sources[:run_sources.index(source_name)] if source_name in run_sources else []
    before = [open_source(config, s) for s in before if config.sources[s]["kind"] != "demo"]
    spec = config.sources[source_name]
    plant = (float(spec["plant_errors"]), int(spec.get("seed", 0))) if spec.get("plant_errors") else None
    return survey_source(source, before=before, plant=plant, **limits)


def metadata_vocabulary(source, categories: list, taxonomy) -> dict[str, list[str]]:
    """Vocabularies of `values_from: metadata` leaves: every value the source's items carry in the
    leaf's `claimed_from` field (all partitions, so every partition offers the same options),
    ordered by language, then length (a phrase's nearest neighbours are its distractors)."""
    fields = {c.id: c.claimed_from for c in categories if taxonomy.values_from.get(c.id) == "metadata"}
    if not fields:
        return {}
    out: dict[str, set[tuple[str, str]]] = {leaf: set() for leaf in fields}
    for item in source.iter_items(0, 1):
        if not isinstance(item, SourceItem):
            continue
        language = str(item.labels.get("language") or "")
        for leaf, field_name in fields.items():
            value = metadata_claim(field_name, item.labels.get(field_name))
            if value is not None and len(value) <= MAX_OPTION_CHARS:
                out[leaf].add((language, value))
    return {leaf: [v for _, v in sorted(pairs, key=lambda p: (p[0], *length_order(p[1])))]
            for leaf, pairs in out.items() if pairs}
