"""The synthesized demo corpus: deterministic, partitionable, labelled only with taxonomy values,
and carrying planted errors at the requested rate."""

from __future__ import annotations

import io
import json
from collections import Counter

import soundfile as sf

from dataflux.audio.vocabulary import leaf_values, value_number
from dataflux.sources.demo import (
    KIND_LEAVES,
    LICENSE,
    demo_item,
    espeak_available,
    iter_demo_items,
    plan_demo_item,
    write_demo_folder,
)


def test_same_seed_gives_the_same_bytes_and_another_seed_does_not():
    a = [(i.source_id, i.audio_bytes, i.labels, i.meta) for i in iter_demo_items(12, seed=4)]
    b = [(i.source_id, i.audio_bytes, i.labels, i.meta) for i in iter_demo_items(12, seed=4)]
    c = [i.audio_bytes for i in iter_demo_items(12, seed=5)]
    assert a == b
    assert sum(x[1] == y for x, y in zip(a, c)) == 0


def test_partitions_are_disjoint_and_their_union_is_the_corpus():
    whole = {i.source_id: i.audio_bytes for i in iter_demo_items(15, seed=2)}
    parts = [list(iter_demo_items(15, seed=2, partition=p, n_partitions=4)) for p in range(4)]
    ids = [i.source_id for part in parts for i in part]
    assert len(ids) == len(set(ids)) == 15
    assert {i.source_id: i.audio_bytes for part in parts for i in part} == whole


def test_an_item_does_not_depend_on_corpus_size_or_partitioning():
    item = demo_item(7, seed=9, error_rate=0.2)
    in_big = next(i for i in iter_demo_items(20, seed=9, error_rate=0.2, partition=1, n_partitions=3)
                  if i.source_id == "demo-000007")
    assert in_big.audio_bytes == item.audio_bytes and in_big.labels == item.labels


def test_items_are_16bit_wavs_at_varied_rates_with_taxonomy_labels():
    rates, kinds = Counter(), Counter()
    for item in iter_demo_items(40, seed=1, error_rate=0.0):
        info = sf.info(io.BytesIO(item.audio_bytes))
        assert info.format == "WAV" and info.subtype == "PCM_16" and info.channels == 1
        rates[info.samplerate] += 1
        kind = item.meta["kind"]
        kinds[kind] += 1
        assert item.source == "demo" and item.license == LICENSE and item.audio_path is None
        assert item.source_id.startswith("demo-") and len(item.source_id) == 11
        leaf_labels = {k: v for k, v in item.labels.items() if k not in ("transcript", "speaker")}
        assert set(leaf_labels) == set(KIND_LEAVES[kind])
        for leaf, value in leaf_labels.items():
            assert value in leaf_values(leaf)
        assert item.labels == item.meta["truth"] and item.meta["planted"] is None
        if kind == "speech":
            assert item.labels["transcript"] and item.labels["speaker"].startswith("espeak-ng:")
    assert set(rates) == {16000, 22050, 44100}
    expected = {"tone", "beeps", "clicks", "noise"} | ({"speech"} if espeak_available() else set())
    assert set(kinds) == expected


def test_planted_error_rate_is_close_to_the_requested_rate():
    n = 4000
    plans = [plan_demo_item(i, seed=0, error_rate=0.1, with_speech=True) for i in range(n)]
    planted = [p for p in plans if p["planted"]]
    assert abs(len(planted) / n - 0.1) < 0.015  # binomial sd is 0.005
    for p in planted:
        e = p["planted"]
        assert e["claimed"] != e["true"] and e["claimed"] in leaf_values(e["leaf"])
        assert p["labels"][e["leaf"]] == e["claimed"] and p["truth"][e["leaf"]] == e["true"]
        others = {k: v for k, v in p["labels"].items() if k != e["leaf"]}
        assert all(p["truth"][k] == v for k, v in others.items())  # exactly one wrong label
    assert Counter(p["planted"]["leaf"] for p in planted).keys() == \
        {leaf for leaves in KIND_LEAVES.values() for leaf in leaves}
    assert not any(p["planted"] for p in (plan_demo_item(i, 0, 0.0) for i in range(500)))


def test_planted_items_carry_the_wrong_label_in_the_synthesized_item():
    items = [i for i in iter_demo_items(30, seed=3, error_rate=0.5) if i.meta["planted"]]
    assert 8 <= len(items) <= 22
    for item in items:
        p = item.meta["planted"]
        assert item.labels[p["leaf"]] == p["claimed"] != item.meta["truth"][p["leaf"]]


def test_write_demo_folder_writes_wavs_and_a_manifest(tmp_path):
    manifest = write_demo_folder(tmp_path / "demo", size=6, seed=0, error_rate=0.5)
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [r["source_id"] for r in lines] == [f"demo-{i:06d}" for i in range(6)]
    for row, item in zip(lines, iter_demo_items(6, seed=0, error_rate=0.5)):
        assert (tmp_path / "demo" / row["path"]).read_bytes() == item.audio_bytes
        assert row["labels"] == item.labels and row["meta"]["planted"] == item.meta["planted"]


def test_a_beep_clips_length_does_not_give_away_its_count():
    """The count has to be heard: every beep clip spans the same window whatever its count, so a
    model cannot answer beep-count questions from the number of audio tokens."""
    from dataflux.sources.demo import BEEP_WINDOW_S

    lengths: dict[int, list[float]] = {}
    for item in iter_demo_items(240, seed=6, error_rate=0.0):
        if item.meta["kind"] != "beeps":
            continue
        info = sf.info(io.BytesIO(item.audio_bytes))
        count = int(value_number("beep_count", item.labels["beep_count"]))
        lengths.setdefault(count, []).append(info.frames / info.samplerate)
    assert set(lengths) == {1, 2, 3, 4}, {k: len(v) for k, v in lengths.items()}
    lo, hi = BEEP_WINDOW_S
    for count, secs in lengths.items():
        assert all(lo - 0.01 <= s <= hi + 0.01 for s in secs), (count, min(secs), max(secs))
    # the mean length of the 1-beep clips is within a tenth of a second of the 4-beep clips'
    mean = {k: sum(v) / len(v) for k, v in lengths.items()}
    assert abs(mean[1] - mean[4]) < 0.1, mean
