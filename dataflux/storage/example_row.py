"""A complete, valid sample row built from a few arguments: for tests and for the row-contract docs.

Real rows come from the pipeline's row builder; this one fills every column with plausible values
so that storage, loaders and the trainer can be exercised on tiny real Parquet files.
"""

from __future__ import annotations

import hashlib
import io
import json
import wave
from typing import Any

import numpy as np

from dataflux.storage.row_schema import SAMPLING_RATE, row_content_sha256


def tone_wav_bytes(freq_hz: float = 440.0, seconds: float = 0.25, sampling_rate: int = SAMPLING_RATE) -> bytes:
    """A 16-bit mono PCM WAV of a sine tone. Returns the file's bytes."""
    t = np.arange(int(seconds * sampling_rate)) / sampling_rate
    pcm = (0.5 * np.sin(2 * np.pi * freq_hz * t) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sampling_rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def make_example_row(
    source_id: str = "clip-0",
    *,
    question_no: int = 0,
    source: str = "demo",
    l3: str = "tone_pitch",
    path: tuple[str, str, str] = ("Sound", "Tonal", "Pitch"),
    choices: tuple[str, str, str, str] = ("110 Hz", "220 Hz", "440 Hz", "880 Hz"),
    answer_index: int = 2,
    caption_claims: dict[str, str] | None = None,
    audio_bytes: bytes | None = None,
    run_id: str = "run-0",
    code_version: str = "test",
    **overrides: Any,
) -> dict[str, Any]:
    """A row that follows the row contract, with `row_sha256` filled in; `overrides` replace columns."""
    audio = audio_bytes if audio_bytes is not None else tone_wav_bytes()
    audio_sha = hashlib.sha256(audio).hexdigest()
    question = "What is the approximate pitch of the tone in this recording?"
    answer = choices[answer_index]
    sample_id = hashlib.sha256(f"{audio_sha}:{l3}:{question_no}:{question}".encode()).hexdigest()[:24]
    claims = caption_claims if caption_claims is not None else {l3: answer}
    call = {
        "step": "caption", "backend": "reference", "model": "measure@1", "prompt_sha256": "",
        "params": json.dumps({}), "seed": 0, "tokens_in": 10, "tokens_out": 20, "cost_usd": 0.001,
        "cached": False,
    }
    row: dict[str, Any] = {
        "sample_id": sample_id,
        "source": source,
        "source_id": source_id,
        "license": "CC0-1.0",
        "audio": {"bytes": audio, "path": f"{source_id}.wav"},
        "sampling_rate": SAMPLING_RATE,
        "duration_s": 0.25,
        "audio_sha256": audio_sha,
        "split": "train",
        "l0": path[0], "l1": path[1], "l2": path[2], "l3": l3,
        "caption": f"A steady {answer} tone.",
        "transcript": None,
        "caption_claims": json.dumps(claims, sort_keys=True),
        "facts": json.dumps({l3: answer}, sort_keys=True),
        "quality": {"duration_s": 0.25, "peak": 0.5, "rms_dbfs": -9.0, "clipping_ratio": 0.0,
                    "silence_ratio": 0.0, "snr_db": 60.0},
        "question": question,
        "choices": list(choices),
        "answer": answer,
        "answer_index": answer_index,
        "reasoning": f"The measured fundamental is {answer}.",
        **_verification(answer_index, answer),
        "calls": [call],
        "tokens_in": 10,
        "tokens_out": 20,
        "cost_usd": 0.001,
        "run_id": run_id,
        "code_version": code_version,
        "messages": _messages(question, choices, answer_index),
        "row_sha256": None,
    }
    row.update(overrides)
    row["row_sha256"] = row_content_sha256(row)
    return row


def _verification(answer_index: int, answer: str) -> dict[str, Any]:
    """The answering and judging columns of a row the measuring answerer and the judge agree on."""
    return {
        "winner": "MODEL_A",
        "answers": [
            {"answerer": "measure", "sees_audio": True, "answer_index": answer_index, "answer_text": answer,
             "reasoning": "measured", "model": "measure@1"},
        ],
        "verdict": {"consensus": True, "consistency_with_caption": "STRONG_MATCH", "winner": "MODEL_A",
                    "final_action": "KEEP_USING_WINNER", "reasoning": "agree"},
        "checks": [{"name": "measured_fact", "passed": True, "detail": ""}],
        "rounds": 1,
        "corrected_from_measurement": False,
        "model_correct": None,
        "audio_needed": True,
        "text_only_answers": [
            {"answerer": "text_only", "sees_audio": False, "answer_index": None, "answer_text": None,
             "reasoning": "Without the audio: the question names none of the options; I abstain.",
             "model": "reference-text-only@1"},
        ],
    }


def _messages(question: str, choices: tuple[str, ...], answer_index: int) -> list[dict[str, str]]:
    """The chat turns of a multiple-choice row: the question with lettered options, then the answer."""
    letters = "ABCD"
    return [
        {"role": "user", "content": "<audio>" + question + "\n"
         + "\n".join(f"({letters[i]}) {c}" for i, c in enumerate(choices))},
        {"role": "assistant", "content": f"({letters[answer_index]}) {choices[answer_index]}"},
    ]
