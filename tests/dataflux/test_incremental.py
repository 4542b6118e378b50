"""Incremental versions: unchanged sources are reused by hash, only what changed is processed."""

from __future__ import annotations

import pytest

from dataflux.config import config_from_dict
from dataflux.incremental import plan_reuse, source_states
from dataflux.storage.catalog import Catalog

pytestmark = pytest.mark.slow


def _config(sources: dict[str, dict]) -> object:
    return config_from_dict({
        "version": 1,
        "sources": {name: {"kind": "demo", "size": 10, "error_rate": 0.2, **spec} for name, spec in sources.items()},
        "run": {"partitions": 2, "task_runner": "threads"},
    })


def _run(config, name):
    from flows.synthesize import run_synthesis

    summary = run_synthesis(config, name=name)
    assert summary["status"] == "completed", summary
    return summary


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory):
    """v1 from source `tones` alone; v2 after adding source `more` to the config."""
    home = tmp_path_factory.mktemp("incremental-home")
    mp = pytest.MonkeyPatch()
    mp.setenv("DATAFLUX_HOME", str(home))
    one = _config({"tones": {"seed": 0}})
    two = _config({"tones": {"seed": 0}, "more": {"seed": 1}})
    v1 = _run(one, "one")
    v2 = _run(two, "two")
    yield Catalog(two.catalog_path), one, two, v1, v2
    mp.undo()


def test_adding_a_source_processes_only_that_source(two_versions):
    _, _, _, v1, v2 = two_versions
    assert v1["partitions_done"] == 2 and v1["partitions_reused"] == 0 and v1["sources_processed"] == ["tones"]
    assert v2["sources_reused"] == ["tones"]
    assert v2["partitions_reused"] == 2
    assert v2["sources_processed"] == ["more"]
    assert v2["partitions_done"] == 2  # the two partitions of `more`, nothing else went through the loop
    assert v2["items"] == 10  # the items counted by processing: only `more`'s


def test_reused_partitions_share_shards_rejects_and_ledger(two_versions):
    catalog, _, _, v1, v2 = two_versions
    old = {s["partition_key"]: s for s in catalog.shards(v1["version"])}
    new = {s["partition_key"]: s for s in catalog.shards(v2["version"])}
    for key, s in old.items():
        assert new[key]["sha256"] == s["sha256"] and new[key]["path"] == s["path"]
    stats1, stats2 = catalog.stats(v1["version"]), catalog.stats(v2["version"])
    assert stats2["rows"] > stats1["rows"]
    assert stats2["planted_errors"] >= stats1["planted_errors"]
    with catalog._connect() as con:
        n1 = con.execute("SELECT count(*) FROM items WHERE version_id = ? AND source = 'tones'",
                         [v1["version"]]).fetchall()[0][0]
        n2 = con.execute("SELECT count(*) FROM items WHERE version_id = ? AND source = 'tones'",
                         [v2["version"]]).fetchall()[0][0]
    assert n1 == n2 == 10
    assert catalog.verify(v2["version"]) == []


def test_incremental_version_has_the_content_of_a_full_rebuild(two_versions, tmp_path, monkeypatch):
    _, _, two, _, v2 = two_versions
    monkeypatch.setenv("DATAFLUX_HOME", str(tmp_path / "fresh"))
    fresh = _run(_config({"tones": {"seed": 0}, "more": {"seed": 1}}), "fresh")
    assert fresh["partitions_reused"] == 0 and fresh["partitions_done"] == 4
    assert fresh["finalized"]["content_sha256"] == v2["finalized"]["content_sha256"]


def test_rerun_with_nothing_changed_processes_nothing(two_versions, monkeypatch):
    catalog, _, two, _, v2 = two_versions
    monkeypatch.setenv("DATAFLUX_HOME", str(catalog.path.parent))
    v3 = _run(two, "three")
    assert v3["partitions_done"] == 0 and v3["partitions_reused"] == 4
    assert v3["sources_processed"] == []
    assert v3["finalized"]["content_sha256"] == v2["finalized"]["content_sha256"]


def test_changed_source_config_is_processed_again(two_versions, monkeypatch):
    catalog, _, _, _, _ = two_versions
    monkeypatch.setenv("DATAFLUX_HOME", str(catalog.path.parent))
    changed = _config({"tones": {"seed": 0, "error_rate": 0.0}, "more": {"seed": 1}})
    v4 = _run(changed, "four")
    assert v4["sources_processed"] == ["tones"] and v4["sources_reused"] == ["more"]
    assert v4["partitions_done"] == 2 and v4["partitions_reused"] == 2


def test_drafts_and_other_partition_counts_are_never_reused(two_versions):
    catalog, _, two, _, _ = two_versions
    states = source_states(two, ["tones"])
    assert {p.source for p in plan_reuse(catalog, states)} == {"tones"}
    other = {"tones": {**states["tones"], "partitions": 3}}
    assert plan_reuse(catalog, other) == []
    draft = catalog.create_version(name="draft", notes={"source_states": other})
    assert plan_reuse(catalog, other) == []  # only finalized versions lend partitions
    assert catalog.get_version(draft)["status"] == "draft"


def test_no_reuse_processes_everything(two_versions, monkeypatch):
    from flows.synthesize import run_synthesis

    catalog, _, two, _, _ = two_versions
    monkeypatch.setenv("DATAFLUX_HOME", str(catalog.path.parent))
    summary = run_synthesis(two, sources=["more"], name="again", reuse=False)
    assert summary["partitions_reused"] == 0 and summary["partitions_done"] == 2
