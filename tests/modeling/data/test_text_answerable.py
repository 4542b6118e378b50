"""The trainer leaves out questions answerable without their audio (`audio_needed = false`) unless
`train.include_text_answerable: true`; rows never asked (null) and versions without the column are kept,
and the held-out splits keep every row so runs with and without the filter share one test set."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from dataflux.storage.catalog import Catalog
from dataflux.storage.example_row import make_example_row, tone_wav_bytes
from dataflux.storage.shards import write_shard
from modeling.data import VersionIndex
from modeling.recipe.config import TrainConfig
from modeling.recipe.setup import setup_run
from modeling.train import train
from tests.helpers.micro_config import MICRO
from tests.helpers.pitch_version import finished_version

# (split, audio_needed): two train rows answerable from the text, one held out
ROWS = [("train", False), ("train", True), ("train", None), ("train", False), ("test", False), ("validation", True)]


def _rows():
    return [make_example_row(f"clip-{i}", audio_bytes=tone_wav_bytes(200.0 + 50 * i), split=split,
                             audio_needed=needed, text_only_answers=None if needed is None else [])
            for i, (split, needed) in enumerate(ROWS)]


@pytest.fixture
def shard(tmp_path) -> str:
    path = str(tmp_path / "s.parquet")
    write_shard(_rows(), path)
    return path


def test_text_answerable_train_rows_are_left_out_and_counted(shard):
    index = VersionIndex.build([shard], include_text_answerable=False)
    assert list(index.row) == [1, 2, 4, 5]  # train rows 0 and 3 left out; the held-out row 4 stays
    assert index.text_answerable_left_out == 2
    everything = VersionIndex.build([shard], include_text_answerable=True)
    assert len(everything) == len(ROWS) and everything.text_answerable_left_out == 0


def test_a_version_written_before_the_column_keeps_every_row(shard, tmp_path):
    old = str(tmp_path / "old.parquet")
    pq.write_table(pq.read_table(shard).drop(["audio_needed", "text_only_answers"]), old)
    index = VersionIndex.build([old], include_text_answerable=False)
    assert len(index) == len(ROWS) and index.text_answerable_left_out == 0


@pytest.mark.parametrize("include, train_rows, left_out", [(False, 2, 2), (True, 4, 0)])
def test_the_trainer_applies_train_include_text_answerable(tmp_path, include, train_rows, left_out):
    vid = finished_version(tmp_path, _rows())
    preset = Path(__file__).resolve().parents[3] / "modeling" / "configs" / "tiny.yaml"
    cfg = TrainConfig.load(preset, [f"train.include_text_answerable={str(include).lower()}"])
    assert cfg.train.include_text_answerable is include
    run = setup_run(vid, cfg, tmp_path / "catalog.duckdb", tmp_path / "run", [], log=lambda _: None)
    assert len(run.index.rows_of("train")) == train_rows
    assert run.index.text_answerable_left_out == left_out
    assert len(run.index.rows_of("test")) == 1  # the held-out split is the same either way


def test_the_default_leaves_text_answerable_rows_out():
    assert TrainConfig().train.include_text_answerable is False


def test_the_training_record_says_how_many_rows_were_left_out(tmp_path):
    vid = finished_version(tmp_path, _rows())
    doc = json.loads(json.dumps(MICRO))
    doc["train"].update(max_steps=2, save_every=2)
    config = tmp_path / "micro.yaml"
    config.write_text(yaml.safe_dump(doc))
    result = train(vid, config, tmp_path / "catalog.duckdb", tmp_path / "run", evaluate=False, log=lambda _: None)
    assert result["metrics"]["rows_left_out"] == {"text_answerable": 2}
    _, rows = Catalog(tmp_path / "catalog.duckdb", read_only=True).query("SELECT metrics FROM trainings")
    assert json.loads(rows[0][0])["rows_left_out"] == {"text_answerable": 2}
