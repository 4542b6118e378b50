"""Task rows beside the questions: a clip's transcript, its caption, and short free-form answers.

A clip whose questions survived the loop (its mcq rows) also yields, when its source emits them:

  asr      "<audio>\\nTranscribe the speech."  -> the transcript. Kept when the source's transcript
           (metadata) and a recognizer's agree (WER <= max_transcript_wer after the Whisper
           normaliser), or from the metadata alone when no recognizer ran (the demo's espeak text is
           exact by construction). A recognizer alone, or a disagreement, is rejected with a reason.
  caption  "<audio>\\nDescribe the audio."  -> the clip's final caption: the loop has already
           corrected (or dropped) every claim the measurement contradicts.
  open_qa  "<audio>\\n{question}\\nAnswer in a few words."  -> the answer text of a kept question
           whose category is measured, when it equals the measured value (e.g. "440 Hz").

Task rows follow the row contract: `choices` empty and `answer_index` None (except mcq), `checks`
say how the answer was verified, and `calls` name the calls behind the clip's caption (or the
question). Their `tokens_*`/`cost_usd` are 0: those calls are paid for by the question rows'
shares, so a version's row costs still add up to what was spent.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from dataflux.records import Clip, Reject
from dataflux.steps.base import Category
from dataflux.storage.row_schema import TASKS
from dataflux.text_metrics import normalise_text, wer

ASR_PROMPT = "<audio>\nTranscribe the speech."
CAPTION_PROMPT = "<audio>\nDescribe the audio."
OPEN_QA_SUFFIX = "Answer in a few words."
ASR_PATH = ("Speech", "Content", "Transcription", "transcript")
CAPTION_PATH = ("Audio", "Description", "Caption", "caption")
MAX_TRANSCRIPT_WER = 0.1


def check_tasks(tasks: Iterable[str], where: str) -> tuple[str, ...]:
    """The tasks a source emits, validated: known names, mcq among them (the questions verify a clip)."""
    tasks = tuple(dict.fromkeys(tasks))
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"{where}: unknown task(s) {unknown}; known: {list(TASKS)}")
    if "mcq" not in tasks:
        raise ValueError(f"{where}: {list(tasks)} lacks mcq; the questions are what verifies a clip, "
                         "and the other tasks ride on them")
    return tasks


def task_messages(task: str, question: str, answer: str) -> list[dict[str, str]]:
    """The conversation a non-mcq task row trains on: the task's prompt, then the answer."""
    if task == "asr":
        prompt = ASR_PROMPT
    elif task == "caption":
        prompt = CAPTION_PROMPT
    elif task == "open_qa":
        prompt = f"<audio>\n{question}\n{OPEN_QA_SUFFIX}"
    else:
        raise ValueError(f"no prompt template for task {task!r} (templates: asr, caption, open_qa)")
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def _verdict(reasoning: str) -> dict[str, Any]:
    return {"consensus": True, "consistency_with_caption": "STRONG_MATCH", "winner": "TIE",
            "final_action": "KEEP_USING_WINNER", "reasoning": reasoning}


def _caption_calls(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [c for c in row["calls"] if c["step"] == "caption"]


def _task_row(base: Mapping[str, Any], task: str, sample_id: str, path: Sequence[str], question: str,
              answer: str, checks: list[dict[str, Any]], calls: list[dict[str, Any]], reasoning: str) -> dict[str, Any]:
    row = dict(base)
    row.update({
        "sample_id": sample_id, "task": task,
        "l0": path[0], "l1": path[1], "l2": path[2], "l3": path[3],
        "question": question, "choices": [], "answer": answer, "answer_index": None,
        "reasoning": reasoning, "winner": "TIE", "answers": [], "verdict": _verdict(reasoning),
        "checks": checks, "calls": calls, "tokens_in": 0, "tokens_out": 0, "cost_usd": 0.0,
        "messages": task_messages(task, question, answer), "row_sha256": None,
        "audio_needed": None, "text_only_answers": None,  # the audio-contribution filter asks questions only
    })
    return row


def _recognizer_transcript(base: Mapping[str, Any]) -> str | None:
    """The transcript a speech recognizer wrote for the caption, if one ran (its call says so)."""
    ran = any(json.loads(c.get("params") or "{}").get("transcription_model") for c in _caption_calls(base))
    return base.get("transcript") if ran else None


def asr_row(clip: Clip, base: Mapping[str, Any], max_wer: float = MAX_TRANSCRIPT_WER) -> dict[str, Any] | Reject | None:
    """The clip's transcript row, a Reject saying why it is not trusted, or None (no speech)."""
    metadata = (clip.item.labels.get("transcript") or "").strip() or None
    language = clip.item.labels.get("language")  # Chinese, Japanese, Thai...: compared by character
    heard = (_recognizer_transcript(base) or "").strip() or None
    if metadata is None and heard is None:
        return None
    if metadata is not None and not normalise_text(metadata, language):
        return Reject(clip.item.source, clip.item.source_id, stage="verify", reason="asr:empty_transcript",
                      detail=f"the source's transcript {metadata!r} has no words", audio_sha256=clip.audio_sha256)
    if metadata is None:
        return Reject(clip.item.source, clip.item.source_id, stage="verify", reason="asr:unverified_transcript",
                      detail="only a recognizer's transcript, no source transcript to check it against",
                      audio_sha256=clip.audio_sha256, extra={"recognizer": heard})
    checks = [{"name": "transcript_from_source", "passed": True,
               "detail": f"the source's transcript ({clip.item.source})"}]
    if heard is not None:
        err = wer(metadata, heard, language)
        if err > max_wer:
            return Reject(clip.item.source, clip.item.source_id, stage="verify", reason="asr:transcript_disagrees",
                          detail=f"WER {err:.2f} between the source's and the recognizer's transcript "
                                 f"(limit {max_wer})", audio_sha256=clip.audio_sha256,
                          extra={"source": metadata, "recognizer": heard})
        checks.append({"name": "recognizer_agrees", "passed": True, "detail": f"WER {err:.3f} <= {max_wer}"})
    return _task_row(base, "asr", f"{clip.sample_key}-asr", ASR_PATH, "Transcribe the speech.", metadata,
                     checks, _caption_calls(base), checks[-1]["detail"])


def caption_row(clip: Clip, base: Mapping[str, Any]) -> dict[str, Any]:
    """The clip's verified caption as a training target."""
    corrected = bool(base.get("corrected_from_measurement"))
    checks = [{"name": "caption_claims_measured", "passed": True,
               "detail": "no claim the measurement contradicts" + (" (corrected from measurement)" if corrected else "")}]
    return _task_row(base, "caption", f"{clip.sample_key}-caption", CAPTION_PATH, "Describe the audio.",
                     base["caption"], checks, _caption_calls(base), checks[0]["detail"])


def open_qa_row(mcq: Mapping[str, Any], category: Category | None) -> dict[str, Any] | None:
    """A kept question asked without options, when its answer is the measured value; else None."""
    if category is None or not category.measured_by:
        return None
    measured = json.loads(mcq.get("facts") or "{}").get(category.measured_by)
    if not isinstance(measured, str) or measured != mcq["answer"]:
        return None
    checks = [{"name": "answer_is_measured", "passed": True,
               "detail": f"{category.measured_by} measured as {measured!r}"}]
    row = _task_row(mcq, "open_qa", f"{mcq['sample_id']}-open", (mcq["l0"], mcq["l1"], mcq["l2"], mcq["l3"]),
                    mcq["question"], mcq["answer"], checks, list(mcq["calls"]), mcq["reasoning"])
    row["verdict"] = dict(mcq["verdict"])
    row["winner"] = mcq["winner"]
    return row


def task_rows(clips: Sequence[Clip], mcq_rows: Sequence[Mapping[str, Any]], tasks: Sequence[str],
              categories: Sequence[Category]) -> tuple[list[dict[str, Any]], list[Reject]]:
    """The non-mcq rows of `tasks` for clips that kept at least one question (rows, rejects).

    A clip without a kept question yields none: nothing verified it."""
    by_clip: dict[str, list[Mapping[str, Any]]] = {}
    for r in sorted(mcq_rows, key=lambda r: r["sample_id"]):
        by_clip.setdefault(r["audio_sha256"], []).append(r)
    by_id = {c.id: c for c in categories}
    rows: list[dict[str, Any]] = []
    rejects: list[Reject] = []
    for clip in clips:
        kept = by_clip.get(clip.audio_sha256)
        if not kept:
            continue
        base = kept[0]
        if "asr" in tasks:
            made = asr_row(clip, base)
            if isinstance(made, Reject):
                rejects.append(made)
            elif made is not None:
                rows.append(made)
        if "caption" in tasks:
            rows.append(caption_row(clip, base))
        if "open_qa" in tasks:
            rows.extend(r for r in (open_qa_row(q, by_id.get(q["l3"])) for q in kept) if r is not None)
    return rows, rejects
