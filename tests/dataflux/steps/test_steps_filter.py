"""Filter: quality thresholds, duplicate questions, answer-position balance."""

from __future__ import annotations

from collections import Counter

import numpy as np

from dataflux.records import Clip, SourceItem
from dataflux.steps.filter import (
    FilterConfig,
    dedupe,
    move_answer,
    position_counts,
    quality_reasons,
    quality_reject,
    rebalance_positions,
    user_message,
)

GOOD_Q = {"duration_s": 2.0, "peak": 0.5, "rms_dbfs": -20.0, "clipping_ratio": 0.0, "silence_ratio": 0.1, "snr_db": 30.0}


def row(sid: str, question: str, answer_index: int = 0, audio: str = "a" * 64) -> dict:
    choices = ["w", "x", "y", "z"]
    return {"sample_id": sid, "source": "t", "source_id": sid, "audio_sha256": audio, "question": question,
            "choices": choices, "answer_index": answer_index, "answer": choices[answer_index],
            "answers": [{"answerer": "m", "answer_index": answer_index}, {"answerer": "c", "answer_index": None}],
            "messages": [], "checks": []}


def test_quality_thresholds_give_reason_codes():
    cfg = FilterConfig(min_snr_db=10.0)
    assert quality_reasons(GOOD_Q, cfg) == []
    assert quality_reasons({**GOOD_Q, "duration_s": 0.1}, cfg) == ["too_short"]
    assert quality_reasons({**GOOD_Q, "clipping_ratio": 0.2, "silence_ratio": 0.99, "snr_db": 3.0}, cfg) == [
        "clipping", "mostly_silent", "low_snr"]
    assert quality_reasons({**GOOD_Q, "snr_db": float("nan")}, cfg) == ["low_snr"]
    clip = Clip(SourceItem("t", "x"), "b" * 64, np.zeros(10, np.float32), 16000, 16000, {**GOOD_Q, "duration_s": 900.0}, {})
    r = quality_reject(clip, cfg)
    assert (r.stage, r.reason, r.audio_sha256) == ("filter", "quality:too_long", "b" * 64)


def test_filter_config_rejects_unknown_keys():
    assert FilterConfig.from_dict({"max_position_share": 0.3}).max_position_share == 0.3
    try:
        FilterConfig.from_dict({"max_positon_share": 0.3})
    except ValueError as e:
        assert "max_positon_share" in str(e)
    else:
        raise AssertionError("a misspelt threshold must not pass silently")


def test_exact_and_near_duplicates_on_the_same_audio_are_rejected():
    rows = [
        row("s1", "What is the approximate pitch of the steady tone heard in this short recording?"),
        row("s2", "what is the approximate PITCH of the steady tone heard in this short recording"),  # exact
        row("s3", "Overall, what is the approximate pitch of the steady tone heard in this short recording?"),  # 13/14
        row("s4", "What is the approximate pitch of the steady tone heard in this short recording?", audio="c" * 64),
        row("s5", "How long does the clip last?"),
    ]
    kept, rejects = dedupe(rows, FilterConfig())
    assert [r["sample_id"] for r in kept] == ["s1", "s4", "s5"]
    assert {(r.sample_id, r.reason, r.stage) for r in rejects} == {
        ("s2", "duplicate_question", "filter"), ("s3", "near_duplicate_question", "filter")}


def test_rebalancing_spreads_an_over_represented_position_deterministically():
    rows = [row(f"s{i:02d}", f"question number {i}", answer_index=0 if i < 12 else 1 + i % 3) for i in range(20)]
    assert position_counts(rows) == {"A": 12, "B": 3, "C": 3, "D": 2}
    out, report = rebalance_positions(rows, max_share=0.4)
    assert report["before"]["A"] == 12 and max(report["after"].values()) <= 5 and report["moved"] == 7
    assert position_counts(out) == report["after"]
    again, _ = rebalance_positions(list(reversed(rows)), max_share=0.4)
    assert sorted((r["sample_id"], r["answer_index"]) for r in again) == sorted((r["sample_id"], r["answer_index"]) for r in out)
    for r in out:
        assert r["choices"][r["answer_index"]] == r["answer"]
    untouched, rep = rebalance_positions(out, max_share=0.4)
    assert rep["moved"] == 0 and untouched == out


def test_moving_an_answer_keeps_answers_messages_and_hash_consistent():
    r = row("s1", "What is the pitch?", answer_index=0)
    moved = move_answer(r, 2)
    assert moved["choices"] == ["y", "x", "w", "z"] and moved["answer_index"] == 2 and moved["answer"] == "w"
    assert moved["answers"][0]["answer_index"] == 2 and moved["answers"][1]["answer_index"] is None
    assert moved["messages"][0]["content"] == user_message("What is the pitch?", ["y", "x", "w", "z"])
    assert moved["messages"][1]["content"] == "(C) w"
    assert r["answer_index"] == 0  # the input row is not modified
    assert Counter(c["name"] for c in moved["checks"]) == {"position_rebalanced": 1}
