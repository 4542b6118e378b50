"""Answerers (measurement vs caption) and the judge that ranks measurement above the caption."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from dataflux.records import Clip, SourceItem
from dataflux.steps.answer import CaptionReader, MeasuringAnswerer
from dataflux.steps.base import Call, Caption, Question
from dataflux.steps.caption import ClaimedCaption, ReferenceCaptioner
from dataflux.steps.generate import feedback_measurement
from dataflux.steps.judge import ReferenceJudge, build_evidence, winner_answer
from dataflux.taxonomy import load_taxonomy

TAX = load_taxonomy()
PITCH = TAX.leaf("tone_pitch")
Q = Question("What is the approximate pitch of the tone in this recording?", ["220 Hz", "440 Hz", "110 Hz", "880 Hz"], 0)


def clip(facts: dict, labels: dict | None = None) -> Clip:
    return Clip(SourceItem("t", "x", labels=labels or {}), "0" * 64, np.zeros(160, np.float32), 16000, 16000, {}, facts)


def run(coro):
    return asyncio.run(coro)


def test_measuring_answerer_cites_the_raw_measurement():
    a = run(MeasuringAnswerer().answer(clip({"tone_pitch": "440 Hz", "raw": {"f0_hz": 439.7, "event_count": 1}}),
                                      None, Q, PITCH))
    assert a.answer_index == 1 and a.answer_text == "440 Hz" and a.sees_audio
    assert "f0_hz = 439.7" in a.reasoning and "event_count" not in a.reasoning
    assert a.call.model == "reference-measure@1"


@pytest.mark.parametrize("facts", [{"tone_pitch": None, "raw": {}}, {"tone_pitch": "1760 Hz", "raw": {}}, {"raw": {}}])
def test_measuring_answerer_abstains_without_a_usable_measurement(facts):
    a = run(MeasuringAnswerer().answer(clip(facts), None, Q, PITCH))
    assert a.answer_index is None and a.answer_text is None


def test_measuring_answerer_abstains_on_unmeasurable_leaves():
    cat = TAX.bind_labels({"sound_source": ["dog", "rain", "car", "bell"]}).leaf("sound_source")
    a = run(MeasuringAnswerer().answer(clip({"raw": {}}), None, Question("Which source?", ["dog", "rain", "car", "bell"], 0), cat))
    assert a.answer_index is None


def test_caption_reader_quotes_the_clause_it_read():
    cap = Caption("A steady 220 Hz sine tone, lasting 2 seconds, at a loud level.", Call("caption", "x", "y"))
    a = run(CaptionReader().answer(clip({}), cap, Q, PITCH))
    assert a.answer_index == 0 and not a.sees_audio and '"A steady 220 Hz sine tone"' in a.reasoning


def test_caption_reader_tells_two_stated_options_apart_by_context_or_abstains():
    cap = Caption("A voice speaking at a moderate pace, at a loud level.", Call("caption", "x", "y"))
    lq = Question("Which level best describes the loudness of the sound?", ["very quiet", "quiet", "moderate", "loud"], 3)
    assert run(CaptionReader().answer(clip({}), cap, lq, TAX.leaf("loudness"))).answer_text == "loud"
    rq = Question("How fast is the person speaking?", ["slow", "moderate", "fast", "very fast"], 1)
    assert run(CaptionReader().answer(clip({}), cap, rq, TAX.leaf("speaking_rate"))).answer_text == "moderate"
    none = Caption("Something hums.", Call("caption", "x", "y"))
    assert run(CaptionReader().answer(clip({}), none, Q, PITCH)).answer_index is None


def test_caption_reader_ignores_words_inside_the_quoted_transcript():
    cap = Caption('A voice speaking. The speaker says: "It is loud in here."', Call("caption", "x", "y"))
    lq = Question("Which level best describes the loudness of the sound?", ["very quiet", "quiet", "moderate", "loud"], 3)
    assert run(CaptionReader().answer(clip({}), cap, lq, TAX.leaf("loudness"))).answer_index is None


def verdict_for(labels: dict, facts: dict, question: Question = Q, category=PITCH):
    c = clip(facts, labels)
    cap = run(ReferenceCaptioner().caption(c))
    answers = [run(MeasuringAnswerer().answer(c, cap, question, category)),
               run(CaptionReader().answer(c, cap, question, category))]
    return run(ReferenceJudge().judge(c, cap, category, question, answers, build_evidence(c, cap, category))), answers


def test_judge_keeps_a_question_the_measurement_confirms():
    v, answers = verdict_for({"tone_pitch": "220 Hz"}, {"tone_pitch": "220 Hz", "raw": {"f0_hz": 221.0}})
    assert (v.final_action, v.consistency_with_caption, v.winner, v.consensus) == ("KEEP_USING_WINNER", "STRONG_MATCH", "TIE", True)
    assert v.measured_agrees is True and "fundamental" in v.reasoning  # the leaf's judge rules are applied
    assert winner_answer(v, answers, Q.answer_index).answerer == "measure"


def test_judge_discards_a_caption_the_measurement_contradicts_and_names_the_measured_value():
    v, _ = verdict_for({"tone_pitch": "220 Hz"}, {"tone_pitch": "440 Hz", "raw": {"f0_hz": 441.0}})
    assert (v.final_action, v.consistency_with_caption, v.winner, v.consensus) == ("DISCARD", "CONFLICT", "MODEL_A", False)
    assert v.measured_agrees is False and feedback_measurement(v.reasoning, "tone_pitch") == "440 Hz"


def test_judge_without_a_possible_measurement_follows_the_answerers_consensus():
    cat = TAX.bind_labels({"sound_source": ["bell", "car", "dog", "rain"]}).leaf("sound_source")
    q = Question("What is the main source of the sound in this recording?", ["rain", "dog", "car", "bell"], 1)
    v, _ = verdict_for({"sound_source": "dog"}, {"raw": {}}, q, cat)
    assert (v.final_action, v.consistency_with_caption, v.winner) == ("KEEP_USING_WINNER", "WEAK_MATCH", "MODEL_B")
    assert v.measured_agrees is None


def test_judge_does_not_let_the_caption_alone_decide_a_measurable_fact():
    v, _ = verdict_for({"tone_pitch": "220 Hz"}, {"tone_pitch": None, "raw": {}})
    assert v.final_action == "DISCARD" and v.winner == "NONE" and "inconclusive" in v.reasoning


def test_judge_keeps_an_unmeasured_claim_only_when_the_speaker_s_other_clips_make_it_too():
    gender = TAX.leaf("speaker_gender")
    q = Question("Which best describes the speaker's voice?", ["female", "male", "child", "synthetic voice"], 1)
    corroborated = {"speaker_gender": None, "raw": {"f0_median_hz": 187.0, "speaker_claim_majority": "male",
                                                     "speaker_claim_agreeing": 46, "speaker_claim_total": 48}}
    v, _ = verdict_for({"speaker_gender": "male"}, corroborated, q, gender)
    assert v.final_action == "KEEP_USING_WINNER" and v.measured_agrees is None
    assert "46 of 48 clips of the same speaker" in v.reasoning
    # the speaker's clips say otherwise, or nobody vouches for the claim: unmeasured, so discarded
    for raw in ({**corroborated["raw"], "speaker_claim_majority": "female"}, {"f0_median_hz": 187.0}):
        v, _ = verdict_for({"speaker_gender": "male"}, {"speaker_gender": None, "raw": raw}, q, gender)
        assert v.final_action == "DISCARD" and "inconclusive" in v.reasoning


def test_judge_discards_when_every_answerer_abstains():
    c = clip({"raw": {}})
    cap = ClaimedCaption("x", Call("caption", "x", "y"))
    answers = [run(MeasuringAnswerer().answer(c, cap, Q, PITCH)), run(CaptionReader().answer(c, cap, Q, PITCH))]
    cat = TAX.bind_labels({"sound_source": ["bell", "car", "dog", "rain"]}).leaf("sound_source")
    v = run(ReferenceJudge().judge(c, cap, cat, Q, answers, build_evidence(c, cap, cat)))
    assert v.final_action == "DISCARD" and v.winner == "NONE"
