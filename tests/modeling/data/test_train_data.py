"""Reading a version for training: only finalized, untampered versions; recorded splits; deterministic
length-bucketed batches; an exact data position to resume from; packing."""

import numpy as np
import pytest
import torch

from dataflux.storage.catalog import VersionNotFinalized
from dataflux.storage.shards import ChecksumMismatch
from modeling.data import BucketBatchSampler, Collator, VersionIndex, build_loader, version_shard_paths
from modeling.processor import EurekaAudioProcessor
from modeling.synthetic_version import write_tone_version
from modeling.tokenizer import train_small_tokenizer


@pytest.fixture(scope="module")
def version(tmp_path_factory):
    root = tmp_path_factory.mktemp("catalog")
    catalog = root / "catalog.duckdb"
    vid = write_tone_version(catalog, root / "shards", n_clips=40, n_shards=3, min_seconds=0.2, max_seconds=1.2)
    return catalog, vid


@pytest.fixture(scope="module")
def index(version):
    catalog, vid = version
    return VersionIndex.build(version_shard_paths(vid, catalog))


@pytest.fixture(scope="module")
def processor(index):
    from modeling.data import read_texts

    return EurekaAudioProcessor(train_small_tokenizer(read_texts(index), vocab_size=300), n_mels=80)


def test_a_draft_version_is_refused(tmp_path):
    catalog = tmp_path / "catalog.duckdb"
    draft = write_tone_version(catalog, tmp_path / "shards", n_clips=5, n_shards=1, finalize=False)
    with pytest.raises(VersionNotFinalized, match="draft"):
        version_shard_paths(draft, catalog)


def test_a_tampered_shard_is_refused(tmp_path):
    catalog = tmp_path / "catalog.duckdb"
    vid = write_tone_version(catalog, tmp_path / "shards", n_clips=5, n_shards=1)
    path = version_shard_paths(vid, catalog)[0]
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.raises(ChecksumMismatch):
        version_shard_paths(vid, catalog)


def test_index_keeps_the_recorded_splits(index):
    assert len(index) == 40
    counts = {s: len(index.rows_of(s)) for s in ("train", "validation", "test")}
    assert counts == {"train": 24, "validation": 8, "test": 8}
    loader = build_loader(index, None, "train", batch_size=5, shuffle=True, max_epochs=1)
    seen = np.concatenate(loader.sampler.plan(0))
    assert sorted(seen.tolist()) == sorted(index.rows_of("train").tolist())  # every train row once, nothing else


def test_sampler_is_deterministic_per_seed_and_epoch(index):
    def plan(seed, epoch):
        s = BucketBatchSampler(index, index.rows_of("train"), 4, seed=seed, shards_per_window=2)
        return [b.tolist() for b in s.plan(epoch)]

    assert plan(0, 0) == plan(0, 0)
    assert plan(0, 0) != plan(0, 1)
    assert plan(0, 0) != plan(1, 0)


def test_batches_hold_clips_of_similar_length(index):
    sampler = BucketBatchSampler(index, index.rows_of("train"), 4, seed=0, shards_per_window=3, pool_batches=16)
    durations = index.duration_s
    ordered = np.sort(durations[index.rows_of("train")])
    for batch in sampler.plan(0):
        d = np.sort(durations[batch])
        start = int(np.searchsorted(ordered, d[0]))
        assert np.allclose(ordered[start : start + len(d)], d)  # a contiguous run of the sorted lengths


def test_max_batch_seconds_caps_audio_per_batch(index):
    sampler = BucketBatchSampler(index, index.rows_of("train"), 8, seed=0, max_batch_seconds=2.0)
    plan = sampler.plan(0)
    assert all(index.duration_s[b].sum() <= 2.0 or len(b) == 1 for b in plan)
    assert sum(len(b) for b in plan) == 24


def test_ranks_share_an_epoch_without_overlap(index):
    plans = [BucketBatchSampler(index, index.rows_of("train"), 2, seed=3, rank=r, world_size=2).plan(0)
             for r in (0, 1)]
    a, b = (set(np.concatenate(p).tolist()) for p in plans)
    assert len(plans[0]) == len(plans[1])
    assert not a & b


@pytest.mark.parametrize("prefetch", [0, 2])
def test_resumed_loader_continues_with_the_next_batch_across_epochs(index, processor, prefetch):
    def loader():
        return build_loader(index, processor, "train", batch_size=5, seed=7, prefetch=prefetch)

    reference = []
    for batch in loader():
        reference.append(batch["sample_id"])
        if len(reference) == 12:  # 5 batches per epoch: crosses two epoch boundaries
            break
    first = loader()
    it = iter(first)
    for _ in range(7):
        next(it)
    state = first.state_dict()
    assert state["epoch"] == 1 and state["batches_done"] == 2
    resumed = loader()
    resumed.load_state_dict(state)
    rest = [b["sample_id"] for _, b in zip(range(5), resumed)]
    assert rest == reference[7:12]


def test_collated_batch_has_features_tokens_and_assistant_labels(index, processor):
    loader = build_loader(index, processor, "test", batch_size=4, shuffle=False)
    batch = next(iter(loader))
    assert batch["input_features"].shape[:2] == (4, 80)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    labelled = batch["labels"][0][batch["labels"][0] != -100]
    assert processor.tokenizer.decode(labelled).endswith("Hz<|im_end|>")
    pad = processor.audio_ids["audio_pad_token_id"]
    expected = [processor.audio_token_count(int(n) * 160) for n in batch["feature_lengths"]]
    assert (batch["input_ids"] == pad).sum(1).tolist() == expected


def test_zero_audio_keeps_the_token_count_but_silences_the_clip(index, processor):
    rows = build_loader(index, processor, "test", batch_size=2, shuffle=False).reader.rows(index.rows_of("test")[:2])
    loud = Collator(processor)(rows)
    silent = Collator(processor, zero_audio=True)(rows)
    assert torch.equal(loud["input_ids"], silent["input_ids"])
    assert torch.equal(loud["feature_lengths"], silent["feature_lengths"])
    for i, n in enumerate(silent["feature_lengths"].tolist()):
        assert silent["input_features"][i, :, :n].std() < 1e-6 < loud["input_features"][i, :, :n].std()


def test_cached_examples_equal_fresh_ones_and_are_reused_across_epochs(index, processor):
    fresh = build_loader(index, processor, "train", batch_size=5, shuffle=True, max_epochs=2)
    cached = build_loader(index, processor, "train", batch_size=5, shuffle=True, max_epochs=2, cache_mb=64)
    n = 0
    for a, b in zip(fresh, cached):
        assert a["sample_id"] == b["sample_id"]
        for key in ("input_ids", "labels", "attention_mask", "feature_lengths"):
            assert torch.equal(a[key], b[key]), key
        assert a["input_features"].shape == b["input_features"].shape
        assert torch.allclose(a["input_features"], b["input_features"], atol=1e-6)
        n += len(b["sample_id"])
    cache = cached.collator.cache
    rows = len(index.rows_of("train"))
    assert n == 2 * rows
    # one entry per clip, shared by the clip's rows; the second epoch is served from memory
    assert cache.misses == len(cache._items) and cache.hits == 2 * rows - cache.misses
    assert len(cache._tokens) == rows


def test_rows_of_one_clip_share_one_cached_feature_entry(index, processor):
    from modeling.data import RowReader

    row = next(iter(RowReader(index).rows(index.rows_of("train")[:1])))
    # a second task row of the same clip: another sample_id and other words, the same audio
    twin = {**row, "sample_id": row["sample_id"] + "-asr", "task": "asr",
            "messages": [{"role": "user", "content": "<audio> Transcribe the speech."},
                         {"role": "assistant", "content": "tone"}]}
    collate = Collator(processor, cache_mb=64)
    batch = collate([row, twin])
    assert collate.cache.misses == 1 and collate.cache.hits == 1 and len(collate.cache._items) == 1
    assert torch.equal(batch["input_features"][0], batch["input_features"][1])
    assert not torch.equal(batch["input_ids"][0], batch["input_ids"][1])  # each row keeps its own tokens
    fresh = Collator(processor)([row, twin])
    for key in ("input_ids", "labels", "feature_lengths"):
        assert torch.equal(batch[key], fresh[key]), key


def test_example_cache_stays_within_its_size(index, processor):
    loader = build_loader(index, processor, "train", batch_size=5, shuffle=False, max_epochs=1, cache_mb=0.05)
    for _ in loader:
        pass
    cache = loader.collator.cache
    assert 0 < cache.bytes <= cache.max_bytes
    assert len(cache._items) < len(index.rows_of("train"))


def test_packed_rows_give_the_same_loss_as_padded_rows(index, processor):
    from modeling.configuration import EurekaAudioConfig
    from modeling.model import EurekaAudioForCausalLM

    torch.manual_seed(0)
    config = EurekaAudioConfig(
        encoder_config=dict(d_model=32, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64,
                            num_mel_bins=80, decoder_attention_heads=2, decoder_ffn_dim=64, decoder_layers=1),
        llm_config=dict(model_type="qwen3", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        num_key_value_heads=1, head_dim=16, intermediate_size=64, vocab_size=len(processor.tokenizer)),
        n_experts=4, expert_hidden=32, **processor.audio_ids)
    model = EurekaAudioForCausalLM(config).eval()
    rows = build_loader(index, processor, "train", batch_size=6).reader.rows(index.rows_of("train")[:6])
    padded = Collator(processor)(rows)
    packed = Collator(processor, pack_tokens=4 * padded["input_ids"].shape[1])(rows)
    assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0]
    assert "attention_mask" not in packed and int(packed["position_ids"][0, 0]) == 0
    tensors = lambda b: {k: v for k, v in b.items() if isinstance(v, torch.Tensor)}  # noqa: E731
    with torch.no_grad():
        a = model(**tensors(padded)).lm_loss
        b = model(**tensors(packed)).lm_loss
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _index_of(categories: list[str]) -> VersionIndex:
    n = len(categories)
    return VersionIndex(paths=["a.parquet", "b.parquet"], shard=np.arange(n) % 2, row=np.arange(n) // 2,
                        sample_id=np.array([f"s{i}" for i in range(n)], dtype=object),
                        split=np.array(["train"] * n, dtype=object), duration_s=np.linspace(1, 3, n),
                        l3=np.array(categories, dtype=object))


def test_balanced_sampling_gives_rare_categories_an_equal_share_and_uses_every_row():
    index = _index_of(["common"] * 90 + ["rare"] * 10)
    plain = BucketBatchSampler(index, index.rows_of("train"), 10, seed=1)
    balanced = BucketBatchSampler(index, index.rows_of("train"), 10, seed=1, balance_categories=1.0)
    for sampler, rare_share in ((plain, 10), (balanced, 50)):
        drawn = np.concatenate(sampler.plan(0))
        assert len(drawn) == 100
        assert int((index.l3[drawn] == "rare").sum()) == rare_share
    drawn = np.concatenate(balanced.plan(0))
    rare = drawn[index.l3[drawn] == "rare"]
    assert sorted(set(rare.tolist())) == list(range(90, 100))  # every rare row, each 5 times
    assert np.bincount(rare - 90).tolist() == [5] * 10
    assert [b.tolist() for b in balanced.plan(0)] == [b.tolist() for b in BucketBatchSampler(
        index, index.rows_of("train"), 10, seed=1, balance_categories=1.0).plan(0)]  # deterministic
    with pytest.raises(ValueError, match="balance_categories"):
        BucketBatchSampler(index, index.rows_of("train"), 10, balance_categories=2.0)


def test_category_weights_scale_a_categorys_share_and_reject_unknown_names():
    index = _index_of(["a"] * 50 + ["b"] * 30 + ["c"] * 20)
    weighted = BucketBatchSampler(index, index.rows_of("train"), 10, seed=3, category_weights={"c": 4.0, "a": 0.5})
    counts = {}
    for epoch in (0, 1):
        drawn = np.concatenate(weighted.plan(epoch))
        assert len(drawn) == 100
        names, n = np.unique(index.l3[drawn], return_counts=True)
        counts[epoch] = dict(zip(names.tolist(), n.tolist()))
        # shares 50*0.5 : 30 : 20*4 = 25 : 30 : 80 of the 100 rows (floors, the remainder topped up)
        assert abs(counts[epoch]["c"] - 59) <= 1 and abs(counts[epoch]["a"] - 18) <= 1
        a_rows = drawn[index.l3[drawn] == "a"]
        assert len(set(a_rows.tolist())) == len(a_rows)  # a category under its row count: no repeats
    # an under-weighted category gets a fresh subset each epoch, so every row is seen over epochs
    seen = set(np.concatenate(weighted.plan(0)).tolist()) | set(np.concatenate(weighted.plan(1)).tolist())
    assert len(seen & set(range(50))) > 18
    again = BucketBatchSampler(index, index.rows_of("train"), 10, seed=3, category_weights={"c": 4.0, "a": 0.5})
    assert [b.tolist() for b in again.plan(1)] == [b.tolist() for b in weighted.plan(1)]
    with pytest.raises(ValueError, match=r"\['z'\].*categories here: \['a', 'b', 'c'\]"):
        BucketBatchSampler(index, index.rows_of("train"), 10, category_weights={"z": 2.0})
    with pytest.raises(ValueError, match="must be > 0"):
        BucketBatchSampler(index, index.rows_of("train"), 10, category_weights={"a": 0})


def test_category_stages_set_the_mix_epoch_by_epoch_then_category_weights_take_over():
    index = _index_of(["a"] * 50 + ["b"] * 30 + ["c"] * 20)
    stages = [{"epochs": 2, "category_weights": {"c": 100.0}}, {"epochs": 1, "category_weights": {"a": 0.01}}]
    sampler = BucketBatchSampler(index, index.rows_of("train"), 10, seed=3, category_stages=stages,
                                 category_weights={"b": 3.0})

    def share(epoch):
        drawn = np.concatenate(sampler.plan(epoch))
        assert len(drawn) == 100  # an epoch keeps its length whatever the mix
        names, n = np.unique(index.l3[drawn], return_counts=True)
        return dict(zip(names.tolist(), n.tolist()))

    for epoch in (0, 1):  # c: 20*100 of 2000+50+30 -> ~96 of 100 rows
        assert share(epoch).get("c", 0) >= 95
    assert share(2).get("a", 0) <= 2 and share(2)["b"] + share(2)["c"] >= 98
    assert abs(share(3)["b"] - 100 * 90 / 160) <= 1  # shares 50 : 30*3 : 20 after the stages
    assert sampler.weights_for(7) == {"b": 3.0}
    again = BucketBatchSampler(index, index.rows_of("train"), 10, seed=3, category_stages=stages,
                               category_weights={"b": 3.0})
    assert [b.tolist() for b in again.plan(1)] == [b.tolist() for b in sampler.plan(1)]  # resumable
    with pytest.raises(ValueError, match=r"category_stages \(epoch 0\) names \['z'\]"):
        BucketBatchSampler(index, index.rows_of("train"), 10, category_stages=[{"epochs": 1, "category_weights": {"z": 1.0}}])
    # a category of the taxonomy these rows lack (a preset on a small version) draws nothing
    lacking = BucketBatchSampler(index, index.rows_of("train"), 10, seed=3,
                                 category_stages=[{"epochs": 1, "category_weights": {"beep_count": 9.0}}])
    assert len(np.concatenate(lacking.plan(0))) == 100
    with pytest.raises(ValueError, match=r"category_stages\[0\].epochs"):
        BucketBatchSampler(index, index.rows_of("train"), 10, category_stages=[{"epochs": 0, "category_weights": {}}])


def test_validation_rows_for_progress_checks_cover_every_category_evenly():
    from modeling.train import stratified_rows

    index = _index_of(["big"] * 80 + ["mid"] * 15 + ["tiny"] * 5)
    rows = stratified_rows(index, "train", 30)
    names, n = np.unique(index.l3[rows], return_counts=True)
    # tiny has 5 rows, so its unused share goes to the others: 12.5 each, rounded
    assert dict(zip(names.tolist(), n.tolist()))["tiny"] == 5
    assert len(rows) == 30 and abs(int(n[0]) - int(n[1])) <= 1
    assert list(rows) == sorted(rows) and len(set(rows.tolist())) == 30
    assert list(stratified_rows(index, "train", 500)) == list(index.rows_of("train"))


def test_permute_options_reletters_the_answer_and_keeps_everything_else():
    from modeling.data import permute_options

    choices = ["180 BPM", "120 BPM", "60 BPM", "90 BPM"]
    messages = [{"role": "system", "content": "Answer with the letter."},
                {"role": "user", "content": "<audio>\nWhat is the tempo?\n(A) 180 BPM\n(B) 120 BPM\n(C) 60 BPM\n(D) 90 BPM"},
                {"role": "assistant", "content": "(D) 90 BPM because the clicks are 0.67 s apart."}]
    seen = set()
    for seed in range(40):
        out = permute_options(messages, choices, 3, np.random.default_rng(seed))
        assert out[0] == messages[0]
        head, *options = out[1]["content"].split("\n(")
        assert head == "<audio>\nWhat is the tempo?"
        lines = ["(" + o for o in options]
        assert [line[:4] for line in lines] == ["(A) ", "(B) ", "(C) ", "(D) "]
        assert sorted(line[4:] for line in lines) == sorted(choices)
        letter = out[2]["content"][1]
        assert lines["ABCD".index(letter)] == f"({letter}) 90 BPM"
        assert out[2]["content"].endswith(") 90 BPM because the clicks are 0.67 s apart.")
        seen.add(tuple(line[4:] for line in lines))
    assert len(seen) > 10  # many of the 24 orders
    assert messages[2]["content"].startswith("(D)")  # the input is not changed in place
    # conversations of any other shape are left alone
    assert permute_options(messages, choices, 2, np.random.default_rng(0)) is None  # answer line not first
    assert permute_options([{"role": "user", "content": "<audio>\nTranscribe the speech."},
                            {"role": "assistant", "content": "hello"}], ["hello"], 0, np.random.default_rng(0)) is None
    assert permute_options(messages, ["180 BPM", "120 BPM", "60 BPM", "45 BPM"], 3, np.random.default_rng(0)) is None


def _answers_and_options(processor, batch):
    """Per example: the labelled answer line and the option lines of its prompt, decoded."""
    out = []
    for ids, labels in zip(batch["input_ids"], batch["labels"]):
        answer = processor.tokenizer.decode(labels[labels != -100]).removesuffix("<|im_end|>")
        text = processor.tokenizer.decode(ids).split("<|im_start|>assistant")[0]
        options = [line.removesuffix("<|im_end|>") for line in text.split("\n") if line[:1] == "(" and line[2:4] == ") "]
        out.append((answer, options))
    return out


def test_shuffled_options_keep_the_answer_true_vary_by_epoch_and_resume_exactly(index, processor):
    def loader(**kw):
        return build_loader(index, processor, "train", batch_size=5, seed=3, shuffle_options=True, max_epochs=3, **kw)

    rows = {r["sample_id"]: r for r in loader().reader.rows(index.rows_of("train"))}
    orders: dict[str, set] = {}
    reference = list(loader())
    for batch in reference:
        for sid, (answer, options) in zip(batch["sample_id"], _answers_and_options(processor, batch)):
            row = rows[sid]
            assert answer in options and answer[4:] == row["choices"][row["answer_index"]]
            assert sorted(o[4:] for o in options) == sorted(row["choices"])
            orders.setdefault(sid, set()).add(tuple(options))
    assert sum(len(v) > 1 for v in orders.values()) > len(orders) // 2  # orders change between epochs
    cached = list(loader(cache_mb=64))
    for a, b in zip(reference, cached):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    first = loader(prefetch=2)
    it = iter(first)
    for _ in range(7):
        next(it)
    resumed = loader()
    resumed.load_state_dict(first.state_dict())
    for a, b in zip(reference[7:], resumed):
        assert torch.equal(a["input_ids"], b["input_ids"])
    # without the option, rows are shown as stored
    plain = next(iter(build_loader(index, processor, "train", batch_size=5, seed=3)))
    for sid, (answer, options) in zip(plain["sample_id"], _answers_and_options(processor, plain)):
        row = rows[sid]
        assert [o[4:] for o in options] == list(row["choices"])


def test_require_measured_indexes_only_rows_a_measurement_verified(tmp_path):
    from dataflux.storage.example_row import make_example_row, tone_wav_bytes
    from dataflux.storage.shards import write_shard

    rows = [make_example_row(f"clip-{i}", audio_bytes=tone_wav_bytes(200.0 + 50 * i), verification=level)
            for i, level in enumerate(["measured", "metadata-only", "judged", "measured"])]
    path = str(tmp_path / "s.parquet")
    write_shard(rows, path)
    assert len(VersionIndex.build([path])) == 4
    kept = VersionIndex.build([path], require_measured=True)
    assert sorted(kept.sample_id) == sorted(r["sample_id"] for r in rows if r["verification"] == "measured")
    assert list(kept.row) == [0, 3]  # positions in the shard, so the reader fetches the right rows

    old = str(tmp_path / "old.parquet")
    import pyarrow.parquet as pq

    pq.write_table(pq.read_table(path).drop(["verification"]), old)
    with pytest.raises(ValueError, match="require_measured needs rows that record their verification"):
        VersionIndex.build([old], require_measured=True)
