"""The trained model as an answerer: a tiny real checkpoint saved and loaded the way the trainer does."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from dataflux.llm.backends import build_openai_step
from dataflux.llm.local import LocalCheckpointAnswerer, checkpoint_id, parse_choice
from dataflux.records import Clip, SourceItem
from dataflux.steps import base
from dataflux.steps.base import Call, Caption, Question
from dataflux.taxonomy import load_taxonomy
from modeling.answer import AudioLM
from modeling.eval import format_prompt

QUESTION = Question("What is the approximate pitch of the tone in this recording?",
                    ["110 Hz", "220 Hz", "440 Hz", "880 Hz"], 2)


def _clip() -> Clip:
    t = np.arange(8000) / 16000
    samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    return Clip(SourceItem("demo", "c"), "b" * 64, samples, 16000, 16000, {}, {})


def test_local_checkpoint_answers_through_the_answerer_interface(tiny_checkpoint):
    answerer = build_openai_step("answer", {"name": "ours_v1", "backend": "local", "checkpoint": str(tiny_checkpoint),
                                            "max_tokens": 8}, {})
    assert isinstance(answerer, LocalCheckpointAnswerer) and isinstance(answerer, base.Answerer)
    caption = Caption("A tone.", Call("caption", "reference", "r"))
    ans = asyncio.run(answerer.answer(_clip(), caption, QUESTION, load_taxonomy().leaf("tone_pitch")))
    assert ans.answerer == "ours_v1" and ans.sees_audio
    assert ans.call.backend == "local" and ans.call.model == checkpoint_id(tiny_checkpoint)
    assert ans.call.model.startswith("tiny-v1@") and ans.call.tokens_in > 20 and 1 <= ans.call.tokens_out <= 8
    # the answer is the option the model's own reply names, as the one answering function gives that reply
    said = AudioLM.from_checkpoint(tiny_checkpoint, "cpu", 8).answer(_clip().samples,
                                                                     format_prompt(QUESTION.question, QUESTION.choices))
    assert ans.answer_index == parse_choice(said, QUESTION.choices)
    assert ans.answer_text == (QUESTION.choices[ans.answer_index] if ans.answer_index is not None else None)
    assert ans.reasoning == (f"The trained model answered {said!r}." if said else "The trained model gave no answer.")
    # greedy decoding: asking again gives the same answer
    again = asyncio.run(answerer.answer(_clip(), caption, QUESTION, load_taxonomy().leaf("tone_pitch")))
    assert (again.reasoning, again.answer_index) == (ans.reasoning, ans.answer_index)


def test_checkpoint_id_changes_with_the_weights(tiny_checkpoint, tmp_path):
    import shutil
    copy = tmp_path / "tiny-v1"
    shutil.copytree(tiny_checkpoint, copy)
    assert checkpoint_id(copy) == checkpoint_id(tiny_checkpoint)
    weights = next(p for p in copy.iterdir() if p.suffix == ".safetensors")
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x01")
    assert checkpoint_id(copy) != checkpoint_id(tiny_checkpoint)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    answerer = LocalCheckpointAnswerer("ours", tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="steps.answerers"):
        asyncio.run(answerer.answer(_clip(), None, QUESTION, None))


@pytest.mark.parametrize("output,expected", [
    ("(C) 440 Hz", 2), ("B) 220 Hz", 1), ("(d): 880 Hz", 3), ("440 Hz", 2), ("I think it is loud", None), ("", None),
])
def test_reply_is_parsed_by_letter_or_exact_option(output, expected):
    assert parse_choice(output, QUESTION.choices) == expected
