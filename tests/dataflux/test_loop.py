"""The per-clip closed loop on hand-made clips and on a few real demo clips."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections import Counter

import pyarrow as pa
import pytest

from dataflux.loop import LoopConfig, LoopStats, build_reference_steps, run_clip, split_for
from dataflux.records import Clip
from dataflux.storage.row_schema import SAMPLE_SCHEMA, row_content_sha256
from tests.helpers.hand_clips import CATS, TAX, TRUE, make_clip


def run(clip: Clip, cfg: LoopConfig | None = None, stats: LoopStats | None = None, cats=CATS):
    return asyncio.run(run_clip(clip, cats, build_reference_steps(TAX), cfg or LoopConfig(questions_per_category=2), stats))


def asserts(rows: list[dict], leaf: str, value: str) -> bool:
    """Does any row state `value` for `leaf` (as caption claim, caption text or answer key)?"""
    return any(json.loads(r["caption_claims"]).get(leaf) == value or value in r["caption"]
               or (r["l3"] == leaf and r["answer"] == value) for r in rows)


def test_a_clean_clip_keeps_its_questions_as_contract_rows():
    stats = LoopStats()
    rows, rejects = run(make_clip(dict(TRUE)), stats=stats)
    assert rejects == []
    assert Counter(r["l3"] for r in rows) == {"tone_pitch": 2, "waveform": 2, "duration": 2, "loudness": 1}
    for r in rows:
        assert r["rounds"] == 1 and not r["corrected_from_measurement"]
        assert r["verdict"]["final_action"] == "KEEP_USING_WINNER" and r["verdict"]["consistency_with_caption"] == "STRONG_MATCH"
        assert r["answer"] == TRUE[r["l3"]] == r["choices"][r["answer_index"]]
        assert r["winner"] == "measure" and "Measured from the audio" in r["reasoning"]
        assert all(c["passed"] for c in r["checks"])
        assert r["messages"][0]["content"].startswith("<audio>\n" + r["question"] + "\n(A) ")
        assert r["messages"][1]["content"] == f"({'ABCD'[r['answer_index']]}) {r['answer']}"
        assert r["sample_id"].startswith(r["audio_sha256"][:16] + "-" + r["l3"] + "-")
        assert r["split"] == split_for(r["audio_sha256"]) and r["sampling_rate"] == 16000
        assert [c["step"] for c in r["calls"]][:2] == ["caption", "generate"]
        assert {c["model"] for c in r["calls"]} >= {"reference-captioner@1", "reference-writer@1",
                                                   "reference-measure@1", "reference-judge@1"}
    # the untouched leaves of other kinds of sound are counted as not applicable, not rejected
    assert stats.counts["not_applicable"] == len(CATS) - 4 and stats.counts["rows"] == 7
    # rows fit the storage contract once the pipeline fills run_id, code_version and row_sha256
    for r in rows:
        r.update(run_id="run", code_version="test", row_sha256=row_content_sha256(r))
    table = pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA)
    assert table.num_rows == 7 and table.column("audio").type == SAMPLE_SCHEMA.field("audio").type


def test_a_wrong_claimed_pitch_is_corrected_from_the_measurement():
    stats = LoopStats()
    rows, rejects = run(make_clip({**TRUE, "tone_pitch": "220 Hz"}), stats=stats)
    assert rejects == []
    assert not asserts(rows, "tone_pitch", "220 Hz")
    pitch = [r for r in rows if r["l3"] == "tone_pitch"]
    assert len(pitch) == 2 and all(r["answer"] == "440 Hz" and r["rounds"] == 2 for r in pitch)
    assert all(r["corrected_from_measurement"] for r in rows)
    assert json.loads(rows[0]["caption_claims"])["tone_pitch"] == "440 Hz" and "440 Hz" in rows[0]["caption"]
    # provenance shows the regeneration: two caption calls and two generate calls for the pitch rows
    # (answers: two answerers in each of two rounds, then the kept question asked once without its audio)
    assert Counter(c["step"] for c in pitch[0]["calls"]) == {"caption": 2, "generate": 2, "answer": 5, "judge": 2}
    assert stats.counts["recaptions"] == 1


def test_under_the_discard_policy_the_wrong_claim_is_dropped_and_its_questions_rejected():
    rows, rejects = run(make_clip({**TRUE, "tone_pitch": "220 Hz"}),
                        LoopConfig(questions_per_category=2, on_conflict="discard"))
    assert not asserts(rows, "tone_pitch", "220 Hz") and not asserts(rows, "tone_pitch", "440 Hz")
    assert {r["l3"] for r in rows} == {"waveform", "duration", "loudness"}
    assert not any(r["corrected_from_measurement"] for r in rows)
    assert [(r.stage, r.reason, r.extra["leaf"]) for r in rejects] == [("verify", "judge_discard", "tone_pitch")] * 2
    assert 'measured tone_pitch = "440 Hz"' in rejects[0].detail and rejects[0].sample_id.endswith("-tone_pitch-0")


def test_a_wrong_claim_about_an_unasked_leaf_is_still_corrected_in_the_caption():
    cats = [c for c in CATS if c.id != "duration"]
    rows, _ = run(make_clip({**TRUE, "duration": "4 seconds"}), cats=cats)
    assert rows and not asserts(rows, "duration", "4 seconds")
    assert all(r["corrected_from_measurement"] and "2 seconds" in r["caption"] for r in rows)


def test_a_claim_that_cannot_be_measured_is_not_kept_on_the_caption_alone():
    rows, rejects = run(make_clip({**TRUE, "tone_pitch": "220 Hz"}, facts={**TRUE, "tone_pitch": None}))
    assert "tone_pitch" not in {r["l3"] for r in rows}
    assert {(r.reason, r.extra["leaf"]) for r in rejects} == {("judge_discard", "tone_pitch")}
    assert all(r.extra["rounds"] == 2 for r in rejects)  # it was given a second round with feedback first


def test_a_question_failing_a_check_is_rejected_with_the_check_name():
    bad = dataclasses.replace(TAX.leaf("waveform"), question_templates=["According to the caption, which waveform is it?"])
    rows, rejects = run(make_clip(dict(TRUE)), cats=[bad])
    assert rows == []
    assert [r.reason for r in rejects] == ["check_failed:no_forbidden_phrase"]


def test_answer_positions_are_spread_across_clips():
    counts: Counter = Counter()
    for i in range(60):
        rows, _ = run(make_clip(dict(TRUE), key=f"clip-{i}"), LoopConfig(questions_per_category=1))
        counts.update(r["answer_index"] for r in rows)
    assert sum(counts.values()) == 240 and set(counts) == {0, 1, 2, 3}
    assert max(counts.values()) / 240 < 0.35 and min(counts.values()) / 240 > 0.15


def test_same_input_gives_the_same_rows_and_a_different_seed_reorders_choices():
    clip = make_clip({**TRUE, "tone_pitch": "880 Hz"})
    a, ra = run(clip)
    b, rb = run(clip)
    assert [row_content_sha256(r) for r in a] == [row_content_sha256(r) for r in b] and ra == rb
    c, _ = run(clip, LoopConfig(questions_per_category=2, seed=1))
    assert [r["sample_id"] for r in c] == [r["sample_id"] for r in a]
    assert [r["choices"] for r in c] != [r["choices"] for r in a]


def test_loop_config_rejects_an_unknown_conflict_policy():
    with pytest.raises(ValueError, match="on_conflict"):
        LoopConfig(on_conflict="ignore")


def test_demo_clips_planted_errors_are_caught_and_clean_clips_keep_rows():
    from dataflux.audio.analyze import analyze_item
    from dataflux.sources.demo import iter_demo_items

    ids = [c.id for c in CATS]
    planted = caught = clean = clean_without_rows = 0
    for item in iter_demo_items(40, seed=3, error_rate=0.3):
        clip = analyze_item(item, ids)
        rows, _ = run(clip, LoopConfig())
        p = item.meta.get("planted")
        if p:
            planted += 1
            caught += not asserts(rows, p["leaf"], p["claimed"])
        else:
            clean += 1
            clean_without_rows += not rows
    assert planted >= 5 and caught == planted
    assert clean >= 20 and clean_without_rows == 0


def test_with_verification_off_the_first_questions_are_kept_as_written():
    stats = LoopStats()
    clip = make_clip({**TRUE, "tone_pitch": "220 Hz"})  # the measurement says 440 Hz
    rows, rejects = run(clip, LoopConfig(questions_per_category=2, verify=False), stats=stats)
    verified, _ = run(clip, LoopConfig(questions_per_category=2))
    assert rejects == [] and asserts(rows, "tone_pitch", "220 Hz")
    pitch = [r for r in rows if r["l3"] == "tone_pitch"]
    assert len(pitch) == 2 and all(r["answer"] == "220 Hz" for r in pitch)
    for r in rows:
        assert r["rounds"] == 1 and not r["corrected_from_measurement"] and r["answers"] == []
        assert r["verdict"]["final_action"] == "UNVERIFIED" and r["model_correct"] is None
        assert [c["name"] for c in r["checks"]] == ["schema", "answer_in_options", "distinct_options"]
        assert Counter(c["step"] for c in r["calls"]) == {"caption": 1, "generate": 1}
    # the same clips, categories and first questions as the verified rows of the clean leaves
    clean = lambda rs: [(r["sample_id"], r["question"], r["choices"], r["answer"]) for r in rs if r["l3"] != "tone_pitch"]
    assert clean(rows) == clean(verified)
    assert stats.counts["rows"] == len(rows) and "recaptions" not in stats.counts
