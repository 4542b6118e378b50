"""Real recordings for the tests, fetched from Debian packages (nothing installed, no audio in the repo).

- Speech: the Asterisk PBX core prompts, read by professional speakers, with the text of every
  prompt in the package's `core-sounds-<lang>.txt`: US English (Allison, female) and Italian
  (Carlo, male), 8 kHz telephone-band WAV; also Mexican Spanish (Allison, female), Canadian French
  (June, female) and Russian (female), which the multilingual recognizer's tests use.
- Sound events: the freedesktop sound theme (bell, phone ringing, camera shutter, ...).
- Speech with male and female voices in Dutch and Czech: the dialogs of the game Fish Fillets NG, the
  big fish (a man's voice) and the small fish (a woman's), with the text of every line in the level's
  `dialogs_<lang>.lua` (`fillets_records`).
- Drum and percussion samples: Hydrogen's drum kits, one record per sample file with the kit's own
  instrument name and a class read from it by keyword (`drum_records`, `DRUM_CLASSES`).

`apt-get download` + `dpkg -x` into a cache directory (DATAFLUX_TEST_AUDIO, default
~/.cache/dataflux-test-audio); a second session reuses it. When apt cannot fetch, the set-up
raises: the tests that need real audio fail, they are never skipped.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import re
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

# package -> version the figures were measured on (any later version of the same package works)
SPEECH_PACKAGES = {
    "en": ("asterisk-core-sounds-en-wav", "asterisk-core-sounds-en", "en_US_f_Allison"),
    "it": ("asterisk-core-sounds-it-wav", "asterisk-core-sounds-it", "it_IT_m_Carlo"),
    # read by other speakers, in languages the pipeline's own tests do not use (the multilingual recognizer's)
    "es": ("asterisk-core-sounds-es-wav", "asterisk-core-sounds-es", "es_MX_f_Allison"),
    "fr": ("asterisk-core-sounds-fr-wav", "asterisk-core-sounds-fr", "fr_CA_f_June"),
    "ru": ("asterisk-core-sounds-ru-wav", "asterisk-core-sounds-ru", "ru_RU_f_IvrvoiceRU"),
}
EVENT_PACKAGE = "sound-theme-freedesktop"
# Fish Fillets NG: the scripts (every language's texts) in the base package, each language's speech in its own
FILLETS_PACKAGES = {"nl": "fillets-ng-data-nl", "cs": "fillets-ng-data-cs"}
FILLETS_BASE = "fillets-ng-data"
FILLETS_DIR = "usr/share/games/fillets-ng"
# the dialog's font is its speaker: the big fish is voiced by a man, the small fish by a woman (other fonts,
# the game's other characters, are left out)
FILLETS_VOICES = {"font_big": ("big", "male"), "font_small": ("small", "female")}
DRUM_PACKAGE = "hydrogen-drumkits"
DRUMKITS_DIR = "usr/share/hydrogen/data/drumkits"
KNOWN_VERSIONS = {"asterisk-core-sounds-en-wav": "1.6.1-1", "asterisk-core-sounds-en": "1.6.1-1",
                  "asterisk-core-sounds-it-wav": "1.6.1-1", "asterisk-core-sounds-it": "1.6.1-1",
                  "sound-theme-freedesktop": "0.8-2",
                  **{f"asterisk-core-sounds-{lang}{kind}": "1.6.1-1" for lang in ("es", "fr", "ru") for kind in ("", "-wav")},
                  "fillets-ng-data": "1.0.1-1.1", "fillets-ng-data-nl": "1.0.1-1.1", "fillets-ng-data-cs": "1.0.1-1.1",
                  "hydrogen-drumkits": "2017.09.19~dfsg-1"}

# The freedesktop theme's file names are event names, not sound classes: the class each one sounds like.
EVENT_CLASSES = {
    "alarm-clock-elapsed": "alarm clock", "bell": "bell", "camera-shutter": "camera shutter",
    "complete": "chime", "device-added": "chime", "device-removed": "chime",
    "dialog-information": "chime", "dialog-warning": "alert tone", "message": "chime",
    "message-new-instant": "chime", "phone-incoming-call": "phone ringing",
    "phone-outgoing-busy": "busy signal", "phone-outgoing-calling": "ringback tone",
    "power-plug": "chime", "power-unplug": "chime", "screen-capture": "camera shutter",
    "service-login": "chime", "service-logout": "chime", "suspend-error": "alert tone",
    "trash-empty": "crumpling paper", "audio-volume-change": "click",
    "audio-test-signal": "pink noise", "window-attention": "chime",
}

# Hydrogen's instrument names ("Hi-Hat Closed (Paiste ...)", "PowR_BD_1.flac", "c3 - bass drum 1") -> a class,
# by keyword on the name with "_-./" read as spaces. A name matching no class ("Agogo", "Sample: beats_01-10")
# or more than one ("Crash/Ride") gets none.
DRUM_CLASSES = {
    "kick": r"kick|bass ?drum|\bbd\d*\b",
    "snare": r"snare",
    "hi-hat": r"hi ?hat|hihat|openhat|\bhat\b|\b[co]?hh\b",
    "tom": r"\btom",
    "crash": r"crash|\bcra\b",
    "ride": r"\bride\b",
    "clap": r"clap",
    "cowbell": r"cowbell",
    "side stick": r"\bstick\b",
    "tambourine": r"tambourine",
    "hand drum": r"djembe|conga|bongo|cajon",
}


class RealAudioUnavailable(RuntimeError):
    """apt could not fetch a package the real-audio tests need."""


def cache_dir() -> Path:
    return Path(os.environ.get("DATAFLUX_TEST_AUDIO", Path.home() / ".cache" / "dataflux-test-audio"))


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)


def fetch_package(name: str, root: Path | None = None) -> tuple[Path, str]:
    """Download `name` with apt and unpack it under `<cache>/root`; returns (root, version)."""
    base = cache_dir()
    root = root or base / "root"
    debs = base / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    stamp = base / f"{name}.unpacked"
    if stamp.exists():
        return root, stamp.read_text().strip()
    found = sorted(debs.glob(f"{name}_*.deb"))
    if not found:
        got = _run(["apt-get", "download", name], debs)
        if got.returncode != 0 and os.geteuid() == 0:  # a fresh machine may have no package lists yet
            _run(["apt-get", "update", "-qq"], debs)
            got = _run(["apt-get", "download", name], debs)
        found = sorted(debs.glob(f"{name}_*.deb"))
        if got.returncode != 0 or not found:
            raise RealAudioUnavailable(
                f"`apt-get download {name}` failed (exit {got.returncode}): {got.stderr.strip()[-400:]}; "
                f"the real-audio tests need Debian's apt with network access to deb.debian.org")
    deb = found[-1]
    unpacked = _run(["dpkg", "-x", str(deb), str(root)], debs)
    if unpacked.returncode != 0:
        raise RealAudioUnavailable(f"`dpkg -x {deb}` failed: {unpacked.stderr.strip()[-400:]}")
    version = _run(["dpkg-deb", "-f", str(deb), "Version"], debs).stdout.strip()
    stamp.write_text(version)
    return root, version


@dataclass
class Corpus:
    manifest: Path  # JSONL: file, id, transcript / label, gender, language, speaker
    records: list[dict]
    packages: dict[str, str]  # package -> version


def _prompts(text_gz: Path) -> dict[str, str]:
    out = {}
    with gzip.open(text_gz, "rt", encoding="utf-8-sig", errors="replace") as f:
        for line in f:
            if line.startswith(";") or ":" not in line:
                continue
            key, text = line.split(":", 1)
            out[key.strip()] = " ".join(text.split())
    return out


def _spoken(text: str) -> bool:
    """A prompt text that is words a voice reads (not '[beep tone]', '...', or empty)."""
    return bool(text) and not text.startswith("[") and len(re.findall(r"[^\W\d_]", text)) >= 2


def speech_records(languages: tuple[str, ...] = ("en", "it")) -> tuple[list[dict], dict[str, str]]:
    """Every spoken prompt of the packaged languages, with its transcript and speaker facts."""
    records, packages = [], {}
    for lang in languages:
        wav_pkg, text_pkg, voice = SPEECH_PACKAGES[lang]
        root, v1 = fetch_package(wav_pkg)
        _, v2 = fetch_package(text_pkg)
        packages[wav_pkg], packages[text_pkg] = v1, v2
        sounds = root / "usr/share/asterisk/sounds" / voice
        texts = _prompts(root / f"usr/share/doc/{text_pkg}/core-sounds-{lang}.txt.gz")
        gender = {"f": "female", "m": "male"}[voice.split("_")[2]]
        for key in sorted(texts):
            wav = sounds / f"{key}.wav"
            if _spoken(texts[key]) and wav.exists() and not key.startswith("silence/"):
                records.append({"file": str(wav), "id": f"{lang}/{key}", "transcript": texts[key],
                                "gender": gender, "language": lang, "speaker": voice.split("_", 3)[3],
                                "label": "speech"})
    return records, packages


def event_records() -> tuple[list[dict], dict[str, str]]:
    root, version = fetch_package(EVENT_PACKAGE)
    folder = root / "usr/share/sounds/freedesktop/stereo"
    records, seen = [], set()
    for p in sorted(folder.glob("*.oga")):
        digest = hashlib.sha256(p.read_bytes()).hexdigest()
        if p.stem in EVENT_CLASSES and not p.is_symlink() and digest not in seen:  # one file per sound
            seen.add(digest)
            records.append({"file": str(p), "id": p.stem, "label": EVENT_CLASSES[p.stem]})
    return records, {EVENT_PACKAGE: version}


# dialogId("<id>", "<font>", "<English>") then dialogStr("<the line in the file's language>"), Lua-quoted
_LUA_STR = r'"((?:[^"\\]|\\.)*)"'
_DIALOG = re.compile(rf"dialogId\(\s*{_LUA_STR}\s*,\s*{_LUA_STR}\s*,\s*{_LUA_STR}\s*\)\s*dialogStr\(\s*{_LUA_STR}\s*\)")


def _lua_unquote(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": " ", "t": " "}.get(m.group(1), m.group(1)), text)


def fillets_records(language: str) -> tuple[list[dict], dict[str, str]]:
    """The big and the small fish's spoken lines in `language` ("nl" or "cs"), with their texts.

    A line is kept when its sound file `sound/<level>/<lang>/<id>.ogg` exists and its text is not empty.
    """
    root, v1 = fetch_package(FILLETS_PACKAGES[language])
    _, v2 = fetch_package(FILLETS_BASE)
    game = root / FILLETS_DIR
    records = []
    for script in sorted(game.glob(f"script/*/dialogs_{language}.lua")):
        level = script.parent.name
        for ident, font, _english, text in _DIALOG.findall(script.read_text(encoding="utf-8")):
            sound = game / "sound" / level / language / f"{ident}.ogg"
            text = " ".join(_lua_unquote(text).split())
            if font not in FILLETS_VOICES or not _spoken(text) or not sound.is_file():
                continue
            fish, gender = FILLETS_VOICES[font]
            records.append({"file": str(sound), "id": f"{language}/{level}/{ident}", "transcript": text,
                            "gender": gender, "language": language, "speaker": f"fillets-{language}-{fish}",
                            "label": "speech"})
    return records, {FILLETS_PACKAGES[language]: v1, FILLETS_BASE: v2}


def drum_class(name: str) -> str | None:
    """The DRUM_CLASSES class an instrument name says, or None (no class, or more than one)."""
    words = re.sub(r"[_\-./]+", " ", name).lower()
    found = [cls for cls, pattern in DRUM_CLASSES.items() if re.search(pattern, words)]
    return found[0] if len(found) == 1 else None


def _kit_instruments(drumkit_xml: Path) -> list[tuple[str, list[str]]]:
    """(instrument name, its layers' sample files) for each <instrument> of a Hydrogen drumkit.xml."""
    out = []
    for element in ET.parse(drumkit_xml).getroot().iter():
        if element.tag.rsplit("}", 1)[-1] != "instrument":
            continue
        name = next((c.text or "" for c in element if c.tag.rsplit("}", 1)[-1] == "name"), "")
        files = [c.text.strip() for c in element.iter() if c.tag.rsplit("}", 1)[-1] == "filename" and c.text]
        out.append((name.strip(), files))
    return out


def drum_records() -> tuple[list[dict], dict[str, str]]:
    """One record per sample file of every Hydrogen kit whose instrument name has a class.

    A sample a kit lists under two instruments, or one byte-identical to a sample already taken,
    is taken once (the first).
    """
    root, version = fetch_package(DRUM_PACKAGE)
    records, seen = [], set()
    for xml in sorted((root / DRUMKITS_DIR).glob("*/drumkit.xml")):
        kit = xml.parent
        for name, files in _kit_instruments(xml):
            instrument = drum_class(name)
            for rel in files:
                sample = kit / rel
                if instrument is None or not sample.is_file():
                    continue
                digest = hashlib.sha256(sample.read_bytes()).hexdigest()
                if digest in seen:
                    continue
                seen.add(digest)
                records.append({"file": str(sample), "id": f"{kit.name}/{rel}", "kit": kit.name,
                                "instrument_name": name, "instrument": instrument})
    return records, {DRUM_PACKAGE: version}


def subset(records: list[dict], n: int, seed: int = 0, key: str = "language") -> list[dict]:
    """`n` records, the same number from each value of `key`, drawn reproducibly."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(str(r.get(key)), []).append(r)
    rng = random.Random(seed)
    out = []
    for g in sorted(groups):
        items = list(groups[g])
        rng.shuffle(items)
        out.extend(items[: n // len(groups)])
    return sorted(out, key=lambda r: r["id"])


def write_manifest(records: list[dict], path: Path, audio_root: Path | None = None) -> Path:
    """The records as JSONL, one per line, every key kept (file, id, transcript, gender, language, speaker,
    label, instrument, ...). With `audio_root`, files are written relative to it, as a manifest source
    whose audio root is that folder reads them (an absolute path outside its root is an `outside_root` reject)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            if audio_root is not None:
                r = {**r, "file": str(Path(r["file"]).relative_to(audio_root))}
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path
