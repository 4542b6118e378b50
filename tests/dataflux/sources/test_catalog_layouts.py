"""Each corpus layout commented in data_catalog.yaml yields rows on a small corpus of that shape.

The layouts are read out of the file's comments (so the documentation cannot drift from what is run),
uncommented, pointed at a corpus built here under a temporary folder that mirrors the layout's own
path (`/data/LibriSpeech/dev-clean` -> `<tmp>/data/LibriSpeech/dev-clean`, its `labels` kept as
written), and run through the command line in a fresh DATAFLUX_HOME. The corpora are a dozen real
recordings each from `tests/helpers/real_audio.py` (Debian packages: Asterisk's spoken prompts for the speech
layouts, the freedesktop sound theme for the others), written in each corpus's own file format,
folder tree and metadata columns.
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from tests.helpers import real_audio as ra

ROOT = Path(__file__).resolve().parents[3]
LAYOUTS = ("librispeech", "common_voice", "esc50", "audiocaps", "clotho", "gtzan", "nsynth")
N_CLIPS = 12
# leaves each layout's taxonomy must make rows of on its corpus: the corpus's own kind of question, not only
# the measurements every recording gets (esc50 keeps measured rows only: its class labels are metadata)
OWN_LEAVES = {"librispeech": {"spoken_text", "spoken_word_count", "speaker_gender"},
              "common_voice": {"spoken_text", "spoken_language", "speaker_gender"},
              "esc50": {"relative_duration"}, "audiocaps": {"relative_duration"}, "clotho": {"relative_duration"},
              "gtzan": {"music_genre"}, "nsynth": {"music_instrument"}}


def commented_layouts(catalog: Path = ROOT / "data_catalog.yaml") -> dict[str, dict]:
    """The sources commented out under `sources:` in data_catalog.yaml, parsed as YAML."""
    block = catalog.read_text().split("\nsources:\n", 1)[1].split("\nendpoints:", 1)[0]
    lines = [m.group(1) for m in re.finditer(r"^  # (\S.*|\s+\S.*)$", block, re.M)]
    body = "\n".join("  " + ln for ln in lines if re.match(r"^[a-z_0-9]+:\s*(#.*)?$|^\s+", ln))
    return yaml.safe_load("sources:\n" + body)["sources"]


# ---- real recordings, written in each corpus's shape -----------------------------------------------

def _audio(path: str) -> tuple[np.ndarray, int]:
    return sf.read(path, dtype="float32", always_2d=False)


def _write(src: str, dest: Path, fmt: str) -> Path:
    y, sr = _audio(src)
    dest.parent.mkdir(parents=True, exist_ok=True)
    sf.write(dest, y, sr, format=fmt)
    return dest


def _encoded(src: str, fmt: str) -> bytes:
    y, sr = _audio(src)
    buf = io.BytesIO()
    sf.write(buf, y, sr, format=fmt)
    return buf.getvalue()


def _speech(language: str) -> list[dict]:
    records, _ = ra.speech_records((language,))
    return ra.subset(records, N_CLIPS, seed=3)


def _events() -> list[dict]:
    records, _ = ra.event_records()
    return [r for r in records if r["id"] != "bell"][:N_CLIPS]  # the bell (0.14 s) is shorter than any clip kept


def _librispeech(spec: dict, folder: Path) -> None:
    """<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac and a TSV written from the transcripts (upper case
    without punctuation, as LibriSpeech's *.trans.txt are) and SPEAKERS.TXT's sex (F)."""
    rows = []
    for i, r in enumerate(_speech("en")):
        rel = f"1272/128104/1272-128104-{i:04d}.flac"
        _write(r["file"], folder / rel, "FLAC")
        text = " ".join(re.sub(r"[^\w' ]+", " ", r["transcript"]).upper().split())
        rows.append({"file": rel, "transcript": text, "speaker": "1272", "gender": "F", "language": "en"})
    _write_table(folder / spec["labels"], rows, delimiter="\t")


def _common_voice(spec: dict, folder: Path) -> None:
    """clips/*.mp3 and validated.tsv with Common Voice's own columns."""
    columns = ["client_id", "path", "sentence_id", "sentence", "sentence_domain", "up_votes", "down_votes",
               "age", "gender", "accents", "variant", "locale", "segment"]
    rows = []
    for i, r in enumerate(_speech("en")):
        name = f"common_voice_en_{41000000 + i}.mp3"
        _write(r["file"], folder / name, "MP3")
        rows.append({"client_id": "4f1c" * 16, "path": name, "sentence_id": f"{i:064x}", "sentence": r["transcript"],
                     "sentence_domain": "", "up_votes": 2, "down_votes": 0, "age": "thirties",
                     "gender": "female_feminine", "accents": "United States English", "variant": "",
                     "locale": "en", "segment": ""})
    _write_table(folder / spec["labels"], rows, delimiter="\t", columns=columns)


def _esc50(spec: dict, folder: Path) -> None:
    """audio/<fold>-<src>-<take>-<target>.wav and meta/esc50.csv with ESC-50's columns."""
    classes = sorted({r["label"] for r in _events()})
    rows = []
    for i, r in enumerate(_events()):
        target = classes.index(r["label"])
        name = f"{1 + i % 5}-{100032 + i}-A-{target}.wav"
        _write(r["file"], folder / name, "WAV")
        rows.append({"filename": name, "fold": 1 + i % 5, "target": target, "category": r["label"].replace(" ", "_"),
                     "esc10": "False", "src_file": 100032 + i, "take": "A"})
    _write_table(folder / spec["labels"], rows, delimiter=",")


def _clotho(spec: dict, folder: Path) -> None:
    """<name>.wav and clotho_captions_development.csv (file_name, caption_1..caption_5)."""
    rows = []
    for r in _events():
        name = f"{r['id'].replace('-', ' ')}.wav"
        _write(r["file"], folder / name, "WAV")
        rows.append({"file_name": name, **{f"caption_{k}": f"A {r['label']} sounds once or more." for k in range(1, 6)}})
    _write_table(folder / spec["labels"], rows, delimiter=",")


def _nsynth(spec: dict, folder: Path) -> None:
    """audio/<note>.wav and examples.jsonl with the family and qualities of each note."""
    families = ["bass", "brass", "flute", "guitar", "keyboard", "mallet", "organ", "reed", "string", "vocal"]
    qualities = [["bright"], ["dark", "percussive"], ["fast_decay"], ["reverb", "long_release"]]
    lines = []
    for i, r in enumerate(_events()):
        family = families[i % len(families)]
        name = f"{family}_acoustic_{i:03d}-060-100"
        _write(r["file"], folder / f"{name}.wav", "WAV")
        lines.append(json.dumps({"file": f"{name}.wav", "note_str": name, "instrument_family_str": family,
                                 "qualities_str": qualities[i % len(qualities)]}))
    (folder / spec["labels"]).resolve().write_text("\n".join(lines) + "\n")


def _parquet(folder: Path, columns: dict, features: dict) -> None:
    """A Parquet dataset written by `datasets`, as a hub dataset's Parquet export is."""
    import datasets

    ds = datasets.Dataset.from_dict(columns, features=datasets.Features(features))
    folder.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(folder / "train-00000-of-00001.parquet"))


def _audiocaps(spec: dict, folder: Path) -> None:
    import datasets

    clips = _events()
    _parquet(folder, {
        "audiocap_id": [str(91000 + i) for i in range(len(clips))],
        "audio": [{"bytes": _encoded(r["file"], "WAV"), "path": f"{r['id']}.wav"} for r in clips],
        "caption": [f"A {r['label']} is heard indoors." for r in clips],
    }, {"audiocap_id": datasets.Value("string"), "audio": datasets.Audio(decode=False),
        "caption": datasets.Value("string")})


def _gtzan(spec: dict, folder: Path) -> None:
    """The genre as a ClassLabel id, as GTZAN's Parquet export holds it."""
    import datasets

    genres = ["blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock"]
    clips = _events()
    _parquet(folder, {
        "audio": [{"bytes": _encoded(r["file"], "WAV"), "path": f"{r['id']}.wav"} for r in clips],
        "genre": [i % 5 for i in range(len(clips))],
    }, {"audio": datasets.Audio(decode=False), "genre": datasets.ClassLabel(names=genres)})


BUILDERS = {"librispeech": _librispeech, "common_voice": _common_voice, "esc50": _esc50, "audiocaps": _audiocaps,
            "clotho": _clotho, "gtzan": _gtzan, "nsynth": _nsynth}


def _write_table(path: Path, rows: list[dict], *, delimiter: str, columns: list[str] | None = None) -> None:
    path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns or list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)


# ---- the layouts, run -------------------------------------------------------------------------------

def _run_cli(*args: str, cwd: Path, env_home: Path) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "DATAFLUX_HOME": str(env_home)}
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900, env=env)


def test_every_layout_named_in_data_catalog_yaml_is_built_here():
    assert set(commented_layouts()) == set(LAYOUTS) == set(BUILDERS) == set(OWN_LEAVES)


@pytest.mark.slow
@pytest.mark.parametrize("name", LAYOUTS)
def test_a_commented_layout_yields_rows_on_a_corpus_of_its_shape(name, tmp_path):
    spec = dict(commented_layouts()[name])
    spec["path"] = str(tmp_path / spec["path"].lstrip("/"))
    folder = Path(spec["path"])
    if spec["kind"] == "folder":
        folder.mkdir(parents=True)
    BUILDERS[name](spec, folder)
    config = yaml.safe_load((ROOT / "data_catalog.yaml").read_text())
    config["sources"] = {name: spec}
    config.pop("schedules", None)  # they name the demo source
    config["run"]["partitions"] = 1
    path = tmp_path / "data_catalog.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))

    done = _run_cli("run", "--config", str(path), "--json", "--quiet", cwd=tmp_path, env_home=tmp_path / "home")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["status"] == "completed" and "finalized" in summary and "empty" not in summary, summary
    assert summary["items"] == N_CLIPS, summary
    stats = _stats(path, summary["version"], tmp_path)
    assert summary["finalized"]["n_rows"] == summary["rows"] > 0, (summary, stats["rejects_by_reason"])
    assert OWN_LEAVES[name] <= set(stats["samples_per_category"]), (stats["samples_per_category"],
                                                                    stats["rejects_by_reason"])


def _stats(config: Path, version: str, tmp_path: Path) -> dict:
    done = _run_cli("stats", version, "--config", str(config), "--json", cwd=tmp_path, env_home=tmp_path / "home")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)
