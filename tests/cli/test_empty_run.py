"""A run whose every item is rejected says so and finalizes nothing, unless `--allow-empty` is given."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str, home: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "DATAFLUX_HOME": str(home)})


def _tones(tmp_path: Path, seconds: float, n: int = 4) -> Path:
    """A folder of `n` tones of `seconds` each and its config (the filters keep clips of at least 0.2 s)."""
    folder = tmp_path / "clips"
    folder.mkdir()
    t = np.arange(int(16000 * seconds)) / 16000
    for i in range(n):
        sf.write(folder / f"blip_{i}.wav", 0.3 * np.sin(2 * np.pi * (300 + 100 * i) * t), 16000)
    config = yaml.safe_load((ROOT / "data_catalog.yaml").read_text())
    config.pop("schedules", None)
    config["sources"] = {"blips": {"kind": "folder", "path": str(folder), "taxonomy": ["Recording"]}}
    config["run"]["partitions"] = 2
    path = tmp_path / "data_catalog.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.mark.slow
def test_an_all_rejected_run_exits_2_naming_its_reasons_and_finalizes_only_with_allow_empty(tmp_path):
    config, home = _tones(tmp_path, 0.05), tmp_path / "home"

    refused = _cli("run", "--config", str(config), "--quiet", home=home, cwd=tmp_path)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    line = refused.stderr.strip()
    assert len(line.splitlines()) == 1, refused.stderr
    assert "v0001-blips has no rows: all 4 items rejected" in line and "quality:too_short=4" in line, line
    assert "--allow-empty" in line and "(finalized)" not in refused.stdout
    versions = json.loads(_cli("versions", "--config", str(config), "--json", home=home, cwd=tmp_path).stdout)
    assert [(v["version_id"], v["status"]) for v in versions] == [("v0001-blips", "draft")]

    # the same run again resumes the draft: still nothing to keep, still refused
    again = _cli("run", "--config", str(config), "--quiet", "--json", home=home, cwd=tmp_path)
    assert again.returncode == 2, again.stderr
    assert json.loads(again.stdout)["empty"] == {"items": 4, "top_rejects": {"filter/quality:too_short": 4}}

    allowed = _cli("run", "--config", str(config), "--quiet", "--json", "--allow-empty", home=home, cwd=tmp_path)
    assert allowed.returncode == 0, allowed.stderr
    summary = json.loads(allowed.stdout)
    assert summary["version"] == "v0001-blips" and summary["finalized"]["n_rows"] == 0
    assert summary["finalized"]["status"] == "finalized" and allowed.stderr.strip() == ""


def test_demo_takes_allow_empty_and_refuses_an_empty_version_in_one_line(capsys):
    from cli.main import _refused_empty, build_parser

    summary = {"version": "v0003-demo", "empty": {"items": 7, "top_rejects": {"judge/judge_discard": 5,
                                                                             "filter/quality:too_short": 2}}}
    refusing = build_parser().parse_args(["demo", "--size", "7"])
    assert _refused_empty(refusing, summary) is True
    line = capsys.readouterr().err
    assert line.count("\n") == 1 and line.startswith("dataflux demo: error: version v0003-demo has no rows")
    assert "judge/judge_discard=5, filter/quality:too_short=2" in line and "--allow-empty" in line
    assert _refused_empty(build_parser().parse_args(["demo", "--allow-empty"]), summary) is False
    assert _refused_empty(refusing, {"version": "v0004-demo", "rows": 3}) is False
    assert capsys.readouterr().err == ""
