"""What a version holds, for people: an HTML report with plots, a dataset card, a Markdown
summary (published as a Prefect artifact at finalization) and a diff between two versions.

    from dataflux.report import write_report
    files = write_report(catalog, "v0003-demo", "reports/v0003")   # report.html + README.md
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from dataflux.report.card import dataset_card
from dataflux.report.facts import VersionFacts, load_version_facts, read_version_rows
from dataflux.report.summary import version_markdown
from dataflux.storage.shards import ChecksumMismatch, resolve_path

__all__ = ["ReportFiles", "VersionFacts", "dataset_card", "load_version_facts", "read_version_rows",
           "summary_markdown", "version_markdown", "write_report"]


@dataclass
class ReportFiles:
    html: Path
    card: Path
    data: list[Path]  # shards copied next to the card (empty unless copy_shards)


def summary_markdown(catalog, vid: str) -> str:
    """The Markdown summary of version `vid` (what the Prefect artifact shows)."""
    return version_markdown(load_version_facts(catalog, vid))


def write_report(catalog, vid: str, out_dir: str | os.PathLike, *, copy_shards: bool = False) -> ReportFiles:
    """Write `<out_dir>/report.html` and `<out_dir>/README.md` (the dataset card) for version `vid`.

    `copy_shards=True` also copies the version's verified shards to `<out_dir>/data/`, so the
    directory is a ready `datasets` repository (the card's `configs` point at `data/*.parquet`).
    """
    from dataflux.report.html import render_html  # plots need matplotlib; the Markdown summary does not

    facts = load_version_facts(catalog, vid)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    html = out / "report.html"
    html.write_text(render_html(facts), encoding="utf-8")
    card = out / "README.md"
    card.write_text(dataset_card(facts), encoding="utf-8")
    copied: list[Path] = []
    if copy_shards:
        data = out / "data"
        data.mkdir(exist_ok=True)
        for s in facts.shards:
            if s["path"] is not None:
                target = data / f"{s['partition_key']}.parquet"
                target.write_bytes(_verified_bytes(s["path"], s["sha256"]))
                copied.append(target)
    return ReportFiles(html=html, card=card, data=copied)


def _verified_bytes(path: str, expected_sha256: str) -> bytes:
    """A shard's bytes (local path or URI), refused when they no longer match the catalog."""
    fs, inner = resolve_path(path)
    with fs.open_input_stream(inner) as f:
        data = f.read()
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise ChecksumMismatch(path, expected_sha256, actual)
    return data
