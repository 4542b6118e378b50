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
from dataflux.regular_file import NOT_REGULAR, not_regular, require_regular
from dataflux.sources.base import labels_from_record, partition_of
from dataflux.sources.confine import is_under, outside_root_reject, resolved_root
from dataflux.fields import vocabulary_of

DEFAULT_FIELDS = {"file": "file", "label": "label"}  # a `label` column, when there is one


# A label of a megabyte must reach the field check (and become a `field_too_long` reject) rather
# than stop the csv reader at its default 128 KiB cell limit.
csv.field_size_limit(64 * 1024 * 1024)

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def manifest_format(path: Path, given: str | None = None) -> str:
    """csv | tsv | jsonl: `given` (the source's `format:`) or the file's extension."""
    if given:
        return given
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise ValueError(f"{path}: manifest must be .csv, .tsv or .jsonl, or set the source's "
                         f"format: csv | tsv | jsonl") from None


def read_manifest(path: Path, fmt: str | None = None) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """Yield (row number, record or None, problem). Rows are 1-based data rows.

    CSV: a UTF-8 byte-order mark is dropped, CRLF line ends and quoted cells (with commas and
    newlines inside) follow RFC 4180, header names are stripped. TSV is read without quoting, as
    Common Voice writes it (its sentences hold unbalanced quote characters).
    """
    fmt = manifest_format(path, fmt)
    if fmt == "jsonl":
        with path.open(encoding="utf-8-sig") as f:
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
        return
    with path.open(encoding="utf-8-sig", newline="") as f:
        if fmt == "tsv":
            reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        else:
            reader = csv.DictReader(f, skipinitialspace=True)  # `a, "b, c"` is two cells
        if reader.fieldnames:
            reader.fieldnames = [name.strip() for name in reader.fieldnames]
        for i, record in enumerate(reader, start=1):
            if None in record:  # more cells than header columns
                yield i, None, f"{path}:{i}: row has more cells than the header"
                continue
            yield i, dict(record), ""


class ManifestSource:
    def __init__(self, name: str, manifest: str | Path, *, audio_root: str | Path | None = None,
                 fields: dict[str, str] | None = None, license: str = "unknown", format: str | None = None,
                 allow_outside_root: bool = False):
        self.name = name
        self.manifest = Path(manifest)
        self.format = manifest_format(self.manifest, format)
        self.allow_outside_root = allow_outside_root
        if not self.manifest.exists():
            raise FileNotFoundError(f"source {name!r}: manifest {self.manifest} not found")
        require_regular(self.manifest, what=f"source {name!r}: manifest")  # a FIFO hangs, /dev/zero never ends
        self.audio_root = Path(audio_root) if audio_root else self.manifest.parent
        self.fields = {**DEFAULT_FIELDS, **(fields or {})}
        self.license = license

    def _records(self) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
        yield from read_manifest(self.manifest, self.format)

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
            rel = str(record.get(file_col) or "").strip()
            if not rel:
                yield Reject(self.name, key, "source", "bad_field", f"{where}: field {file_col!r} is missing or empty")
                continue
            if "\x00" in rel:  # no file name holds one; stat() would raise for the whole partition
                yield Reject(self.name, key, "source", "bad_field",
                             f"{where}: field {file_col!r} holds a NUL byte, which no file name can; fix the row")
                continue
            audio_path = self._path(rel)
            outside = outside_root_reject(audio_path, root, source=self.name, key=key,
                                          where=f"{where}: field {file_col!r}", allowed=self.allow_outside_root)
            if outside is not None:
                yield outside
                continue
            if not audio_path.exists():
                yield Reject(self.name, key, "source", "missing_file", f"{where}: audio file {audio_path} does not exist")
                continue
            special = not_regular(audio_path)
            if special is not None:
                yield Reject(self.name, key, "source", NOT_REGULAR, f"{where}: field {file_col!r}: {special}; "
                                                                    "only regular files are read")
                continue
            labels = labels_from_record(record, self.fields, source=self.name, key=key, where=where,
                                        file_stem=audio_path.stem)
            if isinstance(labels, Reject):
                yield labels
                continue
            yield SourceItem(source=self.name, source_id=key, audio_path=str(audio_path), labels=labels,
                             license=self.license)

    def _path(self, rel: str) -> Path:
        return Path(rel) if os.path.isabs(rel) else self.audio_root / rel

    def _usable_cells(self) -> Iterator[str]:
        """The rows' file cells that can name a file (not empty, no NUL byte)."""
        for _, record, _ in self._records():
            rel = str((record or {}).get(self.fields["file"]) or "").strip()
            if rel and "\x00" not in rel:
                yield rel

    def listed_files(self) -> set[Path]:
        """Resolved paths of the audio files the manifest's rows name (whatever became of the rows)."""
        return {self._path(rel).resolve() for rel in self._usable_cells()}

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(self.manifest.read_bytes())
        root = resolved_root(self.audio_root)
        for rel in self._usable_cells():
            p = self._path(rel)
            if p.exists() and (self.allow_outside_root or is_under(p, root)):
                st = p.stat()
                h.update(f"{rel}:{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()

    def vocabulary(self) -> dict[str, list[str]]:
        """Values of the rows that pass the source stage (never a rejected row's, never a too-long one)."""
        return vocabulary_of(i.labels for i in self.iter_items() if isinstance(i, SourceItem))
