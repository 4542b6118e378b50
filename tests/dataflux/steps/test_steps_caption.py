"""The reference captioner states the source's claims in sentences, and can be corrected."""

from __future__ import annotations

import asyncio

import numpy as np

from dataflux.records import Clip, SourceItem
from dataflux.steps.base import Call, Caption
from dataflux.steps.caption import ClaimedCaption, ReferenceCaptioner, apply_corrections, caption_claims, values_in_text
from dataflux.taxonomy import load_taxonomy


def clip(labels: dict) -> Clip:
    item = SourceItem("t", "x", labels=labels)
    return Clip(item, "0" * 64, np.zeros(1600, np.float32), 16000, 16000, {"duration_s": 0.1}, {"raw": {}})


def test_caption_states_every_claimed_label_in_a_sentence():
    cap = asyncio.run(ReferenceCaptioner().caption(clip(
        {"tone_pitch": "440 Hz", "waveform": "sine", "duration": "2 seconds", "loudness": "moderate"})))
    assert cap.text == "A steady 440 Hz sine tone, lasting 2 seconds, at a moderate level."
    assert cap.claims == {"tone_pitch": "440 Hz", "waveform": "sine", "duration": "2 seconds", "loudness": "moderate"}
    assert cap.call.model == "reference-captioner@1" and cap.call.step == "caption"
    assert not cap.corrected_from_measurement


def test_transcript_is_quoted_and_sound_label_feeds_sound_source():
    cap = asyncio.run(ReferenceCaptioner().caption(clip(
        {"speaking_rate": "fast", "transcript": "Hello there.", "speaker": "v1"})))
    assert cap.transcript == "Hello there."
    assert cap.text.endswith('The speaker says: "Hello there."') and "fast pace" in cap.text
    assert cap.claims == {"speaking_rate": "fast"}
    cap2 = asyncio.run(ReferenceCaptioner().caption(clip({"label": "dog"})))
    assert cap2.claims == {"sound_source": "dog"} and "dog" in cap2.text


def test_captioner_limited_to_taxonomy_leaves_ignores_unknown_labels():
    leaves = load_taxonomy().ids
    cap = asyncio.run(ReferenceCaptioner(leaves).caption(clip({"beep_count": "3 beeps", "mood": "happy"})))
    assert cap.claims == {"beep_count": "3 beeps"} and "happy" not in cap.text


def test_recaption_replaces_the_wrong_claim_and_records_what_it_was():
    cap = asyncio.run(ReferenceCaptioner().caption(clip({"tone_pitch": "220 Hz", "duration": "2 seconds"})))
    fixed = asyncio.run(ReferenceCaptioner().recaption(clip({}), cap, {"tone_pitch": "440 Hz"}))
    assert "440 Hz" in fixed.text and "220 Hz" not in fixed.text
    assert fixed.claims["tone_pitch"] == "440 Hz" and fixed.corrected == {"tone_pitch": "220 Hz"}
    assert fixed.corrected_from_measurement
    dropped = asyncio.run(ReferenceCaptioner().recaption(clip({}), cap, {"tone_pitch": None}))
    assert "Hz" not in dropped.text and "tone_pitch" not in dropped.claims and not dropped.corrected


def test_claims_of_a_plain_caption_come_from_vocabulary_words_in_the_text():
    tax = load_taxonomy()
    plain = Caption("Three tones: a very quiet 880 Hz whistle over 2 seconds.", Call("caption", "openai", "m"))
    claims = caption_claims(plain, tax.leaves())
    assert claims["tone_pitch"] == "880 Hz" and claims["loudness"] == "very quiet" and claims["duration"] == "2 seconds"
    assert [v for v, _, _ in values_in_text("quiet then very quiet", ["quiet", "very quiet"])] == ["quiet", "very quiet"]
    fixed = apply_corrections(ClaimedCaption(plain.text, plain.call, claims=claims), {"tone_pitch": "440 Hz"})
    assert "440 Hz whistle" in fixed.text and fixed.corrected == {"tone_pitch": "880 Hz"}


def test_real_clip_caption_states_metadata_and_measured_claims_and_says_which_is_which():
    import numpy as np
    from dataflux.records import Clip, SourceItem

    item = SourceItem("s", "x", labels={"transcript": "Please hold.", "gender": "F", "language": "en",
                                        "caption": "A woman on a phone line asks the caller to wait."})
    clip = Clip(item, "ab" * 32, np.zeros(16000, dtype=np.float32), 16000, 8000, {},
                {"speech_pauses": "no pause", "audio_quality": None})
    claimed_from = {"spoken_text": "transcript", "speaker_gender": "gender", "spoken_language": "language",
                    "speech_pauses": "measurement", "audio_quality": "measurement"}
    cap = asyncio.run(ReferenceCaptioner(None, claimed_from).caption(clip))
    assert cap.text.startswith("A woman on a phone line asks the caller to wait. A female voice speaking English")
    assert 'The speaker says: "Please hold."' in cap.text and "no pause" in cap.text
    assert cap.claims == {"spoken_text": "Please hold.", "speaker_gender": "female", "spoken_language": "English",
                          "speech_pauses": "no pause"}  # an unmeasured fact is not stated
    assert cap.sources == {"spoken_text": "metadata", "speaker_gender": "metadata", "spoken_language": "metadata",
                           "speech_pauses": "measurement"}
    assert cap.call.params["claim_sources"] == cap.sources
    fixed = asyncio.run(ReferenceCaptioner(None, claimed_from).recaption(clip, cap, {"spoken_text": None}))
    assert "Please hold" not in fixed.text and fixed.transcript is None and fixed.text.startswith("A woman on")
