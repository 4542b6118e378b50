"""Evaluation per task: every row is answered with its own prompt and scored the way its task is.

    mcq      MMAU-scored and exact (letter and text) accuracy (`modeling.eval.evaluate`)
    asr      WER over the split's transcripts (`dataflux.text_metrics`: one normaliser, jiwer's edits)
    caption  ROUGE-L F1 and corpus BLEU-4 against the verified caption
    open_qa  exact accuracy (the answer, case/spacing/punctuation aside) and token accuracy (every
             word of the answer in the output, as MMAU's matching asks, with no options to exclude)

`evaluate_tasks` returns one block per task present: {"mcq": {...}, "asr": {...}, ...}; each block
has `n` and per-item predictions under `items`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from dataflux.text_metrics import caption_overlap, corpus_wer, wer
from modeling.eval import as_predictor, evaluate, mmau_tokens, row_audio

TASK_ORDER = ("mcq", "asr", "caption", "open_qa")


def row_task(row: Mapping[str, Any]) -> str:
    return row.get("task") or "mcq"


def user_prompt(row: Mapping[str, Any]) -> str:
    """The user turn of the row's conversation: what training taught the model to answer."""
    for m in row.get("messages") or []:
        if m["role"] == "user":
            return m["content"]
    raise ValueError(f"row {row.get('sample_id')!r}: no user turn in `messages` to prompt with")


def _plain(text: str | None) -> str:
    return " ".join(re.findall(r"\w+", (text or "").lower()))


def open_answer_correct(output: str | None, answer: str) -> tuple[bool, bool]:
    """(exact, token) correctness of a free-form answer: exact = the same words in the same order
    (case and punctuation aside); token = every word of the answer appears in a non-empty output."""
    said = mmau_tokens(output or "")
    return _plain(output) == _plain(answer), bool(said) and mmau_tokens(answer) <= said


def generate_answers(predictor, rows: Sequence[Mapping[str, Any]], batch_size: int,
                     audio_loader: Callable[[Mapping[str, Any]], np.ndarray] | None = None,
                     zero_audio: bool = False) -> list[str]:
    """The model's text for each row, prompted with the row's own user turn."""
    loader = audio_loader or row_audio
    out: list[str] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        batch = []
        for r in chunk:
            audio = np.asarray(loader(r), dtype=np.float32)
            batch.append((np.zeros_like(audio) if zero_audio else audio, user_prompt(r)))
        texts = predictor.predict(batch)
        if len(texts) != len(chunk):
            raise ValueError(f"the predictor returned {len(texts)} texts for {len(chunk)} prompts")
        out.extend(texts)
    return out


def asr_block(rows, texts) -> dict[str, Any]:
    pairs = [(r["answer"], t) for r, t in zip(rows, texts)]
    return {"n": len(rows), "wer": corpus_wer(pairs),
            "items": [{"id": r["sample_id"], "reference": ref, "hypothesis": hyp, "wer": wer(ref, hyp)}
                      for r, (ref, hyp) in zip(rows, pairs)]}


def caption_block(rows, texts) -> dict[str, Any]:
    pairs = [(r["answer"], t) for r, t in zip(rows, texts)]
    return {"n": len(rows), **caption_overlap(pairs),
            "items": [{"id": r["sample_id"], "reference": ref, "hypothesis": hyp} for r, (ref, hyp) in zip(rows, pairs)]}


def open_qa_block(rows, texts) -> dict[str, Any]:
    judged = [open_answer_correct(t, r["answer"]) for r, t in zip(rows, texts)]
    return {"n": len(rows), "exact_accuracy": sum(e for e, _ in judged) / len(rows),
            "token_accuracy": sum(k for _, k in judged) / len(rows),
            "by_l3": _by_l3(rows, [e for e, _ in judged]),
            "items": [{"id": r["sample_id"], "answer": r["answer"], "model_prediction": t, "exact_correct": e,
                       "token_correct": k} for r, t, (e, k) in zip(rows, texts, judged)]}


def _by_l3(rows, hits) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[bool]] = {}
    for r, h in zip(rows, hits):
        groups.setdefault(r.get("l3") or "?", []).append(h)
    return {k: {"n": len(v), "exact_accuracy": sum(v) / len(v)} for k, v in sorted(groups.items())}


_BLOCKS = {"asr": asr_block, "caption": caption_block, "open_qa": open_qa_block}


def evaluate_tasks(model, processor, rows: Sequence[Mapping[str, Any]], batch_size: int = 8,
                   max_new_tokens: int = 16, max_new_tokens_text: int = 64,
                   audio_loader: Callable[[Mapping[str, Any]], np.ndarray] | None = None,
                   zero_audio: bool = False) -> dict[str, Any]:
    """Score `rows` (sample rows of any task) task by task; returns {task: block} in TASK_ORDER.

    `model` with `processor`, or a Predictor (processor None). Questions get `max_new_tokens`,
    transcripts and captions `max_new_tokens_text`. The mcq block is `evaluate(...)`'s result (with
    `predictions`, the items in MMAU's shape).
    """
    by_task: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        task = row_task(r)
        if task not in TASK_ORDER:
            raise ValueError(f"row {r.get('sample_id')!r}: unknown task {task!r}; known: {list(TASK_ORDER)}")
        by_task.setdefault(task, []).append(r)
    blocks: dict[str, Any] = {}
    for task in TASK_ORDER:
        task_rows = by_task.get(task)
        if not task_rows:
            continue
        if task == "mcq":
            blocks[task] = evaluate(model, processor, task_rows, audio_loader, zero_audio=zero_audio,
                                    batch_size=batch_size, max_new_tokens=max_new_tokens)
            continue
        budget = max_new_tokens if task == "open_qa" else max_new_tokens_text
        predictor = as_predictor(model, processor, budget)
        texts = generate_answers(predictor, task_rows, batch_size, audio_loader, zero_audio)
        blocks[task] = _BLOCKS[task](task_rows, texts)
    return blocks


def format_task_summary(blocks: Mapping[str, Any]) -> str:
    """One line per non-mcq task (the mcq summary is `modeling.eval.format_summary`)."""
    lines = []
    if "asr" in blocks:
        lines.append(f"asr: {blocks['asr']['n']} transcripts, WER {100 * blocks['asr']['wer']:.1f}%")
    if "caption" in blocks:
        b = blocks["caption"]
        lines.append(f"caption: {b['n']} captions, ROUGE-L {100 * b['rouge_l']:.1f}, BLEU {b['bleu']:.1f}")
    if "open_qa" in blocks:
        b = blocks["open_qa"]
        lines.append(f"open_qa: {b['n']} questions, exact {100 * b['exact_accuracy']:.1f}%, "
                     f"token {100 * b['token_accuracy']:.1f}%")
    return "\n".join(lines)
