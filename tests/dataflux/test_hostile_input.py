"""Hostile input: sources stay in their root, `dataflux sql` stays in the catalog, and
`dataflux llm serve` leaves no server behind.

Opened files are watched with a Python audit hook on `open` in this process, so "never opened"
is observed, not inferred from the result.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dataflux.config import config_from_dict
from dataflux.records import Reject, SourceItem
from dataflux.sources.hf import HFSource
from dataflux.storage.catalog import Catalog
from dataflux.storage.example_row import make_example_row, tone_wav_bytes
from dataflux.storage.shards import shard_path, write_shard

ROOT = Path(__file__).resolve().parents[2]

# --- an audit hook that records every path this process opens ---------------------------------

_OPENED: list[str] = []


def _record_open(event: str, args: tuple) -> None:
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_record_open)  # a hook cannot be removed: it only appends to a list


@pytest.fixture
def opened():
    """The paths opened during the test, each resolved (a symlink counts as its target)."""
    _OPENED.clear()
    seen: set[str] = set()

    def resolved() -> set[str]:
        while _OPENED:
            seen.add(os.path.realpath(_OPENED.pop()))
        return seen

    return resolved


# --- a source root with hostile neighbours ------------------------------------------------------

def _tone(path: Path, freq: float) -> None:
    t = np.arange(16000) / 16000
    sf.write(path, 0.2 * np.sin(2 * np.pi * freq * t), 16000, subtype="PCM_16")


@pytest.fixture
def layout(tmp_path):
    """root/ holds good.wav and symlinks out; outside/ holds a canary and a real WAV."""
    outside = tmp_path / "outside"
    outside.mkdir()
    canary = outside / "canary.wav"
    canary.write_bytes(b"canary: a file outside every source root")
    real = outside / "real.wav"
    _tone(real, 440.0)
    root = tmp_path / "root"
    root.mkdir()
    _tone(root / "good.wav", 880.0)
    (root / "link_canary.wav").symlink_to(canary)
    (root / "link_real.wav").symlink_to(real)
    (root / "linkdir").symlink_to(outside, target_is_directory=True)
    hostile = {  # id -> file cell
        "good": "good.wav",
        "dotdot_real": "../outside/real.wav",
        "abs_real": str(real),
        "symlink_real": "link_real.wav",
        "symlinked_dir_real": "linkdir/real.wav",
        "deep_dotdot_canary": "../" * 12 + str(canary).lstrip("/"),
        "abs_canary": str(canary),
        "symlink_canary": "link_canary.wav",
        "symlinked_dir_canary": "linkdir/canary.wav",
        "etc_passwd": "../" * 12 + "etc/passwd",
    }
    return {"root": root, "canary": canary, "real": real, "rows": hostile}


def _config(tmp_path, spec: dict):
    raw = {"version": 1, "sources": {"s": {**spec, "taxonomy": ["duration"]}}, "run": {"partitions": 1},
           "storage": {"root": str(tmp_path / "home" / "shards"), "catalog": str(tmp_path / "home" / "c.duckdb")}}
    return config_from_dict(raw, origin="<hostile test>")


def _run_partition(config):
    from dataflux.pipeline import process_partition

    return process_partition(config, "s", 0, 1, "v-test", "run-test")


def _outside(result) -> dict[str, str]:
    return {r.source_id: r.detail for r in result.rejects if r.reason == "outside_root"}


def _kept(result) -> set[str]:
    return {i["source_id"] for i in result.items if not i["status"].startswith("rejected")}


def test_manifest_rows_outside_the_root_are_rejected_and_never_opened(tmp_path, layout, opened):
    manifest = layout["root"] / "labels.jsonl"
    manifest.write_text("".join(json.dumps({"id": k, "file": f, "label": "tone"}) + "\n"
                                for k, f in layout["rows"].items()))
    config = _config(tmp_path, {"kind": "manifest", "path": str(manifest), "fields": {"id": "id"}})
    result = _run_partition(config)

    assert set(_outside(result)) == set(layout["rows"]) - {"good"}
    assert _kept(result) == {"good"}
    assert "outside the source root" in _outside(result)["abs_canary"]
    seen = opened()
    assert str(layout["canary"].resolve()) not in seen
    assert str(layout["real"].resolve()) not in seen
    assert str((layout["root"] / "good.wav").resolve()) in seen  # the hook does see what is read


def test_folder_with_csv_labels_and_folder_listing_stay_in_the_root(tmp_path, layout, opened):
    rows = layout["rows"]
    csv = layout["root"] / "labels.csv"
    csv.write_text("id,file,label\n" + "".join(f"{k},{f},tone\n" for k, f in rows.items()))
    labelled = _run_partition(_config(tmp_path, {"kind": "folder", "path": str(layout["root"]),
                                                 "labels": "labels.csv", "fields": {"id": "id"}}))
    assert set(_outside(labelled)) == set(rows) - {"good"}
    listed = _run_partition(_config(tmp_path, {"kind": "folder", "path": str(layout["root"])}))
    # the listing sees the two symlinked files (a symlinked folder is not descended into)
    assert set(_outside(listed)) == {"link_canary.wav", "link_real.wav"}
    assert _kept(listed) == {"good.wav"}
    seen = opened()
    assert str(layout["canary"].resolve()) not in seen
    assert str(layout["real"].resolve()) not in seen


def test_allow_outside_root_accepts_the_real_wav_outside(tmp_path, layout):
    manifest = layout["root"] / "labels.jsonl"
    keep = ("good", "dotdot_real", "abs_real", "symlink_real", "symlinked_dir_real")
    manifest.write_text("".join(json.dumps({"id": k, "file": layout["rows"][k], "label": "tone"}) + "\n"
                                for k in keep))
    config = _config(tmp_path, {"kind": "manifest", "path": str(manifest), "fields": {"id": "id"},
                                "allow_outside_root": True})
    result = _run_partition(config)
    assert not _outside(result)
    # the four outside rows name one file: it is read (allowed), kept once, and the other three
    # names are duplicates of it
    real = set(keep) - {"good"}
    kept = _kept(result)
    assert "good" in kept and len(kept & real) == 1
    duplicates = {r.source_id for r in result.rejects if r.reason == "duplicate_audio"}
    assert duplicates == real - kept


def test_hf_dataset_paths_outside_its_folder_are_rejected_and_never_opened(tmp_path, layout, opened):
    import datasets

    data = tmp_path / "dataset"
    data.mkdir()
    _tone(data / "inside.wav", 660.0)
    files = [str(data / "inside.wav"), str(layout["real"]), str(layout["canary"])]
    ds = datasets.Dataset.from_dict({"audio": files, "label": ["a", "b", "c"], "id": ["inside", "real", "canary"]})
    ds.cast_column("audio", datasets.Audio()).to_parquet(str(data / "train.parquet"))  # paths, no bytes
    _OPENED.clear()

    items = list(HFSource("h", str(data), fields={"id": "id"}).iter_items())
    by_id = {i.source_id: i for i in items}
    assert isinstance(by_id["inside"], SourceItem) and by_id["inside"].audio_bytes[:4] == b"RIFF"
    assert {k for k, i in by_id.items() if isinstance(i, Reject) and i.reason == "outside_root"} == {"real", "canary"}
    seen = opened()
    assert str(layout["canary"].resolve()) not in seen and str(layout["real"].resolve()) not in seen

    allowed = list(HFSource("h", str(data), fields={"id": "id"}, allow_outside_root=True).iter_items())
    assert {i.source_id for i in allowed if isinstance(i, SourceItem)} == {"inside", "real", "canary"}


# --- dataflux sql stays in the catalog --------------------------------------------------------

HOSTILE_SQL = (
    "SELECT content FROM read_text('/etc/shadow')",
    "SELECT count(*) FROM glob('/root/*')",
    "SELECT * FROM read_csv('/etc/passwd')",
    "COPY versions TO '{out}/copy.csv'",
    "EXPLAIN ANALYZE COPY (SELECT 1) TO '{out}/explain.csv'",
    "ATTACH '{out}/other.duckdb'",
    "INSTALL httpfs",
    "SET enable_external_access = true",
    "SELECT * FROM read_parquet('https://example.invalid/x.parquet')",
    "CREATE TABLE t AS SELECT 1",
    "SELECT no_such_function(1)",
)


@pytest.fixture(scope="module")
def sql_home(tmp_path_factory):
    """A catalog with one finalized version of two shards."""
    home = tmp_path_factory.mktemp("sqlhome")
    cat = Catalog(home / "catalog.duckdb")
    vid = cat.create_version("x")
    for key, ids in (("p0", ["a", "b"]), ("p1", ["c"])):
        rows = [make_example_row(i, question_no=0, audio_bytes=tone_wav_bytes(300.0 + 20 * ord(i))) for i in ids]
        info = write_shard(rows, shard_path(home / "shards", vid, key))
        items = [{"source": "demo", "source_id": i, "audio_sha256": None, "n_rows": 1, "status": "kept",
                  "planted": None} for i in ids]
        cat.commit_partition(vid, key, info, [], items, "run-1")
    cat.finalize(vid)
    return home, vid, cat.shard_paths(vid)


def _sql_cli(home: Path, query: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATAFLUX_HOME": str(home), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "cli", "sql", query], cwd=home, env=env,
                          capture_output=True, text=True, timeout=120)


def test_sql_refuses_every_hostile_statement_in_one_line_with_exit_2(sql_home, tmp_path):
    home, _, _ = sql_home
    for query in (q.format(out=tmp_path) for q in HOSTILE_SQL):
        done = _sql_cli(home, query)
        assert done.returncode == 2, (query, done.stdout, done.stderr)
        assert done.stdout == "", (query, done.stdout)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("dataflux sql: error: "), (query, done.stderr)
    assert not list(tmp_path.iterdir())  # nothing was written


def test_sql_still_reads_the_catalog_the_samples_view_and_shards(sql_home):
    home, vid, paths = sql_home
    checks = {
        "SELECT version_id, status FROM versions": f"{vid}\tfinalized",
        "SELECT version_id, count(*) FROM samples GROUP BY 1": f"{vid}\t3",
        f"SELECT count(*) FROM read_parquet('{paths[0]}')": "2",
    }
    for query, want in checks.items():
        done = _sql_cli(home, query)
        assert done.returncode == 0, (query, done.stderr)
        assert done.stdout.strip().splitlines()[1] == want, (query, done.stdout)


def test_the_seal_ends_with_the_query(tmp_path):
    """DuckDB settings are global to the catalog file's instance: after a refused query the same
    process still writes the catalog and reads a shard that did not exist when the seal was set."""
    from dataflux.storage.catalog import QueryRefused

    cat = Catalog(tmp_path / "catalog.duckdb")
    first = cat.create_version("a")
    cat.commit_partition(first, "p0", write_shard([make_example_row("a", audio_bytes=tone_wav_bytes(300.0))],
                                                  shard_path(tmp_path / "shards", first, "p0")), [], [], "run-1")
    with pytest.raises(QueryRefused, match="Permission Error"):
        cat.query("SELECT content FROM read_text('/etc/hostname')")
    second = cat.create_version("b")
    info = write_shard([make_example_row("b", audio_bytes=tone_wav_bytes(400.0))],
                       shard_path(tmp_path / "shards", second, "p0"))
    cat.commit_partition(second, "p0", info, [], [], "run-1")
    assert cat.stats(second)["rows"] == 1
    assert cat.query("SELECT count(*) FROM samples")[1] == [(2,)]


# --- dataflux llm serve owns its child server ---------------------------------------------------

def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    if os.environ.get("CI"):  # CI installs the `llm` extra: a missing server is a failure there
        import llama_cpp  # noqa: F401
    else:
        pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (pip install 'dataflux[llm]')")
    from dataflux.llm.serve import ensure_smollm2

    return ensure_smollm2(tmp_path_factory.mktemp("serve-home"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree from /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_llm_serve_stops_its_llama_cpp_server_on_a_signal(smollm2, sig, tmp_path):
    from dataflux.llm.serve import wait_until_ready

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DATAFLUX_HOME": str(tmp_path)}
    log = tmp_path / "serve.log"  # a file, not a pipe: the server's loading log would fill a pipe and block it
    with open(log, "wb") as out:
        serve = subprocess.Popen([sys.executable, "-m", "cli", "llm", "serve", "--model", str(smollm2),
                                  "--port", str(port), "--threads", "1", "--n-ctx", "512"],
                                 env=env, stdout=out, stderr=subprocess.STDOUT)
    children: list[int] = []
    try:
        wait_until_ready(f"http://127.0.0.1:{port}/v1", timeout_s=120)
        children = _children(serve.pid)
        assert len(children) == 1 and _alive(children[0])
        serve.send_signal(sig)
        assert serve.wait(timeout=30) == 0
        assert not _alive(children[0]), f"the llama.cpp server (pid {children[0]}) outlived dataflux llm serve"
        assert "stopping the llama.cpp server" in log.read_text(errors="replace")
    finally:  # a failing run must not leave a server behind either
        for pid in [serve.pid, *children]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        serve.wait()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree from /proc")
def test_a_server_that_ignores_sigterm_is_killed_after_the_grace_period():
    """The escalation path, on a real child process that ignores SIGTERM as a hung server would."""
    stubborn = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('up', flush=True); time.sleep(60)")
    owner = (f"import sys; from dataflux.llm.serve import run_owned; "
             f"sys.exit(run_owned([sys.executable, '-c', {stubborn!r}], grace_s=1.0))")
    proc = subprocess.Popen([sys.executable, "-c", owner], env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "up"
        child = _children(proc.pid)[0]
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert 0.9 < time.monotonic() - start < 15
        assert not _alive(child)
    finally:
        for pid in [proc.pid, *(_children(proc.pid) if _alive(proc.pid) else [])]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
