"""Questions that need the audio, end to end: a real demo run's question rows record what was answered
without their audio (`audio_needed`, `text_only_answers`), other tasks leave both null, and `stats` and the
version report count the rows answerable from their text alone, per leaf and overall."""

from __future__ import annotations

import duckdb
import pytest

from dataflux.config import demo_config
from dataflux.report import summary_markdown
from dataflux.storage.catalog import Catalog
from dataflux.storage.example_row import make_example_row, tone_wav_bytes
from tests.helpers.pitch_version import finished_version


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    home = tmp_path_factory.mktemp("audio-needed-home")
    mp = pytest.MonkeyPatch()
    mp.setenv("DATAFLUX_HOME", str(home))
    from flows.synthesize import run_synthesis  # imported here: Prefect reads DATAFLUX_HOME's settings at import

    config = demo_config(size=12, seed=3, error_rate=0.0, partitions=2, tasks=["mcq", "caption", "open_qa"])
    summary = run_synthesis(config, name="demo")
    yield Catalog(config.catalog_path, read_only=True), summary["version"]
    mp.undo()


def test_every_question_row_records_its_text_only_answers_and_other_tasks_leave_them_null(small_demo):
    catalog, vid = small_demo
    paths = catalog.shard_paths(vid)
    rows = duckdb.sql(f"SELECT coalesce(task, 'mcq') AS task, audio_needed, text_only_answers, calls "
                      f"FROM read_parquet({paths!r})").fetchall()
    questions = [r for r in rows if r[0] == "mcq"]
    others = [r for r in rows if r[0] != "mcq"]
    assert questions and others
    for _, needed, answers, calls in questions:
        assert needed is not None and len(answers) == 1
        assert answers[0]["model"] == "reference-text-only@1" and answers[0]["sees_audio"] is False
        # the text-only call is in the row's provenance like every other call
        assert any(c["model"] == "reference-text-only@1" and c["step"] == "answer" for c in calls)
    assert all(needed is None and answers is None for _, needed, answers, _ in others)


def test_stats_and_report_count_the_questions_asked_without_audio(small_demo):
    catalog, vid = small_demo
    stats = catalog.stats(vid)
    blind = stats["text_answerable"]
    assert blind["asked"] == stats["rows_per_task"]["mcq"]
    assert sum(d["asked"] for d in blind["by_leaf"].values()) == blind["asked"]
    assert set(blind["by_leaf"]) == set(stats["samples_per_category"])
    # the demo's question templates never name an option, so no question gives itself away
    assert blind["text_answerable"] == 0 and blind["share"] == 0.0
    assert "answerable without the audio" in summary_markdown(catalog, vid)


def test_stats_count_text_answerable_rows_per_leaf_with_their_share(tmp_path):
    def row(i: int, l3: str, needed: bool | None):
        return make_example_row(f"clip-{i}", l3=l3, audio_bytes=tone_wav_bytes(200.0 + 40 * i), audio_needed=needed,
                                text_only_answers=None if needed is None else [])

    rows = [row(0, "tone_pitch", False), row(1, "tone_pitch", True), row(2, "tone_pitch", True),
            row(3, "loudness", False), row(4, "loudness", None)]
    vid = finished_version(tmp_path, rows)
    catalog = Catalog(tmp_path / "catalog.duckdb", read_only=True)
    blind = catalog.stats(vid)["text_answerable"]
    assert (blind["asked"], blind["text_answerable"]) == (4, 2) and blind["share"] == 0.5
    assert blind["by_leaf"]["tone_pitch"] == {"asked": 3, "text_answerable": 1, "share": pytest.approx(1 / 3)}
    assert blind["by_leaf"]["loudness"] == {"asked": 1, "text_answerable": 1, "share": 1.0}
    markdown = summary_markdown(catalog, vid)
    assert "2 of 4 questions (50.0%" in markdown
    assert "| loudness | 1 | 1 (100.0%) |" in markdown and "| tone_pitch | 3 | 1 (33.3%) |" in markdown
