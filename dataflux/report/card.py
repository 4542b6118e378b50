"""A dataset card: the README.md of a Hugging Face `datasets` repository holding one version.

The YAML header follows the Hub's dataset-card metadata (license, task categories, size,
`configs` pointing at the Parquet files); the body says where the audio came from and under which
licence, how many samples of what kind, and how the DataFlux closed loop made and checked them.
"""

from __future__ import annotations

import re

import yaml

from dataflux.report.facts import VersionFacts
from dataflux.report.summary import (categories_table, cost_table, headline, markdown_text, rejects_table,
                                     sources_table)

# Hub licence ids we recognise in a source's free-text `license` (matched case-insensitively at the start).
HUB_LICENSES = ("cc0-1.0", "cc-by-4.0", "cc-by-sa-4.0", "cc-by-nc-4.0", "cc-by-nc-sa-4.0", "cc-by-3.0",
                "cc-by-nc-3.0", "cc-by-sa-3.0", "mit", "apache-2.0", "odc-by", "pddl", "other")


def hub_license(licences: list[str]) -> tuple[str, str | None]:
    """(Hub licence id, license_name or None) for the version's licences: one recognised licence maps
    to its id; several or unknown ones give ("other", "<the licences joined>")."""
    ids = set()
    for text in licences:
        match = next((h for h in HUB_LICENSES if re.match(re.escape(h) + r"\b", text.strip().lower())), None)
        ids.add(match or "other")
    if len(ids) == 1 and "other" not in ids:
        return ids.pop(), None
    return "other", "; ".join(sorted(set(licences))) or "unknown"


def size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                         (1_000_000, "100K<n<1M")):
        if n < limit:
            return label
    return "n>1M"


def card_metadata(f: VersionFacts, data_glob: str = "data/*.parquet") -> dict:
    licences = sorted({lic for s in f.sources for lic in (s["license"] or "").split("; ") if lic})
    lic, lic_name = hub_license(licences)
    meta = {
        "license": lic,
        "pretty_name": f"DataFlux {f.version_id}",
        "language": ["en"],
        "task_categories": ["audio-classification", "question-answering"],
        "tags": ["audio", "multiple-choice", "synthetic-questions", "dataflux"],
        "size_categories": [size_category(f.n_rows)],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": data_glob}]}],
    }
    if lic_name:  # one line: a licence text's line breaks must not shape the YAML header
        meta["license_name"] = " ".join(lic_name.split())
    return meta


def _made_with(f: VersionFacts) -> list[str]:
    lines = []
    for m in f.models:
        lines.append(f"- {markdown_text(m['step'])}: {markdown_text(m['backend'])} backend, model "
                     f"{markdown_text(m['model'])} ({m['n_clips']} clips)")
    return lines or ["- (no model calls recorded)"]


def dataset_card(f: VersionFacts, data_glob: str = "data/*.parquet") -> str:
    """README.md text for a `datasets` repository whose Parquet shards sit at `data_glob`."""
    header = yaml.safe_dump(card_metadata(f, data_glob), sort_keys=False, allow_unicode=True).strip()
    v = f.version
    code_versions = sorted({c for c in f.rows.column("code_version").to_pylist() if c}) if f.n_rows else []
    lines = [
        "---", header, "---", "",
        f"# DataFlux {f.version_id}", "",
        "Multiple-choice questions about short audio clips, each verified by the DataFlux closed loop: a "
        "caption, taxonomy-driven questions, two independent answerers (one re-measures the audio, one reads "
        "only the caption), a judge, and deterministic checks against facts measured in the audio. Questions "
        "that fail are regenerated with the judge's reasons or discarded; every sample records which models "
        "made it, with which prompts and seeds, and what it cost.", "",
        "## Summary", "",
    ]
    lines += [f"- **{k}**: {f'`{val}`' if 'sha256' in k else val}" for k, val in headline(f)]
    lines += ["", "## Sources and licences", "",
              "Each sample keeps the licence of the audio it is about (column `license`). "
              "Respect the most restrictive licence of the sources you use.", "", sources_table(f), "",
              "## Counts", "", f"Splits (assigned from the audio hash, so one clip never lands in two): "
              + ", ".join(f"{k} {n}" for k, n in f.splits.items()) + ".", "",
              *([f"Rows per task: " + ", ".join(f"{k} {n}" for k, n in f.per_task.items())
                 + " (the categories below count the questions, task `mcq`).", ""] if len(f.per_task) > 1 else []),
              categories_table(f) if f.per_category else "_no samples_", "",
              "Correct-answer positions: " + ", ".join(f"{k} {n}" for k, n in f.answer_position.items()) + ".", "",
              "## How it was made", "",
              *_made_with(f), "",
              f"- regeneration rounds per kept sample: " + ", ".join(f"{r}: {n}" for r, n in f.rounds.items()),
              f"- answers corrected from a measurement: {f.corrected}",
              f"- config sha256: `{v.get('config_sha256') or ''}`",
              f"- code version: {', '.join(code_versions) or 'n/a'}",
              f"- created {v.get('created_at')}, finalized {v.get('finalized_at') or '(draft)'}", ""]
    if f.per_step:
        lines += ["Cost per step (each call counted once per clip):", "", cost_table(f), ""]
    if f.rejects:
        lines += ["## What was rejected", "", rejects_table(f), ""]
    lines += [
        "## Columns", "",
        "`audio` ({bytes, path}, 16 kHz WAV), `question`, `choices` (4), `answer`, `answer_index`, `reasoning` "
        "(the winning answerer's), `l0`-`l3` (taxonomy path), `caption`, `facts` (JSON of measured facts), "
        "`quality`, `verdict`, `checks`, `answers`, `text_only_answers` and `audio_needed` (the question asked again "
        "without audio or caption; false: a majority answered it from the text alone), `calls` (provenance and "
        "tokens), `messages` "
        "(ready-to-train chat turns; the user turn starts with `<audio>`), `row_sha256`.", "",
        "## Loading", "",
        "```python",
        "from datasets import load_dataset",
        f'ds = load_dataset("parquet", data_files="{data_glob}", split="train")',
        "```", "",
        f"The content hash `{v.get('content_sha256') or ''}` covers every (sample_id, row_sha256) pair; "
        "`dataflux verify` recomputes the shard checksums.", "",
    ]
    return "\n".join(lines)
