"""The text-only answerers of a run: an openai answerer's model asked over a real local OpenAI-compatible
server (tests/helpers/fault_server.py) gets no audio and no caption; our checkpoint hears silence."""

from __future__ import annotations

import asyncio
import json

import numpy as np

from dataflux.llm.backends import OpenAIAnswerer, build_openai_step
from dataflux.llm.cache import MemoryCallCache
from dataflux.llm.client import EndpointPool
from dataflux.llm.local import LocalCheckpointAnswerer
from dataflux.llm.prompts import load_prompt
from dataflux.llm.text_only import OpenAITextOnlyAnswerer, text_only_panel
from dataflux.steps.answer import CaptionReader, MeasuringAnswerer
from dataflux.steps.base import Question
from dataflux.steps.text_only import StemReader, TextOnlyAnswerer
from modeling.answer import AudioLM
from modeling.eval import format_prompt
from tests.dataflux.llm.test_llm_backends import CAPTION, QUESTION, last_user_text, pool_for, run
from tests.helpers.fault_server import FaultServer


def test_the_text_only_call_carries_the_stem_and_options_but_no_audio_and_no_caption():
    cache = MemoryCallCache()
    with FaultServer(reply=lambda b: json.dumps({"reasoning": "Tones are often 440 Hz.", "answer": "B"})) as srv:
        pool = pool_for(srv, cache=cache)
        heard = OpenAIAnswerer("heard", pool.client("ep"), sees_audio=True, prompt="answer_v1", seed=3)
        blind = text_only_panel([heard])[0]
        ans = run(pool, lambda: blind.answer_without_audio(QUESTION, 16000, 16000))
        body = srv.requests[0]["body"]
        pool = pool_for(srv, cache=cache)  # the same question again: answered from the cache
        again = run(pool, lambda: OpenAITextOnlyAnswerer(
            OpenAIAnswerer("heard", pool.client("ep"), prompt="answer_v1", seed=3)).answer_without_audio(QUESTION))
        n_requests = len(srv.requests)
    assert isinstance(blind, OpenAITextOnlyAnswerer) and isinstance(blind, TextOnlyAnswerer)
    assert all(isinstance(m["content"], str) for m in body["messages"])  # text only: no audio content part
    assert "input_audio" not in json.dumps(body) and "audio_url" not in json.dumps(body)
    text = last_user_text(body)
    assert QUESTION.question in text and all(f") {c}" in text for c in QUESTION.choices)
    assert "steady" not in text and CAPTION.text not in json.dumps(body)  # no caption
    assert "Category" not in text  # nor the taxonomy path
    assert (ans.answer_index, ans.answer_text, ans.sees_audio) == (1, "440 Hz", False)
    assert ans.call.model == "fault-model-1.0" and ans.call.seed == 3 and ans.call.backend == "openai"
    assert ans.call.prompt_sha256 == load_prompt("answer_text_only_v1").sha256
    assert ans.call.params["text_only"] is True and ans.call.params["answerer"] == "heard:text_only"
    assert ans.call.tokens_in > 0 and not ans.call.cached
    assert n_requests == 1 and again.call.cached and again.answer_index == 1


def test_the_panel_has_one_stem_reader_one_call_per_openai_model_and_the_local_checkpoint(tiny_checkpoint):
    pool = EndpointPool({"ep": {"base_url": "http://127.0.0.1:9", "model": "m1", "audio_format": "none"},
                         "ep2": {"base_url": "http://127.0.0.1:9", "model": "m2", "audio_format": "none"}})
    reader_1 = build_openai_step("answer", {"name": "r1", "endpoint": "ep", "sees_audio": False}, pool)
    reader_2 = build_openai_step("answer", {"name": "r2", "endpoint": "ep", "sees_audio": False}, pool)
    other = build_openai_step("answer", {"name": "o", "endpoint": "ep2", "sees_audio": False}, pool)
    ours = LocalCheckpointAnswerer("ours", tiny_checkpoint)
    panel = text_only_panel([MeasuringAnswerer(), CaptionReader(), reader_1, reader_2, other, ours])
    assert [type(p) for p in panel] == [StemReader, OpenAITextOnlyAnswerer, OpenAITextOnlyAnswerer,
                                        LocalCheckpointAnswerer]
    assert [p.model for p in panel[1:3]] == ["m1", "m2"] and panel[3] is ours


def test_our_checkpoint_answers_without_the_audio_by_hearing_silence_of_the_clips_length(tiny_checkpoint):
    q = Question("What is the approximate pitch of the tone in this recording?", ["110 Hz", "220 Hz", "440 Hz", "880 Hz"], 2)
    ours = LocalCheckpointAnswerer("ours", tiny_checkpoint, max_new_tokens=8)
    ans = asyncio.run(ours.answer_without_audio(q, 8000, 16000))
    said = AudioLM.from_checkpoint(tiny_checkpoint, "cpu", 8).answer(np.zeros(8000, dtype=np.float32),
                                                                     format_prompt(q.question, q.choices))
    assert not ans.sees_audio and ans.call.params["audio"] == "zeroed" and ans.call.params["text_only"] is True
    assert ans.reasoning.startswith(f"The trained model answered {said!r}" if said else "The trained model gave no")
    assert ans.reasoning.endswith("with the audio zeroed.")
