"""Hostile files that look ordinary: FIFOs, sockets and devices are rejects with a reason, never
opened; a NUL byte in one path cell is that row's reject; the config's YAML cannot explode or
define a source twice; bad values are cut in messages.

Each case that could hang runs under a watchdog (`_within`), so a regression fails instead of
blocking the suite.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from dataflux.config import ConfigError, config_from_dict, load_config
from dataflux.records import Reject, SourceItem
from dataflux.regular_file import NOT_REGULAR
from dataflux.sources.folder import FolderSource
from dataflux.sources.hf import HFSource
from dataflux.sources.manifest import ManifestSource
from dataflux.yaml_io import YamlError, load_yaml


def _within(seconds: float, fn, *args, **kwargs):
    """fn(*args) in a daemon thread; fails the test if it has not returned after `seconds` (a FIFO open blocks)."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # re-raised in the test's thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{getattr(fn, '__name__', fn)} still running after {seconds} s (hung on a special file?)"
    if "error" in box:
        raise box["error"]
    return box["value"]


def _wav(path: Path) -> None:
    sf.write(path, 0.2 * np.sin(np.arange(8000) / 5), 16000, subtype="PCM_16")


def _all(source, n: int = 2) -> list:
    return [x for p in range(n) for x in source.iter_items(p, n)]


@pytest.fixture
def specials(tmp_path):
    """root/ holds good.wav, a FIFO, a unix socket, a character device (/dev/zero's numbers) and a
    block-device-free tree; all named like audio."""
    root = tmp_path / "root"
    root.mkdir()
    _wav(root / "good.wav")
    os.mkfifo(root / "pipe.wav")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock.wav"))
    made = {"good.wav", "pipe.wav", "sock.wav"}
    try:
        os.mknod(root / "zero.wav", 0o600 | stat.S_IFCHR, os.makedev(1, 5))
        made.add("zero.wav")
    except PermissionError:  # not root: the device case is covered through a symlink below
        (root / "zero.wav").symlink_to("/dev/zero")
        made.add("zero.wav")
    yield root, made
    sock.close()


def test_a_folder_listing_rejects_fifos_sockets_and_devices_with_a_reason(specials):
    root, made = specials
    out = _within(20, _all, FolderSource("f", root, allow_outside_root=True))
    kept = {x.source_id for x in out if isinstance(x, SourceItem)}
    rejected = {x.source_id: x for x in out if isinstance(x, Reject)}
    assert kept == {"good.wav"}
    assert set(rejected) == made - {"good.wav"}
    assert {r.reason for r in rejected.values()} == {NOT_REGULAR}
    assert "FIFO" in rejected["pipe.wav"].detail and "socket" in rejected["sock.wav"].detail
    assert "character device" in rejected["zero.wav"].detail
    assert FolderSource("f", root).fingerprint() != ""  # fingerprinting does not open them either


def test_manifest_rows_naming_special_files_are_rejects_and_the_rest_goes_on(specials):
    root, made = specials
    manifest = root / "labels.jsonl"
    manifest.write_text("".join(json.dumps({"file": f, "label": "tone"}) + "\n" for f in sorted(made)))
    source = ManifestSource("m", manifest, allow_outside_root=True)
    out = _within(20, _all, source)
    assert {x.source_id for x in out if isinstance(x, SourceItem)} == {"good.wav"}
    bad = {x.source_id: x for x in out if isinstance(x, Reject)}
    assert set(bad) == made - {"good.wav"} and {r.reason for r in bad.values()} == {NOT_REGULAR}
    assert f"{manifest}:" in bad["pipe.wav"].detail  # names the manifest and row
    _within(20, source.fingerprint)


@pytest.mark.parametrize("target", ["fifo", "/dev/zero", "/dev/urandom"])
def test_a_manifest_that_is_not_a_regular_file_is_refused_before_it_is_read(tmp_path, target):
    path = tmp_path / "labels.csv"
    if target == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to(target)
    with pytest.raises(ValueError, match="not a regular file"):
        _within(10, ManifestSource, "m", path)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_nul_byte_in_one_path_cell_rejects_that_row_only(tmp_path, fmt):
    _wav(tmp_path / "good.wav")
    rows = [{"id": "good", "file": "good.wav"}, {"id": "nul", "file": "bad\x00.wav"}]
    if fmt == "csv":
        text = "id,file\n" + "".join(f"{r['id']},{r['file']}\n" for r in rows)
    else:
        text = "".join(json.dumps(r) + "\n" for r in rows)
    manifest = tmp_path / f"labels.{fmt}"
    manifest.write_text(text)
    source = ManifestSource("m", manifest, fields={"id": "id"})
    out = _all(source)
    assert {x.source_id for x in out if isinstance(x, SourceItem)} == {"good"}
    (bad,) = [x for x in out if isinstance(x, Reject)]
    assert (bad.source_id, bad.reason) == ("nul", "bad_field") and "NUL byte" in bad.detail
    source.fingerprint()  # the fingerprint and the folder's listed files skip the cell too
    source.listed_files()


def test_a_nul_byte_in_a_parquet_path_cell_rejects_that_row_only(tmp_path):
    _wav(tmp_path / "good.wav")
    table = pa.table({"id": ["good", "nul"], "audio": [str(tmp_path / "good.wav"), str(tmp_path / "x\x00.wav")]})
    pq.write_table(table, tmp_path / "data.parquet")
    out = _all(HFSource("h", str(tmp_path / "data.parquet"), fields={"id": "id"}))
    assert {x.source_id for x in out if isinstance(x, SourceItem)} == {"good"}
    (bad,) = [x for x in out if isinstance(x, Reject)]
    assert (bad.source_id, bad.reason) == ("nul", "bad_field") and "NUL byte" in bad.detail


def test_a_parquet_path_cell_naming_a_fifo_is_a_reject(tmp_path):
    os.mkfifo(tmp_path / "pipe.wav")
    pq.write_table(pa.table({"audio": [str(tmp_path / "pipe.wav")]}), tmp_path / "data.parquet")
    out = _within(60, _all, HFSource("h", str(tmp_path / "data.parquet")))
    assert [(type(x), x.reason) for x in out] == [(Reject, NOT_REGULAR)]


# --- the config's YAML ----------------------------------------------------------------------------

def _alias_bomb(levels: int = 9, width: int = 9) -> str:
    names = [f"l{i}" for i in range(levels + 1)]
    text = f"{names[0]}: &{names[0]} [" + ", ".join(["lol"] * width) + "]\n"
    for prev, name in zip(names, names[1:]):
        text += f"{name}: &{name} [" + ", ".join([f"*{prev}"] * width) + "]\n"
    return text


def test_a_yaml_alias_bomb_is_refused_before_it_expands():
    bomb = _alias_bomb()
    assert len(bomb) < 1024  # the 768-byte kind of file of the report
    with pytest.raises(YamlError, match="expands to over 100,000 values"):
        load_yaml(bomb, origin="data_catalog.yaml")
    assert load_yaml(_alias_bomb(2, 3), origin="ok")["l2"] == [[["lol"] * 3] * 3] * 3  # a few aliases still load


def test_a_yaml_alias_bomb_in_the_config_is_a_config_error(tmp_path):
    path = tmp_path / "data_catalog.yaml"
    path.write_text("version: 1\n" + _alias_bomb() + "sources: {d: {kind: demo}}\n")
    with pytest.raises(ConfigError, match="aliases"):
        load_config(path)


def test_a_source_given_twice_is_an_error_naming_both_lines(tmp_path):
    path = tmp_path / "data_catalog.yaml"
    path.write_text("version: 1\nsources:\n  a: {kind: demo, size: 4}\n  b: {kind: demo}\n  a: {kind: demo, size: 8}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "'a' is given twice (first on line 3)" in str(err.value) and f"{path}:5:" in str(err.value)
    assert "\n" not in str(err.value)


def test_a_config_that_is_a_fifo_is_refused_without_opening_it(tmp_path):
    path = tmp_path / "data_catalog.yaml"
    os.mkfifo(path)
    with pytest.raises(ConfigError, match="FIFO"):
        _within(10, load_config, path)


@pytest.mark.parametrize("field,value", [("partitions", 100_000_000), ("task_retries", 1000),
                                         ("concurrency", 10**9)])
def test_config_numbers_have_upper_bounds(field, value):
    with pytest.raises(ConfigError, match=f"run.{field}"):
        config_from_dict({"version": 1, "sources": {"d": {"kind": "demo"}}, "run": {field: value}})


@pytest.mark.parametrize("name", ["../escape", "a/b", "/abs", ".hidden", "-dash", "x" * 65, "sp ace", "nul\x00"])
def test_source_names_are_data_not_paths(name):
    with pytest.raises(ConfigError, match="sources"):
        config_from_dict({"version": 1, "sources": {name: {"kind": "demo"}}})


def test_a_long_bad_value_is_cut_in_the_message():
    with pytest.raises(ConfigError) as err:
        config_from_dict({"version": 1, "sources": {"d": {"kind": "demo", "license": ["x" * 1_000_000]}}})
    assert len(str(err.value)) < 1000 and "more characters" in str(err.value)


@pytest.mark.parametrize("name", ["../v0001", "v1/../../x", "", ".", "a" * 65])
def test_a_version_to_resume_must_be_a_safe_name(name):
    from dataflux.config import check_name

    with pytest.raises(ConfigError, match="--version: .* is not a usable name"):
        check_name(name, what="--version")
    assert check_name("v0003-demo", what="--version") == "v0003-demo"
