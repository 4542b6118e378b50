"""The DuckDB catalog on a real file with real shards: versions, partition commits, finalize/verify,
the guarantees readers rely on (no drafts, no tampered shards), and the stats the report quotes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from dataflux.llm.catalog_cache import CatalogCallCache
from dataflux.records import Reject
from dataflux.storage.catalog import (
    Catalog,
    CatalogError,
    CatalogReadOnly,
    PartitionAlreadyCommitted,
    VersionImmutable,
    VersionNotFinalized,
    VersionNotFound,
)
from dataflux.storage.example_row import make_example_row, tone_wav_bytes
from dataflux.storage.shards import ChecksumMismatch, ShardMissing, shard_path, write_shard


def _row(source_id: str, q: int = 0, **kw) -> dict:
    freq = 100.0 + (sum(map(ord, source_id)) % 50) * 10
    return make_example_row(source_id, question_no=q, audio_bytes=tone_wav_bytes(freq), **kw)


def _item(source_id: str, n_rows: int, planted: dict | None = None, source: str = "demo") -> dict:
    return {"source": source, "source_id": source_id, "audio_sha256": None, "n_rows": n_rows,
            "status": "kept" if n_rows else "no_rows", "planted": json.dumps(planted) if planted else None}


@pytest.fixture
def catalog(tmp_path) -> Catalog:
    return Catalog(tmp_path / "state" / "catalog.duckdb")


def _commit(cat: Catalog, root, vid: str, key: str, rows: list[dict], rejects=(), items=None, run_id="run-1"):
    info = write_shard(rows, shard_path(root, vid, key)) if rows else None
    if items is None:
        items = [_item(r["source_id"], 1) for r in rows]
    cat.commit_partition(vid, key, info, list(rejects), items, run_id)
    return info


def _flip_byte(path: str) -> None:
    os.chmod(path, 0o644)  # shards are written read-only; tampering starts by undoing that
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(size // 2)
        b = f.read(1)
        f.seek(size // 2)
        f.write(bytes([b[0] ^ 0x01]))


def test_version_ids_are_monotonic_and_unknown_ids_list_known_ones(catalog):
    a = catalog.create_version("demo run", config_sha256="abc", notes={"why": "first"})
    b = catalog.create_version(parent=a)
    assert (a, b) == ("v0001-demo-run", "v0002")
    assert catalog.get_version(a)["notes"] == {"why": "first"}
    assert catalog.get_version(b)["parent"] == a and catalog.get_version(b)["status"] == "draft"
    with pytest.raises(VersionNotFound, match="v0001-demo-run"):
        catalog.get_version("v0099")
    with pytest.raises(VersionNotFound):
        catalog.create_version(parent="v0099")


def test_commit_finalize_verify_and_read_back(catalog, tmp_path):
    root = tmp_path / "shards"
    vid = catalog.create_version("t")
    catalog.record_run("run-1", vid, flow_run_id="flow-1")
    _commit(catalog, root, vid, "demo-p0", [_row("a"), _row("b")],
            rejects=[Reject("demo", "x", "quality", "too_quiet", "rms -70 dBFS")])
    _commit(catalog, root, vid, "demo-p1", [], items=[_item("y", 0)])  # processed, nothing kept
    assert catalog.committed_partitions(vid) == {"demo-p0", "demo-p1"}
    catalog.finish_run("run-1", counts={"rows": 2})
    assert catalog.get_run("run-1")["counts"] == {"rows": 2}

    record = catalog.finalize(vid)
    assert record["status"] == "finalized" and record["n_rows"] == 2
    assert len(record["manifest_sha256"]) == len(record["content_sha256"]) == 64
    assert catalog.verify(vid) == []
    assert catalog.shard_paths(vid) == [shard_path(root, vid, "demo-p0")]
    assert catalog.finalize(vid) == record  # idempotent
    listed = {v["version_id"]: v for v in catalog.list_versions()}[vid]
    assert (listed["n_partitions"], listed["shard_rows"], listed["n_rejects"], listed["n_items"]) == (2, 2, 1, 3)


def test_finalized_version_is_immutable(catalog, tmp_path):
    vid = catalog.create_version()
    _commit(catalog, tmp_path, vid, "p0", [_row("a")])
    catalog.finalize(vid)
    with pytest.raises(VersionImmutable, match="finalized"):
        catalog.commit_partition(vid, "p1", None, [], [], "run-2")
    assert catalog.committed_partitions(vid) == {"p0"}


def test_duplicate_commit_is_refused_and_records_nothing(catalog, tmp_path):
    vid = catalog.create_version()
    info = _commit(catalog, tmp_path, vid, "p0", [_row("a")], rejects=[Reject("demo", "z", "decode", "unreadable")])
    with pytest.raises(PartitionAlreadyCommitted, match="p0"):
        catalog.commit_partition(vid, "p0", info, [Reject("demo", "z", "decode", "unreadable")],
                                 [_item("a", 1)], "run-2")
    _, rows = catalog.query("SELECT (SELECT count(*) FROM rejects), (SELECT count(*) FROM items), "
                            "(SELECT count(*) FROM shards)")
    assert rows == [(1, 1, 1)]


def test_failed_commit_leaves_the_partition_uncommitted(catalog, tmp_path):
    vid = catalog.create_version()
    info = write_shard([_row("a")], shard_path(tmp_path, vid, "p0"))
    bad_reject = {"source": "demo", "source_id": "q", "stage": "verify", "reason": ""}
    with pytest.raises(CatalogError, match="reason"):
        catalog.commit_partition(vid, "p0", info, [bad_reject], [_item("a", 1)], "run-1")
    bad_item = {"source": "demo", "source_id": "a", "planted": "{not json"}
    with pytest.raises(CatalogError, match="planted"):
        catalog.commit_partition(vid, "p0", info, [], [bad_item], "run-1")
    assert catalog.committed_partitions(vid) == set()
    catalog.commit_partition(vid, "p0", info, [], [_item("a", 1)], "run-1")  # the retry goes through
    assert catalog.committed_partitions(vid) == {"p0"}


def test_tampered_shard_is_reported_and_refused(catalog, tmp_path):
    vid = catalog.create_version()
    p0 = _commit(catalog, tmp_path, vid, "p0", [_row("a")])
    p1 = _commit(catalog, tmp_path, vid, "p1", [_row("b")])
    catalog.finalize(vid)
    _flip_byte(p1.path)
    problems = catalog.verify(vid)
    assert [(p["partition_key"], p["problem"], p["expected"]) for p in problems] == [("p1", "sha256_mismatch", p1.sha256)]
    with pytest.raises(ChecksumMismatch, match="p1.parquet"):
        catalog.shard_paths(vid)
    os.remove(p0.path)
    assert {p["problem"] for p in catalog.verify(vid)} == {"missing", "sha256_mismatch"}
    with pytest.raises(ShardMissing, match="p0.parquet"):
        catalog.shard_paths(vid)


def test_tampered_shard_blocks_finalize(catalog, tmp_path):
    vid = catalog.create_version()
    info = _commit(catalog, tmp_path, vid, "p0", [_row("a")])
    _flip_byte(info.path)
    with pytest.raises(ChecksumMismatch):
        catalog.finalize(vid)
    assert catalog.get_version(vid)["status"] == "draft"


def test_draft_is_refused_by_shard_paths_unless_asked(catalog, tmp_path):
    vid = catalog.create_version()
    info = _commit(catalog, tmp_path, vid, "p0", [_row("a")])
    with pytest.raises(VersionNotFinalized, match="finalize"):
        catalog.shard_paths(vid)
    assert catalog.shard_paths(vid, require_finalized=False) == [info.path]


def test_content_hash_is_independent_of_partitioning(catalog, tmp_path):
    rows = [_row(s, q) for s in ("a", "b", "c") for q in range(2)]
    one = catalog.create_version("one")
    _commit(catalog, tmp_path, one, "all", rows)
    three = catalog.create_version("three")
    _commit(catalog, tmp_path, three, "x", rows[4:], run_id="run-2")
    _commit(catalog, tmp_path, three, "y", rows[:1], run_id="run-3")
    _commit(catalog, tmp_path, three, "z", list(reversed(rows[1:4])), run_id="run-4")
    a, b = catalog.finalize(one), catalog.finalize(three)
    assert a["content_sha256"] == b["content_sha256"] and a["n_rows"] == b["n_rows"] == 6
    assert a["manifest_sha256"] != b["manifest_sha256"]
    other = catalog.create_version("other")
    _commit(catalog, tmp_path, other, "all", rows[:5])
    assert catalog.finalize(other)["content_sha256"] != a["content_sha256"]


def test_query_is_read_only(catalog, tmp_path):
    vid = catalog.create_version()
    _commit(catalog, tmp_path, vid, "p0", [_row("a"), _row("b", l3="waveform", choices=("sine", "square", "sawtooth", "triangle"))])
    cols, rows = catalog.query(f"SELECT l3, count(*) AS n FROM {catalog.samples_relation_sql(vid)} GROUP BY 1 ORDER BY 1")
    assert cols == ["l3", "n"] and rows == [("tone_pitch", 1), ("waveform", 1)]
    assert catalog.query("SELECT version_id FROM versions WHERE status = ?", ["draft"])[1] == [(vid,)]
    for sql in ("DELETE FROM versions", "UPDATE versions SET status = 'finalized'", "SELECT 1; DROP TABLE shards",
                "COPY versions TO 'x.csv'"):
        with pytest.raises(CatalogError):
            catalog.query(sql)
    assert catalog.get_version(vid)["status"] == "draft"


def test_read_only_catalog_reads_and_refuses_writes(catalog):
    vid = catalog.create_version("x")
    ro = Catalog(catalog.path, read_only=True)
    assert ro.get_version(vid)["version_id"] == vid
    with pytest.raises(CatalogReadOnly):
        ro.create_version("y")
    with pytest.raises(CatalogError, match="does not exist"):
        Catalog(catalog.path.parent / "nope.duckdb", read_only=True)


def test_call_cache_first_response_wins(catalog):
    cache = CatalogCallCache(catalog)
    assert cache.cache_get("h1") is None
    assert cache.cache_put("h1", "caption", "m", {"text": "a tone"}, tokens_in=5, tokens_out=7, cost_usd=0.01,
                           latency_s=0.2)
    assert not cache.cache_put("h1", "caption", "m", {"text": "other"})
    assert catalog.query("SELECT step, n_calls FROM v_call_cache_by_step")[1] == [("caption", 1)]
    hit = cache.cache_get("h1")
    assert hit["response"] == {"text": "a tone"} and (hit["tokens_in"], hit["tokens_out"]) == (5, 7)


def test_record_training_links_checkpoint_to_version(catalog):
    vid = catalog.create_version()
    catalog.record_training("t1", vid, config={"lr": 1e-4})
    catalog.record_training("t1", vid, checkpoint="ckpt/step-10", metrics={"mmau": 0.5}, status="completed")
    (t,) = catalog.trainings(vid)
    assert (t["checkpoint"], t["config"], t["metrics"], t["status"]) == ("ckpt/step-10", {"lr": 1e-4},
                                                                          {"mmau": 0.5}, "completed")
    with pytest.raises(VersionNotFound):
        catalog.record_training("t2", "v0404")


def test_stats_counts_planted_errors_and_clean_rejections(catalog, tmp_path):
    """Hand-built ledger where the answer is known:
    A planted 880 Hz, row answers 440 Hz (corrected)       -> caught, corrected
    B planted 220 Hz, row answers 220 Hz                   -> not caught
    C planted waveform=square, a row's caption claims it   -> not caught
    D planted waveform=sine, no rows (discarded)           -> caught, discarded
    E clean with rows; F clean without rows                -> clean 2, rejected 1
    G another source without plants, no rows               -> not a demo item
    """
    vid = catalog.create_version("planted")
    tp = {"leaf": "tone_pitch", "true": "440 Hz"}
    rows = [
        _row("A", answer_index=2),  # "440 Hz"
        _row("B", answer_index=1),  # "220 Hz"
        _row("C", answer_index=2, caption_claims={"tone_pitch": "440 Hz", "waveform": "square"}),
        _row("E", answer_index=0),
        _row("E", 1, answer_index=3),
    ]
    items = [
        _item("A", 1, {**tp, "claimed": "880 Hz"}), _item("B", 1, {**tp, "claimed": "220 Hz"}),
        _item("C", 1, {"leaf": "waveform", "claimed": "square"}), _item("D", 0, {"leaf": "waveform", "claimed": "sine"}),
        _item("E", 2), _item("F", 0), _item("G", 0, source="folder"),
    ]
    _commit(catalog, tmp_path, vid, "p0", rows[:2], items=items[:2])
    _commit(catalog, tmp_path, vid, "p1", rows[2:], items=items[2:],
            rejects=[Reject("demo", "D", "verify", "judge_discard"), Reject("demo", "F", "verify", "judge_discard"),
                     Reject("folder", "G", "decode", "unreadable")])
    s = catalog.stats(vid)
    assert (s["planted_errors"], s["planted_caught"], s["planted_caught_discarded"],
            s["planted_caught_corrected"]) == (4, 2, 1, 1)
    assert (s["clean_items"], s["clean_rejected"]) == (2, 1)
    assert s["rows"] == 5 and s["clips"] == 4
    assert s["samples_per_category"] == {"tone_pitch": 5}
    assert s["answer_position"] == {0: 1, 1: 1, 2: 2, 3: 1}
    assert s["rejects_by_reason"] == {"verify/judge_discard": 2, "decode/unreadable": 1}
    # the caption call is repeated on both of E's rows but counted once per clip
    assert s["per_step"]["caption"]["n_calls"] == 4
    assert s["per_step"]["caption"]["cost_usd"] == pytest.approx(0.004) == s["cost_usd"]
    assert (s["tokens_in"], s["tokens_out"]) == (40, 80)
    assert s["duration_s"]["total_clip_s"] == pytest.approx(1.0)
    assert s["status"] == "draft"
    assert s["items_by_status"] == {"kept": 4, "no_rows": 3}


def test_stats_of_an_empty_draft(catalog, tmp_path):
    vid = catalog.create_version()
    _commit(catalog, tmp_path, vid, "p0", [], items=[_item("D", 0, {"leaf": "waveform", "claimed": "sine"}),
                                                     _item("F", 0)])
    s = catalog.stats(vid)
    assert s["rows"] == 0 and s["samples_per_category"] == {} and s["per_step"] == {} and s["cost_usd"] == 0
    assert (s["planted_errors"], s["planted_caught"], s["clean_items"], s["clean_rejected"]) == (1, 1, 1, 1)
    assert "planted_errors" not in catalog.stats(catalog.create_version())


def test_concurrent_commits_from_threads_all_land(catalog, tmp_path):
    vid = catalog.create_version()
    infos = {f"p{i}": write_shard([_row(f"c{i}")], shard_path(tmp_path, vid, f"p{i}")) for i in range(6)}

    def commit(key):
        catalog.commit_partition(vid, key, infos[key], [], [_item(key, 1)], "run-1")

    with ThreadPoolExecutor(max_workers=3) as pool:
        list(pool.map(commit, infos))
    assert catalog.committed_partitions(vid) == set(infos)
    assert catalog.finalize(vid)["n_rows"] == 6


def test_catalog_waits_for_another_process_holding_the_file(catalog):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('held', flush=True); "
         "time.sleep(1.0); c.close()", str(catalog.path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        vid = catalog.create_version("after-wait")  # blocks until the other process lets go
        assert time.monotonic() - started > 0.3
        assert catalog.get_version(vid)["name"] == "after-wait"
    finally:
        holder.wait(timeout=30)
    impatient = Catalog(catalog.path, lock_timeout_s=0.2)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('held', flush=True); "
         "time.sleep(1.5); c.close()", str(catalog.path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(CatalogError, match="another process"):
            impatient.list_versions()
    finally:
        holder.wait(timeout=30)


def test_a_copied_home_verifies_against_its_own_shards(tmp_path):
    home = tmp_path / "home"
    cat = Catalog(home / "catalog.duckdb")
    vid = cat.create_version()
    _commit(cat, home / "shards", vid, "p0", [_row("a")])
    outside = _commit(cat, tmp_path / "elsewhere", vid, "p1", [_row("b")])
    cat.finalize(vid)
    copy = tmp_path / "copy"
    shutil.copytree(home, copy)
    copied = Catalog(copy / "catalog.duckdb")
    own, foreign = copied.shard_paths(vid)
    assert own == str(copy / "shards" / vid / "p0.parquet")
    assert foreign == outside.path  # shards outside the home keep their absolute path
    _flip_byte(own)
    assert [p["path"] for p in copied.verify(vid)] == [own]
    assert cat.verify(vid) == []
