"""Evaluation: MMAU-style multiple-choice scoring, exact-answer scoring, and the answering loop.

Scoring rules
-------------
* `mmau_is_correct` follows MMAU's official `evaluation.py` (`string_match`): lower-case the text and
  take the set of word tokens (regex `\\b\\w+\\b`); an output is correct when it is non-empty, holds
  every token of the answer, and holds no token of a wrong choice, where a wrong choice's tokens are
  counted only if they are not also answer tokens (choices whose token set equals the answer's are
  ignored). The letter of the option plays no part.
* `exact_is_correct` is stricter: the output must name the option letter AND its text, e.g.
  "(B) 440 Hz". It catches a model that has learnt the right word under the wrong letter, which
  MMAU's matching cannot see.

Items
-----
Scoring works on plain dicts in MMAU's test-mini shape: `id`, `question`, `choices`, `answer`, the
model's text under `model_prediction` (the key MMAU's script reads; older versions of that script
read `model_output`, so both are written), optional `answer_index` and grouping fields (`task`,
`difficulty`, `category`, `sub-category` in MMAU; `l0`..`l3` in our rows). `rows_to_items` turns
sample rows (the Parquet row contract) into that shape.

Legend: B batch of items; audio arrays are (T,) float32 at 16 kHz.
"""

from __future__ import annotations

import json
import re
import string
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dataflux.audio.decode import decode_audio
from dataflux.text_metrics import corpus_wer, wer

LETTERS = "ABCDEFGHIJ"
SAMPLING_RATE = 16_000
PREDICTION_KEY = "model_prediction"  # what MMAU's evaluation.py reads
LEGACY_PREDICTION_KEY = "model_output"  # what earlier versions of it read
GROUP_FIELDS = ("task", "difficulty", "category", "sub-category", "l0", "l1", "l2", "l3")
MMAU_TASKS = ("sound", "music", "speech")
MMAU_DIFFICULTIES = ("easy", "medium", "hard")
UNRATED_DIFFICULTY = "medium"  # our rows carry no difficulty; MMAU's script requires one of MMAU_DIFFICULTIES

_WORD = re.compile(r"\b\w+\b")
_LETTERED = re.compile(r"^\s*\(?\s*([A-Za-z])\s*\)\s*[.:]?\s*(.*?)\s*$", re.DOTALL)


# --- multiple choice -----------------------------------------------------------------------------


def mmau_tokens(text: Any) -> set[str]:
    """The set of lower-cased word tokens MMAU compares (`\\b\\w+\\b`, Unicode word characters)."""
    return set(_WORD.findall(str(text).lower()))


def mmau_is_correct(output: str | None, answer: str, choices: Sequence[str]) -> bool:
    """MMAU's string match: all answer tokens in the output, none of a wrong choice's own tokens."""
    said = mmau_tokens(output or "")
    if not said:
        return False
    wanted = mmau_tokens(answer)
    wrong: set[str] = set()
    for choice in choices:
        tokens = mmau_tokens(choice)
        if tokens != wanted:
            wrong |= tokens - wanted
    return wanted <= said and said.isdisjoint(wrong)


def _normalise_option_text(text: str) -> str:
    text = " ".join(text.lower().split())
    return text.strip(string.whitespace + ".")


def parse_lettered(output: str | None) -> tuple[str | None, str]:
    """Split "(B) 440 Hz" (also "B) 440 Hz", "(b): 440 Hz") into ("B", "440 Hz"); no letter -> (None, text)."""
    text = output or ""
    match = _LETTERED.match(text)
    if not match:
        return None, text.strip()
    return match.group(1).upper(), match.group(2)


def exact_is_correct(output: str | None, answer_index: int, choices: Sequence[str]) -> bool:
    """The output names the right option letter and that option's text (case, spacing and a final
    full stop aside): "(B) 440 Hz" for choices[1] == "440 Hz"."""
    if not 0 <= answer_index < len(choices):
        raise ValueError(f"answer_index {answer_index} is outside the {len(choices)} choices {list(choices)}")
    letter, text = parse_lettered(output)
    return (letter == LETTERS[answer_index]
            and _normalise_option_text(text) == _normalise_option_text(choices[answer_index]))


def answer_index_of(item: Mapping[str, Any]) -> int | None:
    """The item's `answer_index`, or the position of `answer` among `choices` (MMAU items have no index)."""
    if item.get("answer_index") is not None:
        return int(item["answer_index"])
    choices = list(item.get("choices") or [])
    return choices.index(item["answer"]) if item.get("answer") in choices else None


def prediction_of(item: Mapping[str, Any]) -> str:
    for key in (PREDICTION_KEY, LEGACY_PREDICTION_KEY):
        if item.get(key):
            return str(item[key])
    return ""


def option_lines(choices: Sequence[str]) -> list[str]:
    """The lettered options as the prompt lists them and the answer names one: "(A) first", "(B) second"."""
    return [f"({LETTERS[i]}) {c}" for i, c in enumerate(choices)]


def format_prompt(question: str, choices: Sequence[str]) -> str:
    """The user turn the model is trained on: the audio placeholder, the question, lettered options."""
    options = "\n".join(option_lines(choices))
    return f"<audio>\n{question}\n{options}"


def _rate(hits: int, n: int) -> float | None:
    return hits / n if n else None


def score(items: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Accuracy overall, per group field and per item.

    Each item needs `answer`, `choices` and the model's text (`model_prediction` or `model_output`;
    missing or empty counts as wrong, as in MMAU). Exact scoring uses `answer_index` (or the answer's
    position among the choices). Returns
    {"n", "mmau_accuracy", "exact_accuracy", "no_prediction",
     "by": {field: {value: {"n", "mmau_accuracy", "exact_accuracy"}}},  # fields from GROUP_FIELDS present
     "items": [{"id", "answer", "model_prediction", "mmau_correct", "exact_correct", <group fields>}]}
    Accuracies are fractions in [0, 1]; exact_accuracy counts only items with a known answer index.
    """
    per_item = []
    for i, item in enumerate(items):
        for field in ("answer", "choices"):
            if field not in item:
                raise ValueError(f"item {i} (id {item.get('id')!r}): no {field!r} field to score against")
        output = prediction_of(item)
        index = answer_index_of(item)
        per_item.append({
            "id": item.get("id", item.get("sample_id", i)),
            "answer": item["answer"],
            PREDICTION_KEY: output,
            "mmau_correct": mmau_is_correct(output, item["answer"], item["choices"]),
            "exact_correct": None if index is None else exact_is_correct(output, index, item["choices"]),
            **{f: item[f] for f in GROUP_FIELDS if item.get(f) is not None},
        })

    def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
        exact = [r["exact_correct"] for r in rows if r["exact_correct"] is not None]
        return {"n": len(rows), "mmau_accuracy": _rate(sum(r["mmau_correct"] for r in rows), len(rows)),
                "exact_accuracy": _rate(sum(exact), len(exact))}

    groups: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for row in per_item:
        for field in GROUP_FIELDS:
            if field in row:
                groups[field][str(row[field])].append(row)
    return {
        **summary(per_item),
        "no_prediction": sum(1 for r in per_item if not r[PREDICTION_KEY]),
        "by": {field: {value: summary(rows) for value, rows in sorted(values.items())}
               for field, values in groups.items()},
        "items": per_item,
    }


# --- MMAU files ----------------------------------------------------------------------------------


def load_mmau_items(path: str | Path) -> list[dict[str, Any]]:
    """MMAU's test-mini (or test) JSON: a list of {id, audio_id, question, choices, answer, dataset,
    task, split, category, sub-category, difficulty}. Checks the fields evaluation needs."""
    path = Path(path)
    try:
        items = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); expected MMAU's test-mini list of items") from exc
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a JSON list of MMAU items, got {type(items).__name__}")
    for i, item in enumerate(items):
        missing = [f for f in ("id", "audio_id", "question", "choices") if f not in item]
        if missing:
            raise ValueError(f"{path}: item {i} (id {item.get('id')!r}) lacks {missing}; is this MMAU's JSON?")
        if not isinstance(item["choices"], list) or not item["choices"]:
            raise ValueError(f"{path}: item {i} (id {item['id']!r}): 'choices' must be a non-empty list")
    return items


def rows_to_items(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Sample rows (row contract) -> MMAU-shaped items that keep the row's prompt and taxonomy path.

    task = l0 lower-cased (Sound/Music/Speech -> MMAU's tasks), category = l1, sub-category = l3 (the
    leaf), difficulty = UNRATED_DIFFICULTY (rows are not rated; MMAU's script needs a value), split
    "test-mini" (the split MMAU's dev-phase scoring reads). The user turn of the row's `messages` is kept
    as `prompt` so evaluation asks exactly what training taught.
    """
    items = []
    for i, row in enumerate(rows):
        for field in ("question", "choices", "answer"):
            if row.get(field) is None:
                raise ValueError(f"row {i} (sample_id {row.get('sample_id')!r}): field {field!r} is missing")
        prompt = next((m["content"] for m in row.get("messages") or [] if m["role"] == "user"), None)
        item = {
            "id": row.get("sample_id", str(i)),
            "audio_id": (row.get("audio") or {}).get("path") or row.get("sample_id", str(i)),
            "question": row["question"],
            "choices": list(row["choices"]),
            "answer": row["answer"],
            "answer_index": None if row.get("answer_index") is None else int(row["answer_index"]),
            "dataset": row.get("source"),
            "task": (row.get("l0") or "").lower() or None,
            "split": "test-mini",
            "category": row.get("l1"),
            "sub-category": row.get("l3"),
            "difficulty": UNRATED_DIFFICULTY,
            "prompt": prompt or format_prompt(row["question"], row["choices"]),
            **{f: row.get(f) for f in ("l0", "l1", "l2", "l3")},
        }
        if row.get("transcript"):
            item["transcript"] = row["transcript"]
        items.append(item)
    return items


def write_mmau_json(items: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Write items in MMAU's JSON shape, each with the model's text under `model_prediction` and
    `model_output`, so MMAU's own `evaluation.py --input <path>` can score the file.

    Every item must have a prediction key already (use `evaluate`), so a missing prediction is
    never written silently as an empty answer. Internal fields (`prompt`) are left out.
    """
    out = []
    for i, item in enumerate(items):
        if PREDICTION_KEY not in item and LEGACY_PREDICTION_KEY not in item:
            raise ValueError(f"item {i} (id {item.get('id')!r}) has no {PREDICTION_KEY!r}; run evaluate() first")
        text = prediction_of(item)
        record = {k: v for k, v in item.items() if k != "prompt"}
        record[PREDICTION_KEY] = text
        record[LEGACY_PREDICTION_KEY] = text
        out.append(record)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    return path


# --- audio ---------------------------------------------------------------------------------------


def read_clip(source: bytes | str | Path, where: str | None = None) -> np.ndarray:
    """An audio file (path or its bytes) -> (T,) float32 mono at 16 kHz, by the project's one decoder
    (`dataflux.audio.decode`, which names `where` in its errors)."""
    if isinstance(source, (bytes, bytearray)):
        data, name = bytes(source), where or "audio bytes"
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{where or path}: no such file")
        data, name = path.read_bytes(), where or str(path)
    samples, _ = decode_audio(data, name=name, target_sr=SAMPLING_RATE)
    return samples


def row_audio(row: Mapping[str, Any]) -> np.ndarray:
    """Audio loader for sample rows: the `audio` struct's bytes (or its path)."""
    audio = row.get("audio") or {}
    where = f"row {row.get('sample_id') or row.get('id')!r} field 'audio'"
    if audio.get("bytes"):
        return read_clip(audio["bytes"], where)
    if audio.get("path"):
        return read_clip(audio["path"], where)
    raise ValueError(f"{where}: neither bytes nor path")


def mmau_audio_loader(audio_dir: str | Path) -> Callable[[Mapping[str, Any]], np.ndarray]:
    """Audio loader for MMAU items: `audio_id` ("./test-mini-audios/<id>.wav") under `audio_dir`,
    tried as given and by file name alone (for a directory that holds the wav files directly)."""
    root = Path(audio_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"--audio-dir {root}: not a directory; unpack MMAU's test-mini audios there")

    def load(item: Mapping[str, Any]) -> np.ndarray:
        rel = Path(str(item["audio_id"]))
        candidates = [root / rel, root / rel.name]
        for path in candidates:
            if path.is_file():
                return read_clip(path, f"MMAU item {item.get('id')!r}")
        raise FileNotFoundError(
            f"MMAU item {item.get('id')!r}: audio {item['audio_id']!r} not found (tried "
            + ", ".join(str(p) for p in candidates) + ")")

    return load


# --- generation ----------------------------------------------------------------------------------


class Predictor(Protocol):
    """Anything that answers prompts about clips: (audio (T,) float32 16 kHz, user prompt) -> text."""

    def predict(self, batch: Sequence[tuple[np.ndarray, str]]) -> list[str]: ...


def as_predictor(model, processor, max_new_tokens: int) -> Predictor:
    """`model` itself when it is a Predictor (processor None), else model and processor as an `AudioLM`."""
    if processor is None:
        return model
    from modeling.answer import AudioLM  # lazy: torch takes seconds; every `dataflux` command imports this module

    return AudioLM(model, processor, max_new_tokens)


TRANSCRIBE_PROMPT = "<audio>\nTranscribe the speech."


def evaluate(
    model,
    processor,
    rows_or_mmau_items: Sequence[Mapping[str, Any]],
    audio_loader: Callable[[Mapping[str, Any]], np.ndarray] | None = None,
    zero_audio: bool = False,
    batch_size: int = 8,
    max_new_tokens: int = 32,
    transcripts: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Answer every item with the model and score the answers.

    Args:
        model: an `EurekaAudioForCausalLM` (with `processor`), or any `Predictor` (processor None).
        processor: the model's `EurekaAudioProcessor`, or None for a `Predictor`.
        rows_or_mmau_items: sample rows (they have `messages`/`l3`) or MMAU items (they have `audio_id`).
        audio_loader: item -> (T,) float32 at 16 kHz; default `row_audio` (reads the row's `audio`).
        zero_audio: replace every clip by silence of the same length (same number of audio tokens),
            the text-only baseline that shows whether the model uses the audio.
        transcripts: also transcribe items with a `transcript` and report WER over them.
        progress: called with (items done, items total) after each batch.

    Returns `score(...)` of the items that have an answer, plus "unscored" (items without one, as in
    MMAU's test JSON), "predictions": every item in MMAU shape with `model_prediction` (ready for
    `write_mmau_json`), "zero_audio", and "wer"/"wer_items" when asked.
    """
    predictor = as_predictor(model, processor, max_new_tokens)
    if not hasattr(predictor, "predict"):
        raise TypeError("evaluate: pass a model with its processor, or a Predictor (an object with .predict)")
    is_rows = bool(rows_or_mmau_items) and "audio_id" not in rows_or_mmau_items[0]
    items = rows_to_items(rows_or_mmau_items) if is_rows else [dict(x) for x in rows_or_mmau_items]
    loader = audio_loader or row_audio
    sources = list(rows_or_mmau_items)

    def clip(i: int) -> np.ndarray:
        audio = np.asarray(loader(sources[i]), dtype=np.float32)
        if audio.ndim != 1 or audio.size == 0:
            raise ValueError(f"item {items[i].get('id')!r}: the audio loader returned shape {audio.shape}; "
                             "expected non-empty mono (T,) samples at 16 kHz")
        return np.zeros_like(audio) if zero_audio else audio

    def run(indices: list[int], prompts: list[str]) -> list[str]:
        outputs: list[str] = [""] * len(indices)
        for start in range(0, len(indices), batch_size):
            chunk = range(start, min(start + batch_size, len(indices)))
            texts = predictor.predict([(clip(indices[j]), prompts[j]) for j in chunk])
            if len(texts) != len(chunk):
                raise ValueError(f"evaluate: the predictor returned {len(texts)} texts for {len(chunk)} inputs")
            for j, text in zip(chunk, texts):
                outputs[j] = text
            if progress:
                progress(chunk.stop, len(indices))
        return outputs

    order = list(range(len(items)))
    prompts = [it.get("prompt") or format_prompt(it["question"], it["choices"]) for it in items]
    for i, text in zip(order, run(order, prompts)):
        items[i][PREDICTION_KEY] = text
        items[i][LEGACY_PREDICTION_KEY] = text
    # MMAU's test JSON withholds answers: such items are answered (for submission) but not scored.
    result = score([it for it in items if it.get("answer") is not None])
    result["unscored"] = sum(1 for it in items if it.get("answer") is None)
    result["zero_audio"] = zero_audio
    result["predictions"] = items
    if transcripts:
        speech = [i for i, it in enumerate(items) if it.get("transcript")]
        hyps = run(speech, [TRANSCRIBE_PROMPT] * len(speech)) if speech else []
        pairs = [(items[i]["transcript"], h) for i, h in zip(speech, hyps)]
        result["wer"] = corpus_wer(pairs) if pairs else None
        result["wer_items"] = [{"id": items[i]["id"], "reference": r, "hypothesis": h, "wer": wer(r, h)}
                               for i, (r, h) in zip(speech, pairs)]
    return result


def format_summary(result: Mapping[str, Any], fields: Sequence[str] = ("task", "l3", "sub-category")) -> str:
    """A few readable lines: overall accuracies, then per value of the first group fields present."""
    def pct(x: float | None) -> str:
        return "  n/a" if x is None else f"{100 * x:5.1f}"

    tag = " (audio zeroed)" if result.get("zero_audio") else ""
    lines = [f"{result['n']} items{tag}: MMAU-style {pct(result['mmau_accuracy'])}%, "
             f"exact (letter and text) {pct(result['exact_accuracy'])}%, no prediction {result['no_prediction']}"]
    shown = set()
    for field in fields:
        groups = result.get("by", {}).get(field)
        if not groups or field in shown:
            continue
        shown.add(field)
        lines.append(f"  by {field}:")
        for value, s in groups.items():
            lines.append(f"    {value:24s} n={s['n']:5d}  MMAU {pct(s['mmau_accuracy'])}%  exact {pct(s['exact_accuracy'])}%")
    if result.get("wer") is not None:
        lines.append(f"  WER over {len(result['wer_items'])} transcripts: {100 * result['wer']:.1f}%")
    return "\n".join(lines)
