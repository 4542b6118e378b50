"""The closed loop for one clip: caption -> generate -> answer -> verify -> regenerate.

    caption the clip
    for each round (up to cfg.max_rounds), for every category still open, concurrently:
        generate questions (a category the caption does not fit yields none: counted, not rejected)
        answer each question with every answerer, concurrently
        deterministic checks + the judge's verdict (measured evidence outranks the caption)
    a DISCARD whose reason is a measured fact contradicting the caption:
        on_conflict=correct  -> re-caption with the measured value, regenerate with the feedback
        on_conflict=discard  -> drop the claim from the caption, reject the category's questions
    any other DISCARD or failed check -> regenerate with the judge's reasoning as feedback
    finally, every caption claim the measurement contradicts is corrected (or dropped), so no
    row's caption asserts a fact the audio disproves, even for leaves no question was about.
    each kept question is answered again without its audio and caption (steps.text_only: the
    audio-contribution filter), and its row records whether it needs the audio (`audio_needed`).

Kept questions become sample rows (the row contract in dataflux.storage.row_schema); questions
still failing after the last round become `Reject(stage="verify")`.

With `verify: false` (the unverified twin of a version, for ablations) the loop stops after the
first generation: the caption as the source states it, the first questions kept as written, no
answerers, no judge, no measurement check or correction, no regeneration. Only questions that
cannot be a row at all (malformed, answer not among the options) are rejected.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dataflux.claims import apply_corrections, caption_conflicts
from dataflux.records import Clip, Reject
from dataflux.steps.answer import CaptionReader, MeasuringAnswerer
from dataflux.steps.base import (
    Answer, Answerer, Call, Caption, Captioner, Category, Judge, Question, QuestionWriter, Verdict,
)
from dataflux.steps.caption import ReferenceCaptioner
from dataflux.steps.checks import CheckResult, run_checks
from dataflux.steps.generate import TemplateQuestionWriter, measured_feedback
from dataflux.steps.judge import DISCARD, ReferenceJudge, build_evidence
from dataflux.steps.text_only import StemReader, TextOnlyAnswerer, audio_needed_fields
from dataflux.steps.mcq_row import (  # noqa: F401  (split_for, model_correct: public names of the loop)
    UNVERIFIED_VERDICT, mcq_row, model_correct, split_for, verification_of, wav_bytes)

ON_CONFLICT = ("correct", "discard")
# Checks whose failure means the question cannot even be put to the answerers.
_STRUCTURAL = ("schema", "answer_in_options", "distinct_options")


@dataclass(frozen=True)
class LoopConfig:
    """The `loop:` section of data_catalog.yaml."""

    questions_per_category: int = 1
    """Questions the writer is asked for per (clip, leaf); the reference writer caps it at the leaf's templates."""
    max_rounds: int = 2
    """Generation rounds in total, the first included: 2 = one regeneration with the judge's feedback."""
    on_conflict: str = "correct"
    """When a measured fact contradicts the caption: "correct" re-captions from the measurement and
    regenerates (default); "discard" drops the claim and rejects the questions about it."""
    seed: int = 0
    """Mixed into every per-question seed; the same seed and input give the same rows."""
    verify: bool = True
    """False builds the unverified twin: first-round questions kept as written (see the module docstring)."""

    def __post_init__(self) -> None:
        if self.on_conflict not in ON_CONFLICT:
            raise ValueError(f"loop.on_conflict: {self.on_conflict!r} is not one of {ON_CONFLICT}")
        if self.max_rounds < 1:
            raise ValueError(f"loop.max_rounds: must be >= 1, got {self.max_rounds}")
        if self.questions_per_category < 1:
            raise ValueError(f"loop.questions_per_category: must be >= 1, got {self.questions_per_category}")


@dataclass
class Steps:
    """The step backends one run uses. MODEL_A in a verdict is answerers[0], MODEL_B answerers[1].
    `text_only`: who answers a kept question without its audio or caption (none: no `audio_needed`)."""

    captioner: Captioner
    writer: QuestionWriter
    answerers: list[Answerer]
    judge: Judge
    text_only: list[TextOnlyAnswerer] = field(default_factory=list)


def build_reference_steps(taxonomy: Any = None) -> Steps:
    """The offline default: template captions, template questions, a measuring answerer and a
    caption reader, and the rule-based judge. `taxonomy` limits the captioner to its leaves."""
    leaves = [c.id for c in taxonomy] if taxonomy is not None else None
    claimed_from = {c.id: c.claimed_from for c in taxonomy if c.claimed_from} if taxonomy is not None else None
    return Steps(
        captioner=ReferenceCaptioner(leaves, claimed_from),
        writer=TemplateQuestionWriter(),
        answerers=[MeasuringAnswerer(), CaptionReader()],
        judge=ReferenceJudge(),
        text_only=[StemReader()],
    )


@dataclass
class LoopStats:
    """Counters across clips (optional): not-applicable categories, rounds, corrections, discards."""

    counts: Counter = field(default_factory=Counter)

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] += n


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from the given parts (stable across machines and Python versions)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@dataclass
class _Outcome:
    """One question after answering and verification."""

    question: Question
    checks: list[CheckResult]
    answers: list[Answer]
    verdict: Verdict | None
    calls: list[Call]
    text_only: list[Answer] = field(default_factory=list)  # answers given without the audio (kept questions)

    @property
    def failed_checks(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.passed]

    @property
    def kept(self) -> bool:
        return self.verdict is not None and self.verdict.final_action != DISCARD and not self.failed_checks

    def reject_reason(self) -> tuple[str, str]:
        if self.verdict is not None and self.verdict.call.failure:
            return f"judge_failed:{self.verdict.call.failure}", self.verdict.reasoning
        if self.verdict is not None and self.verdict.final_action == DISCARD:
            return "judge_discard", self.verdict.reasoning
        bad = self.failed_checks[0]
        return f"check_failed:{bad.name}", bad.detail


@dataclass
class _Round:
    generation_call: Call
    outcomes: list[_Outcome]


@dataclass
class _LeafState:
    category: Category
    feedback: str | None = None
    rounds: list[_Round] = field(default_factory=list)
    done: bool = False
    not_applicable: str | None = None
    failed: str | None = None  # a step failure (generation error) ends the leaf


async def _verify(clip: Clip, caption: Caption, category: Category, q: Question, steps: Steps,
                  evidence: dict[str, Any]) -> _Outcome:
    checks = run_checks(q, category, clip.facts)
    if any(not c.passed for c in checks if c.name in _STRUCTURAL):
        return _Outcome(q, checks, [], None, [])
    answers = list(await asyncio.gather(*(a.answer(clip, caption, q, category) for a in steps.answerers)))
    verdict = await steps.judge.judge(clip, caption, category, q, answers, evidence)
    return _Outcome(q, checks, answers, verdict, [a.call for a in answers] + [verdict.call])


async def _run_leaf_round(clip: Clip, caption: Caption, state: _LeafState, steps: Steps, cfg: LoopConfig,
                          round_no: int) -> None:
    cat = state.category
    seed = derive_seed(cfg.seed, clip.audio_sha256, cat.id, round_no)
    gen = await steps.writer.generate(clip, caption, cat, cfg.questions_per_category, seed, state.feedback)
    if gen.call.failure:
        state.failed = gen.call.failure
        state.done = True
        return
    if not gen.is_success or not gen.questions:
        state.not_applicable = gen.reason or "not applicable"
        state.done = True
        return
    evidence = build_evidence(clip, caption, cat)
    outcomes = await asyncio.gather(*(_verify(clip, caption, cat, q, steps, evidence) for q in gen.questions))
    state.rounds.append(_Round(gen.call, list(outcomes)))


def _feedback(outcomes: list[_Outcome]) -> str:
    parts = []
    for o in outcomes:
        if o.kept:
            continue
        if o.verdict is not None and o.verdict.final_action == DISCARD:
            parts.append(f"Judge: {o.verdict.reasoning}")
        parts.extend(f"Check {c.name} failed: {c.detail}" for c in o.failed_checks)
    return "\n".join(dict.fromkeys(parts))


async def _recaption(steps: Steps, clip: Clip, caption: Caption, corrections: dict[str, str | None]) -> Caption:
    recaption = getattr(steps.captioner, "recaption", None)
    if recaption is not None:
        return await recaption(clip, caption, corrections)
    return apply_corrections(caption, corrections)


def _settle_leaf(clip: Clip, caption: Caption, s: _LeafState, cfg: LoopConfig, round_no: int,
                 corrections: dict[str, str | None], dropped: set[str]) -> None:
    """After a round: mark leaf `s` done, or record its correction (in `corrections`, and in
    `dropped` under on_conflict=discard) and the feedback for its next round."""
    if s.done or not s.rounds:
        return
    last = s.rounds[-1]
    if all(o.kept for o in last.outcomes):
        s.done = True
        return
    # A conflict is decided from the evidence, not from the judge's wording, so any judge
    # backend gets the same correction policy.
    evidence = build_evidence(clip, caption, s.category)
    measured, claim = evidence["measured"], evidence["caption_claim"]
    conflict = measured is not None and (
        claim not in (None, measured) or any(o.question.answer != measured for o in last.outcomes if not o.kept))
    if conflict:
        if cfg.on_conflict == "discard":
            corrections[s.category.id] = None
            dropped.add(s.category.id)
            s.done = True
            return
        # a measured value outside the vocabulary (other words than claimed) refutes the
        # claim without naming a replacement: the claim is dropped, not rewritten
        corrections[s.category.id] = measured if measured in s.category.values else None
    s.feedback = _feedback(last.outcomes)
    if conflict:
        s.feedback += "\n" + measured_feedback(s.category.id, measured)
    if round_no == cfg.max_rounds:
        s.done = True


def _collect(clip: Clip, states: list[_LeafState], dropped: set[str],
             stats: LoopStats) -> tuple[list[tuple[_LeafState, int, _Outcome]], list[Reject]]:
    """The questions kept after the last round (leaf state, index, outcome), and a reject for each other."""
    kept: list[tuple[_LeafState, int, _Outcome]] = []
    rejects: list[Reject] = []
    for s in states:
        if s.failed:
            rejects.append(Reject(clip.item.source, clip.item.source_id, stage="generate", reason=s.failed,
                                  detail=f"{s.category.id}: the question writer failed", audio_sha256=clip.audio_sha256,
                                  extra={"leaf": s.category.id}))
            continue
        if not s.rounds:
            stats.add("not_applicable")
            stats.add(f"not_applicable:{s.category.id}")
            continue
        stats.add("rounds", len(s.rounds))
        last = s.rounds[-1]
        for k, o in enumerate(last.outcomes):
            sample_id = f"{clip.sample_key}-{s.category.id}-{k}"
            if o.kept and s.category.id not in dropped:
                kept.append((s, k, o))
                continue
            reason, detail = o.reject_reason()
            stats.add(reason)
            rejects.append(Reject(clip.item.source, clip.item.source_id, stage="verify", reason=reason, detail=detail,
                                  sample_id=sample_id, audio_sha256=clip.audio_sha256,
                                  extra={"leaf": s.category.id, "rounds": len(s.rounds),
                                         "question": o.question.question, "answer": o.question.answer,
                                         "calls": [_provenance(c) for c in [last.generation_call, *o.calls]]}))
    return kept, rejects


async def run_clip(clip: Clip, categories: Sequence[Category], steps: Steps, cfg: LoopConfig | None = None,
                   stats: LoopStats | None = None) -> tuple[list[dict], list[Reject]]:
    """Run the closed loop on one clip. Returns (sample rows, rejects).

    Rows follow the row contract except the fields the pipeline fills: `run_id`,
    `code_version` and `row_sha256` are None.
    """
    cfg = cfg or LoopConfig()
    stats = stats if stats is not None else LoopStats()
    caption = await steps.captioner.caption(clip)
    if caption.call.failure or not (caption.text or "").strip():
        reason = caption.call.failure or "empty_caption"
        stats.add(f"caption_failed:{reason}")
        return [], [Reject(clip.item.source, clip.item.source_id, stage="caption", reason=f"caption_failed:{reason}",
                           detail=f"the captioner ({caption.call.model}) gave no usable caption",
                           audio_sha256=clip.audio_sha256)]
    caption_calls = [caption.call]
    if not cfg.verify:
        return await _run_unverified(clip, caption, caption_calls, categories, steps, cfg, stats)
    states = [_LeafState(c) for c in categories]
    dropped: set[str] = set()  # leaves whose questions are rejected under on_conflict=discard

    for round_no in range(1, cfg.max_rounds + 1):
        open_states = [s for s in states if not s.done]
        if not open_states:
            break
        await asyncio.gather(*(_run_leaf_round(clip, caption, s, steps, cfg, round_no) for s in open_states))
        corrections: dict[str, str | None] = {}
        for s in open_states:
            _settle_leaf(clip, caption, s, cfg, round_no, corrections, dropped)
        if corrections:
            caption = await _recaption(steps, clip, caption, corrections)
            caption_calls.append(caption.call)
            stats.add("recaptions")

    # No row may carry a caption the measurement disproves, whatever leaf the claim is about.
    leftover = caption_conflicts(clip, caption, categories)
    if leftover:
        values = {c.id: c.values for c in categories}
        fix = {leaf: (v if cfg.on_conflict == "correct" and (leaf not in values or v in values[leaf]) else None)
               for leaf, v in leftover.items()}
        caption = await _recaption(steps, clip, caption, fix)
        caption_calls.append(caption.call)
        stats.add("recaptions")

    kept, rejects = _collect(clip, states, dropped, stats)
    await _answer_without_audio(clip, [o for _, _, o in kept], steps, stats)
    corrected = bool(getattr(caption, "corrected", None))
    if corrected:
        stats.add("corrected_clips")
    audio = {"bytes": wav_bytes(clip.samples, clip.sampling_rate), "path": f"{clip.sample_key}.wav"}
    rows = [{**mcq_row(clip, caption, caption_calls, s, k, o, audio, corrected, len(kept), categories),
             **audio_needed_fields(o.text_only, o.question.answer_index)} for s, k, o in kept]
    stats.add("rows", len(rows))
    return rows, rejects


async def _answer_without_audio(clip: Clip, kept: list[_Outcome], steps: Steps, stats: LoopStats) -> None:
    """Every kept question put to the text-only answerers (stem and options; silence of the clip's
    length for a model that must hear something). Their answers and calls join the outcome, so the
    row records them and counts their cost like every other call of the question."""
    if not steps.text_only or not kept:
        return
    n = len(clip.samples)
    answers = await asyncio.gather(*(a.answer_without_audio(o.question, n, clip.sampling_rate)
                                     for o in kept for a in steps.text_only))
    width = len(steps.text_only)
    for i, o in enumerate(kept):
        o.text_only = list(answers[i * width:(i + 1) * width])
        o.calls.extend(a.call for a in o.text_only)
        if audio_needed_fields(o.text_only, o.question.answer_index)["audio_needed"] is False:
            stats.add("text_answerable")


async def _run_unverified(clip: Clip, caption: Caption, caption_calls: list[Call], categories: Sequence[Category],
                          steps: Steps, cfg: LoopConfig, stats: LoopStats) -> tuple[list[dict], list[Reject]]:
    """The first round's questions kept as written: no answerers, no judge, no measured checks."""
    states = [_LeafState(c) for c in categories]
    rejects: list[Reject] = []
    kept: list[tuple[_LeafState, int, _Outcome]] = []
    generations = await asyncio.gather(*(
        steps.writer.generate(clip, caption, s.category, cfg.questions_per_category,
                              derive_seed(cfg.seed, clip.audio_sha256, s.category.id, 1), None) for s in states))
    for s, gen in zip(states, generations):
        if gen.call.failure:
            rejects.append(Reject(clip.item.source, clip.item.source_id, stage="generate", reason=gen.call.failure,
                                  detail=f"{s.category.id}: the question writer failed",
                                  audio_sha256=clip.audio_sha256, extra={"leaf": s.category.id}))
            continue
        if not gen.is_success or not gen.questions:
            stats.add("not_applicable")
            stats.add(f"not_applicable:{s.category.id}")
            continue
        outcomes = []
        for q in gen.questions:
            checks = [c for c in run_checks(q, s.category, clip.facts) if c.name in _STRUCTURAL]
            outcomes.append(_Outcome(q, checks, [], UNVERIFIED_VERDICT, []))
        s.rounds.append(_Round(gen.call, outcomes))
        stats.add("rounds")
        for k, o in enumerate(outcomes):
            if not o.failed_checks:
                kept.append((s, k, o))
                continue
            bad = o.failed_checks[0]
            stats.add(f"check_failed:{bad.name}")
            rejects.append(Reject(clip.item.source, clip.item.source_id, stage="verify",
                                  reason=f"check_failed:{bad.name}", detail=bad.detail,
                                  sample_id=f"{clip.sample_key}-{s.category.id}-{k}", audio_sha256=clip.audio_sha256,
                                  extra={"leaf": s.category.id, "rounds": 1, "question": o.question.question,
                                         "answer": o.question.answer}))
    audio = {"bytes": wav_bytes(clip.samples, clip.sampling_rate), "path": f"{clip.sample_key}.wav"}
    rows = [mcq_row(clip, caption, caption_calls, s, k, o, audio, False, len(kept), categories) for s, k, o in kept]
    stats.add("rows", len(rows))
    return rows, rejects


def _provenance(call: Call) -> dict[str, Any]:
    """What a reject keeps of a call: who made it, from which prompt, and how it ended."""
    return {"step": call.step, "backend": call.backend, "model": call.model, "prompt_sha256": call.prompt_sha256,
            "seed": call.seed, "cost_usd": call.cost_usd, "failure": call.failure}
