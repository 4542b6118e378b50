"""One multiple-choice sample row of the closed loop, as the row contract (schemas/sample_row.schema.json)
writes it: the clip, its caption and claims, the question and its answers, the verdict, and every
model call that led to it."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import soundfile as sf

from dataflux.claims import caption_claims
from dataflux.records import Clip
from dataflux.steps.base import Answer, Call, Caption, Category, Verdict
from dataflux.steps.filter import assistant_message, user_message
from dataflux.steps.judge import winner_answer

UNVERIFIED_VERDICT = Verdict(consensus=False, consistency_with_caption="NOT_CHECKED", winner="NONE",
                             final_action="UNVERIFIED", reasoning="verification off: the question is kept as written",
                             call=Call(step="judge", backend="none", model="none"))


def split_for(audio_sha256: str) -> str:
    """train / validation / test (80/10/10) from the audio hash: one clip never spans two splits."""
    bucket = int(audio_sha256[:8], 16) % 10
    return "train" if bucket < 8 else ("validation" if bucket == 8 else "test")


def wav_bytes(samples: np.ndarray, sampling_rate: int) -> bytes:
    """16-bit PCM WAV of (T,) float samples."""
    buf = io.BytesIO()
    sf.write(buf, np.asarray(samples, dtype=np.float32), sampling_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()



def verification_of(verdict: Verdict, answers: Sequence[Answer], answer_index: int) -> str:
    """How a kept row's answer was verified: "measured" (a measurement of the audio confirms it),
    "judged" (a model that hears the audio, or a model judge, decided) or "metadata-only" (nothing
    but the source's claim and the caption built from it supports it); "unverified" in an
    unverified twin (loop.verify: false), whose questions are kept as written."""
    if verdict is UNVERIFIED_VERDICT:
        return "unverified"
    if verdict.measured_agrees:
        return "measured"
    heard = [a for a in answers if a.sees_audio and a.answer_index == answer_index]
    if any(a.call.backend == "reference" for a in heard):
        return "measured"  # the measuring answerer re-measured the audio and agrees
    if heard or verdict.call.backend != "reference":
        return "judged"
    return "metadata-only"



def model_correct(answers: Sequence[Answer], answer_index: int) -> bool | None:
    """Whether our own model (the first `local` answerer: a checkpoint this project trained) chose the
    row's final answer; None when no such answerer took part. A reply naming no option counts as wrong."""
    ours = [a for a in answers if a.call.backend == "local"]
    return None if not ours else ours[0].answer_index == answer_index


def _params_json(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def _call_row(call: Call) -> dict[str, Any]:
    d = call.as_dict()
    d.pop("failure", None)
    d["params"] = _params_json(d["params"])
    return d



def mcq_row(clip: Clip, caption: Caption, caption_calls: list[Call], state: Any, k: int, o: Any,
            audio: dict[str, Any], corrected: bool, n_rows: int, categories: Sequence[Category]) -> dict[str, Any]:
    """The row of question `k` of leaf `state` (its rounds and category) with outcome `o` (question,
    verdict, answers, checks), as the row contract writes it; run_id, code_version, row_sha256 left None."""
    cat, q, v = state.category, o.question, o.verdict
    assert v is not None
    winner = winner_answer(v, o.answers, q.answer_index)
    # Provenance: every caption call of the clip, this leaf's generation in every round, and the
    # answers and verdicts of question k in every round. Shared calls (captions: all rows of the
    # clip; a generation: all its questions) count towards the row's totals by an even share.
    calls: list[tuple[Call, float]] = [(c, 1.0 / max(n_rows, 1)) for c in caption_calls]
    for r in state.rounds:
        calls.append((r.generation_call, 1.0 / max(len(r.outcomes), 1)))
        if k < len(r.outcomes):
            calls.extend((c, 1.0) for c in r.outcomes[k].calls)
    item = clip.item
    l0, l1, l2, l3 = cat.path
    return {
        "sample_id": f"{clip.sample_key}-{cat.id}-{k}",
        "source": item.source,
        "source_id": item.source_id,
        "license": item.license,
        "audio": audio,
        "sampling_rate": int(clip.sampling_rate),
        "duration_s": float(clip.quality.get("duration_s", len(clip.samples) / clip.sampling_rate)),
        "audio_sha256": clip.audio_sha256,
        "split": split_for(clip.audio_sha256),
        "l0": l0, "l1": l1, "l2": l2, "l3": l3,
        "caption": caption.text,
        "transcript": caption.transcript,
        "caption_claims": json.dumps(caption_claims(caption, categories), sort_keys=True, ensure_ascii=False),
        "facts": json.dumps(clip.facts, sort_keys=True, ensure_ascii=False, default=float),
        "quality": {key: float(clip.quality[key]) if clip.quality.get(key) is not None else None
                    for key in ("duration_s", "peak", "rms_dbfs", "clipping_ratio", "silence_ratio", "snr_db")},
        "question": q.question,
        "choices": list(q.choices),
        "answer": q.answer,
        "answer_index": int(q.answer_index),
        "reasoning": winner.reasoning if winner is not None else v.reasoning,
        "winner": winner.answerer if winner is not None else v.winner,
        "answers": [
            {"answerer": a.answerer, "sees_audio": a.sees_audio, "answer_index": a.answer_index,
             "answer_text": a.answer_text, "reasoning": a.reasoning, "model": a.call.model}
            for a in o.answers
        ],
        "verdict": {"consensus": v.consensus, "consistency_with_caption": v.consistency_with_caption,
                    "winner": v.winner, "final_action": v.final_action, "reasoning": v.reasoning},
        "checks": [c.as_dict() for c in o.checks],
        "rounds": len(state.rounds),
        "corrected_from_measurement": corrected,
        "verification": verification_of(v, o.answers, q.answer_index),
        "model_correct": model_correct(o.answers, q.answer_index),
        "calls": [_call_row(c) for c, _ in calls],
        "tokens_in": int(round(sum(c.tokens_in * w for c, w in calls))),
        "tokens_out": int(round(sum(c.tokens_out * w for c, w in calls))),
        "cost_usd": float(sum(c.cost_usd * w for c, w in calls)),
        "run_id": None,
        "code_version": None,
        "messages": [
            {"role": "user", "content": user_message(q.question, list(q.choices))},
            {"role": "assistant", "content": assistant_message(list(q.choices), q.answer_index)},
        ],
        "task": "mcq",
        "row_sha256": None,
    }
