"""The demo corpus through the real Prefect flow into a finalized version (DuckDB + Parquet)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from dataflux.config import demo_config
from dataflux.storage.catalog import Catalog

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_version(tmp_path_factory):
    home = tmp_path_factory.mktemp("e2e-home")
    mp = pytest.MonkeyPatch()
    mp.setenv("DATAFLUX_HOME", str(home))
    from flows.synthesize import run_synthesis

    config = demo_config(size=200, seed=7, error_rate=0.1, partitions=4)
    summary = run_synthesis(config, name="demo")
    yield home, config, summary
    mp.undo()


def test_demo_run_finalizes_a_version(demo_version):
    _, config, summary = demo_version
    assert summary["status"] == "completed"
    info = Catalog(config.catalog_path, read_only=True).get_version(summary["version"])
    assert info["status"] == "finalized"
    assert len(info["manifest_sha256"]) == 64


def test_closed_loop_catches_planted_errors_and_keeps_clean_items(demo_version):
    _, config, summary = demo_version
    stats = Catalog(config.catalog_path, read_only=True).stats(summary["version"])
    assert stats["planted_errors"] >= 10  # ~10% of 200
    assert stats["planted_caught"] / stats["planted_errors"] >= 0.9, stats
    assert stats["clean_rejected"] / stats["clean_items"] <= 0.05, stats
    assert stats["planted_errors"] + stats["clean_items"] == 200


def test_every_item_is_either_in_the_version_or_rejected_with_a_reason(demo_version):
    _, config, summary = demo_version
    cat = Catalog(config.catalog_path, read_only=True)
    _, rows = cat.query(f"SELECT count(*), count(DISTINCT source_id) FROM items WHERE version_id = '{summary['version']}'")
    assert rows[0] == (200, 200)
    _, rows = cat.query(f"""SELECT count(*) FROM items i WHERE version_id = '{summary['version']}' AND n_rows = 0
        AND NOT EXISTS (SELECT 1 FROM rejects r WHERE r.version_id = i.version_id AND r.source_id = i.source_id)""")
    assert rows[0][0] == 0


def test_shards_load_with_datasets_audio_feature_and_duckdb(demo_version):
    import datasets

    _, config, summary = demo_version
    paths = Catalog(config.catalog_path, read_only=True).shard_paths(summary["version"])
    ds = datasets.load_dataset("parquet", data_files=paths, split="train")
    assert isinstance(ds.features["audio"], datasets.Audio)
    first = ds[0]["audio"]
    samples = first["array"] if isinstance(first, dict) else first.get_all_samples().data.numpy()
    assert samples.reshape(-1).shape[0] > 1000  # a (channels, T) decoder output or a flat array
    counts = duckdb.sql(f"SELECT l3, count(*) FROM read_parquet({paths!r}) GROUP BY 1 ORDER BY 1").fetchall()
    assert {c for c, _ in counts} >= {"tone_pitch", "waveform", "beep_count", "click_tempo", "noise_colour",
                                      "loudness", "duration"}
    assert sum(n for _, n in counts) == len(ds)


def test_rows_carry_provenance_and_balanced_answer_positions(demo_version):
    _, config, summary = demo_version
    paths = Catalog(config.catalog_path, read_only=True).shard_paths(summary["version"])
    rel = duckdb.sql(f"SELECT answer_index, count(*) FROM read_parquet({paths!r}) GROUP BY 1").fetchall()
    shares = [n / sum(n for _, n in rel) for _, n in rel]
    assert len(rel) == 4 and max(shares) < 0.35
    row = duckdb.sql(f"SELECT calls, run_id, code_version, messages FROM read_parquet({paths!r}) LIMIT 1").fetchall()[0]
    steps = {c["step"] for c in row[0]}
    assert {"caption", "generate", "answer", "judge"} <= steps
    assert row[1].startswith("run-") and row[2].startswith("dataflux-")
    assert row[3][0]["content"].startswith("<audio>")


def test_tampered_shard_is_detected_by_verify_and_refused_on_read(demo_version, tmp_path):
    home, config, summary = demo_version
    copy = tmp_path / "copy"
    shutil.copytree(home, copy)
    cat = Catalog(str(copy / "catalog.duckdb"))
    paths = cat.shard_paths(summary["version"], verify=False)
    # the catalog records absolute shard paths under the original home: tamper the copy's shard through SQL-free means
    victim = Path(str(paths[0]).replace(str(home), str(copy)))
    assert victim.exists()
    env_home = {"DATAFLUX_HOME": str(copy)}
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.chmod(0o644)  # shards are written read-only
    victim.write_bytes(bytes(data))
    proc = subprocess.run([sys.executable, "-m", "cli", "verify", summary["version"]],
                          capture_output=True, text=True, cwd=ROOT, env={**_env(), **env_home}, timeout=120)
    assert proc.returncode != 0
    assert victim.name in proc.stderr


def _env():
    import os

    return dict(os.environ)


def test_sql_command_reads_a_samples_view_and_refuses_writes(demo_version):
    home, _, summary = demo_version
    env = {**_env(), "DATAFLUX_HOME": str(home)}
    proc = subprocess.run([sys.executable, "-m", "cli", "sql", "--json",
                           "SELECT version_id, count(*) AS n FROM samples GROUP BY 1"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["version_id"] == summary["version"]
    proc = subprocess.run([sys.executable, "-m", "cli", "sql", "DELETE FROM versions"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert proc.returncode != 0 and "read-only" in proc.stderr
