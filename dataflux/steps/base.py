"""Interfaces every step backend implements, `reference` and `openai` alike.

All step methods are `async` so that model-backed backends can keep many requests in
flight; the reference backends simply compute and return. Every result carries a `Call`
with provenance (which model, which prompt template hash, sampling parameters, seed,
tokens, cost), so each sample row can say what made it and what it cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from dataflux.records import Call, Caption, Clip  # noqa: F401  (the records every step returns)
from dataflux.taxonomy import Category  # noqa: F401  (the steps' contract names the leaf they work on)


@dataclass
class Question:
    question: str
    choices: list[str]  # exactly 4
    answer_index: int

    @property
    def answer(self) -> str:
        return self.choices[self.answer_index]


@dataclass
class Generation:
    is_success: bool  # does the caption fit the category at all?
    questions: list[Question]
    call: Call
    reason: str = ""


@dataclass
class Answer:
    answerer: str  # configured answerer name, e.g. "measure" or "caption_reader"
    sees_audio: bool  # False for an answerer that reads only the caption
    reasoning: str
    answer_index: int | None  # None when it abstains (cannot tell)
    answer_text: str | None
    call: Call


@dataclass
class Verdict:
    """The DataFlux judge verdict (schemas/verdict.schema.json) plus our evidence."""

    consensus: bool
    consistency_with_caption: str  # STRONG_MATCH | WEAK_MATCH | CONFLICT
    winner: str  # MODEL_A | MODEL_B | TIE | NONE
    reasoning: str
    final_action: str  # KEEP_USING_WINNER | DISCARD
    call: Call
    measured_agrees: bool | None = None  # None when no measured fact checks the category


@runtime_checkable
class Captioner(Protocol):
    async def caption(self, clip: Clip) -> Caption: ...


@runtime_checkable
class QuestionWriter(Protocol):
    async def generate(
        self, clip: Clip, caption: Caption, category: Category, n: int, seed: int,
        feedback: str | None = None,
    ) -> Generation: ...


@runtime_checkable
class Answerer(Protocol):
    name: str
    sees_audio: bool

    async def answer(self, clip: Clip, caption: Caption, question: Question, category: Category) -> Answer: ...


@runtime_checkable
class Judge(Protocol):
    async def judge(
        self, clip: Clip, caption: Caption, category: Category, question: Question,
        answers: list[Answer], evidence: dict[str, Any],
    ) -> Verdict: ...
