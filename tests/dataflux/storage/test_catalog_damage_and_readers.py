"""The catalog file under stress: a damaged file is diagnosed read-only and left as it is, a reader
never keeps a writer waiting, `sql` streams a huge result in bounded memory, and every command
picks its catalog by one rule."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dataflux.home import config_file, default_catalog_path
from dataflux.storage.catalog import Catalog, CatalogDamaged, CatalogError

ROOT = Path(__file__).resolve().parents[3]
PEAK_RSS_BOUND_MB = 500  # before streaming, `SELECT * FROM range(50000000)` peaked at 4.4 GB


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cli(home: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATAFLUX_HOME": str(home), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=home, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _cut_short(path: Path) -> None:
    """A real catalog with its last 100 KB cut off, as an interrupted copy leaves it."""
    cat = Catalog(path)
    cat.create_version("whole")
    with cat.transaction() as con:  # some bulk, so the file spans several blocks
        con.execute("INSERT INTO calls SELECT 'h' || range, 's', 'm', '{}', 0, 0, 0, 0, NULL FROM range(200000)")
    os.truncate(path, path.stat().st_size - 100_000)


DAMAGE = {
    "garbage": lambda p: p.write_bytes(os.urandom(50_000)),
    "empty": lambda p: p.write_bytes(b""),
    "text": lambda p: p.write_text("version: 1\nsources: {}\n" * 1000),
    "cut_short": _cut_short,
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_a_damaged_catalog_is_one_line_naming_the_file_and_its_bytes_stay(tmp_path, kind):
    path = tmp_path / "catalog.duckdb"
    DAMAGE[kind](path)
    before = _sha256(path)
    with pytest.raises(CatalogDamaged) as err:
        Catalog(path)  # opening for writing is what used to change a damaged file
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "move it aside" in message, message
    assert "another process" not in message
    assert _sha256(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalog.duckdb"]  # no WAL, nothing beside it


def test_a_garbage_catalog_fails_commands_in_one_line_with_exit_2_and_stays_unchanged(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    path = home / "catalog.duckdb"
    path.write_bytes(os.urandom(50_000))
    before = _sha256(path)
    for args in (("versions",), ("sql", "SELECT 1"), ("demo", "--size", "4", "--partitions", "1", "--quiet")):
        done = _cli(home, *args)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, (args, done.stderr)
        assert str(path) in lines[0] and "damaged" in lines[0] and "another process" not in lines[0], lines[0]
        assert _sha256(path) == before, args


_READER = textwrap.dedent("""
    import sys, time
    from dataflux.storage.catalog import Catalog
    with Catalog(sys.argv[1], read_only=True).stream("SELECT * FROM range(10000000)", limit=None) as result:
        batches = result.batches()
        next(batches)
        print("reading", flush=True)
        time.sleep(float(sys.argv[2]))  # a slow reader: the result stays open
        print(sum(b.num_rows for b in batches) + 2048, flush=True)
""")


def test_a_long_read_does_not_keep_a_writer_waiting(tmp_path):
    path = tmp_path / "catalog.duckdb"
    Catalog(path).create_version("first")
    reader = subprocess.Popen([sys.executable, "-c", _READER, str(path), "4"], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert reader.stdout.readline().strip() == "reading"
        writer = Catalog(path, lock_timeout_s=1.0)  # gives up after 1 s on the lock
        started = time.monotonic()
        vid = writer.create_version("while-reading")
        assert time.monotonic() - started < 3.0  # inside the reader's 4 s: it did not wait for the read (slack for load)
        assert writer.get_version(vid)["name"] == "while-reading"
        assert reader.poll() is None, "the reader was still reading while the writer wrote"
        assert reader.stdout.readline().strip() == "10000000"
    finally:
        reader.wait(timeout=60)
    assert reader.returncode == 0


_PEAK_OF_CHILD = textwrap.dedent("""
    import resource, subprocess, sys
    done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(peak_mb); print(done.returncode); sys.stdout.write(done.stdout[-2000:]); sys.stderr.write(done.stderr)
""")


def _peak_rss_mb(argv: list[str], env: dict, cwd: Path) -> tuple[float, int, str, str]:
    """Run `argv` as the only child of a fresh process, whose RUSAGE_CHILDREN is then argv's peak alone."""
    done = subprocess.run([sys.executable, "-c", _PEAK_OF_CHILD, *argv], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)
    peak, rc, *out = done.stdout.split("\n", 2)
    return float(peak), int(rc), (out[0] if out else ""), done.stderr


_STREAM_ALL = textwrap.dedent("""
    import json, sys
    from dataflux.storage.catalog import Catalog
    cat = Catalog(sys.argv[1])
    with cat.stream("SELECT * FROM range(50000000)") as cut:
        shown = sum(b.num_rows for b in cut.batches())
    with cat.stream("SELECT * FROM range(50000000)", limit=None) as whole:
        every = sum(b.num_rows for b in whole.batches())
    print(json.dumps({"shown": shown, "cut": cut.cut, "every": every, "uncut": whole.cut}))
""")


def test_sql_of_fifty_million_rows_streams_in_bounded_memory(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DATAFLUX_HOME": str(tmp_path)}
    peak, rc, out, err = _peak_rss_mb([sys.executable, "-c", _STREAM_ALL, str(tmp_path / "catalog.duckdb")],
                                      env, tmp_path)
    assert rc == 0, err
    assert json.loads(out.strip().splitlines()[-1]) == {"shown": 10_000, "cut": 49_990_000, "every": 50_000_000,
                                                        "uncut": 0}
    assert peak < PEAK_RSS_BOUND_MB, f"peak RSS {peak:.0f} MB"

    Catalog(tmp_path / "catalog.duckdb")
    peak, rc, out, err = _peak_rss_mb([sys.executable, "-m", "cli", "sql", "SELECT * FROM range(50000000)"],
                                      env, tmp_path)
    assert rc == 0, err
    assert err.strip().splitlines()[-1].startswith("(49990000 more rows not shown: raise --limit"), err
    assert peak < PEAK_RSS_BOUND_MB, f"peak RSS {peak:.0f} MB"


def test_sql_limit_cuts_and_says_how_many_rows_it_left_out(tmp_path):
    cat = Catalog(tmp_path / "catalog.duckdb")
    for name in "abc":
        cat.create_version(name)
    with cat.stream("SELECT version_id FROM versions ORDER BY seq", limit=2, batch_rows=1) as result:
        rows = [r for b in result.batches() for r in b.to_pylist()]
    assert result.columns == ["version_id"] and result.cut == 1
    assert rows == [{"version_id": "v0001-a"}, {"version_id": "v0002-b"}]
    assert cat.query("SELECT version_id FROM versions ORDER BY seq")[1] == [("v0001-a",), ("v0002-b",), ("v0003-c",)]
    with pytest.raises(CatalogError, match="read-only"):
        with cat.stream("DELETE FROM versions"):
            pass
    assert len(cat.list_versions()) == 3


def _choices(home: Path | None, cwd: Path, monkeypatch, named: str | None = None) -> set[str]:
    """The catalog path each command would use: the data commands, train, and the ops commands."""
    from cli import ops, train
    from cli.catalog_choice import open_catalog

    monkeypatch.chdir(cwd)
    if home is None:
        monkeypatch.delenv("DATAFLUX_HOME", raising=False)
    else:
        monkeypatch.setenv("DATAFLUX_HOME", str(home))
    data = open_catalog(argparse.Namespace(config=named)).path
    trained = train._catalog_path(argparse.Namespace(catalog=None, data_config=named))
    opsed = ops._config(argparse.Namespace(config=named)).catalog_path
    return {str(Path(p).resolve()) for p in (data, trained, opsed)}


def test_every_command_picks_the_same_catalog_by_one_rule(tmp_path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    (project / "data_catalog.yaml").write_text(
        "version: 1\nstorage: {catalog: ./state/cat.duckdb}\nsources: {d: {kind: demo, size: 4}}\n")
    home = tmp_path / "home"
    own = str((project / "state" / "cat.duckdb").resolve())
    # ./data_catalog.yaml applies while DATAFLUX_HOME is unset ...
    assert _choices(None, project, monkeypatch) == {own}
    assert config_file() == Path("data_catalog.yaml")
    # ... DATAFLUX_HOME, when set, decides (flows/ops.py used to read ./data_catalog.yaml regardless) ...
    assert _choices(home, project, monkeypatch) == {str((home / "catalog.duckdb").resolve())}
    assert config_file() is None and default_catalog_path() == home / "catalog.duckdb"
    # ... and a config named on the command line goes before both.
    assert _choices(home, tmp_path, monkeypatch, named=str(project / "data_catalog.yaml")) == {own}
