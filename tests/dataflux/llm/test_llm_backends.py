"""The openai step backends against a real local OpenAI-compatible server (tests/helpers/fault_server.py)."""

from __future__ import annotations

import asyncio
import base64
import io
import json

import numpy as np
import pytest
import soundfile as sf

from dataflux.llm.backends import (OpenAIAnswerer, OpenAICaptioner, OpenAIJudge, OpenAIQuestionWriter,
                                   build_openai_step)
from dataflux.llm.cache import MemoryCallCache
from dataflux.llm.client import EndpointPool
from dataflux.llm.endpoint import EndpointConfigError
from dataflux.llm.prompts import load_prompt
from dataflux.records import Clip, SourceItem
from dataflux.steps import base
from dataflux.steps.base import Answer, Call, Caption, Question
from dataflux.steps.judge import build_evidence
from dataflux.taxonomy import load_taxonomy
from tests.helpers.fault_server import FaultServer

TAX = load_taxonomy()
PITCH = TAX.leaf("tone_pitch")
CAPTION = Caption("A steady 440 Hz sine tone, lasting 2 seconds, at a moderate level.", Call("caption", "reference", "r"))
QUESTION = Question("What is the approximate pitch of the tone in this recording?",
                    ["220 Hz", "440 Hz", "110 Hz", "880 Hz"], 1)


def make_clip(labels: dict | None = None, facts: dict | None = None) -> Clip:
    t = np.arange(16000, dtype=np.float32) / 16000
    samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    return Clip(SourceItem("demo", "c1", labels=labels or {}), "a" * 64, samples, 16000, 16000, {},
                facts if facts is not None else {"tone_pitch": "440 Hz", "raw": {"f0_hz": 440.2}})


def pool_for(srv: FaultServer, cache=None, **endpoint) -> EndpointPool:
    cfg = {"base_url": srv.base_url, "model": "requested-model", "max_retries": 2, "timeout_s": 5.0,
           "audio_format": "input_audio", "structured_output": "json_object", **endpoint}
    return EndpointPool({"ep": cfg}, cache=cache, backoff_base_s=0.01)


def run(pool: EndpointPool, coro_fn):
    async def main():
        try:
            return await coro_fn()
        finally:
            await pool.aclose()
    return asyncio.run(main())


def last_user_text(body: dict) -> str:
    content = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
    return content if isinstance(content, str) else " ".join(p.get("text", "") for p in content)


def test_answerer_sends_the_clip_as_input_audio_wav_and_maps_the_letter():
    with FaultServer(reply=lambda b: json.dumps({"reasoning": "I hear a 440 Hz tone.", "answer": "B"})) as srv:
        pool = pool_for(srv)
        answerer = OpenAIAnswerer("heard", pool.client("ep"), sees_audio=True, prompt="answer_v1", seed=3)
        ans = run(pool, lambda: answerer.answer(make_clip(), CAPTION, QUESTION, PITCH))
        body = srv.requests[0]["body"]
    assert isinstance(answerer, base.Answerer)
    assert (ans.answer_index, ans.answer_text, ans.sees_audio) == (1, "440 Hz", True)
    assert ans.call.model == "fault-model-1.0" and ans.call.prompt_sha256 == load_prompt("answer_v1").sha256
    assert ans.call.params["answerer"] == "heard" and ans.call.seed == 3 and ans.call.backend == "openai"
    part = body["messages"][-1]["content"][0]
    assert part["type"] == "input_audio" and part["input_audio"]["format"] == "wav"
    samples, sr = sf.read(io.BytesIO(base64.b64decode(part["input_audio"]["data"])))
    assert sr == 16000 and len(samples) == 16000
    assert "220 Hz" in last_user_text(body) and "steady 440 Hz" not in last_user_text(body)  # no caption leak


def test_caption_reading_answerer_gets_the_caption_and_no_audio():
    with FaultServer(reply=lambda b: json.dumps({"reasoning": "The caption says 440 Hz.", "answer": "B"})) as srv:
        pool = pool_for(srv, audio_format="none")
        answerer = build_openai_step("answer", {"name": "reader", "backend": "openai", "endpoint": "ep",
                                                "sees_audio": False}, pool)
        ans = run(pool, lambda: answerer.answer(make_clip(), CAPTION, QUESTION, PITCH))
        body = srv.requests[0]["body"]
    assert not ans.sees_audio and ans.answer_index == 1
    assert all(isinstance(m["content"], str) for m in body["messages"])
    assert CAPTION.text in last_user_text(body)


def test_abstaining_answerer_gives_no_index():
    with FaultServer(reply=lambda b: json.dumps({"reasoning": "Cannot tell.", "answer": None})) as srv:
        pool = pool_for(srv)
        ans = run(pool, lambda: OpenAIAnswerer("a", pool.client("ep"), prompt="answer_v1").answer(
            make_clip(), CAPTION, QUESTION, PITCH))
    assert ans.answer_index is None and ans.answer_text is None and ans.call.failure is None


def test_audio_url_endpoints_get_a_data_url():
    with FaultServer(reply=lambda b: json.dumps({"reasoning": "r", "answer": "A"})) as srv:
        pool = pool_for(srv, audio_format="audio_url")
        run(pool, lambda: OpenAIAnswerer("a", pool.client("ep"), prompt="answer_v1").answer(
            make_clip(), CAPTION, QUESTION, PITCH))
        part = srv.requests[0]["body"]["messages"][-1]["content"][0]
    assert part["type"] == "audio_url" and part["audio_url"]["url"].startswith("data:audio/wav;base64,UklGR")


def test_audio_step_on_an_endpoint_without_audio_is_a_config_error():
    pool = EndpointPool({"ep": {"base_url": "http://127.0.0.1:9/v1", "model": "m", "audio_format": "none"}})
    with pytest.raises(EndpointConfigError, match=r"endpoints\.ep\.audio_format"):
        build_openai_step("caption", {"backend": "openai", "endpoint": "ep"}, pool)
    with pytest.raises(EndpointConfigError, match=r"answerers\[heard\]"):
        build_openai_step("answer", {"name": "heard", "backend": "openai", "endpoint": "ep", "sees_audio": True}, pool)


def _writer_reply(questions: list[dict], is_success: bool = True):
    return lambda body: json.dumps({"is_success": is_success, "reason": "the caption states a pitch",
                                    "questions": questions})


def test_question_writer_shuffles_options_and_records_provenance():
    qs = [{"question": "Which frequency best matches the tone you hear?", "choices": ["440 Hz", "220 Hz", "880 Hz", "110 Hz"],
           "answer_index": 0, "answer": "440 Hz"} for _ in range(6)]
    with FaultServer(reply=_writer_reply(qs)) as srv:
        pool = pool_for(srv)
        writer = build_openai_step("generate", {"backend": "openai", "endpoint": "ep", "prompt": "generate_v1",
                                                "temperature": 0.7, "max_tokens": 800}, pool)
        gens = run(pool, lambda: asyncio.gather(*(writer.generate(make_clip(), CAPTION, PITCH, n=3, seed=s)
                                                  for s in range(8))))
        prompt_text = last_user_text(srv.requests[0]["body"])
    assert isinstance(writer, OpenAIQuestionWriter) and isinstance(writer, base.QuestionWriter)
    assert all(g.is_success and len(g.questions) == 3 for g in gens)
    for g in gens:
        for q in g.questions:
            assert q.answer == "440 Hz" and sorted(q.choices) == sorted(qs[0]["choices"])
    assert len({q.answer_index for g in gens for q in g.questions}) > 1, "the key must not sit at one position"
    call = gens[0].call
    assert call.model == "fault-model-1.0" and call.seed == 0 and call.params["temperature"] == 0.7
    assert call.prompt_sha256 == load_prompt("generate_v1").sha256 and call.params["shuffled"]
    assert "Sound > Tonal > Pitch > tone_pitch" in prompt_text and CAPTION.text in prompt_text
    assert "220 Hz square tone" in prompt_text  # the leaf's few-shot exemplar


def test_question_writer_repairs_an_answer_that_is_no_option():
    bad = [{"question": "Which frequency best matches the tone?", "choices": ["440 Hz", "220 Hz", "880 Hz", "110 Hz"],
            "answer_index": 0, "answer": "450 Hz"}]
    good = [dict(bad[0], answer="440 Hz")]
    replies = iter([_writer_reply(bad), _writer_reply(good)])
    with FaultServer(reply=lambda body: next(replies)(body)) as srv:
        pool = pool_for(srv)
        gen = run(pool, lambda: OpenAIQuestionWriter(pool.client("ep"), prompt="generate_v1").generate(
            make_clip(), CAPTION, PITCH, n=1, seed=1))
        repair_text = srv.requests[-1]["body"]["messages"][-1]["content"]
    assert gen.is_success and gen.questions[0].answer == "440 Hz"
    assert "'450 Hz' is not one of the choices" in repair_text
    assert pool.counters.snapshot()["ep"]["repairs"] == 1


def test_answer_text_decides_when_the_index_disagrees():
    qs = [{"question": "Which frequency best matches the tone?", "choices": ["440 Hz", "220 Hz", "880 Hz", "110 Hz"],
           "answer_index": 2, "answer": "440 Hz"}]
    with FaultServer(reply=_writer_reply(qs)) as srv:
        pool = pool_for(srv)
        gen = run(pool, lambda: OpenAIQuestionWriter(pool.client("ep"), prompt="generate_v1").generate(
            make_clip(), CAPTION, PITCH, n=1, seed=1))
        assert srv.stats["requests"] == 1
    assert gen.questions[0].answer == "440 Hz"


def test_question_writer_failure_is_recorded_not_silent():
    with FaultServer(reply=lambda b: "no json here") as srv:
        pool = pool_for(srv)
        gen = run(pool, lambda: OpenAIQuestionWriter(pool.client("ep"), prompt="generate_v1").generate(
            make_clip(), CAPTION, PITCH, n=2, seed=1))
    assert not gen.is_success and gen.questions == [] and gen.call.failure == "invalid_json"
    assert "invalid_json" in gen.reason


def test_regeneration_quotes_the_judges_reasons_with_its_own_template_hash():
    qs = [{"question": "Which frequency best matches the tone you hear?", "choices": ["440 Hz", "220 Hz", "880 Hz", "110 Hz"],
           "answer_index": 0}]
    with FaultServer(reply=_writer_reply(qs)) as srv:
        pool = pool_for(srv)
        writer = OpenAIQuestionWriter(pool.client("ep"), prompt="generate_v1")
        feedback = 'The key is wrong: measured tone_pitch = "440 Hz".'
        first = run(pool, lambda: writer.generate(make_clip(), CAPTION, PITCH, n=1, seed=1))
        second = run(pool, lambda: writer.generate(make_clip(), CAPTION, PITCH, n=1, seed=1, feedback=feedback))
        texts = [last_user_text(r["body"]) for r in srv.requests]
    assert feedback not in texts[0] and feedback in texts[1] and "rejected by a reviewer" in texts[1]
    assert first.call.prompt_sha256 == load_prompt("generate_v1").sha256
    assert second.call.prompt_sha256 == load_prompt("regenerate_v1").sha256 != first.call.prompt_sha256
    assert second.call.params["with_feedback"]


def _answers():
    return [Answer("heard", True, "I hear about 440 Hz.", 1, "440 Hz", Call("answer", "openai", "a")),
            Answer("reader", False, "The caption says 440 Hz.", 1, "440 Hz", Call("answer", "openai", "b"))]


def test_judge_gets_rules_reasonings_and_measured_evidence():
    verdict = {"consensus": True, "consistency_with_caption": "STRONG_MATCH", "winner": "MODEL_A",
               "reasoning": "Both agree with the caption and the measurement.", "final_action": "KEEP_USING_WINNER"}
    with FaultServer(reply=lambda b: json.dumps(verdict)) as srv:
        pool = pool_for(srv, audio_format="none")
        judge = build_openai_step("judge", {"backend": "openai", "endpoint": "ep", "seed": 5}, pool)
        clip = make_clip()
        v = run(pool, lambda: judge.judge(clip, CAPTION, PITCH, QUESTION, _answers(),
                                          build_evidence(clip, CAPTION, PITCH)))
        text = last_user_text(srv.requests[0]["body"])
    assert isinstance(judge, OpenAIJudge) and isinstance(judge, base.Judge)
    assert (v.consensus, v.winner, v.final_action, v.measured_agrees) == (True, "MODEL_A", "KEEP_USING_WINNER", True)
    assert v.call.model == "fault-model-1.0" and v.call.prompt_sha256 == load_prompt("judge_v1").sha256
    for rule in PITCH.judge_rules:
        assert rule in text
    assert "I hear about 440 Hz." in text and "The caption says 440 Hz." in text
    assert "measured tone_pitch: 440 Hz" in text and "f0_hz = 440.2" in text
    assert "Keyed answer: (B) 440 Hz" in text and "read only the caption" in text


def test_judge_winner_naming_a_missing_model_is_repaired_then_recorded():
    verdict = {"consensus": True, "consistency_with_caption": "STRONG_MATCH", "winner": "MODEL_C",
               "reasoning": "r", "final_action": "KEEP_USING_WINNER"}
    with FaultServer(reply=lambda b: json.dumps(verdict)) as srv:
        pool = pool_for(srv)
        v = run(pool, lambda: OpenAIJudge(pool.client("ep"), prompt="judge_v1").judge(
            make_clip(), CAPTION, PITCH, QUESTION, _answers(), {}))
        repair_text = srv.requests[-1]["body"]["messages"][-1]["content"]
    assert v.call.failure == "schema_violation" and v.final_action == "DISCARD" and v.winner == "NONE"
    assert "'MODEL_C' is not one of" in repair_text
    assert v.measured_agrees is None


def test_captioner_transcribes_speech_and_merges_its_cost():
    reply = lambda b: json.dumps({"caption": "A voice says hello at a moderate pace.", "transcript": None})
    with FaultServer(reply=reply) as srv:
        pool = pool_for(srv, supports_transcription=True, price_per_1m_input=1.0, price_per_1m_output=1.0)
        captioner = build_openai_step("caption", {"backend": "openai", "endpoint": "ep", "prompt": "caption_v1"}, pool)
        speech = make_clip(labels={"transcript": "hello"}, facts={"speaking_rate": "moderate", "raw": {}})
        tone = make_clip()
        cap_speech = run(pool, lambda: captioner.caption(speech))
        cap_tone = run(pool, lambda: captioner.caption(tone))
        paths = [r["path"] for r in srv.requests]
        chat_text = last_user_text(srv.requests[1]["body"])
    assert isinstance(captioner, OpenAICaptioner) and isinstance(captioner, base.Captioner)
    assert paths == ["/v1/audio/transcriptions", "/v1/chat/completions", "/v1/chat/completions"]
    assert cap_speech.transcript == "hello from the fault server" and "hello from the fault server" in chat_text
    assert cap_speech.text.startswith("A voice says hello") and cap_speech.call.params["transcription_model"]
    assert cap_tone.transcript is None
    assert cap_speech.call.prompt_sha256 == load_prompt("caption_v1").sha256


def test_backends_over_a_warm_cache_make_no_requests():
    verdict = {"consensus": False, "consistency_with_caption": "WEAK_MATCH", "winner": "TIE",
               "reasoning": "r", "final_action": "KEEP_USING_WINNER"}
    cache = MemoryCallCache()
    with FaultServer(reply=lambda b: json.dumps(verdict)) as srv:
        for _ in range(2):
            pool = pool_for(srv, cache=cache)
            judge = OpenAIJudge(pool.client("ep"), prompt="judge_v1")
            v = run(pool, lambda: judge.judge(make_clip(), CAPTION, PITCH, QUESTION, _answers(), {}))
        snap = pool.counters.snapshot()["ep"]
        assert srv.stats["requests"] == 1
    assert v.call.cached and snap["requests"] == 0 and snap["cache_hits"] == 1
