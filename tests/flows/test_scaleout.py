"""Scale-out: the synthesis flow on a local Ray cluster, and a version on an S3 API (moto's server),
both giving the same version content hash as the plain local run."""

from __future__ import annotations

import pytest

from dataflux.config import config_from_dict
from dataflux.storage.catalog import Catalog

pytestmark = pytest.mark.slow

SOURCES = {"demo": {"kind": "demo", "size": 16, "seed": 5, "error_rate": 0.2}}


def _config(**extra):
    raw = {"version": 1, "sources": SOURCES, "run": {"partitions": 2, "task_runner": "threads"}}
    for key, value in extra.items():
        raw[key] = {**raw.get(key, {}), **value}
    return config_from_dict(raw)


def _run(config, name):
    from flows.synthesize import run_synthesis

    summary = run_synthesis(config, name=name)
    assert summary["status"] == "completed", summary
    return summary


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("DATAFLUX_HOME", str(tmp_path_factory.mktemp("local-home")))
    summary = _run(_config(), "local")
    yield summary
    mp.undo()


def test_ray_run_gives_the_same_content_hash_as_the_local_run(local_run, tmp_path, monkeypatch):
    pytest.importorskip("prefect_ray")
    from prefect_ray import RayTaskRunner

    from flows import prefect_env
    from flows.synthesize import task_runner_for

    monkeypatch.setenv("DATAFLUX_HOME", str(tmp_path / "ray-home"))
    for key, value in prefect_env.RAY.items():
        monkeypatch.setenv(key, value)
    config = _config(run={"task_runner": "ray"})
    runner = task_runner_for(config)
    assert isinstance(runner, RayTaskRunner)
    assert runner.init_kwargs["include_dashboard"] is False
    summary = _run(config, "ray")
    assert summary["partitions_done"] == 2
    assert summary["finalized"]["content_sha256"] == local_run["finalized"]["content_sha256"]
    assert summary["finalized"]["n_rows"] == local_run["finalized"]["n_rows"]
    # the runner started its own local cluster and shut it down with the flow
    import ray

    assert not ray.is_initialized()


@pytest.fixture
def s3_server():
    """moto's S3 API in server mode on 127.0.0.1 (a real HTTP server on a free port), with one bucket."""
    pytest.importorskip("moto")
    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    pafs.S3FileSystem(endpoint_override=f"{host}:{port}", scheme="http", access_key="df-test-key",
                      secret_key="df-test-secret", region="us-east-1",
                      allow_bucket_creation=True).create_dir("dataflux-test")
    yield endpoint
    server.stop()


def test_s3_version_is_written_finalized_and_read_back_with_the_local_content_hash(
        local_run, s3_server, tmp_path, monkeypatch):
    import pyarrow.fs as pafs

    from dataflux.report import read_version_rows
    from dataflux.storage.shards import read_shard

    monkeypatch.setenv("DATAFLUX_HOME", str(tmp_path / "s3-home"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for var in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(var, raising=False)  # restored after the test: the run sets them from the config
    monkeypatch.setenv("DF_TEST_S3_KEY", "df-test-key")
    monkeypatch.setenv("DF_TEST_S3_SECRET", "df-test-secret")
    config = _config(storage={"root": "s3://dataflux-test/versions", "s3": {
        "endpoint_url": s3_server, "region": "us-east-1",
        "access_key_env": "DF_TEST_S3_KEY", "secret_key_env": "DF_TEST_S3_SECRET"}})
    summary = _run(config, "s3")
    vid = summary["version"]
    assert summary["finalized"]["content_sha256"] == local_run["finalized"]["content_sha256"]

    catalog = Catalog(config.catalog_path)
    paths = catalog.shard_paths(vid)  # finalized, every shard re-hashed
    assert paths and all(p.startswith(f"s3://dataflux-test/versions/{vid}/") for p in paths)
    assert not (tmp_path / "s3-home" / "shards").exists()  # nothing went to local disk
    s3 = pafs.S3FileSystem(endpoint_override=s3_server.split("://")[1], scheme="http", access_key="df-test-key",
                           secret_key="df-test-secret", region="us-east-1")
    listed = s3.get_file_info(pafs.FileSelector(f"dataflux-test/versions/{vid}"))
    assert sorted(f"s3://{i.path}" for i in listed) == sorted(paths)
    rows = read_version_rows(catalog, vid, ["sample_id", "row_sha256"])
    assert rows.num_rows == summary["finalized"]["n_rows"]
    first = catalog.shards(vid)[0]
    table = read_shard(first["path"], first["sha256"])
    assert table.column("audio").to_pylist()[0]["bytes"][:4] == b"RIFF"
    assert catalog.verify(vid) == []
