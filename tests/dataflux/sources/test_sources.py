import json

import numpy as np
import soundfile as sf

from dataflux.records import Reject, SourceItem
from dataflux.sources.folder import FolderSource
from dataflux.sources.hf import HFSource
from dataflux.sources.manifest import ManifestSource


def _wav(path, seconds=0.5, sr=16000, freq=440.0):
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, 0.3 * np.sin(2 * np.pi * freq * t), sr)


def _all(source, n=3):
    out = []
    for p in range(n):
        out.extend(source.iter_items(p, n))
    return out


def test_folder_without_labels_lists_every_audio_file_once_across_partitions(tmp_path):
    for i in range(7):
        _wav(tmp_path / f"clip{i}.wav")
    (tmp_path / "notes.txt").write_text("not audio")
    items = _all(FolderSource("f", tmp_path))
    assert sorted(i.source_id for i in items) == [f"clip{i}.wav" for i in range(7)]
    assert all(isinstance(i, SourceItem) for i in items)


def test_csv_manifest_rejects_missing_files_naming_the_row_and_keeps_rows_without_a_label(tmp_path):
    (tmp_path / "audio").mkdir()
    _wav(tmp_path / "audio" / "a.wav")
    _wav(tmp_path / "audio" / "b.wav")
    (tmp_path / "meta.csv").write_text("filename,category\na.wav,dog\nmissing.wav,cat\nb.wav,\n,rain\n")
    src = FolderSource("esc", tmp_path / "audio", labels="../meta.csv",
                       fields={"file": "filename", "label": "category"})
    items = _all(src)
    good = {i.source_id: i for i in items if isinstance(i, SourceItem)}
    bad = {i.source_id: i for i in items if isinstance(i, Reject)}
    assert good["a.wav"].labels == {"labels": ["dog"], "sound_source": "dog"}
    assert good["b.wav"].labels == {}  # an empty optional label is absent, not an error
    assert bad["missing.wav"].reason == "missing_file" and "meta.csv:2" in bad["missing.wav"].detail
    assert bad["row4"].reason == "bad_field"
    assert src.vocabulary() == {"sound_source": ["dog"]}  # never from the rejected rows' labels


def test_jsonl_manifest_reports_invalid_json_lines(tmp_path):
    _wav(tmp_path / "x.wav")
    lines = [json.dumps({"file": "x.wav", "label": "tone", "transcript": "hello"}), "{not json", "[1, 2]"]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    items = _all(ManifestSource("m", tmp_path / "m.jsonl", fields={"transcript": "transcript"}), n=1)
    good = [i for i in items if isinstance(i, SourceItem)]
    bad = [i for i in items if isinstance(i, Reject)]
    assert good[0].labels == {"labels": ["tone"], "sound_source": "tone", "transcript": "hello"}
    assert sorted(b.reason for b in bad) == ["bad_row", "bad_row"]
    assert any("m.jsonl:2" in b.detail for b in bad)


def test_hf_parquet_source_keeps_original_bytes(tmp_path):
    import datasets

    out = tmp_path / "pq"  # the rows hold paths, which must lie under the dataset's folder
    out.mkdir()
    _wav(out / "a.wav")
    _wav(out / "b.wav", freq=880)
    ds = datasets.Dataset.from_dict({"audio": [str(out / "a.wav"), str(out / "b.wav")],
                                     "label": ["low", "high"]}).cast_column("audio", datasets.Audio())
    ds.to_parquet(str(out / "train.parquet"))
    items = _all(HFSource("hfs", str(out)), n=2)
    assert sorted(i.labels["sound_source"] for i in items) == ["high", "low"]
    assert all(i.audio_bytes[:4] == b"RIFF" for i in items)
