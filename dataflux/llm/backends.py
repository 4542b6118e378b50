"""The `openai` step backends: captioner, question writer, answerer and judge over any
OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp, Ollama).

Each backend renders its versioned prompt template (`dataflux/prompts/`), asks for JSON that
follows the step's schema in `schemas/`, and returns the step result with a `Call` carrying the
model id the server reported, the prompt hash, sampling parameters, seed, tokens and cost.

A call that fails after retries and one repair still returns a result: its `call.failure`
holds the reason code (see `dataflux.llm.counters.FAILURE_REASONS`) and the result is empty
(`Caption.text == ""`, `Generation.is_success is False`, `Answer.answer_index is None`,
`Verdict.final_action == "DISCARD"`). The loop turns such results into rejects with that reason;
nothing is dropped silently. Only a spent budget raises (`BudgetExhausted`).
"""

from __future__ import annotations

import dataclasses
import json
import random
import string
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from dataflux.llm.budget import Budget
from dataflux.llm.cache import CallCache
from dataflux.llm.client import EndpointPool, LLMClient
from dataflux.llm.endpoint import EndpointConfigError
from dataflux.llm.local import LocalCheckpointAnswerer
from dataflux.llm.messages import clip_audio_part, clip_wav, with_audio
from dataflux.llm.prompts import Prompt, load_prompt
from dataflux.records import Clip
from dataflux.steps.answer import describe_evidence
from dataflux.steps.base import Answer, Call, Caption, Category, Generation, Question, Verdict

SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"
LETTERS = "ABCD"
DEFAULT_PROMPTS = {"caption": "caption_v1", "generate": "generate_v1", "regenerate": "regenerate_v1",
                   "answer": "answer_v1", "judge": "judge_v1"}


@lru_cache(maxsize=16)
def _schema_text(name: str) -> str:
    path = SCHEMAS_DIR / f"{name}.schema.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: step schema missing (it ships in the repository's schemas/)")
    return path.read_text(encoding="utf-8")


def step_schema(name: str) -> dict:
    """The JSON Schema a step's reply must follow (`schemas/<name>.schema.json`), without the
    `$schema`/`$id` keys that some servers' grammar compilers reject."""
    schema = json.loads(_schema_text(name))
    return {k: v for k, v in schema.items() if k not in ("$schema", "$id")}


def _schema_json(schema: dict) -> str:
    return json.dumps(schema, separators=(", ", ": "), ensure_ascii=False)  # compact: fewer prompt tokens


def _label(i: int) -> str:
    return f"MODEL_{string.ascii_uppercase[i]}"


def merge_calls(main: Call, extra: Call | None) -> Call:
    """One Call for a step that made two (caption + transcription): tokens and cost add up."""
    if extra is None:
        return main
    return dataclasses.replace(
        main, tokens_in=main.tokens_in + extra.tokens_in, tokens_out=main.tokens_out + extra.tokens_out,
        cost_usd=main.cost_usd + extra.cost_usd, cached=main.cached and extra.cached,
        latency_s=main.latency_s + extra.latency_s,
        params={**main.params, "transcription_model": extra.model,
                **({"transcription_failure": extra.failure} if extra.failure else {})})


class _Step:
    """What every openai backend holds: its client, prompt and sampling parameters."""

    backend = "openai"

    def __init__(self, client: LLMClient, *, prompt: str, temperature: float = 0.0,
                 max_tokens: int = 1024, seed: int | None = None):
        self.client = client
        self.prompt: Prompt = load_prompt(prompt)
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self.seed = seed

    @property
    def model(self) -> str:
        return self.client.endpoint.model

    def _audio(self, messages: list[dict], clip: Clip) -> list[dict]:
        fmt = self.client.endpoint.audio_format
        return with_audio(messages, clip_audio_part(clip, fmt), fmt)

    def _require_audio(self, where: str) -> None:
        ep = self.client.endpoint
        if ep.audio_format == "none":
            raise EndpointConfigError(
                f"data_catalog.yaml: {where} must hear the audio, but endpoints.{ep.name}.audio_format "
                "is 'none': set it to input_audio (OpenAI) or audio_url (vLLM), or use another endpoint")


def is_speech(clip: Clip) -> bool:
    """Whether a clip carries speech worth transcribing: the source says it has a transcript,
    or a speaking rate was measured."""
    return bool(clip.item.labels.get("transcript")) or clip.facts.get("speaking_rate") is not None


class OpenAICaptioner(_Step):
    """A dense caption from an audio-capable chat model; speech transcribed first where an
    endpoint with `supports_transcription` is given (its text goes into the prompt)."""

    def __init__(self, client: LLMClient, *, transcriber: LLMClient | None = None, **kw):
        super().__init__(client, **kw)
        self._require_audio("steps.caption")
        self.transcriber = transcriber
        self.schema = step_schema("caption")

    async def caption(self, clip: Clip) -> Caption:
        wav = clip_wav(clip)
        transcript, t_call = None, None
        if self.transcriber is not None and is_speech(clip):
            t = await self.transcriber.transcribe(wav, step="caption")
            transcript, t_call = (t.data if t.call.failure is None else None), t.call
        messages = self.prompt.render(transcript=transcript, schema=_schema_json(self.schema))
        messages = with_audio(messages, wav, self.client.endpoint.audio_format)
        reply = await self.client.complete(
            step="caption", messages=messages, schema=self.schema, temperature=self.temperature,
            max_tokens=self.max_tokens, seed=self.seed, prompt_sha256=self.prompt.sha256)
        call = merge_calls(reply.call, t_call)
        if reply.data is None:
            return Caption(text="", call=call, transcript=transcript)
        return Caption(text=reply.data["caption"].strip(), call=call,
                       transcript=transcript or reply.data.get("transcript") or None)


def _generation_problems(data: Any) -> list[str]:
    """What the schema cannot say about a question writer's reply."""
    problems = []
    questions = data.get("questions") or []
    if data.get("is_success") and not questions:
        problems.append("$.questions: is_success is true but no question was written")
    for i, q in enumerate(questions):
        answer = q.get("answer")
        if answer is not None and answer.strip() not in [c.strip() for c in q["choices"]]:
            problems.append(f"$.questions[{i}].answer: {answer!r} is not one of the choices {q['choices']}; "
                            "copy the correct option exactly")
    return problems


def _answer_index(q: dict) -> int:
    """The keyed position. When the reply names the answer's text too, the text decides: models
    copy an option more reliably than they count positions."""
    choices = [c.strip() for c in q["choices"]]
    answer = (q.get("answer") or "").strip()
    return choices.index(answer) if answer in choices else int(q["answer_index"])


def shuffle_choices(q: Question, rng: random.Random) -> Question:
    """The question with its options in a random order (language models favour early letters)."""
    order = list(range(len(q.choices)))
    rng.shuffle(order)
    return Question(q.question, [q.choices[i] for i in order], order.index(q.answer_index))


class OpenAIQuestionWriter(_Step):
    """DataFlux step 2 through a chat model: fit check (`is_success`), then `n` questions. With
    the judge's feedback it uses the regeneration template, which quotes that feedback.

    The options of every question are shuffled with the seed, so the correct position is uniform
    whatever the model's habits; `params["shuffled"]` records it.
    """

    def __init__(self, client: LLMClient, *, regenerate_prompt: str = DEFAULT_PROMPTS["regenerate"], **kw):
        super().__init__(client, **kw)
        self.regenerate_prompt = load_prompt(regenerate_prompt)
        self.schema = step_schema("generation")

    async def generate(self, clip: Clip, caption: Caption, category: Category, n: int, seed: int,
                       feedback: str | None = None) -> Generation:
        prompt = self.regenerate_prompt if feedback else self.prompt
        messages = prompt.render(category=category, caption=caption.text, transcript=caption.transcript,
                                 n=n, feedback=feedback, previous=[], schema=_schema_json(self.schema))
        reply = await self.client.complete(
            step="generate", messages=messages, schema=self.schema, temperature=self.temperature,
            max_tokens=self.max_tokens, seed=seed, prompt_sha256=prompt.sha256, check=_generation_problems)
        call = dataclasses.replace(reply.call, params={**reply.call.params, "n": n, "shuffled": True,
                                                        "with_feedback": feedback is not None})
        if reply.data is None:
            return Generation(False, [], call, reason=f"question writer failed: {call.failure}")
        data = reply.data
        rng = random.Random(f"{seed}:{category.id}")
        questions = [shuffle_choices(Question(q["question"].strip(), [c.strip() for c in q["choices"]],
                                              _answer_index(q)), rng)
                     for q in (data.get("questions") or [])[: max(0, n)]]
        ok = bool(data["is_success"]) and bool(questions)
        return Generation(ok, questions if ok else [], call, reason=str(data.get("reason") or ""))


class OpenAIAnswerer(_Step):
    """DataFlux step 3 through a chat model: reasoning, then a letter (or null to abstain).

    `sees_audio=True` sends the clip; `sees_audio=False` sends only the caption (an answerer that
    reads, recorded as such in the row)."""

    def __init__(self, name: str, client: LLMClient, *, sees_audio: bool = True, **kw):
        super().__init__(client, **kw)
        self.name = name
        self.sees_audio = bool(sees_audio)
        if self.sees_audio:
            self._require_audio(f"steps.answerers[{name}] (sees_audio: true)")
        self.schema = step_schema("answer")

    async def answer(self, clip: Clip, caption: Caption, question: Question, category: Category) -> Answer:
        messages = self.prompt.render(category=category, question=question.question, choices=question.choices,
                                      caption=None if self.sees_audio else caption.text,
                                      schema=_schema_json(self.schema))
        if self.sees_audio:
            messages = self._audio(messages, clip)
        reply = await self.client.complete(
            step="answer", messages=messages, schema=self.schema, temperature=self.temperature,
            max_tokens=self.max_tokens, seed=self.seed, prompt_sha256=self.prompt.sha256)
        call = dataclasses.replace(reply.call, params={**reply.call.params, "answerer": self.name,
                                                        "sees_audio": self.sees_audio})
        if reply.data is None:
            return Answer(self.name, self.sees_audio, f"answerer call failed: {call.failure}", None, None, call)
        letter = reply.data["answer"]
        idx = LETTERS.index(letter) if letter is not None else None
        return Answer(self.name, self.sees_audio, reply.data["reasoning"].strip(), idx,
                      question.choices[idx] if idx is not None else None, call)


def _evidence_lines(evidence: Mapping[str, Any]) -> dict[str, str]:
    """The measured evidence as `name: value` lines for the judge prompt."""
    key, measured = evidence.get("measured_by"), evidence.get("measured")
    if not key:
        return {}
    lines = {f"measured {key}": str(measured) if measured is not None else "inconclusive"}
    raw = evidence.get("raw") or {}
    if raw:
        lines["raw measurements"] = describe_evidence(raw)
    return lines


class OpenAIJudge(_Step):
    """DataFlux step 4 through a chat model: the verdict schema, category rules injected, the
    caption as ground truth, every answerer's reasoning, and our measured evidence."""

    def __init__(self, client: LLMClient, **kw):
        super().__init__(client, **kw)
        self.schema = step_schema("verdict")

    async def judge(self, clip: Clip, caption: Caption, category: Category, question: Question,
                    answers: list[Answer], evidence: dict[str, Any]) -> Verdict:
        labelled = [{"label": _label(i), "sees_audio": a.sees_audio, "answer_index": a.answer_index,
                     "reasoning": a.reasoning} for i, a in enumerate(answers)]
        labels = {x["label"] for x in labelled} | {"TIE", "NONE"}
        messages = self.prompt.render(category=category, caption=caption.text, transcript=caption.transcript,
                                      question=question.question, choices=question.choices,
                                      answer_index=question.answer_index, answers=labelled,
                                      evidence=_evidence_lines(evidence), schema=_schema_json(self.schema))

        def problems(data: Any) -> list[str]:
            if data["winner"] not in labels:
                return [f"$.winner: {data['winner']!r} is not one of {sorted(labels)}"]
            return []

        reply = await self.client.complete(
            step="judge", messages=messages, schema=self.schema, temperature=self.temperature,
            max_tokens=self.max_tokens, seed=self.seed, prompt_sha256=self.prompt.sha256, check=problems)
        measured = evidence.get("measured")
        measured_agrees = None if measured is None else measured == question.answer
        if reply.data is None:
            return Verdict(False, "WEAK_MATCH", "NONE", f"judge call failed: {reply.call.failure}", "DISCARD",
                           reply.call, measured_agrees)
        d = reply.data
        return Verdict(bool(d["consensus"]), d["consistency_with_caption"], d["winner"], d["reasoning"].strip(),
                       d["final_action"], reply.call, measured_agrees)


def _pool(endpoints: Mapping[str, Any] | EndpointPool, cache: CallCache | None, budget: Budget | None) -> EndpointPool:
    if isinstance(endpoints, EndpointPool):
        if cache is not None and cache is not endpoints.cache:
            raise ValueError("build_openai_step: pass the cache to the EndpointPool, not beside it")
        if budget is not None and budget is not endpoints.budget:
            raise ValueError("build_openai_step: pass the budget to the EndpointPool, not beside it")
        return endpoints
    return EndpointPool(endpoints, cache=cache, budget=budget)


def build_openai_step(step: str, step_cfg: Mapping[str, Any], endpoints: Mapping[str, Any] | EndpointPool,
                      cache: CallCache | None = None, budget: Budget | None = None):
    """The backend for one step config (`steps.caption|generate|judge`, or one `steps.answerers[]`
    entry with step="answer").

    `endpoints` is the run's `EndpointPool` (preferred: endpoints then share concurrency limits,
    counters and cache across steps) or the plain `endpoints` mapping of the data catalog, in
    which case a pool is made for this backend alone with `cache` and `budget`.
    """
    pool = _pool(endpoints, cache, budget)
    backend = step_cfg.get("backend", "openai")
    where = f"steps.{step}" if step != "answer" else f"steps.answerers[{step_cfg.get('name')}]"
    if backend == "local":
        if step != "answer":
            raise EndpointConfigError(f"data_catalog.yaml: {where}.backend=local is only for answerers")
        if not step_cfg.get("checkpoint"):
            raise EndpointConfigError(f"data_catalog.yaml: {where}.checkpoint is missing: the path of a "
                                      "trained checkpoint directory (save_pretrained output)")
        return LocalCheckpointAnswerer(step_cfg["name"], step_cfg["checkpoint"],
                                       max_new_tokens=int(step_cfg.get("max_tokens", 64)))
    if backend != "openai":
        raise EndpointConfigError(f"data_catalog.yaml: {where}.backend={backend!r}; build_openai_step "
                                  "builds openai and local backends only")
    if not step_cfg.get("endpoint"):
        raise EndpointConfigError(f"data_catalog.yaml: {where}.endpoint is missing: name one of "
                                  f"{sorted(pool.configs)}")
    client = pool.client(step_cfg["endpoint"])
    kw = dict(prompt=step_cfg.get("prompt") or DEFAULT_PROMPTS[step],
              temperature=step_cfg.get("temperature", 0.0),
              max_tokens=step_cfg.get("max_tokens", 1024), seed=step_cfg.get("seed"))
    if step == "caption":
        transcriber = client if client.endpoint.supports_transcription else None
        return OpenAICaptioner(client, transcriber=transcriber, **kw)
    if step == "generate":
        return OpenAIQuestionWriter(
            client, regenerate_prompt=step_cfg.get("regenerate_prompt") or DEFAULT_PROMPTS["regenerate"], **kw)
    if step == "answer":
        if not step_cfg.get("name"):
            raise EndpointConfigError("data_catalog.yaml: every steps.answerers[] entry needs a name")
        return OpenAIAnswerer(step_cfg["name"], client, sees_audio=step_cfg.get("sees_audio", True), **kw)
    if step == "judge":
        return OpenAIJudge(client, **kw)
    raise ValueError(f"unknown step {step!r}: use caption, generate, answer or judge")
