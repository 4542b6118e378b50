"""The template writer: is_success, plausible distractors, random but reproducible answer positions."""

from __future__ import annotations

import asyncio
from collections import Counter

import numpy as np

from dataflux.records import Clip, SourceItem
from dataflux.steps.base import Call
from dataflux.steps.caption import ClaimedCaption
from dataflux.steps.checks import run_checks
from dataflux.steps.generate import TemplateQuestionWriter, feedback_measurement, measured_feedback
from dataflux.taxonomy import load_taxonomy

TAX = load_taxonomy()
CLIP = Clip(SourceItem("t", "x"), "0" * 64, np.zeros(160, np.float32), 16000, 16000, {}, {"raw": {}})


def cap(**claims) -> ClaimedCaption:
    return ClaimedCaption("caption text", Call("caption", "reference", "c"), claims=claims)


def gen(category, caption, n=2, seed=1, feedback=None):
    return asyncio.run(TemplateQuestionWriter().generate(CLIP, caption, category, n, seed, feedback))


def test_questions_key_the_caption_value_with_three_nearest_distractors():
    g = gen(TAX.leaf("tone_pitch"), cap(tone_pitch="110 Hz"))
    assert g.is_success and len(g.questions) == 2 and g.call.model == "reference-writer@1"
    for q in g.questions:
        assert q.answer == "110 Hz" and sorted(q.choices) == sorted(["110 Hz", "220 Hz", "440 Hz", "880 Hz"])
        assert q.question in TAX.leaf("tone_pitch").question_templates
        assert all(c.passed for c in run_checks(q, TAX.leaf("tone_pitch"), {}))


def test_distractors_are_the_nearest_values_in_a_long_vocabulary():
    cat = TAX.bind_labels({"sound_source": list("abcdefgh")}).leaf("sound_source")
    g = gen(cat, cap(sound_source="e"), n=1)
    assert sorted(g.questions[0].choices) == ["c", "d", "e", "f"]


def test_not_applicable_when_the_caption_states_no_value_or_an_unknown_one():
    assert not gen(TAX.leaf("tone_pitch"), cap(waveform="sine")).is_success
    g = gen(TAX.leaf("tone_pitch"), cap(tone_pitch="450 Hz"))
    assert not g.is_success and "not in the vocabulary" in g.reason
    assert not gen(TAX.leaf("sound_source"), cap(sound_source="dog")).is_success  # no label vocabulary bound


def test_templates_naming_an_option_are_skipped():
    g = gen(TAX.leaf("loudness"), cap(loudness="quiet"), n=5)
    assert [q.question for q in g.questions] == ["Which level best describes the loudness of the sound?"]


def test_answer_position_is_uniform_over_seeds_and_fixed_per_seed():
    positions = Counter(gen(TAX.leaf("waveform"), cap(waveform="sine"), n=1, seed=s).questions[0].answer_index
                        for s in range(400))
    assert set(positions) == {0, 1, 2, 3} and min(positions.values()) > 70
    a = gen(TAX.leaf("waveform"), cap(waveform="sine"), seed=7).questions
    b = gen(TAX.leaf("waveform"), cap(waveform="sine"), seed=7).questions
    assert [(q.question, q.choices, q.answer_index) for q in a] == [(q.question, q.choices, q.answer_index) for q in b]


def test_feedback_naming_a_measured_value_rekeys_the_question():
    fb = "The caption is wrong. " + measured_feedback("tone_pitch", "440 Hz")
    assert feedback_measurement(fb, "tone_pitch") == "440 Hz" and feedback_measurement(fb, "waveform") is None
    g = gen(TAX.leaf("tone_pitch"), cap(tone_pitch="220 Hz"), n=1, feedback=fb)
    assert g.is_success and g.questions[0].answer == "440 Hz" and "feedback" in g.reason
    assert g.call.params["with_feedback"] is True


def test_class_label_distractors_are_the_most_confusable_labels_not_neighbours_in_the_alphabet():
    from dataflux.steps.hard_negatives import similar_labels

    labels = sorted(["alarm clock", "bell", "busy signal", "chime", "dog", "phone ringing", "pink noise", "rain",
                     "ringback tone", "rooster"])
    assert similar_labels("sound_source", labels, "bell")[:2] == ["alarm clock", "chime"]  # its similarity group
    assert similar_labels("sound_source", labels, "phone ringing")[:2] == ["busy signal", "ringback tone"] or \
        similar_labels("sound_source", labels, "phone ringing")[:2] == ["ringback tone", "busy signal"]
    assert set(similar_labels("sound_source", labels, "dog", k=1)) == {"rooster"}
    assert "pink noise" in similar_labels("sound_source", labels, "rain")
