"""Storage and run integrity: one writer per catalog, shards written once and read-only, reads of a
finalized version verified, honest run records and ledger, deterministic reject details, and a run
SIGKILLed at five random points that still ends with the content of an uninterrupted run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from cli.main import main
from dataflux.config import load_config
from dataflux.pipeline import process_partition
from dataflux.storage import integrity
from dataflux.storage.catalog import Catalog
from dataflux.storage.shards import ShardExists, file_sha256, write_shard
from dataflux.storage.writer_lock import CatalogBusy, lock_path, writer_lock, writer_lock_held
from modeling.synthetic_version import tone_rows, write_tone_version

ROOT = Path(__file__).resolve().parents[3]


# --- fixtures and helpers -------------------------------------------------------------------------


@pytest.fixture
def tone_home(tmp_path, monkeypatch) -> tuple[Path, str]:
    """A home with one finalized two-shard version, the CLI pointed at it."""
    home = tmp_path / "home"
    vid = write_tone_version(home / "catalog.duckdb", home / "shards", n_clips=8, n_shards=2)
    monkeypatch.setenv("DATAFLUX_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    return home, vid


def _tamper(path: str) -> None:
    os.chmod(path, 0o644)  # a finalized shard is read-only: tampering starts by undoing that
    data = bytearray(Path(path).read_bytes())
    data[len(data) // 2] ^= 0x01
    Path(path).write_bytes(bytes(data))


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    """One Prefect server for every `dataflux` process this module starts (instead of one each)."""
    from flows.deploy import LocalServer, free_port

    base = tmp_path_factory.mktemp("prefect")
    with LocalServer(port=free_port(), home=base / "home", log=base / "server.log") as server:
        yield server.api_url


def _cli(home: Path, api_url: str, *args: str) -> subprocess.Popen:
    # PATH holds only the interpreter's directory: without espeak-ng the demo has no speech clips,
    # which halves the CPU a run needs and changes nothing this module checks.
    env = {**os.environ, "DATAFLUX_HOME": str(home), "PREFECT_API_URL": api_url,
           "PATH": os.path.dirname(sys.executable)}
    return subprocess.Popen([sys.executable, "-m", "cli", *args], cwd=home.parent, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _holder(home: Path, timeout_s: float = 300) -> dict:
    """What the run holding the home's writer lock wrote into the lock file, once it has."""
    deadline = time.monotonic() + timeout_s
    path = lock_path(home / "catalog.duckdb")
    while time.monotonic() < deadline:
        try:
            info = json.loads(path.read_text() or "{}")
        except (OSError, ValueError):
            info = {}
        if info:
            return info
        time.sleep(0.1)
    raise AssertionError(f"no run took the writer lock of {home} within {timeout_s} s")


# --- one writer per catalog -------------------------------------------------------------------------


def test_a_second_writer_is_refused_naming_the_holder_or_gives_up_after_its_wait(tmp_path):
    catalog = tmp_path / "catalog.duckdb"
    with writer_lock(catalog, "run-first"):
        assert writer_lock_held(catalog)
        with pytest.raises(CatalogBusy) as refused:
            with writer_lock(catalog, "run-second"):
                pass
        message = str(refused.value)
        assert "\n" not in message and "run-first" in message and f"pid {os.getpid()}" in message
        said = []
        start = time.monotonic()
        with pytest.raises(CatalogBusy, match="still locked after waiting 0.3 s"):
            with writer_lock(catalog, "run-second", wait=True, timeout_s=0.3, notify=said.append):
                pass
        assert time.monotonic() - start >= 0.3
        assert len(said) == 1 and said[0].startswith("waiting for the run writing") and "run-first" in said[0]
    assert not writer_lock_held(catalog)
    with writer_lock(catalog, "run-second"):  # free again once the holder is done
        pass


@pytest.mark.slow
def test_concurrent_runs_one_refused_one_queued_and_finalized_shards_unchanged(tmp_path, prefect_api):
    home = tmp_path / "home"
    demo = ["demo", "--size", "160", "--partitions", "2", "--quiet"]
    first = _cli(home, prefect_api, *demo)
    holder = _holder(home)
    assert holder["pid"] == first.pid
    refused = _cli(home, prefect_api, *demo)
    queued = _cli(home, prefect_api, *demo, "--wait", "--wait-timeout", "600")
    out, err = refused.communicate(timeout=300)
    assert first.poll() is None, "the first run ended before the second was refused; enlarge the demo"
    assert refused.returncode == 2, (out, err)
    assert len(err.strip().splitlines()) == 1, err
    assert "another run is writing" in err and f"pid {first.pid}" in err and holder["run_id"] in err

    out, err = first.communicate(timeout=900)
    assert first.returncode == 0, err[-3000:]
    catalog = Catalog(home / "catalog.duckdb", read_only=True)
    v1 = catalog.list_versions()[0]["version_id"]  # the queued run may have started its own already
    recorded = {s["path"]: s["sha256"] for s in catalog.shards(v1) if s["path"]}
    assert recorded and all(file_sha256(p) == sha for p, sha in recorded.items())

    out, err = queued.communicate(timeout=900)
    assert queued.returncode == 0, err[-3000:]
    assert "waiting for the run writing" in err and holder["run_id"] in err
    assert {p: file_sha256(p) for p in recorded} == recorded  # the first version's files are untouched
    versions = [v["version_id"] for v in catalog.list_versions()]
    assert len(versions) == 2 and all(catalog.verify(v) == [] for v in versions)


# --- shards: written once, read-only, verified on read ----------------------------------------------


def test_finalized_shards_are_read_only_and_never_rewritten(tone_home):
    home, vid = tone_home
    catalog = Catalog(home / "catalog.duckdb")
    paths = catalog.shard_paths(vid)
    assert paths and all(os.stat(p).st_mode & 0o222 == 0 for p in paths)
    with pytest.raises(ShardExists, match="never rewritten"):
        write_shard(tone_rows(2, seed=9), paths[0])
    assert catalog.verify(vid) == []


def test_tampered_finalized_shard_is_refused_by_stats_and_the_samples_view(tone_home, capsys, monkeypatch):
    home, vid = tone_home
    hashed = []
    real_sha256 = integrity.file_sha256
    monkeypatch.setattr(integrity, "file_sha256", lambda p: hashed.append(p) or real_sha256(p))

    assert main(["stats", vid, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["shards_verified"] is True
    assert len(hashed) == 2  # first read: every shard hashed
    assert main(["stats", vid, "--json"]) == 0
    assert main(["sql", "SELECT count(*) FROM samples"]) == 0
    capsys.readouterr()
    assert len(hashed) == 2  # later reads: unchanged files are not hashed again

    victim = Catalog(home / "catalog.duckdb", read_only=True).shards(vid)[1]["path"]
    _tamper(victim)
    for argv in (["stats", vid], ["sql", "SELECT count(*) FROM samples"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        assert victim in err and "sha256" in err
    assert main(["sql", "SELECT count(*) FROM versions"]) == 0  # queries not reading shards still work


# --- ledger and reject details -----------------------------------------------------------------------


def _folder_config(tmp_path: Path) -> Path:
    audio = tmp_path / "audio"
    audio.mkdir()
    t = np.arange(32000) / 16000
    for name, freq in (("a", 440.0), ("b", 880.0), ("c", 220.0), ("d", 660.0)):
        sf.write(audio / f"{name}.wav", 0.1 * np.sin(2 * np.pi * freq * t), 16000, subtype="PCM_16")
    (audio / "a_copy.wav").write_bytes((audio / "a.wav").read_bytes())  # the same file under another name
    (audio / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage" + bytes(100))
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps({"file": f"{i}.wav" if i != "bad" else "corrupt.wav", "label": label,
                                          "id": i}) + "\n"
                              for i, label in (("a", "beep"), ("a_copy", "beep"), ("b", "whistle"), ("c", "hum"),
                                               ("d", "chime"), ("bad", "bell"))))
    config = tmp_path / "data_catalog.yaml"
    config.write_text(yaml.safe_dump({
        "version": 1,
        "sources": {"mine": {"kind": "folder", "path": str(audio), "labels": str(labels),
                             "fields": {"file": "file", "label": "label", "id": "id"},
                             "taxonomy": ["sound_source", "duration"]}},
        "run": {"partitions": 1},
    }))
    return config


def test_ledger_matches_the_shard_and_reject_details_repeat_exactly(tmp_path, dataflux_home):
    config = load_config(_folder_config(tmp_path))
    runs = [process_partition(config, "mine", 0, 1, "v0001", run_id) for run_id in ("run-one", "run-two")]

    first = runs[0]
    rows_per_clip: dict[str, int] = {}
    for sid in _shard_source_ids(first.shard.path):
        rows_per_clip[sid] = rows_per_clip.get(sid, 0) + 1
    status = {it["source_id"]: (it["status"], it["n_rows"]) for it in first.items}
    assert status["a"] == ("kept", rows_per_clip["a"]) and rows_per_clip["a"] > 0
    # the copy is processed once: a duplicate reject naming the kept copy, no rows of its own
    assert status["a_copy"] == ("rejected:duplicate_audio", 0) and "a_copy" not in rows_per_clip
    assert any(r.source_id == "a_copy" and r.reason == "duplicate_audio" and "mine/a," in r.detail for r in first.rejects)
    assert status["bad"][0].startswith("rejected:")

    details = [sorted((r.source_id, r.reason, r.detail) for r in run.rejects) for run in runs]
    assert details[0] == details[1]
    assert not any("object at 0x" in d for _, _, d in details[0]), details[0]
    # two runs of one partition never write the same file
    assert runs[0].shard.path != runs[1].shard.path
    assert all(os.path.exists(run.shard.path) for run in runs)


def _shard_source_ids(path: str) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=["source_id"]).column("source_id").to_pylist()


# --- SIGKILL at five random points, resumed each time ------------------------------------------------

KILLS = 5
DEMO_1000 = ["demo", "--size", "1000", "--partitions", "20", "--quiet"]


def _finalized(home: Path) -> dict:
    catalog = Catalog(home / "catalog.duckdb", read_only=True)
    (version,) = [v for v in catalog.list_versions() if v["status"] == "finalized"]
    return version


def _shard_files(home: Path) -> int:
    return len(list((home / "shards").rglob("*.parquet")))


@pytest.mark.slow
def test_sigkill_at_five_random_points_resumes_to_the_uninterrupted_content(tmp_path, prefect_api):
    reference_home = tmp_path / "reference"
    reference = _cli(reference_home, prefect_api, *DEMO_1000)  # runs alongside the killed ones

    home = tmp_path / "killed"
    rng = random.Random(21)
    for kill in range(KILLS):
        before = _shard_files(home) if (home / "shards").exists() else 0
        proc = _cli(home, prefect_api, *DEMO_1000)
        deadline = time.monotonic() + 600
        while proc.poll() is None and _shard_files(home) <= before and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.0))  # then somewhere in the next partition(s)
        assert proc.poll() is None, f"kill {kill + 1}: the run finished first; use more partitions"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        assert not writer_lock_held(home / "catalog.duckdb")  # the kernel dropped the dead run's lock

    resumed = _cli(home, prefect_api, *DEMO_1000)
    out, err = resumed.communicate(timeout=1200)
    assert resumed.returncode == 0, err[-3000:]
    out, err = reference.communicate(timeout=1200)
    assert reference.returncode == 0, err[-3000:]

    expected, got = _finalized(reference_home), _finalized(home)
    assert got["content_sha256"] == expected["content_sha256"], (got, expected)
    assert got["n_rows"] == expected["n_rows"]
    catalog = Catalog(home / "catalog.duckdb", read_only=True)
    assert len(catalog.list_versions()) == 1  # every start resumed the one draft
    assert catalog.verify(got["version_id"]) == []
    committed = {s["path"] for s in catalog.shards(got["version_id"]) if s["path"]}
    assert {str(p) for p in (home / "shards").rglob("*.parquet")} == committed  # the dead runs' files removed
    _, statuses = catalog.query("SELECT status, count(*) FROM runs GROUP BY 1 ORDER BY 1")
    assert dict(statuses) == {"completed": 1, "interrupted": KILLS}
