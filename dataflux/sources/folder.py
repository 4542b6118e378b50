"""A folder of audio files; metadata from a CSV/TSV/JSONL manifest, or none (the file list alone).

Only the audio is required: a file of the folder that no manifest row names is still a clip,
without metadata, so that every file ends up in the version or in the rejects. A FIFO, socket or
device in the folder is never opened: it is a `not_regular_file` reject (dataflux.regular_file).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterator

from dataflux.records import Reject, SourceItem
from dataflux.regular_file import NOT_REGULAR, not_regular
from dataflux.sources.base import AUDIO_EXTENSIONS, partition_of
from dataflux.sources.confine import is_under, outside_root_reject, resolved_root
from dataflux.sources.manifest import ManifestSource


class FolderSource:
    def __init__(self, name: str, path: str | Path, *, labels: str | None = None,
                 fields: dict[str, str] | None = None, license: str = "unknown", format: str | None = None,
                 allow_outside_root: bool = False):
        self.name = name
        self.root = Path(path)
        self.allow_outside_root = allow_outside_root
        if not self.root.is_dir():
            raise FileNotFoundError(f"source {name!r}: audio folder {self.root} not found")
        self.license = license
        self.manifest: ManifestSource | None = None
        if labels:
            manifest = Path(labels)
            if not manifest.is_absolute():
                manifest = self.root / manifest
            self.manifest = ManifestSource(name, manifest, audio_root=self.root, fields=fields, license=license,
                                           format=format, allow_outside_root=allow_outside_root)

    def _files(self) -> list[Path]:
        return sorted(p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)

    def _special_files(self) -> list[Path]:
        """FIFOs, sockets and devices of the folder (after symlinks), whatever their names: each is a reject."""
        return sorted(p for p in self.root.rglob("*")
                      if p.exists() and not p.is_file() and not p.is_dir())

    def iter_items(self, partition: int = 0, n_partitions: int = 1) -> Iterator[SourceItem | Reject]:
        listed: set[Path] = set()
        if self.manifest is not None:
            yield from self.manifest.iter_items(partition, n_partitions)
            listed = self.manifest.listed_files()
        root = resolved_root(self.root)
        for path in self._files():
            if path.resolve() in listed:
                continue
            key = path.relative_to(self.root).as_posix()
            if partition_of(f"{self.name}/{key}", n_partitions) == partition:
                outside = outside_root_reject(path, root, source=self.name, key=key, where=str(self.root),
                                              allowed=self.allow_outside_root)
                if outside is not None:  # a symlink out of the folder
                    yield outside
                    continue
                yield SourceItem(source=self.name, source_id=key, audio_path=str(path), license=self.license)
        yield from self._special_rejects(partition, n_partitions, listed, root)

    def _special_rejects(self, partition: int, n_partitions: int, listed: set[Path], root: str) -> Iterator[Reject]:
        for path in self._special_files():
            key = path.relative_to(self.root).as_posix()
            if path.resolve() in listed or partition_of(f"{self.name}/{key}", n_partitions) != partition:
                continue  # a manifest row that names it gets its reject there
            outside = outside_root_reject(path, root, source=self.name, key=key, where=str(self.root),
                                          allowed=self.allow_outside_root)
            yield outside or Reject(self.name, key, "source", NOT_REGULAR,
                                    f"{self.root}: {not_regular(path)}; only regular files are read")

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.manifest.fingerprint().encode() if self.manifest is not None else b"")
        root = resolved_root(self.root)
        for p in self._files():
            if not self.allow_outside_root and not is_under(p, root):
                h.update(f"{p.relative_to(self.root).as_posix()}:outside".encode())
                continue
            st = p.stat()
            h.update(f"{p.relative_to(self.root).as_posix()}:{st.st_size}:{st.st_mtime_ns}".encode())
        for p in self._special_files():  # never opened, but their rejects belong to the inputs
            h.update(f"{p.relative_to(self.root).as_posix()}:not_regular".encode())
        return h.hexdigest()

    def vocabulary(self) -> dict[str, list[str]]:
        return self.manifest.vocabulary() if self.manifest is not None else {}  # unlisted files carry no labels
