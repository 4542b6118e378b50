"""Does a question need its audio? The audio-contribution filter of AudioMCQ (arXiv 2509.21060).

After the judge keeps a multiple-choice question, it is put again to answerers that get neither the
audio nor the caption: only the question stem and its options. A question most of them answer right
can be answered from its text alone; the row says so (`audio_needed = false`) and the trainer leaves
it out unless told otherwise (`train.include_text_answerable`).

The text-only answerers of a run (`dataflux.llm.text_only.text_only_panel` builds them from the
configured answerers):
- `StemReader` ("reference-text-only@1"), for the reference answerers: it answers only when the
  stem gives the answer away, i.e. exactly one option's words appear in the stem as a whole-word
  phrase (the one normaliser, `dataflux.text_metrics.words`); else it abstains.
- each `openai` answerer's model, asked the same question as text (`dataflux.llm.text_only`);
- our own checkpoint (`backend: local`), which hears the same length of silence.

Every one of them implements `answer_without_audio(question, n_samples, sampling_rate) -> Answer`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from dataflux.steps.base import Answer, Call, Question
from dataflux.text_metrics import words

TEXT_ONLY_MODEL = "reference-text-only@1"


@runtime_checkable
class TextOnlyAnswerer(Protocol):
    """Answers a question from its stem and options alone (`n_samples` at `sampling_rate`: the length
    of the clip, for an answerer that must be handed audio and gets that much silence)."""

    name: str

    async def answer_without_audio(self, question: Question, n_samples: int, sampling_rate: int) -> Answer: ...


def _phrase_spans(stem: list[str], phrase: list[str]) -> list[tuple[int, int]]:
    """Where the word sequence `phrase` occurs in `stem`, as [start, end) word positions."""
    n = len(phrase)
    if not n:
        return []
    return [(i, i + n) for i in range(len(stem) - n + 1) if stem[i:i + n] == phrase]


def options_in_stem(question: Question) -> list[int]:
    """Indices of the options whose words the stem contains as a whole-word phrase. An option found
    only inside another found option's phrase ("low" within "very low") does not count."""
    stem = words(question.question)
    spans = {i: _phrase_spans(stem, words(choice)) for i, choice in enumerate(question.choices)}
    found = {i: s for i, s in spans.items() if s}

    def inside_other(i: int) -> bool:
        return all(any(j != i and a <= s and e <= b and (b - a) > (e - s) for j, other in found.items()
                       for a, b in other) for s, e in found[i])

    return [i for i in found if not inside_other(i)]


class StemReader:
    """The reference text-only answerer: the option the stem itself names, when exactly one is named."""

    backend = "reference"
    model = TEXT_ONLY_MODEL
    sees_audio = False

    def __init__(self, name: str = "text_only"):
        self.name = name

    async def answer_without_audio(self, question: Question, n_samples: int = 0, sampling_rate: int = 0) -> Answer:
        call = Call(step="answer", backend=self.backend, model=self.model,
                    params={"answerer": self.name, "text_only": True})
        named = options_in_stem(question)
        if len(named) != 1:
            why = "names none of the options" if not named else "names several options"
            return Answer(self.name, False, f"Without the audio: the question {why}; I abstain.", None, None, call)
        idx = named[0]
        value = question.choices[idx]
        return Answer(self.name, False, f"Without the audio: the question itself says {value!r}, so the answer is "
                      f"({'ABCD'[idx]}) {value}.", idx, value, call)


def audio_needed(answers: Sequence[Answer], answer_index: int) -> bool | None:
    """The audio-contribution rule, in one place: a question does NOT need its audio (False) when a
    strict majority of the text-only answerers asked pick the key; an abstention, or a failed call,
    counts as not picking it. None when no text-only answerer was asked (other tasks, an unverified
    version, or a run without the filter)."""
    if not answers:
        return None
    right = sum(1 for a in answers if a.answer_index is not None and a.answer_index == answer_index)
    return not right * 2 > len(answers)


def text_only_answers_column(answers: Sequence[Answer]) -> list[dict[str, Any]]:
    """The text-only answers as the row records them (the same shape as `answers`)."""
    return [{"answerer": a.answerer, "sees_audio": False, "answer_index": a.answer_index,
             "answer_text": a.answer_text, "reasoning": a.reasoning, "model": a.call.model} for a in answers]


def audio_needed_fields(answers: Sequence[Answer] | None, answer_index: int | None) -> dict[str, Any]:
    """The row's `audio_needed` and `text_only_answers`; both None when nobody answered without the audio."""
    if not answers or answer_index is None:
        return {"audio_needed": None, "text_only_answers": None}
    return {"audio_needed": audio_needed(answers, answer_index), "text_only_answers": text_only_answers_column(answers)}
