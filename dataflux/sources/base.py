"""What every source shares: stable partitioning and the metadata mapping (fields.py)."""

from __future__ import annotations

import hashlib
from typing import Any, Iterator, Protocol

from dataflux.records import Reject, SourceItem
from dataflux.fields import AUDIO_EXTENSIONS, FieldProblem, map_record  # noqa: F401 (re-exported)



def partition_of(key: str, n_partitions: int) -> int:
    """Stable partition of a source item, independent of listing order and of the machine."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") % n_partitions


class Source(Protocol):
    name: str

    def iter_items(self, partition: int, n_partitions: int) -> Iterator[SourceItem | Reject]: ...

    def fingerprint(self) -> str:
        """Hash of the source's inputs (file names, sizes, mtimes or content), for incremental runs."""
        ...

    def vocabulary(self) -> dict[str, list[str]]:
        """Label vocabularies of `values_from: labels` leaves, e.g. {"sound_source": [...]}."""
        ...


def labels_from_record(record: dict[str, Any], fields: dict[str, str], *, source: str, key: str, where: str,
                       file_stem: str | None = None) -> dict[str, Any] | Reject:
    """Map a manifest/dataset record to SourceItem.labels (dataflux.fields), or a Reject
    naming `where` and the field when a value is unusable (too long, wrong type, a file name as a label)."""
    try:
        return map_record(record, fields, file_stem=file_stem)
    except FieldProblem as problem:
        return Reject(source, key, "source", problem.reason, f"{where}: {problem}")
