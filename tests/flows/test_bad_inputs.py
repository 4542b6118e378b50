"""Corrupt, empty, NaN and odd-rate files and a manifest with missing files and bad fields:
the run completes, every bad item is a reject with its reason, the good ones are in the version."""

import json

import numpy as np
import pytest
import soundfile as sf
import yaml

from dataflux.config import load_config
from dataflux.storage.catalog import Catalog

pytestmark = pytest.mark.slow


def _tone(path, sr=16000, seconds=2.0, freq=440.0, level=0.1):
    t = np.arange(int(sr * seconds)) / sr
    sf.write(path, level * np.sin(2 * np.pi * freq * t), sr, subtype="PCM_16")


def test_bad_audio_and_bad_manifest_rows_become_rejects_with_reasons(tmp_path, dataflux_home):
    audio = tmp_path / "audio"
    audio.mkdir()
    _tone(audio / "good1.wav")
    _tone(audio / "good2.wav", freq=880.0)
    _tone(audio / "good4.wav", freq=660.0)
    sf.write(audio / "good3.flac", 0.1 * np.sin(2 * np.pi * 220 * np.arange(32000) / 16000), 16000)
    (audio / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage" + bytes(100))
    (audio / "empty.wav").write_bytes(b"")
    nan = np.full(16000, np.nan, dtype=np.float32)
    sf.write(audio / "nan.wav", nan, 16000, subtype="FLOAT")
    _tone(audio / "oddrate.wav", sr=500, seconds=2.0, freq=50.0)
    rows = [
        {"file": "good1.wav", "label": "beep"}, {"file": "good2.wav", "label": "whistle"},
        {"file": "good3.flac", "label": "hum"}, {"file": "corrupt.wav", "label": "bell"},
        {"file": "empty.wav", "label": "beep"}, {"file": "nan.wav", "label": "beep"},
        {"file": "oddrate.wav", "label": "beep"}, {"file": "missing.wav", "label": "beep"},
        {"file": "good1.wav"},  # label missing: another copy of r0's audio
        {"file": "good4.wav", "label": "chime"},  # options come from decodable clips only: 4 labels here
    ]
    manifest = tmp_path / "labels.jsonl"
    manifest.write_text("\n".join(json.dumps({**r, "id": f"r{i}"}) for i, r in enumerate(rows)) + "\n{oops\n")
    config_path = tmp_path / "data_catalog.yaml"
    config_path.write_text(yaml.safe_dump({
        "version": 1,
        "sources": {"mine": {"kind": "folder", "path": str(audio), "labels": str(manifest),
                             "fields": {"file": "file", "label": "label", "id": "id"},
                             "taxonomy": ["sound_source", "duration"]}},
        "run": {"partitions": 2},
    }))
    from flows.synthesize import run_synthesis

    config = load_config(config_path)
    summary = run_synthesis(config)
    assert summary["status"] == "completed"
    cat = Catalog(config.catalog_path, read_only=True)
    _, rejects = cat.query(f"SELECT source_id, reason FROM rejects WHERE version_id = '{summary['version']}'")
    by_id = {}
    for sid, reason in rejects:
        by_id.setdefault(sid, set()).add(reason)
    assert "unreadable" in by_id["r3"]
    assert by_id["r4"] & {"empty", "unreadable"}
    assert "nan_samples" in by_id["r5"]
    assert "bad_sample_rate" in by_id["r6"]
    assert "missing_file" in by_id["r7"]
    assert "duplicate_audio" in by_id["r8"]  # the same file again is processed once
    assert any(k.startswith("row") for k in by_id)  # the unparsable line, named by its row
    _, kept = cat.query(f"SELECT DISTINCT source_id FROM {cat.samples_relation_sql(summary['version'])} ORDER BY 1")
    assert [k[0] for k in kept] == ["r0", "r1", "r2", "r9"]
    _, options = cat.query(f"SELECT DISTINCT unnest(choices) FROM {cat.samples_relation_sql(summary['version'])}")
    assert sorted(o[0] for o in options) == ["beep", "chime", "hum", "whistle"]  # never "bell" (corrupt audio)
