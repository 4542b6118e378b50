"""Byte-identical files under several names, in different partitions and sources, never stop
finalize: each audio is processed once, every file ends in the version or in the rejects with a
reason naming the kept copy, and options come only from clips the version keeps."""

import shutil

import numpy as np
import pytest
import soundfile as sf
import yaml

from dataflux.config import load_config
from dataflux.storage.catalog import Catalog

pytestmark = pytest.mark.slow


def _tone(path, freq):
    t = np.arange(16000) / 16000
    sf.write(path, 0.1 * np.sin(2 * np.pi * freq * t), 16000, subtype="PCM_16")


def test_identical_files_in_two_partitions_and_two_sources_finalize_with_every_file_accounted(tmp_path, dataflux_home):
    main, extra = tmp_path / "main", tmp_path / "extra"
    main.mkdir(), extra.mkdir()
    for i, name in enumerate(("dog", "cat", "bird", "rain", "bell")):
        _tone(main / f"{name}.wav", 200 + 150 * i)
    shutil.copy(main / "dog.wav", main / "dog2.wav")   # partition 1 of 2; dog.wav is in partition 0
    shutil.copy(main / "dog.wav", main / "dog3.wav")   # same audio, another transcript: a conflict
    _tone(main / "long.wav", 1900)
    (tmp_path / "main.csv").write_text(
        "file,label,transcript\n"
        "dog.wav,dog,woof\ncat.wav,cat,\nbird.wav,bird,\nrain.wav,rain,\nbell.wav,bell,\n"
        "dog2.wav,puppy,woof\ndog3.wav,wolf,howl\n"
        f"long.wav,{'z' * 5000},\n")
    shutil.copy(main / "cat.wav", extra / "copy.wav")  # the same audio in a second source
    (tmp_path / "data_catalog.yaml").write_text(yaml.safe_dump({
        "version": 1,
        "sources": {
            "main": {"kind": "folder", "path": str(main), "labels": "../main.csv",
                     "fields": {"label": "label", "transcript": "transcript"}, "taxonomy": ["sound_source"]},
            "extra": {"kind": "folder", "path": str(extra), "taxonomy": ["sound_source"]},
        },
        "run": {"partitions": 2, "task_runner": "sequential"},
    }, sort_keys=False))  # the run takes the sources in file order: main first
    from flows.synthesize import run_synthesis

    config = load_config(tmp_path / "data_catalog.yaml")
    summary = run_synthesis(config)
    assert summary["status"] == "completed" and "finalized" in summary
    vid = summary["version"]
    cat = Catalog(config.catalog_path, read_only=True)
    _, rejects = cat.query(f"SELECT source, source_id, reason, detail FROM rejects WHERE version_id = '{vid}'")
    by_id = {(s, i): (r, d) for s, i, r, d in rejects}
    assert by_id[("main", "dog2.wav")][0] == "duplicate_audio" and "main/dog.wav" in by_id[("main", "dog2.wav")][1]
    assert by_id[("main", "dog3.wav")][0] == "duplicate_conflict"
    assert "main/dog.wav" in by_id[("main", "dog3.wav")][1] and "main/dog3.wav" in by_id[("main", "dog3.wav")][1]
    assert by_id[("extra", "copy.wav")][0] == "duplicate_audio" and "main/cat.wav" in by_id[("extra", "copy.wav")][1]
    assert by_id[("main", "long.wav")][0] == "field_too_long"
    _, ledger = cat.query(f"SELECT source, source_id, status FROM items WHERE version_id = '{vid}'")
    assert len(ledger) == 9  # 8 rows of main.csv + extra's one file: none missing
    _, rows = cat.query(f"SELECT source_id, answer, choices FROM {cat.samples_relation_sql(vid)}")
    assert sorted(r[0] for r in rows) == ["bell.wav", "bird.wav", "cat.wav", "dog.wav", "rain.wav"]
    options = {c for r in rows for c in r[2]}
    assert "puppy" in options and "wolf" not in options and not any(len(c) > 100 for c in options)
    stats = cat.stats(vid)
    assert stats["questions_per_clip"]["histogram"] == {1: 5}
    assert stats["categories_per_source"] == {"main": {"sound_source": 5}}
