"""Evaluation during and after training: which held-out rows, teacher-forced accuracy on validation
batches, validation WER, and the final scores on the held-out split (with audio-blind baselines and
the MoE adapter's expert load)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from modeling.data import RowReader, VersionIndex, decode_row_audio
from modeling.eval import as_predictor, evaluate
from modeling.model import EurekaAudioForCausalLM
from modeling.processor import EurekaAudioProcessor
from modeling.recipe.config import TrainSpec
from modeling.task_eval import asr_block, evaluate_tasks, generate_answers

EVAL_COLUMNS = ["sample_id", "audio", "messages", "question", "choices", "answer", "answer_index",
                "l0", "l1", "l2", "l3", "source", "transcript", "task"]


def stratified_rows(index: VersionIndex, split: str, max_rows: int, tasks: Sequence[str] | None = None) -> np.ndarray:
    """Up to `max_rows` positions of `split` with the categories (l3) as evenly represented as their
    row counts allow (a category with fewer rows than its share gives the rest to the others), each
    category's first rows in index order, returned in index order. A plain prefix would follow the
    version's mix: 600 rows of the demo hold 11 beep-count rows, too few to tell 80% from 95%.
    `tasks`: rows of those tasks only."""
    positions = index.rows_of(split, tasks)
    if len(positions) <= max_rows:
        return positions
    cats = index.l3[positions]
    names, counts = np.unique(cats, return_counts=True)
    take = np.zeros(len(names), dtype=int)
    left = max_rows
    while left > 0:  # water-filling: an even share, capped by what each category has
        open_ = np.flatnonzero(take < counts)
        share = max(1, left // len(open_))
        for i in open_:
            add = min(share, counts[i] - take[i], left)
            take[i] += add
            left -= add
            if left == 0:
                break
    chosen = [positions[cats == n][:k] for n, k in zip(names, take)]
    return np.sort(np.concatenate(chosen))


@torch.no_grad()
def embedding_scale(model: EurekaAudioForCausalLM) -> dict[str, float]:
    """The scale audio embeddings enter the LLM at (RMS of the adapter's output gain, times the text
    scale under audio_scale "text"; the norm's input is RMS-normalised) beside the RMS of the LLM's
    text embeddings: audio far above text dominates the residual stream at its positions, far below
    it is drowned by the layers' updates."""
    gain = float(model.adapter.norm.weight.float().pow(2).mean().sqrt())
    text = float(model.text_embedding_rms())
    audio = gain * text if model.config.audio_scale == "text" else gain
    return {"audio_rms": round(audio, 4), "text_embed_rms": round(text, 4)}


def held_out_rows(index: VersionIndex, split: str, max_rows: int | None = None,
                  tasks: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Rows of a split (of `tasks` only, when named), full (audio included), in index order; at most
    `max_rows` spread over the split."""
    positions = index.rows_of(split, tasks)
    if max_rows is not None and len(positions) > max_rows:
        positions = positions[np.linspace(0, len(positions) - 1, max_rows).astype(int)]
    return RowReader(index, columns=EVAL_COLUMNS, cache_shards=len(index.paths)).rows(positions)


def expert_load(model: EurekaAudioForCausalLM, processor: EurekaAudioProcessor, rows, batch_size: int = 64) -> dict[str, Any] | None:
    """Routing statistics of the MoE adapter over `rows`: tokens per expert, each expert's share of its fair
    share (1.0 = even; collapse = near 0), and L_aux. None for the linear adapter."""
    if model.config.adapter != "moe":
        return None
    counts = torch.zeros(model.config.n_experts, dtype=torch.long)
    model.eval()
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            audios = [decode_row_audio(r) for r in rows[start : start + batch_size]]
            feats, lengths = processor.audio_features(audios)
            _, _, aux = model.encode_audio(feats, lengths)
            counts += aux.expert_counts.cpu()
    total = int(counts.sum())
    fair = total / model.config.n_experts
    frac = counts.double() / max(total, 1)
    return {"tokens_per_expert": counts.tolist(), "share_of_fair": (counts.double() / fair).round(decimals=3).tolist(),
            "min_share_of_fair": float(counts.min()) / fair if fair else None,
            "load_balance_lower_bound_ok": bool(total and float(counts.min()) >= fair / 4),
            "fraction": frac.round(decimals=4).tolist()}


def answer_accuracy(model, loader) -> dict[str, Any]:
    """Teacher-forced exact-answer accuracy: an example counts when the argmax at every labelled position
    is the label (what greedy decoding would then reproduce). Over the questions (mcq rows), overall
    and per category (l3), and per task (`by_task`)."""
    hits: dict[str, list[bool]] = {}
    by_task: dict[str, list[bool]] = {}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in loader:
            inputs = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
            logits = model(**inputs).logits[:, :-1]
            labels = inputs["labels"][:, 1:]
            ok = ((logits.argmax(-1) == labels) | (labels == -100)).all(-1)
            for cat, task, good in zip(batch["l3"], batch.get("task") or ["mcq"] * len(ok), ok.tolist()):
                by_task.setdefault(task, []).append(good)
                if task == "mcq":
                    hits.setdefault(cat, []).append(good)
    model.train(was_training)
    every = [h for v in hits.values() for h in v]
    out = {"answer_accuracy": sum(every) / max(1, len(every)),
           "by_category": {k: round(sum(v) / len(v), 3) for k, v in sorted(hits.items())}}
    if set(by_task) - {"mcq"}:
        out["by_task"] = {k: round(sum(v) / len(v), 3) for k, v in sorted(by_task.items())}
    return out


def validation_wer(model, processor, rows, spec: TrainSpec) -> dict[str, Any]:
    """WER of greedy transcripts of validation asr rows (`dataflux.text_metrics.wer`), with two examples."""
    texts = generate_answers(as_predictor(model, processor, spec.max_new_tokens_text), rows, spec.eval_batch_size)
    block = asr_block(rows, texts)
    return {"wer": round(block["wer"], 4), "wer_n": block["n"],
            "wer_examples": [{"reference": it["reference"], "hypothesis": it["hypothesis"]} for it in block["items"][:2]]}


def evaluate_held_out(model, processor, rows, spec: TrainSpec) -> dict[str, Any]:
    """MMAU-style and exact accuracy on `rows`, overall and per category.

    "audio": the real clips. With `eval_zero_audio`, two audio-blind baselines: "zero_audio" (each
    clip replaced by silence of the same length, as `modeling.eval` does; the token count still tells
    the duration) and "fixed_silence" (one second of silence for every item: no cue at all).
    """
    runs: list[tuple[str, dict[str, Any]]] = [("audio", {})]
    if spec.eval_zero_audio:
        silence = np.zeros(processor.sampling_rate, dtype=np.float32)
        runs += [("zero_audio", {"zero_audio": True}), ("fixed_silence", {"audio_loader": lambda row: silence})]
    metrics: dict[str, Any] = {}
    if not rows:
        return metrics
    for name, kwargs in runs:
        result = evaluate(model, processor, rows, batch_size=spec.eval_batch_size,
                          max_new_tokens=spec.max_new_tokens, **kwargs)
        by = result.get("by", {}).get("l3", {})
        metrics[name] = {
            "n": result["n"], "mmau_accuracy": result["mmau_accuracy"], "exact_accuracy": result["exact_accuracy"],
            "by_category": {k: {"n": v["n"], "mmau_accuracy": v["mmau_accuracy"], "exact_accuracy": v["exact_accuracy"]}
                            for k, v in by.items()},
            "examples": [{"id": it["id"], "prediction": it.get("model_prediction"), "answer": it["answer"]}
                         for it in result["predictions"][:5]],
        }
    return metrics


def evaluate_held_out_tasks(model, processor, rows, spec: TrainSpec) -> dict[str, Any]:
    """Per-task scores of non-mcq rows (`modeling.task_eval`), with five example items per task."""
    blocks = evaluate_tasks(model, processor, rows, batch_size=spec.eval_batch_size,
                            max_new_tokens=spec.max_new_tokens, max_new_tokens_text=spec.max_new_tokens_text)
    return {task: {**{k: v for k, v in b.items() if k != "items"}, "examples": b["items"][:5]}
            for task, b in blocks.items()}


def final_evaluation(model, processor, index: VersionIndex, tasks: Sequence[str], spec: TrainSpec) -> dict[str, Any]:
    """The finished model (in fp32, eval mode) scored on `spec.eval_split`: questions with their
    audio-blind baselines, the other tasks, and the expert load."""
    t0 = time.monotonic()
    rows = held_out_rows(index, spec.eval_split, spec.eval_max_rows, ["mcq"])
    model.float().eval()
    metrics: dict[str, Any] = {"eval_split": spec.eval_split}
    metrics.update(evaluate_held_out(model, processor, rows, spec))
    task_rows = [r for t in tasks if t != "mcq"
                 for r in held_out_rows(index, spec.eval_split, spec.eval_task_max_rows, [t])]
    if task_rows:
        metrics["tasks"] = evaluate_held_out_tasks(model, processor, task_rows, spec)
    metrics["expert_load"] = expert_load(model, processor, rows)
    metrics["eval_minutes"] = round((time.monotonic() - t0) / 60, 3)
    return metrics
