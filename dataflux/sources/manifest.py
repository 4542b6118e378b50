"""Audio files listed in a CSV or JSONL manifest, with labels per row.

Used directly (`kind: manifest`, path = the manifest) and by the folder source (`kind: folder`,
path = the audio folder, `labels` = a manifest next to it). Missing files and bad fields become
rejects that name the manifest, the row and the field; the rest of the manifest goes on.
Each file must resolve under the audio root (the folder for `kind: folder`, the manifest's own
directory for `kind: manifest`), else it is an `outside_root` reject (dataflux.sources.confine).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

from dataflux.records import Reject, SourceItem
from dataflux.sources.base import labels_from_record, partition_of
from dataflux.sources.confine import is_under, outside_root_reject, resolved_root

DEFAULT_FIELDS = {"file": "file", "label": "label"}


def read_manifest(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """Yield (row number, record or None, problem). Rows are 1-based data rows."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        with path.open(encoding="utf-8") as f:
            for i, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield i, None, f"{path}:{i}: not valid JSON ({exc.msg})"
                    continue
                if not isinstance(record, dict):
                    yield i, None, f"{path}:{i}: expected a JSON object, got {type(record).__name__}"
                    continue
                yield i, record, ""
    elif suffix in (".csv", ".tsv"):
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            for i, record in enumerate(reader, start=1):
                if None in record:  # more cells than header columns
                    yield i, None, f"{path}:{i}: row has more cells than the header"
                    continue
                yield i, dict(record), ""
    else:
        raise ValueError(f"{path}: manifest must be .csv, .tsv or .jsonl")


class ManifestSource:
    def __init__(self, name: str, manifest: str | Path, *, audio_root: str | Path | None = None,
                 fields: dict[str, str] | None = None, license: str = "unknown", allow_outside_root: bool = False):
        self.name = name
        self.manifest = Path(manifest)
        self.allow_outside_root = allow_outside_root
        if not self.manifest.exists():
            raise FileNotFoundError(f"source {name!r}: manifest {self.manifest} not found")
        self.audio_root = Path(audio_root) if audio_root else self.manifest.parent
        self.fields = {**DEFAULT_FIELDS, **(fields or {})}
        self.license = license

    def _records(self) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
        yield from read_manifest(self.manifest)

    def _key(self, row: int, record: dict[str, Any] | None) -> str:
        if record is not None:
            ident = record.get(self.fields.get("id", "")) or record.get(self.fields["file"])
            if ident:
                return str(ident)
        return f"row{row}"

    def iter_items(self, partition: int = 0, n_partitions: int = 1) -> Iterator[SourceItem | Reject]:
        root = resolved_root(self.audio_root)
        for row, record, problem in self._records():
            key = self._key(row, record)
            if partition_of(f"{self.name}/{key}", n_partitions) != partition:
                continue
            if record is None:
                yield Reject(self.name, key, "source", "bad_row", problem)
                continue
            where = f"{self.manifest}:{row}"
            file_col = self.fields["file"]
            rel = record.get(file_col)
            if not rel:
                yield Reject(self.name, key, "source", "bad_field", f"{where}: field {file_col!r} is missing or empty")
                continue
            audio_path = Path(rel) if os.path.isabs(rel) else self.audio_root / rel
            outside = outside_root_reject(audio_path, root, source=self.name, key=key,
                                          where=f"{where}: field {file_col!r}", allowed=self.allow_outside_root)
            if outside is not None:
                yield outside
                continue
            if not audio_path.exists():
                yield Reject(self.name, key, "source", "missing_file", f"{where}: audio file {audio_path} does not exist")
                continue
            labels, problems = labels_from_record(record, self.fields, where=where)
            if problems:
                yield Reject(self.name, key, "source", "bad_field", "; ".join(problems))
                continue
            yield SourceItem(source=self.name, source_id=key, audio_path=str(audio_path), labels=labels,
                             license=self.license)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(self.manifest.read_bytes())
        root = resolved_root(self.audio_root)
        for _, record, _ in self._records():
            rel = (record or {}).get(self.fields["file"])
            if rel:
                p = Path(rel) if os.path.isabs(rel) else self.audio_root / rel
                if p.exists() and (self.allow_outside_root or is_under(p, root)):
                    st = p.stat()
                    h.update(f"{rel}:{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()

    def vocabulary(self) -> dict[str, list[str]]:
        labels = set()
        col = self.fields.get("label")
        for _, record, _ in self._records():
            if record and col and record.get(col) not in (None, ""):
                labels.add(str(record[col]).strip())
        return {"sound_source": sorted(labels)} if labels else {}
