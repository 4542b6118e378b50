from pathlib import Path

import pytest
import yaml

from dataflux.config import ConfigError, config_from_dict, load_config


def test_shipped_data_catalog_is_valid():
    config = load_config("data_catalog.yaml")
    assert "demo" in config.sources
    assert len(config.data["steps"]["answerers"]) >= 2


def test_bad_field_type_names_file_and_field_path(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "sources": {"demo": {"kind": "demo", "size": "lots"}}}))
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(path) in str(exc.value)
    assert "sources.demo.size" in str(exc.value)


def test_missing_path_for_folder_source_is_reported():
    with pytest.raises(ConfigError, match=r"sources\.esc: 'path' is a required property"):
        config_from_dict({"version": 1, "sources": {"esc": {"kind": "folder"}}}, origin="c.yaml")


def test_unknown_endpoint_reference_is_reported():
    raw = {"version": 1, "sources": {"d": {"kind": "demo"}},
           "steps": {"judge": {"backend": "openai", "endpoint": "nope"}}}
    with pytest.raises(ConfigError, match=r"steps\.judge\.endpoint: unknown endpoint 'nope'"):
        config_from_dict(raw, origin="c.yaml")


def test_api_key_must_be_an_env_var_name_not_a_key():
    raw = {"version": 1, "sources": {"d": {"kind": "demo"}},
           "endpoints": {"e": {"base_url": "http://127.0.0.1:1/v1", "model": "m", "api_key_env": "sk-live 123"}}}
    with pytest.raises(ConfigError, match=r"endpoints\.e\.api_key_env"):
        config_from_dict(raw, origin="c.yaml")


def test_unknown_top_level_key_is_reported(tmp_path):
    with pytest.raises(ConfigError, match="Additional properties"):
        config_from_dict({"version": 1, "sources": {"d": {"kind": "demo"}}, "sorces": {}}, origin="c.yaml")


def test_storage_defaults_follow_dataflux_home(dataflux_home):
    config = config_from_dict({"version": 1, "sources": {"d": {"kind": "demo"}}})
    assert config.catalog_path == str(dataflux_home / "catalog.duckdb")
    assert config.storage_root == str(dataflux_home / "shards")


def test_source_hash_changes_only_with_that_source():
    base = {"version": 1, "sources": {"a": {"kind": "demo", "size": 10}, "b": {"kind": "demo", "size": 5}}}
    c1 = config_from_dict(base)
    base["sources"]["b"]["size"] = 6
    c2 = config_from_dict(base)
    assert c1.source_sha256("a") == c2.source_sha256("a")
    assert c1.source_sha256("b") != c2.source_sha256("b")


def test_the_config_travels_as_a_snapshot_file_whose_hash_is_checked(tmp_path, monkeypatch):
    from dataflux.config import read_snapshot, write_snapshot

    monkeypatch.setenv("DATAFLUX_HOME", str(tmp_path / "home"))
    config = config_from_dict({"version": 1, "sources": {"d": {"kind": "demo", "size": 4,
                                                                "license": "x" * 700_000}}},
                              path=tmp_path / "data_catalog.yaml")
    path, sha = write_snapshot(config)
    assert Path(path).parent == tmp_path / "home" / "configs"  # in the home, never a flow parameter
    again = read_snapshot(path, sha)
    assert again.data == config.data and again.path == config.path and again.sha256 == config.sha256
    Path(path).write_text(Path(path).read_text().replace("x" * 10, "y" * 10, 1))
    with pytest.raises(ConfigError, match="changed after the run started"):
        read_snapshot(path, sha)
