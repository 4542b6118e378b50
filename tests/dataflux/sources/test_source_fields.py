"""Sources carry typed metadata: manifests as corpora write them (BOM, CRLF, quotes, TSV, JSONL),
optional fields absent when empty, limits that reject instead of truncating, cleaned labels,
identical audio surveyed once, and options only from rows that pass."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from dataflux.config import ConfigError, config_from_dict, load_config
from dataflux.records import Reject, SourceItem
from dataflux.fields import clean_label, map_record, normalise_gender, normalise_language
from dataflux.sources.folder import FolderSource
from dataflux.sources.hf import HFSource
from dataflux.sources.manifest import ManifestSource
from dataflux.sources.survey import survey_source

ROOT = Path(__file__).resolve().parents[3]


def _wav(path, freq=440.0, seconds=0.3, sr=16000):
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, 0.3 * np.sin(2 * np.pi * freq * t), sr, subtype="PCM_16")


def _split(items):
    items = list(items)
    good = {i.source_id: i for i in items if isinstance(i, SourceItem)}
    bad = {i.source_id: i for i in items if isinstance(i, Reject)}
    return good, bad


def test_csv_with_bom_crlf_and_quoted_cells_maps_every_field_and_an_empty_transcript_is_absent(tmp_path):
    for name in ("a", "b", "c"):
        _wav(tmp_path / f"{name}.wav")
    text = ("\ufefffile,label,transcript,gender,lang\r\n"
            'a.wav,Dog-Bark,"Hello, world\r\nsecond line",M,English\r\n'
            "b.wav,dog_bark,,woman,en_US\r\n"
            'c.wav,"rain; thunder",  "said ""hi"""  ,,\r\n')
    (tmp_path / "metadata.csv").write_bytes(text.encode("utf-8"))
    src = FolderSource("mine", tmp_path, labels="metadata.csv",
                       fields={"file": "file", "label": "label", "transcript": "transcript", "gender": "gender",
                               "language": "lang"})
    good, bad = _split(src.iter_items())
    assert not bad
    assert good["a.wav"].labels == {"labels": ["dog bark"], "sound_source": "dog bark",
                                    "transcript": "Hello, world second line", "gender": "male", "language": "en"}
    assert good["b.wav"].labels == {"labels": ["dog bark"], "sound_source": "dog bark", "gender": "female",
                                    "language": "en"}  # no transcript key at all
    assert good["c.wav"].labels["labels"] == ["rain", "thunder"]
    assert good["c.wav"].labels["transcript"] == 'said "hi"'


def test_common_voice_tsv_with_stray_quotes_and_an_explicit_format(tmp_path):
    (tmp_path / "clips").mkdir()
    _wav(tmp_path / "clips" / "cv1.mp3.wav")
    _wav(tmp_path / "clips" / "cv2.wav", freq=300)
    tsv = ("client_id\tpath\tsentence\tage\tgender\tlocale\n"
           'abc\tcv1.mp3.wav\t"Quoted start, no end\tthirties\tmale_masculine\ten\n'
           "def\tcv2.wav\tPlain one.\t\t\tde\n")
    (tmp_path / "validated.txt").write_text(tsv)
    src = FolderSource("cv", tmp_path / "clips", labels="../validated.txt", format="tsv",
                       fields={"file": "path", "transcript": "sentence", "speaker": "client_id", "age": "age",
                               "gender": "gender", "language": "locale"})
    good, bad = _split(src.iter_items())
    assert not bad
    assert good["cv1.mp3.wav"].labels == {"transcript": '"Quoted start, no end', "speaker": "abc", "age": "thirties",
                                          "gender": "male", "language": "en"}
    assert good["cv2.wav"].labels == {"transcript": "Plain one.", "speaker": "def", "language": "de"}
    with pytest.raises(ValueError, match="format: csv | tsv | jsonl"):
        FolderSource("cv", tmp_path / "clips", labels="../validated.txt")


def test_jsonl_list_labels_long_values_wrong_types_and_file_names_become_rejects_naming_the_field(tmp_path):
    for i in range(8):
        _wav(tmp_path / f"clip_{i:04d}.wav", freq=200 + 50 * i)
    rows = [
        {"file": "clip_0000.wav", "label": ["Dog_Bark", "rain"]},       # multi-label
        {"file": "clip_0001.wav", "label": '["siren", "car horn"]'},    # a JSON list in a cell
        {"file": "clip_0002.wav", "label": "x" * 1_000_000},            # a 1 MB label
        {"file": "clip_0003.wav", "label": "bell", "transcript": "y" * 2001},
        {"file": "clip_0004.wav", "label": {"name": "dog"}},            # neither text nor list
        {"file": "clip_0005.wav", "label": "audio/clip_0005.wav"},      # a path, not a class
        {"file": "clip_0006.wav", "label": "Clip-0006"},                # the file's own stem
        {"file": "clip_0007.wav", "label": None, "transcript": ""},     # nothing but audio
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    src = ManifestSource("j", tmp_path / "m.jsonl", fields={"transcript": "transcript"})
    good, bad = _split(src.iter_items())
    assert good["clip_0000.wav"].labels == {"labels": ["dog bark", "rain"], "sound_source": "dog bark"}
    assert good["clip_0001.wav"].labels["labels"] == ["siren", "car horn"]
    assert good["clip_0007.wav"].labels == {}
    assert bad["clip_0002.wav"].reason == "field_too_long" and "'labels'" in bad["clip_0002.wav"].detail
    assert "1000000 characters" in bad["clip_0002.wav"].detail and "m.jsonl:3" in bad["clip_0002.wav"].detail
    assert bad["clip_0003.wav"].reason == "field_too_long" and "'transcript'" in bad["clip_0003.wav"].detail
    assert bad["clip_0004.wav"].reason == "bad_field" and "'labels'" in bad["clip_0004.wav"].detail
    assert bad["clip_0005.wav"].reason == "label_not_a_class"
    assert bad["clip_0006.wav"].reason == "label_not_a_class"
    # options never come from a rejected or too-long row
    assert src.vocabulary() == {"sound_source": ["car horn", "dog bark", "rain", "siren"]}


def test_normalisers_of_language_gender_and_labels():
    assert [normalise_language(x) for x in ("English", "en_US", "eng", "de-DE", "Klingon", "Nederlands", "ces",
                                            "Mandarin", "not a language at all")] == \
        ["en", "en", "en", "de", "tlh", "nl", "cs", "zh", "not a language at all"]
    assert [normalise_gender(x) for x in ("M", "f", "Woman", "male_masculine", "other")] == \
        ["male", "female", "female", "male", "other"]
    assert clean_label("dog_bark") == clean_label("Dog-Bark") == clean_label("  dog   bark ") == "dog bark"
    assert clean_label("dog.wav") == "dog.wav"
    assert map_record({"c": "dog"}, {"label": "c"}, file_stem="dog") == {"labels": ["dog"], "sound_source": "dog"}


def test_a_mapped_field_that_is_neither_known_nor_a_leaf_is_a_config_error_naming_file_and_path(tmp_path):
    path = tmp_path / "data_catalog.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "sources": {"mine": {
        "kind": "folder", "path": str(tmp_path), "fields": {"file": "f", "colour": "c", "gender": "g"}}}}))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "sources.mine.fields.colour" in str(err.value)
    assert "gender" not in str(err.value).split("colour", 1)[0].split(str(path))[-1]


def test_the_commented_corpus_layouts_of_data_catalog_yaml_validate():
    from dataflux.taxonomy import load_taxonomy

    text = (ROOT / "data_catalog.yaml").read_text()
    block = text.split("\nsources:\n", 1)[1].split("\nendpoints:", 1)[0]
    lines = [m.group(1) for m in re.finditer(r"^  # (\S.*|\s+\S.*)$", block, re.M)]
    body = "\n".join("  " + ln for ln in lines if re.match(r"^[a-z_0-9]+:\s*(#.*)?$|^\s+", ln))
    sources = yaml.safe_load("sources:\n" + body)["sources"]
    assert {"librispeech", "common_voice", "esc50", "audiocaps", "clotho", "gtzan", "nsynth"} <= set(sources)
    config = config_from_dict({"version": 1, "sources": sources}, origin="data_catalog.yaml (commented)")
    taxonomy = load_taxonomy()
    for name, spec in config.sources.items():
        assert taxonomy.leaves_for(spec["taxonomy"]), name
    assert sources["common_voice"]["fields"]["transcript"] == "sentence"


def test_folder_files_no_manifest_row_names_are_still_clips(tmp_path):
    _wav(tmp_path / "listed.wav")
    _wav(tmp_path / "unlisted.wav", freq=900)
    (tmp_path / "m.csv").write_text("file,label\nlisted.wav,bell\n")
    good, bad = _split(FolderSource("f", tmp_path, labels="m.csv").iter_items())
    assert good["listed.wav"].labels["labels"] == ["bell"]
    assert good["unlisted.wav"].labels == {} and not bad


def test_survey_keeps_the_first_copy_merges_list_labels_and_rejects_a_conflicting_copy(tmp_path):
    for name, freq in (("a", 300), ("b", 400), ("c", 500), ("d", 600)):
        _wav(tmp_path / f"{name}.wav", freq=freq)
    shutil.copy(tmp_path / "a.wav", tmp_path / "a_copy.wav")
    shutil.copy(tmp_path / "a.wav", tmp_path / "a_other.wav")
    (tmp_path / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt junk")
    (tmp_path / "m.csv").write_text(
        "file,label,transcript\n"
        "a.wav,dog,woof\nb.wav,cat,\nc.wav,bird,\nd.wav,rain,\n"
        "a_copy.wav,puppy;dog,woof\n"          # same audio, same transcript: labels merged
        "a_other.wav,cow,moo\n"                 # same audio, another transcript: conflict
        "broken.wav,kettle,\n")                 # undecodable: its label is no option
    src = FolderSource("s", tmp_path, labels="m.csv", fields={"transcript": "transcript"})
    survey = survey_source(src, max_seconds=600.0, min_seconds=0.05)
    dup, conflict = survey.duplicates["a_copy.wav"], survey.duplicates["a_other.wav"]
    assert dup.reason == "duplicate_audio" and "s/a.wav, which is kept" in dup.detail
    assert dup.extra["kept_source_id"] == "a.wav"
    assert conflict.reason == "duplicate_conflict" and "s/a.wav" in conflict.detail and "s/a_other.wav" in conflict.detail
    assert conflict.extra["conflicting_fields"] == ["transcript"]
    assert survey.merged_labels["a.wav"]["labels"] == ["dog", "puppy"]
    assert survey.vocabulary["sound_source"] == ["bird", "cat", "dog", "puppy", "rain"]  # no cow, no kettle
    kept = survey.settle(next(i for i in src.iter_items() if i.source_id == "a.wav"))
    assert kept.labels["labels"] == ["dog", "puppy"] and kept.labels["sound_source"] == "dog"


def test_hf_parquet_maps_the_same_fields(tmp_path):
    import datasets

    (tmp_path / "pq").mkdir()
    for name in ("a", "b", "c"):  # inside the dataset's folder: paths outside it are refused
        _wav(tmp_path / "pq" / f"{name}.wav", freq={"a": 300, "b": 500, "c": 700}[name])
    ds = datasets.Dataset.from_dict({
        "audio": [str(tmp_path / "pq" / f"{n}.wav") for n in "abc"],
        "tags": [["Dog_Bark", "rain"], [], ["x" * 200]],
        "text": ["hello there", None, "bye"],
        "sex": ["F", "M", "F"],
    }).cast_column("audio", datasets.Audio())
    ds.to_parquet(str(tmp_path / "pq" / "train.parquet"))
    src = HFSource("h", str(tmp_path / "pq"), fields={"labels": "tags", "transcript": "text", "gender": "sex"})
    items = list(src.iter_items())
    good = [i for i in items if isinstance(i, SourceItem)]
    bad = [i for i in items if isinstance(i, Reject)]
    assert good[0].labels == {"labels": ["dog bark", "rain"], "sound_source": "dog bark",
                              "transcript": "hello there", "gender": "female"}
    assert good[1].labels == {"gender": "male"}
    assert [b.reason for b in bad] == ["field_too_long"]
