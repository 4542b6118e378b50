"""Parquet shards: the row contract on disk, atomic writes, checksums, and the two readers we promise
(`datasets.load_dataset("parquet")` with a decodable Audio feature, and DuckDB `read_parquet`)."""

from __future__ import annotations

import json
import os

import duckdb
import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from dataflux.storage.example_row import make_example_row, tone_wav_bytes
from dataflux.storage.row_schema import SAMPLE_SCHEMA, hf_features_dict, hf_features_metadata, row_content_sha256
from dataflux.storage.shards import (
    ChecksumMismatch,
    RowSchemaError,
    ShardError,
    ShardExists,
    ShardMissing,
    file_sha256,
    read_shard,
    shard_path,
    write_shard,
)


def _rows(n: int, **kw) -> list[dict]:
    return [make_example_row(f"clip-{i}", question_no=i, audio_bytes=tone_wav_bytes(200.0 + 20 * i), **kw)
            for i in range(n)]


def _flip_byte(path: str, offset: int) -> None:
    os.chmod(path, 0o644)  # shards are written read-only; tampering starts by undoing that
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def test_shard_round_trip_keeps_rows_schema_and_checksum(tmp_path):
    rows = _rows(3)
    info = write_shard(rows, str(tmp_path / "v1" / "p0.parquet"))
    assert info.rows == 3
    assert info.bytes == os.path.getsize(info.path)
    assert info.sha256 == file_sha256(info.path)
    table = read_shard(info.path, expected_sha256=info.sha256)
    assert table.schema.remove_metadata() == SAMPLE_SCHEMA
    assert pq.ParquetFile(info.path).metadata.row_group(0).column(0).compression == "ZSTD"
    back = table.to_pylist()
    assert [r["sample_id"] for r in back] == [r["sample_id"] for r in rows]
    assert back[1]["audio"]["bytes"] == rows[1]["audio"]["bytes"]
    # the content hash of a row read back equals the one computed before writing
    assert [row_content_sha256(r) for r in back] == [r["row_sha256"] for r in rows]
    assert os.listdir(tmp_path / "v1") == ["p0.parquet"]  # no temporary file left behind


def test_a_written_shard_is_read_only_and_never_rewritten(tmp_path):
    path = str(tmp_path / "p0.parquet")
    first = write_shard(_rows(2), path)
    assert os.stat(path).st_mode & 0o222 == 0
    with pytest.raises(ShardExists, match="never rewritten"):
        write_shard(_rows(4), path)
    assert read_shard(path, first.sha256).num_rows == 2
    assert sorted(os.listdir(tmp_path)) == ["p0.parquet"]  # no temporary file left behind


def test_read_shard_detects_a_flipped_byte(tmp_path):
    info = write_shard(_rows(2), str(tmp_path / "p0.parquet"))
    _flip_byte(info.path, info.bytes // 2)
    with pytest.raises(ChecksumMismatch) as e:
        read_shard(info.path, expected_sha256=info.sha256)
    assert e.value.path == info.path and e.value.expected == info.sha256
    assert e.value.actual == file_sha256(info.path) != info.sha256


def test_read_shard_of_missing_file_names_it(tmp_path):
    missing = str(tmp_path / "gone.parquet")
    with pytest.raises(ShardMissing, match="gone.parquet"):
        read_shard(missing, expected_sha256="0" * 64)


def test_row_with_wrong_type_names_sample_id_and_field(tmp_path):
    rows = _rows(2)
    rows[1]["answer_index"] = "B"
    with pytest.raises(RowSchemaError) as e:
        write_shard(rows, str(tmp_path / "p.parquet"))
    assert e.value.sample_id == rows[1]["sample_id"] and e.value.field == "answer_index"
    assert rows[1]["sample_id"] in str(e.value)
    assert not (tmp_path / "p.parquet").exists()


def test_row_with_wrong_nested_type_names_the_column(tmp_path):
    rows = _rows(1)
    rows[0]["quality"] = {**rows[0]["quality"], "snr_db": "loud"}
    with pytest.raises(RowSchemaError) as e:
        write_shard(rows, str(tmp_path / "p.parquet"))
    assert e.value.field == "quality"


@pytest.mark.parametrize("change, field", [
    (lambda r: r.pop("caption"), "caption"),
    (lambda r: r.update(question=None), "question"),
    (lambda r: r.update(latency_s=1.0), "latency_s"),
    (lambda r: r["calls"][0].update(latency_s=0.5), "calls"),
])
def test_missing_null_or_unknown_column_is_refused(tmp_path, change, field):
    row = _rows(1)[0]
    change(row)
    with pytest.raises(RowSchemaError) as e:
        write_shard([row], str(tmp_path / "p.parquet"))
    assert e.value.field == field and e.value.sample_id == row["sample_id"]


def test_stale_row_sha256_is_refused_and_missing_one_is_filled(tmp_path):
    row = _rows(1)[0]
    stale = dict(row, answer="880 Hz")  # content changed after the hash was computed
    with pytest.raises(RowSchemaError, match="row_sha256"):
        write_shard([stale], str(tmp_path / "a.parquet"))
    unhashed = dict(row, row_sha256=None)
    info = write_shard([unhashed], str(tmp_path / "b.parquet"))
    assert read_shard(info.path).column("row_sha256").to_pylist() == [row["row_sha256"]]


def test_duplicate_sample_id_in_one_shard_is_refused(tmp_path):
    row = _rows(1)[0]
    with pytest.raises(RowSchemaError, match="twice"):
        write_shard([row, dict(row)], str(tmp_path / "p.parquet"))


def test_empty_shard_is_refused(tmp_path):
    with pytest.raises(ShardError, match="shard=None"):
        write_shard([], str(tmp_path / "p.parquet"))


def test_content_hash_ignores_run_provenance_but_not_content():
    row = _rows(1)[0]
    base = row_content_sha256(row)
    other_run = dict(row, run_id="run-9", code_version="dataflux-9",
                     calls=[dict(c, cached=True) for c in row["calls"]])
    assert row_content_sha256(other_run) == base
    assert row_content_sha256(dict(row, answer_index=1)) != base
    assert row_content_sha256(dict(row, calls=[dict(c, tokens_out=21) for c in row["calls"]])) != base
    assert row_content_sha256(dict(row, audio={"bytes": tone_wav_bytes(999.0), "path": "x.wav"})) != base
    # ints in float columns hash like the floats Arrow will store
    assert row_content_sha256(dict(row, duration_s=1)) == row_content_sha256(dict(row, duration_s=1.0))


def test_features_metadata_matches_the_arrow_schema():
    datasets = pytest.importorskip("datasets")
    meta = json.loads(hf_features_metadata()[b"huggingface"])
    features = datasets.Features.from_dict(meta["info"]["features"])
    assert features.arrow_schema.remove_metadata() == SAMPLE_SCHEMA
    assert features.to_dict() == hf_features_dict()
    assert isinstance(features["audio"], datasets.Audio) and features["audio"].sampling_rate == 16000


def test_datasets_loads_shards_with_decodable_audio(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = _rows(3)
    paths = [write_shard(rows[:2], str(tmp_path / "p0.parquet")).path,
             write_shard(rows[2:], str(tmp_path / "p1.parquet")).path]
    ds = datasets.load_dataset("parquet", data_files=paths, split="train",
                               cache_dir=str(tmp_path / "hf_cache"))
    assert len(ds) == 3
    assert isinstance(ds.features["audio"], datasets.Audio)
    assert ds.features["choices"] == datasets.List(datasets.Value("string"))
    decoded = ds[0]["audio"].get_all_samples()  # torchcodec AudioDecoder
    assert decoded.sample_rate == 16000
    samples = decoded.data.numpy()[0]  # (T,)
    expected = 0.5 * np.sin(2 * np.pi * 200.0 * np.arange(4000) / 16000)
    assert samples.shape == (4000,)
    np.testing.assert_allclose(samples, expected, atol=2e-4)
    assert ds[2]["messages"][0]["content"].startswith("<audio>")


def test_duckdb_reads_shards_directly(tmp_path):
    rows = _rows(3) + [make_example_row("w", l3="waveform", path=("Sound", "Tonal", "Timbre"),
                                        choices=("sine", "square", "sawtooth", "triangle"), answer_index=0)]
    p0 = write_shard(rows[:2], str(tmp_path / "p0.parquet")).path
    p1 = write_shard(rows[2:], str(tmp_path / "p1.parquet")).path
    con = duckdb.connect()
    got = con.execute("SELECT l3, count(*) FROM read_parquet(?) GROUP BY 1 ORDER BY 1", [[p0, p1]]).fetchall()
    con.close()
    assert got == [("tone_pitch", 3), ("waveform", 1)]


def test_shard_on_a_non_local_filesystem_is_written_and_verified():
    # An fsspec in-memory filesystem stands in for an object store: no rename, upload then check.
    mem = fsspec.filesystem("memory")
    fs = pafs.PyFileSystem(pafs.FSSpecHandler(mem))
    path = "/bucket/shards/v0001/p0.parquet"
    info = write_shard(_rows(2), path, filesystem=fs)
    assert info.path == path and info.sha256 == file_sha256(path, filesystem=fs)
    assert read_shard(path, info.sha256, filesystem=mem).num_rows == 2  # fsspec filesystems work as well
    mem.rm("/bucket", recursive=True)


def test_shard_path_layout(tmp_path):
    assert shard_path(str(tmp_path), "v0001-a", "demo-p0000-of0002") == str(tmp_path / "v0001-a" / "demo-p0000-of0002.parquet")
    assert shard_path("s3://bucket/root/", "v0001", "k") == "s3://bucket/root/v0001/k.parquet"
    assert pa.types.is_binary(SAMPLE_SCHEMA.field("audio").type.field("bytes").type)
