"""Each deterministic check catches the violation it exists for, and passes a good question."""

from __future__ import annotations

import pytest

from dataflux.steps.base import Question
from dataflux.steps.checks import forbidden_phrases, run_checks
from dataflux.taxonomy import load_taxonomy

PITCH = load_taxonomy().leaf("tone_pitch")
GOOD = Question("What is the approximate pitch of the tone in this recording?", ["220 Hz", "440 Hz", "110 Hz", "880 Hz"], 1)


def failed(q: Question, facts=None) -> list[str]:
    return [c.name for c in run_checks(q, PITCH, facts or {}) if not c.passed]


def test_a_good_question_passes_every_check_in_a_fixed_order():
    results = run_checks(GOOD, PITCH, {"tone_pitch": "440 Hz"})
    assert [c.name for c in results] == ["schema", "answer_in_options", "distinct_options", "no_leaked_answer",
                                         "no_forbidden_phrase", "agrees_with_measurement"]
    assert all(c.passed for c in results) and all(c.detail for c in results)


@pytest.mark.parametrize(
    "question, expected",
    [
        (Question(GOOD.question, GOOD.choices[:3], 1), {"schema", "distinct_options"}),
        (Question(GOOD.question, GOOD.choices, 4), {"schema", "answer_in_options", "no_leaked_answer"}),
        (Question(GOOD.question, ["220 Hz", "440 Hz", "440 hz", "880 Hz"], 1), {"distinct_options"}),
        (Question("Is the pitch of the tone 440 Hz or another value?", GOOD.choices, 1), {"no_leaked_answer"}),
        (Question("According to the caption, what is the pitch?", GOOD.choices, 1), {"no_forbidden_phrase"}),
        (Question("As described, what pitch does the tone have?", GOOD.choices, 1), {"no_forbidden_phrase"}),
    ],
)
def test_each_violation_is_caught_by_its_check(question, expected):
    assert expected <= set(failed(question))
    assert "agrees_with_measurement" not in failed(question)  # no measurement given


def test_disagreement_with_the_measured_fact_fails():
    assert failed(GOOD, {"tone_pitch": "220 Hz"}) == ["agrees_with_measurement"]
    assert failed(GOOD, {"tone_pitch": None}) == []


def test_forbidden_phrases_come_from_the_data_file_and_match_whole_words():
    phrases = forbidden_phrases()
    assert "according to the caption" in phrases and "the description" in phrases
    assert failed(Question("Describe the texture: which pitch is it?", GOOD.choices, 1)) == []
