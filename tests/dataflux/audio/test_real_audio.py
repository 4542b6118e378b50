"""DataFlux on recordings it did not make: Debian-packaged speech prompts and a desktop sound theme.

The audio is fetched by `tests/helpers/real_audio.py` (apt-get download + dpkg -x into a cache); when apt
cannot fetch it these tests fail, they are not skipped.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import real_audio as ra
from dataflux.audio.decode import decode_audio
from dataflux.audio.analyze import analyze_item
from dataflux.audio.facts import measure_facts
from dataflux.audio.recognizer_facts import add_recognizer_facts
from dataflux.audio.speech import normalise_words, word_count_word
from dataflux.audio.speech_facts import OTHER_WORDS
from dataflux.config import load_config
from dataflux.records import SourceItem
from dataflux.sources.planting import plant_errors
from dataflux.text_metrics import wer

ROOT = Path(__file__).resolve().parents[3]
FIELDS = {"file": "file", "id": "id", "transcript": "transcript", "gender": "gender", "language": "language",
          "speaker": "speaker", "label": "label"}


@pytest.fixture(scope="session")
def speech_corpus():
    return ra.speech_records()


@pytest.fixture(scope="session")
def event_corpus():
    return ra.event_records()


def write_config(tmp: Path, sources: dict) -> Path:
    cfg = yaml.safe_load((ROOT / "data_catalog.yaml").read_text())
    cfg["sources"] = sources
    cfg["storage"] = {"root": str(tmp / "shards"), "catalog": str(tmp / "catalog.duckdb")}
    cfg["run"]["partitions"] = 2
    cfg.pop("schedules", None)
    path = tmp / "data_catalog.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def vocabulary_of(records: list[dict]) -> list[str]:
    from dataflux.taxonomy import length_order

    pairs = {(r["language"], " ".join(r["transcript"].split())) for r in records if len(r["transcript"]) <= 200}
    return [t for _, t in sorted(pairs, key=lambda p: (p[0], *length_order(p[1])))]


# ---- without audio ------------------------------------------------------------------------------

def test_spoken_words_spell_digits_and_word_error_rate_keeps_them():
    assert normalise_words("Press 6, then #.") == ["press", "six", "then"]
    assert normalise_words("Press 6 to repeat.") == normalise_words("press six to repeat")
    assert wer("Press 6 to repeat.", "press 6 to repeat") == 0.0
    assert wer("you are now muted", "you are now unmuted") == pytest.approx(0.25)
    assert wer("goodbye", "") == 1.0


def test_planting_swaps_transcripts_flips_gender_and_language_deterministically():
    def items():
        return [SourceItem("s", f"{lang}{i}", audio_path="x.wav",
                           labels={"transcript": f"{lang} phrase number {i}", "language": lang,
                                   "gender": "female" if lang == "en" else "male"})
                for lang in ("en", "it") for i in range(200)]

    first, again = plant_errors(items(), 0.1, seed=3), plant_errors(items(), 0.1, seed=3)
    planted = [it for it in first if it.meta.get("planted")]
    assert 20 <= len(planted) <= 60  # ~10 % of 400
    assert [it.meta.get("planted") for it in first] == [it.meta.get("planted") for it in again]
    kinds = {it.meta["planted"]["kind"] for it in planted}
    assert kinds == {"swap_transcript", "flip_gender", "flip_language"}
    for it in planted:
        p = it.meta["planted"]
        if p["kind"] == "swap_transcript":
            assert it.labels["transcript"] == p["claimed"] != p["true"]
            assert p["claimed"].startswith(it.labels["language"])  # a phrase of the same language
        elif p["kind"] == "flip_language":
            assert p["leaf"] == "spoken_language" and {p["claimed"], p["true"]} == {"English", "Italian"}
            assert it.labels["language"] != it.source_id[:2]  # the claim now names the other language
        else:
            assert it.labels["gender"] == p["claimed"] and {p["claimed"], p["true"]} == {"male", "female"}
    with pytest.raises(ValueError, match="within 0..1"):
        plant_errors(items(), 1.5)


# ---- measurements on the real speech corpus -----------------------------------------------------

@pytest.mark.slow
def test_recognizer_confirms_real_transcripts_and_refutes_swapped_ones(speech_corpus):
    records, packages = speech_corpus
    assert packages["asterisk-core-sounds-en-wav"] and len(records) > 1000
    vocab = vocabulary_of(records)
    clips = ra.subset([r for r in records if len(r["transcript"]) <= 200], 12, seed=4)
    agree, refuted, female = 0, 0, 0
    tempos: list[str] = []
    leaves = ["spoken_text", "spoken_word_count", "speech_tempo", "speaker_gender"]
    items, swaps = [], []
    for k, r in enumerate(clips):
        true = " ".join(r["transcript"].split())
        same_language = [t for t in vocab if t != true and any(
            x["language"] == r["language"] and " ".join(x["transcript"].split()) == t for x in clips)]
        items.append(SourceItem("s", r["id"], audio_path=r["file"], labels={**r, "transcript": true}))
        swaps.append(SourceItem("s", r["id"], audio_path=r["file"],
                                labels={**r, "transcript": same_language[k % len(same_language)]}))
    # each clip measured alone, then Whisper over the batch (English is pocketsphinx's, in the first pass)
    measured = [analyze_item(it, leaves, vocabularies={"spoken_text": vocab}) for it in items]
    refutations = [analyze_item(it, leaves[:2], vocabularies={"spoken_text": vocab}) for it in swaps]
    add_recognizer_facts(measured, leaves, {"spoken_text": vocab})
    add_recognizer_facts(refutations, leaves[:2], {"spoken_text": vocab})
    for k, r in enumerate(clips):
        true, swapped = items[k].labels["transcript"], swaps[k].labels["transcript"]
        facts, wrong = measured[k].facts, refutations[k].facts
        # a word count is measured exactly when the recognizer confirms the words it counts
        assert facts["spoken_word_count"] == (word_count_word(true) if facts["spoken_text"] == true else None)
        if facts["spoken_text"] == true and facts["speech_tempo"] is not None:
            rate = facts["raw"]["transcript_syllables_per_s"]
            tempos.append(facts["speech_tempo"])
            assert facts["speech_tempo"] == ("slow" if rate < 3 else "moderate" if rate < 4.5
                                              else "fast" if rate < 6 else "very fast")
        elif facts["spoken_text"] != true:
            assert facts["speech_tempo"] is None  # no tempo from words the recognizer did not confirm
        assert wrong["spoken_word_count"] is None or wrong["spoken_text"] == swapped
        agree += facts["spoken_text"] == true
        refuted += wrong["spoken_text"] == OTHER_WORDS
        female += r["language"] == "en" and facts["speaker_gender"] == "female"
        assert not (r["language"] == "en" and facts["speaker_gender"] == "male")
    assert agree >= 9, agree  # 86 % on 120 clips
    assert refuted >= 11, refuted  # 97.5 % on 120 clips
    assert len(tempos) >= 6 and len(set(tempos)) >= 2, tempos  # measured where confirmed, and it tells paces apart
    assert female >= 3  # the English voice (Allison): clip medians 183-249 Hz, 90 % above 194 Hz


def test_spoken_word_count_counts_spoken_words_in_bins():
    assert word_count_word("Goodbye.") == "one word"
    assert word_count_word("Press 6.") == "two or three words"  # digits are spoken words
    assert word_count_word("Press 1 2 3 4 5") == "four to six words"
    assert word_count_word("the conference will begin when our glorious leader arrives") == "seven to ten words"
    assert word_count_word("one two three four five six seven eight nine ten eleven") == "more than ten words"
    assert word_count_word(" ... ") is None


def test_speaker_gender_is_pooled_per_speaker_and_a_claim_against_the_speaker_is_withdrawn(speech_corpus):
    from dataflux.audio.analyze import analyze_item
    from dataflux.audio.speakers import add_speaker_facts

    records, _ = speech_corpus
    picked = [r for lang in ("en", "it") for r in ra.subset(
        [r for r in records if r["language"] == lang and 10 <= len(r["transcript"]) <= 120], 7, seed=3)]
    clips = []
    for k, r in enumerate(picked):
        # one clip of each voice claims the other gender (as a flipped label would)
        flipped = k in (0, 7)
        gender = ("male" if r["gender"] == "female" else "female") if flipped else r["gender"]
        item = SourceItem("speech", r["id"], audio_path=r["file"],
                          labels={"gender": gender, "speaker": r["speaker"], "language": r["language"]})
        clip = analyze_item(item, ["speaker_gender"])
        assert hasattr(clip, "facts"), clip  # not a Reject
        clips.append(clip)
    rejects = add_speaker_facts(clips, ["speaker_gender"])
    english, italian = clips[:7], clips[7:]
    # the US English voice: pooled f0 ~207 Hz, female for every clip, the flipped claim included
    # (the measurement contradicts it, so the loop corrects it)
    assert {c.facts["speaker_gender"] for c in english} == {"female"}
    assert all(c.facts["raw"]["speaker_f0_clips"] == 7 for c in english)
    assert english[0].item.labels["gender"] == "male"
    # the Italian voice, tagged male, pools at ~187 Hz: f0 cannot decide, the other six clips'
    # claims can; the flipped claim is withdrawn (and said why), the clip kept
    assert {c.facts["speaker_gender"] for c in italian} == {None}
    assert 150 <= italian[0].facts["raw"]["speaker_f0_median_hz"] <= 200
    assert [r.source_id for r in rejects] == [italian[0].item.source_id]
    assert rejects[0].reason == "speaker_gender_conflict" and rejects[0].extra["leaf"] == "speaker_gender"
    assert "6 of 7" in rejects[0].detail and "male" in rejects[0].detail
    assert italian[0].item.labels["gender"] is None
    assert [c.item.labels["gender"] for c in italian[1:]] == ["male"] * 6
    assert {c.facts["raw"]["speaker_claim_majority"] for c in italian[1:]} == {"male"}  # the judge keeps these


# ---- the pipeline on real audio -----------------------------------------------------------------

def run_cli(*args: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


@pytest.mark.slow
def test_speech_corpus_with_planted_errors_reports_caught_per_leaf(speech_corpus, tmp_path, monkeypatch):
    records, _ = speech_corpus
    clips = ra.subset(records, 16, seed=9)
    manifest = ra.write_manifest(clips, tmp_path / "speech.jsonl")
    config = write_config(tmp_path, {"speech": {
        "kind": "manifest", "path": str(manifest), "fields": FIELDS, "allow_outside_root": True, "license": "CC-BY-SA-3.0 (Asterisk prompts)",
        "taxonomy": ["Language", "Voice", "Recording"], "seed": 1}})
    monkeypatch.setenv("DATAFLUX_HOME", str(tmp_path / "home"))
    summary = json.loads(run_cli("run", "--config", str(config), "--plant-errors", "0.3", "--json", "--quiet",
                                 cwd=tmp_path))
    assert summary["status"] == "completed"
    stats = json.loads(run_cli("stats", summary["version"], "--config", str(config), "--json", cwd=tmp_path))

    # every clip is in the version or rejected with a reason
    assert sum(stats["items_by_status"].values()) == len(clips)
    assert stats["planted_errors"] + stats["clean_items"] == len(clips)
    by_leaf = stats["planted_by_leaf"]
    print(json.dumps(by_leaf))
    assert sum(v["planted"] for v in by_leaf.values()) >= 3, by_leaf
    for leaf in ("spoken_text", "speaker_gender", "spoken_language"):
        assert by_leaf[leaf]["caught"] >= by_leaf[leaf]["planted"] - 1, by_leaf
    assert stats["clean_rejected"] <= 2, stats

    shares = stats["verification_by_leaf"]
    for leaf in ("spoken_text", "spoken_language", "speech_pauses", "relative_loudness", "relative_duration"):
        assert set(shares[leaf]) == {"measured"}, (leaf, shares)

    from dataflux.report import summary_markdown
    from dataflux.storage.catalog import Catalog

    cat = Catalog(load_config(config).catalog_path, read_only=True)
    summary_md = summary_markdown(cat, summary["version"])
    assert "## How each category was verified" in summary_md and "## Planted errors per category" in summary_md
    _, rows = cat.query("SELECT i.source_id, i.planted->>'claimed', i.planted->>'leaf' FROM items i "
                        f"WHERE i.version_id = '{summary['version']}' AND i.planted IS NOT NULL")
    assert rows and all(claimed for _, claimed, _ in rows)


@pytest.mark.slow
def test_sound_event_corpus_keeps_measured_rows_only_when_required(event_corpus, tmp_path):
    from dataflux.pipeline import process_partition

    records, packages = event_corpus
    assert packages == {"sound-theme-freedesktop": packages["sound-theme-freedesktop"]} and len(records) >= 15
    manifest = ra.write_manifest(records, tmp_path / "events.jsonl")
    source = {"kind": "manifest", "path": str(manifest), "fields": {"file": "file", "id": "id", "label": "label"},
              "allow_outside_root": True,  # the recordings stay in the package cache
              "license": "GPL-2.0+ (freedesktop sound theme)",
              "taxonomy": ["sound_source", "Recording"], "plant_errors": 0.2}
    config = load_config(write_config(tmp_path, {"events": source, "events_measured": {**source, "require": "measured"}}))

    everything = process_partition(config, "events", 0, 1, "v-events", "run-events")
    measured = process_partition(config, "events_measured", 0, 1, "v-events", "run-events")
    import pyarrow.parquet as pq

    rows = pq.read_table(everything.shard.path).to_pylist()
    with_rows = {r["source_id"] for r in rows}
    too_short = {r.source_id for r in everything.rejects if r.reason == "quality:too_short"}  # bell: 0.14 s
    assert with_rows | too_short == {r["id"] for r in records} and len(with_rows) >= 12
    assert not [r for r in everything.rejects if r.reason not in ("quality:too_short", "judge_discard")]
    levels = {(r["l3"], r["verification"]) for r in rows}
    assert ("sound_source", "metadata-only") in levels  # a class label no measurement can check
    assert ("relative_duration", "measured") in levels and ("relative_loudness", "measured") in levels
    flipped = [i for i in everything.items if i["planted"]]
    assert flipped and all(json.loads(i["planted"])["leaf"] == "sound_source" for i in flipped)

    kept = pq.read_table(measured.shard.path).to_pylist()
    assert kept and {r["verification"] for r in kept} == {"measured"}
    dropped = [r for r in measured.rejects if r.reason == "not_measured"]
    assert len(kept) + len(dropped) == len(rows)


def test_sound_events_are_counted_and_their_rhythm_measured_on_real_recordings(event_corpus):
    records, _ = event_corpus
    by_id = {r["id"]: r for r in records}
    got = {}
    for name in ("phone-outgoing-busy", "camera-shutter", "complete"):
        y, _ = decode_audio(Path(by_id[name]["file"]).read_bytes(), name=name, target_sr=16000)
        got[name] = measure_facts(y, 16000, ["event_count", "event_rhythm"], {"labels": {"label": by_id[name]["label"]}})
    # the busy tone: three equal beeps a second apart
    assert got["phone-outgoing-busy"]["event_count"] == "three sounds"
    assert got["phone-outgoing-busy"]["event_rhythm"] == "repeating slowly (under 80 per minute)"
    assert 55 <= got["phone-outgoing-busy"]["raw"]["tempo_bpm"] <= 65
    for name in ("camera-shutter", "complete"):
        assert got[name]["event_count"] == "a single sound" and got[name]["event_rhythm"] is None
    # speech is not counted as sounds (its pauses are a leaf of their own)
    speech = measure_facts(y, 16000, ["event_count"], {"labels": {"transcript": "ding", "language": "en"}})
    assert speech["event_count"] is None
