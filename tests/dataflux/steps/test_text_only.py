"""Answering without the audio (the audio-contribution filter): the stem reader, the majority rule, and the
row fields the loop writes."""

import asyncio

from dataflux.steps.base import Answer, Call, Question
from dataflux.steps.text_only import StemReader, audio_needed, audio_needed_fields, options_in_stem

GENDERS = ["male", "female", "child", "unknown"]


def ask(question: Question) -> Answer:
    return asyncio.run(StemReader().answer_without_audio(question, 16000, 16000))


def answer(idx):
    return Answer("a", False, "", idx, None, Call("answer", "reference", "m"))


def test_a_stem_that_names_the_answer_is_answered_without_the_audio():
    q = Question("The woman speaking here: is this a male or a female voice? It is a woman, so FEMALE?",
                 ["male", "female", "child", "unknown"], 1)
    a = ask(Question("Which word describes the voice of this woman, a female speaker?", GENDERS, 1))
    assert (a.answer_index, a.answer_text, a.sees_audio) == (1, "female", False)
    assert a.call.model == "reference-text-only@1" and a.call.params["text_only"] is True
    assert "female" in a.reasoning
    # two options named ("male" and "female") is no give-away
    assert ask(q).answer_index is None


def test_a_clean_stem_gets_an_abstention():
    a = ask(Question("What is the approximate pitch of the tone in this recording?",
                     ["110 Hz", "220 Hz", "440 Hz", "880 Hz"], 2))
    assert a.answer_index is None and a.answer_text is None and "abstain" in a.reasoning


def test_options_match_as_whole_normalised_words_and_a_longer_option_wins():
    # "Hz" alone is no option; "440 Hz" written with other case and punctuation is one
    assert options_in_stem(Question("Is the tone near 440-HZ?", ["110 Hz", "220 Hz", "440 Hz", "880 Hz"], 2)) == [2]
    assert options_in_stem(Question("Which pitch, in Hz?", ["110 Hz", "220 Hz", "440 Hz", "880 Hz"], 2)) == []
    # "fast" is a word inside "breakfast": not a whole-word match
    assert options_in_stem(Question("Heard at breakfast, how is the tempo?", ["slow", "fast", "medium", "varied"], 1)) == []
    # "low" lies inside "very low", which the stem names: only "very low" counts
    q = Question("The hum here is very low; how loud is it?", ["low", "very low", "high", "very high"], 1)
    assert options_in_stem(q) == [1]


def test_audio_is_not_needed_only_when_a_strict_majority_picks_the_key():
    assert audio_needed([answer(2)], 2) is False
    assert audio_needed([answer(None)], 2) is True  # an abstention does not pick the key
    assert audio_needed([answer(2), answer(None)], 2) is True  # one of two is no majority
    assert audio_needed([answer(2), answer(2), answer(1)], 2) is False
    assert audio_needed([answer(1), answer(1), answer(2)], 2) is True  # a wrong majority still needs the audio
    assert audio_needed([], 2) is None


def test_row_fields_record_each_text_only_answer_and_are_null_when_nobody_was_asked():
    fields = audio_needed_fields([answer(2)], 2)
    assert fields["audio_needed"] is False
    assert fields["text_only_answers"] == [{"answerer": "a", "sees_audio": False, "answer_index": 2,
                                            "answer_text": None, "reasoning": "", "model": "m"}]
    assert audio_needed_fields([], 2) == {"audio_needed": None, "text_only_answers": None}
