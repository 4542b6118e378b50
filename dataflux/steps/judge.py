"""The judge: the DataFlux verdict on one question, with measured evidence outranking the caption.

Verdict fields follow the paper (schemas/verdict.schema.json): `consensus`,
`consistency_with_caption` (STRONG_MATCH | WEAK_MATCH | CONFLICT), `winner` (MODEL_A |
MODEL_B | TIE | NONE, where MODEL_A is the first configured answerer), `reasoning`,
`final_action` (KEEP_USING_WINNER | DISCARD).

`ReferenceJudge` decides in this order:
1. A measured fact for the leaf exists: the answer key must equal it. If it does not, the
   caption is wrong: CONFLICT + DISCARD, and the reasoning names the measured value in the
   form `measured <leaf> = "<value>"` so the writer and captioner can use it.
2. The leaf is measurable but the measurement was inconclusive: an answerer that hears the
   audio must agree with the key; the caption alone is not enough, unless the key is what nearly
   every clip of the same speaker claims (dataflux.audio.speakers) and nothing heard disagrees.
3. No measurement can check the leaf: the answerers' consensus decides.
"""

from __future__ import annotations

import string
from typing import Any

from dataflux.fields import LABEL_LEAVES
from dataflux.records import Clip
from dataflux.steps.answer import describe_evidence, raw_evidence
from dataflux.steps.base import Answer, Call, Caption, Category, Question, Verdict
from dataflux.claims import caption_claims
from dataflux.steps.generate import measured_feedback

JUDGE_MODEL = "reference-judge@1"
KEEP, DISCARD = "KEEP_USING_WINNER", "DISCARD"
STRONG, WEAK, CONFLICT = "STRONG_MATCH", "WEAK_MATCH", "CONFLICT"


def model_label(i: int) -> str:
    """Answerer position -> verdict label: 0 -> MODEL_A, 1 -> MODEL_B, ..."""
    return f"MODEL_{string.ascii_uppercase[i]}"


def winner_answer(verdict: Verdict, answers: list[Answer], answer_index: int) -> Answer | None:
    """The answer whose reasoning a kept sample carries.

    MODEL_X -> that answerer; TIE -> the first answerer agreeing with `answer_index` that hears
    the audio (else the first agreeing one); NONE -> None.
    """
    w = verdict.winner
    if w.startswith("MODEL_"):
        i = string.ascii_uppercase.index(w[len("MODEL_"):])
        return answers[i] if i < len(answers) else None
    if w == "TIE":
        agree = [a for a in answers if a.answer_index == answer_index]
        heard = [a for a in agree if a.sees_audio]
        return (heard or agree or [None])[0]
    return None


def build_evidence(clip: Clip, caption: Caption, category: Category) -> dict[str, Any]:
    """What the judge gets besides the answers: the measured fact, its raw numbers, the caption's claim."""
    key = category.measured_by
    if key in LABEL_LEAVES.values() and key not in clip.facts:
        key = None  # a class label is measured only where the source's labels were judged (audio.label_check)
    return {
        "leaf": category.id,
        "measured_by": key,
        "measured": clip.facts.get(key) if key else None,
        "raw": raw_evidence(clip.facts, category) if key else {},
        "caption_claim": caption_claims(caption, [category]).get(category.id),
    }


class ReferenceJudge:
    """Rule-based judge over the answers, the caption's claim and the measured fact."""

    backend = "reference"
    model = JUDGE_MODEL

    async def judge(
        self, clip: Clip, caption: Caption, category: Category, question: Question,
        answers: list[Answer], evidence: dict[str, Any],
    ) -> Verdict:
        call = Call(step="judge", backend=self.backend, model=self.model, params={"rules": len(category.judge_rules)})
        key = question.answer
        leaf = category.id
        claim = evidence.get("caption_claim")
        measured = evidence.get("measured")
        measurable = evidence.get("measured_by") is not None
        given = [(i, a) for i, a in enumerate(answers) if a.answer_index is not None]
        agree = [i for i, a in given if a.answer_index == question.answer_index]
        disagree = [i for i, a in given if a.answer_index != question.answer_index]
        consensus = len(given) >= 2 and len({a.answer_index for _, a in given}) == 1
        votes = "; ".join(
            f"{model_label(i)} ({a.answerer}{', hears audio' if a.sees_audio else ', reads caption only'}) "
            + (f"answers {a.answer_text!r}" if a.answer_index is not None else "abstains")
            for i, a in enumerate(answers)
        ) or "no answers"
        rules = " ".join(category.judge_rules)
        lines = [f"Category {' > '.join(category.path)}. Key: {key!r}; caption states: {claim!r}. {votes}.",
                 f"Rules applied: {rules}"]
        caption_consistency = STRONG if claim == key else (CONFLICT if claim is not None else WEAK)

        def winner_of(ids: list[int]) -> str:
            if not ids:
                return "NONE"
            if len(ids) >= 2 and {0, 1} <= set(ids):
                return "TIE"
            audio = [i for i in ids if answers[i].sees_audio]
            return model_label((audio or ids)[0])

        if measured is not None:
            raw = describe_evidence(evidence.get("raw") or {})
            if measured == key:
                lines.append(f"The measurement confirms the key: {measured_feedback(leaf, measured)} ({raw}). "
                             "Measured evidence outranks the caption.")
                consistency = STRONG if claim == key else (WEAK if claim is None else CONFLICT)
                return Verdict(consensus, consistency, winner_of(agree), " ".join(lines), KEEP, call, True)
            lines.append(f"The measurement contradicts the key: {measured_feedback(leaf, measured)} ({raw}), "
                         f"not {key!r}. Measured evidence outranks the caption, so the caption's {leaf} "
                         f"is wrong and the question must be rewritten with {measured!r} as the answer.")
            right = [i for i, a in given if a.answer_text == measured]
            return Verdict(consensus, CONFLICT, winner_of(right), " ".join(lines), DISCARD, call, False)

        if measurable:
            heard = [i for i in agree if answers[i].sees_audio]
            heard_against = [i for i in disagree if answers[i].sees_audio]
            if heard and not heard_against:
                lines.append("No measurement was conclusive; an answerer that hears the audio agrees with the key.")
                return Verdict(consensus, caption_consistency if claim is not None else WEAK,
                               winner_of(agree), " ".join(lines), KEEP, call, None)
            raw = evidence.get("raw") or {}
            if not heard_against and claim == key and raw.get("speaker_claim_majority") == key:
                # the audio cannot decide, but the corpus does not contradict itself: the claim
                # is the one nearly every clip of the same speaker makes (metadata, not measured)
                lines.append(f"The {leaf} measurement was inconclusive; {raw.get('speaker_claim_agreeing')} of "
                             f"{raw.get('speaker_claim_total')} clips of the same speaker claim {key!r}, so the "
                             "claim stands on consistent metadata.")
                return Verdict(consensus, caption_consistency, winner_of(agree), " ".join(lines), KEEP, call, None)
            lines.append(f"The {leaf} measurement was inconclusive and no answerer that hears the audio "
                         "supports the key; the caption alone cannot decide a measurable fact.")
            return Verdict(consensus, caption_consistency if not heard_against else CONFLICT,
                           winner_of(heard_against), " ".join(lines), DISCARD, call, None)

        if agree and not disagree:
            strong = len(agree) >= 2 and any(answers[i].sees_audio for i in agree)
            lines.append("No measurement can check this category; the answerers agree with the key.")
            return Verdict(consensus, STRONG if strong and claim == key else WEAK, winner_of(agree),
                           " ".join(lines), KEEP, call, None)
        if disagree:
            lines.append("No measurement can check this category and the answerers disagree with the key.")
            return Verdict(consensus, CONFLICT, winner_of(disagree), " ".join(lines), DISCARD, call, None)
        lines.append("No measurement can check this category and every answerer abstained.")
        return Verdict(False, caption_consistency, "NONE", " ".join(lines), DISCARD, call, None)
