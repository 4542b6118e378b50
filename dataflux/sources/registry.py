"""Open a configured source by kind."""

from __future__ import annotations

import hashlib
import json
from typing import Iterator

from dataflux import __version__
from dataflux.config import Config
from dataflux.records import Reject, SourceItem
from dataflux.sources.demo import iter_demo_items
from dataflux.sources.folder import FolderSource
from dataflux.sources.hf import HFSource
from dataflux.sources.manifest import ManifestSource


class DemoSource:
    """The embedded demo corpus (dataflux.sources.demo), made on the fly and deterministic."""

    def __init__(self, name: str, *, size: int = 240, seed: int = 0, error_rate: float = 0.1,
                 license: str = "CC0-1.0 (synthesized)"):
        self.name = name
        self.size, self.seed, self.error_rate, self.license = size, seed, error_rate, license

    def iter_items(self, partition: int = 0, n_partitions: int = 1) -> Iterator[SourceItem | Reject]:
        for item in iter_demo_items(self.size, seed=self.seed, error_rate=self.error_rate,
                                    partition=partition, n_partitions=n_partitions):
            item.source = self.name
            item.license = self.license
            yield item

    def fingerprint(self) -> str:
        spec = {"size": self.size, "seed": self.seed, "error_rate": self.error_rate, "code": __version__}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()

    def vocabulary(self) -> dict[str, list[str]]:
        return {}


def open_source(config: Config, name: str):
    if name not in config.sources:
        raise KeyError(f"unknown source {name!r}; data_catalog.yaml defines {sorted(config.sources)}")
    spec = config.sources[name]
    kind = spec["kind"]
    license = spec.get("license", "unknown")
    fields = spec.get("fields")
    outside = bool(spec.get("allow_outside_root", False))  # dataflux.sources.confine
    if kind == "demo":
        return DemoSource(name, size=spec.get("size", 240), seed=spec.get("seed", 0),
                          error_rate=spec.get("error_rate", 0.1), license=spec.get("license", "CC0-1.0 (synthesized)"))
    path = config.resolve_source_path(spec["path"])
    if kind == "folder":
        return FolderSource(name, path, labels=spec.get("labels"), fields=fields, license=license,
                            format=spec.get("format"), allow_outside_root=outside)
    if kind == "manifest":
        return ManifestSource(name, path, fields=fields, license=license, format=spec.get("format"),
                              allow_outside_root=outside)
    if kind == "hf":
        return HFSource(name, path, data_format=spec.get("data_format"), split=spec.get("split", "train"),
                        streaming=spec.get("streaming", False), fields=fields, license=license,
                        limit=spec.get("limit"), allow_outside_root=outside)
    raise ValueError(f"source {name!r}: unknown kind {kind!r}")
