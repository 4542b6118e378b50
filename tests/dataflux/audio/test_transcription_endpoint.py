"""The speech checks through an OpenAI-compatible `/audio/transcriptions` endpoint (a real HTTP server
serving the packaged Whisper base, tests/helpers/transcription_server.py), chosen by `recognizer` in
the config: Russian prompts and a Dutch voice, languages confirmed and flips caught, swapped
transcripts refuted, a rerun answered by the catalog's call cache, faults retried, and a
`recognizer.folder` that measures what the default does.
"""

from __future__ import annotations

import copy
import json
import re

import pyarrow.parquet as pq
import pytest

from dataflux.audio.analyze import analyze_item
from dataflux.audio.recognizer_facts import MAX_CLAIM_WER, add_recognizer_facts, set_recognizer
from dataflux.audio.speech_facts import OTHER_WORDS
from dataflux.config import ConfigError, config_from_dict
from dataflux.llm.cache import MemoryCallCache
from dataflux.llm.transcription import TranscriptionEndpoint, TranscriptionEndpointError
from dataflux.packaged_weights import ensure_whisper_base
from dataflux.pipeline import process_partition
from dataflux.pipeline.prepare import choose_recognizer
from dataflux.records import SourceItem
from tests.helpers import real_audio as ra
from tests.helpers.transcription_server import MODEL_ID, TranscriptionServer

LEAVES = ["spoken_language", "spoken_text", "spoken_word_count"]
NAMES = {"ru": "Russian", "nl": "Dutch"}
FLIP = {"ru": "nl", "nl": "ru"}


@pytest.fixture(autouse=True)
def packaged_recognizer_after():
    yield
    set_recognizer(None)  # the process's recognizer is global: leave the default for other tests


def _config(tmp_path, recognizer: dict):
    return config_from_dict({"version": 1, "sources": {"demo": {"kind": "demo", "size": 8}},
                             "storage": {"catalog": str(tmp_path / "catalog.duckdb")}, "recognizer": recognizer})


def _records() -> list[dict]:
    """8 Russian prompts (one female voice) and 8 lines of the big fish (a male Dutch voice)."""
    ru, _ = ra.speech_records(("ru",))
    nl, _ = ra.fillets_records("nl")
    return (ra.subset([r for r in ru if 15 <= len(r["transcript"]) <= 90], 8, seed=3)
            + ra.subset([r for r in nl if r["speaker"].endswith("big") and 20 <= len(r["transcript"]) <= 90], 8,
                        seed=3))


def _clips(records: list[dict]) -> tuple[list, set[str], set[str]]:
    """Clips claiming each record's language and transcript, except: every 4th claims the other
    language (its id in the first set returned), every 4th from the 2nd a transcript of another
    clip in its language (the second set)."""
    vocab = sorted({r["transcript"] for r in records}, key=len)
    clips, flipped, swapped = [], set(), set()
    for k, r in enumerate(records):
        labels = {"transcript": r["transcript"], "language": r["language"], "speaker": r["speaker"]}
        if k % 4 == 0:
            labels["language"] = FLIP[r["language"]]
            flipped.add(r["id"])
        elif k % 4 == 1:
            labels["transcript"] = next(x["transcript"] for x in records[k + 1:] + records
                                        if x["language"] == r["language"] and x["transcript"] != r["transcript"])
            swapped.add(r["id"])
        item = SourceItem("s", r["id"], audio_path=r["file"], labels=labels)
        clips.append(analyze_item(item, LEAVES, vocabularies={"spoken_text": vocab}))
    return clips, flipped, swapped


@pytest.fixture(scope="module")
def server():
    with TranscriptionServer(retry_after_s=0.05, slow_s=3.0) as srv:
        yield srv


@pytest.fixture(scope="module")
def measured(server, tmp_path_factory):
    """One partition's speech clips measured through the endpoint, as the pipeline chooses it."""
    tmp = tmp_path_factory.mktemp("endpoint")
    records = _records()
    vocab = sorted({r["transcript"] for r in records}, key=len)
    config = _config(tmp, {"endpoint": server.base_url, "model": MODEL_ID})
    clips, flipped, swapped = _clips(records)
    choose_recognizer(config)
    add_recognizer_facts(clips, LEAVES, {"spoken_text": vocab})
    set_recognizer(None)
    return {"records": records, "vocab": vocab, "config": config, "clips": clips, "flipped": flipped,
            "swapped": swapped, "requests": server.stats["transcription_requests"]}


@pytest.mark.slow
def test_the_endpoint_confirms_spoken_languages_and_catches_flipped_ones(measured, server):
    clips, flipped = measured["clips"], measured["flipped"]
    planted = [c for c in clips if c.item.source_id in flipped]
    caught = [c for c in planted if c.facts["spoken_language"] != NAMES[c.item.labels["language"]]]
    clean = [c for c in clips if c.item.source_id not in flipped]
    kept = [c for c in clean if c.facts["spoken_language"] == NAMES[c.item.labels["language"]]]
    assert len(planted) == 4 and len(caught) == 4, [(c.item.source_id, c.facts["raw"]) for c in planted]
    assert len(kept) == len(clean), [(c.item.source_id, c.facts["raw"]) for c in clean if c not in kept]
    # every flip is contradicted by the speaker's language, which most of their clips are heard in
    assert {c.facts["spoken_language"] for c in caught} <= {"Russian", "Dutch"}
    assert {c.facts["raw"]["speaker_language"] for c in clips} == {"ru", "nl"}
    assert {c.facts["raw"]["language_recognizer"] for c in clips} == {f"endpoint:{MODEL_ID}"}
    # the language is asked without one; the words in the claimed language, as verbose JSON
    asked = [r for r in server.requests if r["path"] == "/v1/audio/transcriptions"][:measured["requests"]]
    assert sum(r["language"] is None for r in asked) == len(clips)
    assert {r["response_format"] for r in asked} == {"verbose_json"} and {r["model"] for r in asked} == {MODEL_ID}


@pytest.mark.slow
def test_the_endpoint_refutes_swapped_transcripts_and_confirms_most_true_ones(measured):
    clips, swapped, flipped = measured["clips"], measured["swapped"], measured["flipped"]
    wrong = [c for c in clips if c.item.source_id in swapped]
    true = [c for c in clips if c.item.source_id not in swapped | flipped]
    refuted = [c for c in wrong if c.facts["spoken_text"] == OTHER_WORDS]
    confirmed = [c for c in true if c.facts["spoken_text"] == c.item.labels["transcript"]]
    assert len(refuted) == len(wrong) == 4, [c.facts["raw"] for c in wrong if c not in refuted]
    assert len(confirmed) >= len(true) // 2, [(c.item.labels["transcript"], c.facts["raw"]) for c in true]
    for c in clips:  # a confirmed claim is within MAX_CLAIM_WER of what the endpoint heard; a count follows it
        if c.facts.get("spoken_text") is None:
            continue
        raw = c.facts["raw"]
        assert raw["recognizer"] == f"endpoint:{MODEL_ID}" and "recognizer_heard" in raw
        assert (c.facts["spoken_text"] != OTHER_WORDS) == (raw["claim_wer"] <= MAX_CLAIM_WER
                                                         and raw["recognizer_choice"] == c.item.labels["transcript"])
        assert (c.facts["spoken_word_count"] is None) == (c.facts["spoken_text"] == OTHER_WORDS)


@pytest.mark.slow
def test_a_rerun_over_the_same_catalog_sends_no_request_and_measures_the_same(measured, server):
    before = server.stats["transcription_requests"]
    assert measured["requests"] == len(measured["clips"]) + sum(
        c.facts["raw"].get("recognizer", "").startswith("endpoint:") for c in measured["clips"])
    clips, _, _ = _clips(measured["records"])
    choose_recognizer(measured["config"])
    add_recognizer_facts(clips, LEAVES, {"spoken_text": measured["vocab"]})
    assert server.stats["transcription_requests"] == before
    assert [c.facts for c in clips] == [c.facts for c in measured["clips"]]


@pytest.mark.slow
def test_every_partition_of_a_run_hears_through_the_configured_endpoint(measured, server, tmp_path):
    manifest = ra.write_manifest(measured["records"][:8], tmp_path / "speech.jsonl")
    fields = {k: k for k in ("file", "id", "transcript", "language", "speaker")}
    config = config_from_dict({
        "version": 1, "sources": {"speech": {"kind": "manifest", "path": str(manifest), "fields": fields,
                                             "allow_outside_root": True, "license": "test", "taxonomy": ["Language"]}},
        "storage": {"root": str(tmp_path / "shards"), "catalog": str(tmp_path / "catalog.duckdb")},
        "recognizer": {"endpoint": server.base_url, "model": MODEL_ID}})
    before = server.stats["transcription_requests"]
    first = process_partition(config, "speech", 0, 1, "v1", "r1")
    sent = server.stats["transcription_requests"] - before
    rows = pq.read_table(first.shard.path).to_pylist()
    heard = {json.loads(r["facts"])["raw"]["language_recognizer"] if isinstance(r["facts"], str)
             else r["facts"]["raw"]["language_recognizer"] for r in rows if r["l3"] == "spoken_language"}
    assert sent >= 8 and heard == {f"endpoint:{MODEL_ID}"}
    process_partition(config, "speech", 0, 1, "v2", "r2")  # a rerun: every reply from the catalog
    assert server.stats["transcription_requests"] - before == sent

@pytest.mark.slow
def test_faults_are_retried_and_a_dead_endpoint_is_named(measured, server):
    clip = measured["clips"][3].samples[:16000]
    faults = {0: "429", 1: "500", 2: "slow", 3: "garbage"}
    server.chaos = lambda n, start=server.stats["transcription_requests"]: faults.get(n - start)
    try:
        endpoint = TranscriptionEndpoint({"endpoint": server.base_url, "model": MODEL_ID, "timeout_s": 1.0,
                                          "max_retries": 4}, MemoryCallCache(), backoff_base_s=0.01)
        before = server.stats["transcription_requests"]
        (heard,) = endpoint.transcribe([clip], ["nl"])
        assert heard.language == "nl" and heard.text
        assert server.stats["transcription_requests"] - before == 5  # four faults, then the reply
        server.chaos = lambda n: "500"
        dead = TranscriptionEndpoint({"endpoint": server.base_url, "model": MODEL_ID, "max_retries": 2},
                                     MemoryCallCache(), backoff_base_s=0.01)
        before = server.stats["transcription_requests"]
        named = re.escape(server.base_url) + r".*after 3 tries \(server_error\)"
        with pytest.raises(TranscriptionEndpointError, match=named):
            dead.transcribe([clip], [None])
        assert server.stats["transcription_requests"] - before == 3
    finally:
        server.chaos = None


@pytest.mark.slow
def test_a_recognizer_folder_measures_what_the_packaged_default_does(measured, tmp_path):
    records = measured["records"][::2]
    default, _, _ = _clips(records)
    add_recognizer_facts(default, LEAVES, {"spoken_text": measured["vocab"]})
    chosen, _, _ = _clips(records)
    # auto: CUDA where CTranslate2 sees a device, else the CPU at int8, as the default runs
    choose_recognizer(_config(tmp_path, {"folder": str(ensure_whisper_base()), "device": "auto"}))
    add_recognizer_facts(chosen, LEAVES, {"spoken_text": measured["vocab"]})
    assert [c.facts for c in chosen] == [c.facts for c in default]
    assert {c.facts["raw"]["language_recognizer"] for c in chosen} == {f"whisper:{ensure_whisper_base().name}@8s"}


def test_the_recognizer_config_names_what_is_missing_or_unknown(tmp_path):
    with pytest.raises(ConfigError, match="recognizer"):
        _config(tmp_path, {"model": "whisper-1"})  # a model without an endpoint
    with pytest.raises(ConfigError, match="recognizer"):
        _config(tmp_path, {"endpoint": "http://127.0.0.1:9/v1", "model": "m", "language": "ru"})
    with pytest.raises(ConfigError, match="recognizer.endpoint"):
        _config(tmp_path, {"endpoint": "127.0.0.1:9", "model": "m"})
    with pytest.raises(ConfigError, match="recognizer.device"):
        _config(tmp_path, {"folder": "models/whisper", "device": "tpu"})
    with pytest.raises(ConfigError, match="recognizer.compute_type"):
        _config(tmp_path, {"device": "cuda", "compute_type": "fp16"})
    config = _config(tmp_path, {"endpoint": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": "NO_SUCH_KEY"})
    assert config.source_sha256("demo") != _config(tmp_path, {}).source_sha256("demo")
    assert copy.deepcopy(_config(tmp_path, {}).data["recognizer"]) == {}


@pytest.mark.parametrize("cuda_devices,asked,runs_on", [(0, "auto", "cpu"), (1, "auto", "cuda"), (1, "cuda", "cuda"),
                                                         (1, "cpu", "cpu"), (0, "cuda", None)])
def test_the_recognizer_runs_where_the_config_says_and_refuses_cuda_without_a_device(monkeypatch, cuda_devices,
                                                                                     asked, runs_on):
    import ctranslate2

    from dataflux.audio import whisper

    monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: cuda_devices)
    if runs_on is None:
        with pytest.raises(ValueError, match="'cuda': CTranslate2 sees no CUDA device"):
            whisper._device(asked)
    else:
        assert whisper._device(asked) == runs_on
