"""Version report: HTML with plots (rendered in headless Chromium), dataset card, diff, Prefect artifact."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dataflux.config import demo_config
from dataflux.report import load_version_facts, write_report
from dataflux.report.diff import diff_versions, format_diff
from dataflux.storage.catalog import Catalog, shard_path
from dataflux.storage.example_row import make_example_row, tone_wav_bytes
from dataflux.storage.shards import write_shard


@pytest.fixture(scope="module")
def demo_version(tmp_path_factory):
    """A finalized tiny demo version with planted errors, built by the real synthesize flow."""
    home = tmp_path_factory.mktemp("report-home")
    mp = pytest.MonkeyPatch()
    mp.setenv("DATAFLUX_HOME", str(home))
    from flows.synthesize import run_synthesis

    config = demo_config(size=20, seed=3, error_rate=0.25, partitions=2)
    summary = run_synthesis(config, name="report")
    assert summary["status"] == "completed"
    yield Catalog(config.catalog_path), summary
    mp.undo()


def _figure(html: str, key: str) -> str:
    m = re.search(rf'<figure id="plot-{key}".*?</figure>', html, re.S)
    assert m, f"no figure {key}"
    return m.group(0)


@pytest.mark.slow
def test_report_page_has_every_plot_with_the_figures_of_the_run(demo_version, tmp_path):
    catalog, summary = demo_version
    vid = summary["version"]
    stats = catalog.stats(vid)
    files = write_report(catalog, vid, tmp_path / "out")
    html = files.html.read_text()
    for key in ("durations", "categories", "verdicts", "answer_position", "cost", "planted"):
        assert "<svg" in _figure(html, key), key
    assert stats["planted_errors"] > 0
    planted = _figure(html, "planted")
    assert f"of {stats['planted_errors']}" in planted
    assert f"<div class=\"v\">{stats['rows']}</div>" in html  # the samples card
    assert summary["finalized"]["content_sha256"] in html
    # every step that made a call shows in the cost plot
    for step in stats["per_step"]:
        assert f">{step}<" in _figure(html, "cost")
    assert "<script" not in html and "http://" not in html.split("<svg", 1)[0]  # self-contained


@pytest.mark.slow
def test_report_facts_agree_with_the_catalog_stats(demo_version):
    catalog, summary = demo_version
    vid = summary["version"]
    facts = load_version_facts(catalog, vid)
    stats = catalog.stats(vid)
    assert facts.n_rows == stats["rows"]
    assert facts.n_clips == stats["clips"]
    assert sum(facts.per_category.values()) == stats["rows"]
    assert {k.split(" > ")[-1]: n for k, n in facts.per_category.items()} == stats["samples_per_category"]
    assert [facts.answer_position[c] for c in "ABCD"] == [stats["answer_position"].get(i, 0) for i in range(4)]
    assert facts.planted["planted_caught"] == stats["planted_caught"]
    assert sum(facts.clip_durations) == pytest.approx(stats["duration_s"]["total_clip_s"])


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="needs Chromium (Debian: apt-get install chromium)")
def test_report_renders_in_headless_chromium_with_its_plots(demo_version, tmp_path):
    from PIL import Image

    catalog, summary = demo_version
    files = write_report(catalog, summary["version"], tmp_path / "out")
    png = tmp_path / "report.png"
    profile = tmp_path / "chromium-profile"
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--no-first-run", f"--user-data-dir={profile}", "--hide-scrollbars", "--window-size=1280,2400",
           f"--screenshot={png}", files.html.as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    image = Image.open(png).convert("RGB")
    assert image.size == (1280, 2400)
    # The bars are drawn in the plots' colours: count their pixels in the rendered page.
    colours = image.getcolors(maxcolors=1 << 20)
    counts = {rgb: n for n, rgb in colours}
    blue, green = (0x3B, 0x6E, 0xA8), (0x3C, 0x8D, 0x5A)
    assert counts.get(blue, 0) > 20_000, "bar charts (categories, durations, positions) are not drawn"
    assert counts.get(green, 0) > 1_000, "verdict / planted-caught bars are not drawn"
    # the page is not blank: most pixels are background, but a good share is ink
    background = max(counts.values())
    assert background / (1280 * 2400) < 0.9


@pytest.mark.slow
def test_dataset_card_names_sources_licences_counts_and_loads_with_datasets(demo_version, tmp_path):
    import datasets

    catalog, summary = demo_version
    vid = summary["version"]
    stats = catalog.stats(vid)
    files = write_report(catalog, vid, tmp_path / "repo", copy_shards=True)
    text = files.card.read_text()
    front = yaml.safe_load(text.split("---")[1])
    assert front["license"] == "cc0-1.0"
    assert front["configs"][0]["data_files"][0]["path"] == "data/*.parquet"
    assert front["size_categories"] == ["n<1K"]
    assert "| demo | CC0-1.0 (synthesized) | 20 |" in text
    assert f"**samples**: {stats['rows']}" in text
    assert "## How it was made" in text and "reference" in text
    assert len(files.data) == len([s for s in catalog.shards(vid) if s["path"]])
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "repo" / "data" / "*.parquet"), split="train")
    assert ds.num_rows == stats["rows"]


def test_report_copy_refuses_a_tampered_shard(tmp_path):
    from dataflux.storage.shards import ChecksumMismatch

    catalog, vid = _hand_made_versions(tmp_path)[0:2]
    path = Path(catalog.shards(vid)[0]["path"])
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.chmod(0o644)  # shards are written read-only
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatch):
        write_report(catalog, vid, tmp_path / "out", copy_shards=True)


def _hand_made_versions(tmp_path):
    """Two finalized versions: v1 holds clips 0-5; v2 holds clips 2-7 with clip 3's answer changed."""
    catalog = Catalog(tmp_path / "catalog.duckdb")
    rows = {i: make_example_row(f"clip-{i}", audio_bytes=tone_wav_bytes(200 + 20 * i), answer_index=i % 4)
            for i in range(8)}
    changed = make_example_row("clip-3", audio_bytes=tone_wav_bytes(260), answer_index=3 % 4,
                               reasoning="re-measured: different reasoning")
    assert changed["sample_id"] == rows[3]["sample_id"] and changed["row_sha256"] != rows[3]["row_sha256"]
    vids = []
    for name, chosen in (("one", [rows[i] for i in range(6)]),
                         ("two", [rows[2], changed] + [rows[i] for i in range(4, 8)])):
        vid = catalog.create_version(name=name)
        info = write_shard(chosen, shard_path(tmp_path / "shards", vid, "demo-p0000-of0001"))
        catalog.commit_partition(vid, "demo-p0000-of0001", info, [], [], "run-test")
        catalog.finalize(vid)
        vids.append(vid)
    return catalog, vids[0], vids[1]


def test_diff_counts_added_removed_and_changed_samples(tmp_path):
    catalog, v1, v2 = _hand_made_versions(tmp_path)
    d = diff_versions(catalog, v1, v2)
    assert d["rows"] == {"v1": 6, "v2": 6, "added": 2, "removed": 2, "changed": 1, "unchanged": 3}
    assert d["per_category"]["tone_pitch"] == {"v1": 6, "v2": 6, "delta": 0}
    assert not d["same_content"]
    assert d["hashes"]["v1"]["content_sha256"] != d["hashes"]["v2"]["content_sha256"]
    assert len(d["added_examples"]) == 2 and len(d["changed_examples"]) == 1
    same = diff_versions(catalog, v1, v1)
    assert same["same_content"] and same["rows"]["unchanged"] == 6 and same["shards"]["shared"] == 1
    assert "+2 added, -2 removed, ~1 changed, 3 unchanged" in format_diff(d)


def test_report_and_diff_commands(tmp_path, monkeypatch, capsys):
    from cli.main import main

    catalog, v1, v2 = _hand_made_versions(tmp_path)
    monkeypatch.setenv("DATAFLUX_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert main(["diff", v1, v2, "--json"]) == 0
    out = capsys.readouterr().out
    assert '"added": 2' in out and '"changed": 1' in out
    assert main(["report", v2, "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "report.html").stat().st_size > 10_000
    assert (tmp_path / "rep" / "README.md").read_text().startswith("---\nlicense: cc0-1.0")
    assert main(["diff", v1, "v9999-nope"]) == 2
    assert "unknown version 'v9999-nope'" in capsys.readouterr().err


@pytest.mark.slow
def test_finalization_publishes_the_summary_as_a_prefect_artifact(demo_version):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.artifacts import artifact_key

    catalog, summary = demo_version
    key = artifact_key(summary["version"])

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))

    artifacts = asyncio.run(read())
    # published by the flow run that built the version, as the catalog recorded it (an earlier run of the
    # same demo, kept by Prefect, has an artifact with the same key and content but another flow run)
    flow_run_id = catalog.get_run(summary["run_id"])["flow_run_id"]
    mine = [a for a in artifacts if str(a.flow_run_id) == flow_run_id]
    assert len(mine) == 1, f"no artifact {key} from flow run {flow_run_id}: {[str(a.flow_run_id) for a in artifacts]}"
    assert mine[0].type == "markdown" and summary["finalized"]["content_sha256"] in mine[0].data
    assert f"# DataFlux version `{summary['version']}`" in mine[0].data


def test_markdown_summary_does_not_need_the_plotting_library():
    # matplotlib comes with the `ops` extra; `make demo` publishes its summary artifact without it
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from dataflux.report import summary_markdown, version_markdown\n"
            "from flows.artifacts import publish_version_artifact\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=str(Path(__file__).resolve().parents[3]))
    assert proc.returncode == 0, proc.stderr[-2000:]


HOSTILE_LICENCE = "<img src=x onerror=alert(1)> **bold** [link](http://evil)\n| injected | row |\n---\nlicense: mit"


def test_dataset_card_escapes_markdown_and_html_and_keeps_its_table_rows_whole(tmp_path):
    from dataflux.report.card import dataset_card

    catalog = Catalog(tmp_path / "catalog.duckdb")
    rows = [make_example_row(f"clip-{i}", source="evil_<b>src</b>", audio_bytes=tone_wav_bytes(200 + 20 * i),
                             license=HOSTILE_LICENCE) for i in range(2)]
    vid = catalog.create_version(name="evil")
    info = write_shard(rows, shard_path(tmp_path / "shards", vid, "evil-p0000-of0001"))
    catalog.commit_partition(vid, "evil-p0000-of0001", info, [], [], "run-test")
    catalog.finalize(vid)
    text = dataset_card(load_version_facts(catalog, vid))
    header, body = text.removeprefix("---\n").split("\n---\n", 1)
    front = yaml.safe_load(header)
    assert front["license"] == "other" and "\n" not in front["license_name"]  # the header stays one value
    assert front["license_name"].startswith("<img") and set(front) == set(yaml.safe_load(header))
    assert "<img" not in body and "<b>" not in body and "**bold**" not in body and "[link](http" not in body
    (row,) = [line for line in body.splitlines() if "evil\\_&lt;b" in line]
    assert row.startswith("| evil\\_&lt;b&gt;src&lt;/b&gt; |") or row.startswith("| evil\\_&lt;b>src&lt;/b> |")
    assert row.count(" | ") == 4 and "&#124; injected &#124; row &#124;" in row  # five cells, one line
    assert not any(line.startswith("| injected") for line in text.splitlines())
