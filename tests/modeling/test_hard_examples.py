"""Our own model in the loop: rows record whether it answered right (`model_correct`), and the
sampler draws the rows it got wrong more often (`train.hard_example_weight`), deterministically and
resumably."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from dataflux.loop import LoopConfig, build_reference_steps, model_correct, run_clip
from dataflux.steps.base import Answer, Call
from modeling.data import BucketBatchSampler, VersionIndex, build_loader, version_shard_paths
from tests.helpers.hand_clips import CATS, TAX, TRUE, make_clip

WRONG, RIGHT, UNASKED = range(0, 20), range(20, 90), range(90, 100)


def _index(categories: list[str], correct: list[bool | None] | None) -> VersionIndex:
    n = len(categories)
    return VersionIndex(paths=["a.parquet", "b.parquet"], shard=np.arange(n) % 2, row=np.arange(n) // 2,
                        sample_id=np.array([f"s{i}" for i in range(n)], dtype=object),
                        split=np.array(["train"] * n, dtype=object), duration_s=np.linspace(1, 3, n),
                        l3=np.array(categories, dtype=object),
                        model_correct=None if correct is None else np.array(correct, dtype=object))


CORRECT = [False] * 20 + [True] * 70 + [None] * 10


def _draws(sampler: BucketBatchSampler, epoch: int = 0) -> np.ndarray:
    return np.bincount(np.concatenate(sampler.plan(epoch)), minlength=100)


def test_rows_our_model_got_wrong_are_drawn_that_many_times_as_often():
    index = _index(["a"] * 100, CORRECT)
    hard = BucketBatchSampler(index, index.rows_of("train"), 10, seed=2, hard_example_weight=3.0)
    counts = _draws(hard)
    assert counts.sum() == 100  # the epoch keeps its length
    # expected 3 * 100 / 140 = 2.14 draws per wrong row and 0.71 per other row (right or not asked)
    assert set(counts[list(WRONG)].tolist()) <= {2, 3} and set(counts[20:].tolist()) <= {0, 1}
    assert abs(int(counts[list(WRONG)].sum()) - 43) <= 1
    ratio = counts[list(WRONG)].mean() / counts[20:].mean()
    assert 2.5 < ratio < 3.6
    # deterministic from (seed, epoch), and a new draw of the easy rows each epoch
    again = BucketBatchSampler(index, index.rows_of("train"), 10, seed=2, hard_example_weight=3.0)
    assert [b.tolist() for b in again.plan(1)] == [b.tolist() for b in hard.plan(1)]
    assert (_draws(hard, 1)[20:] != counts[20:]).any()
    # weight 1, or a version our model never answered, is the plain sampler
    plain = BucketBatchSampler(index, index.rows_of("train"), 10, seed=2)
    for same in (BucketBatchSampler(index, index.rows_of("train"), 10, seed=2, hard_example_weight=1.0),
                 BucketBatchSampler(_index(["a"] * 100, None), np.arange(100), 10, seed=2, hard_example_weight=3.0)):
        assert [b.tolist() for b in same.plan(0)] == [b.tolist() for b in plain.plan(0)]
    assert (_draws(plain) == 1).all()
    with pytest.raises(ValueError, match="hard_example_weight must be > 0"):
        BucketBatchSampler(index, index.rows_of("train"), 10, hard_example_weight=0)


def test_hard_examples_are_weighted_inside_each_categorys_share():
    cats = ["a"] * 50 + ["b"] * 50
    correct = [False] * 10 + [True] * 40 + [True] * 50
    index = _index(cats, correct)
    sampler = BucketBatchSampler(index, index.rows_of("train"), 10, seed=5, category_weights={"a": 1.0, "b": 1.0},
                                 hard_example_weight=5.0)
    drawn = np.concatenate(sampler.plan(0))
    assert int((index.l3[drawn] == "a").sum()) == 50 and int((index.l3[drawn] == "b").sum()) == 50
    counts = np.bincount(drawn, minlength=100)
    # inside "a": 5 * 50 / 90 = 2.8 draws per wrong row, 0.56 per right one; "b" has no wrong rows
    assert counts[:10].min() >= 2 and counts[10:50].max() <= 1 and (counts[50:] == 1).all()


@pytest.fixture(scope="module")
def graded_version(tmp_path_factory):
    """A finalized tone version whose rows say whether our model got them right: every third wrong."""
    from dataflux.storage.catalog import Catalog
    from dataflux.storage.row_schema import row_content_sha256
    from dataflux.storage.shards import shard_path, write_shard
    from modeling.synthetic_version import tone_rows

    root = tmp_path_factory.mktemp("graded")
    catalog = Catalog(root / "catalog.duckdb")
    vid = catalog.create_version("graded")
    rows = tone_rows(36, seed=3, min_seconds=0.2, max_seconds=0.6)
    for i, row in enumerate(rows):
        row["model_correct"] = i % 3 != 0
        row["row_sha256"] = row_content_sha256(row)
    for s in range(2):
        info = write_shard(rows[s::2], shard_path(str(root / "shards"), vid, f"part-{s}"))
        catalog.commit_partition(vid, f"part-{s}", info, rejects=[], items=[], run_id=None)
    catalog.finalize(vid)
    return VersionIndex.build(version_shard_paths(vid, root / "catalog.duckdb"))


def test_model_correct_is_read_from_the_shards_and_a_weighted_loader_resumes_exactly(graded_version):
    from modeling.processor import EurekaAudioProcessor
    from modeling.tokenizer import train_small_tokenizer
    from modeling.data import read_texts

    index = graded_version
    assert index.model_correct is not None and set(index.model_correct.tolist()) == {True, False}
    processor = EurekaAudioProcessor(train_small_tokenizer(read_texts(index), vocab_size=300), n_mels=80)

    def loader():
        return build_loader(index, processor, "train", batch_size=4, seed=11, hard_example_weight=4.0)

    reference = [b["sample_id"] for _, b in zip(range(14), loader())]
    first = loader()
    it = iter(first)
    for _ in range(9):
        next(it)
    resumed = loader()
    resumed.load_state_dict(first.state_dict())
    assert [b["sample_id"] for _, b in zip(range(5), resumed)] == reference[9:14]
    wrong = {sid for sid, ok in zip(index.sample_id, index.model_correct) if ok is False}
    drawn = [sid for batch in reference for sid in batch]
    assert sum(sid in wrong for sid in drawn) / len(drawn) > 0.5  # a third of the rows, most of the draws


def _answer(backend: str, index: int | None) -> Answer:
    return Answer("x", True, "", index, None, Call("answer", backend, "m"))


def test_model_correct_is_our_local_answerers_verdict_on_the_final_answer():
    assert model_correct([_answer("reference", 1), _answer("reference", 2)], 1) is None
    assert model_correct([_answer("reference", 1), _answer("local", 1)], 1) is True
    assert model_correct([_answer("reference", 1), _answer("local", 3)], 1) is False
    assert model_correct([_answer("local", None)], 1) is False  # no option named: wrong


def test_rows_record_whether_a_trained_checkpoint_answered_right(tiny_checkpoint):
    """A real (untrained) checkpoint answers beside the reference answerers; every kept row says
    whether it picked the row's answer, and rows without it say None."""
    from dataflux.llm.local import LocalCheckpointAnswerer

    steps = build_reference_steps(TAX)
    steps.answerers.append(LocalCheckpointAnswerer("ours", tiny_checkpoint, max_new_tokens=6))
    rows, rejects = asyncio.run(run_clip(make_clip(dict(TRUE)), CATS, steps, LoopConfig()))
    assert rows and not rejects
    for r in rows:
        ours = [a for a in r["answers"] if a["answerer"] == "ours"]
        assert len(ours) == 1 and isinstance(r["model_correct"], bool)
        assert r["model_correct"] == (ours[0]["answer_index"] == r["answer_index"])
    plain, _ = asyncio.run(run_clip(make_clip(dict(TRUE)), CATS, build_reference_steps(TAX), LoopConfig()))
    assert all(r["model_correct"] is None for r in plain)
