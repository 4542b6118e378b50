"""The text-only answerers of a run: each configured answerer's model asked without audio or caption.

`text_only_panel` turns the run's answerers into the panel the audio-contribution filter asks
(`dataflux.steps.text_only`): the reference answerers become one `StemReader`, each `openai`
answerer's model is asked through `OpenAITextOnlyAnswerer` (the same client, so the call is cached,
budgeted and counted like every model call; one per model), and our own checkpoint (`local`) answers
with its audio zeroed (`LocalCheckpointAnswerer.answer_without_audio`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from dataflux.llm.backends import LETTERS, OpenAIAnswerer, _schema_json, step_schema
from dataflux.llm.prompts import load_prompt
from dataflux.steps.base import Answer, Question
from dataflux.steps.text_only import StemReader, TextOnlyAnswerer

TEXT_ONLY_PROMPT = "answer_text_only_v1"


class OpenAITextOnlyAnswerer:
    """An `openai` answerer's model asked the question stem and options only: no audio part, no caption,
    no category (`dataflux/prompts/answer_text_only_v1.jinja`)."""

    backend = "openai"
    sees_audio = False

    def __init__(self, answerer: OpenAIAnswerer, *, prompt: str = TEXT_ONLY_PROMPT):
        self.name = f"{answerer.name}:text_only"
        self.client = answerer.client
        self.prompt = load_prompt(prompt)
        self.temperature, self.max_tokens, self.seed = answerer.temperature, answerer.max_tokens, answerer.seed
        self.schema = step_schema("answer")

    @property
    def model(self) -> str:
        return self.client.endpoint.model

    async def answer_without_audio(self, question: Question, n_samples: int = 0, sampling_rate: int = 0) -> Answer:
        messages = self.prompt.render(question=question.question, choices=question.choices,
                                      schema=_schema_json(self.schema))
        reply = await self.client.complete(
            step="answer", messages=messages, schema=self.schema, temperature=self.temperature,
            max_tokens=self.max_tokens, seed=self.seed, prompt_sha256=self.prompt.sha256)
        call = dataclasses.replace(reply.call, params={**reply.call.params, "answerer": self.name,
                                                        "sees_audio": False, "text_only": True})
        if reply.data is None:
            return Answer(self.name, False, f"text-only call failed: {call.failure}", None, None, call)
        letter = reply.data["answer"]
        idx = LETTERS.index(letter) if letter is not None else None
        return Answer(self.name, False, reply.data["reasoning"].strip(), idx,
                      question.choices[idx] if idx is not None else None, call)


def text_only_panel(answerers: Sequence[Any]) -> list[TextOnlyAnswerer]:
    """The text-only answerers for a run's `answerers`, in their order: one `StemReader` for all the
    reference ones, one `OpenAITextOnlyAnswerer` per openai model, and each local checkpoint itself."""
    panel: list[TextOnlyAnswerer] = []
    models: set[str] = set()
    for a in answerers:
        if isinstance(a, OpenAIAnswerer):
            if a.model not in models:
                models.add(a.model)
                panel.append(OpenAITextOnlyAnswerer(a))
        elif isinstance(a, TextOnlyAnswerer):
            panel.append(a)
        elif getattr(a, "backend", None) == "reference" and not any(isinstance(p, StemReader) for p in panel):
            panel.append(StemReader())
    return panel
