"""The "Your own corpus" examples (docs/corpus.md) run as written: the folder + CSV source and the `hf`
Parquet source, each through `dataflux run` and `dataflux stats` on clips made here."""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _blocks() -> list[tuple[str, str]]:
    text = (ROOT / "docs" / "corpus.md").read_text()
    return re.findall(r"```(\w+)\n(.*?)```", text, re.S)


def _make_audio(folder: Path, names: list[str]) -> None:
    folder.mkdir()
    sr = 16000
    for i, name in enumerate(names):
        t = np.arange(int(1.5 * sr)) / sr
        sf.write(folder / name, 0.05 * (i + 1) * np.sin(2 * np.pi * (220 + 110 * i) * t), sr, subtype="PCM_16")


def _dataflux(args: list[str], capsys) -> str:
    from cli.main import main

    code = main(args)
    out = capsys.readouterr().out
    assert code == 0, out[-2000:]
    return out


def test_readme_own_corpus_examples_run_end_to_end(tmp_path, dataflux_home, monkeypatch, capsys):
    blocks = _blocks()
    kinds = [k for k, _ in blocks]
    assert kinds == ["csv", "yaml", "bash", "python", "yaml", "bash"], kinds
    (csv_text, folder_yaml, folder_cmds, parquet_py, parquet_yaml, parquet_cmds) = [b for _, b in blocks]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "metadata.csv").write_text(csv_text)
    names = [line.split(",", 1)[0] for line in csv_text.splitlines()[1:] if line.strip()]
    _make_audio(tmp_path / "audio", names)
    (tmp_path / "data_catalog.yaml").write_text(folder_yaml + parquet_yaml + "run:\n  partitions: 2\n")
    proc = subprocess.run([sys.executable, "-c", parquet_py], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]

    for source, cmds in (("mine", folder_cmds), ("mine_parquet", parquet_cmds)):
        version = None
        for line in cmds.splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            words = shlex.split(line)
            assert words[0] == ".venv/bin/dataflux"
            args = [w.replace("VERSION", version or "VERSION") for w in words[1:]]
            if args[0] == "stats":
                args.append("--json")
            out = _dataflux(args, capsys)
            if args[0] == "run":
                version = re.search(r"^(v\d+-\S+): completed, (\d+) rows", out, re.M).group(1)
                assert "(finalized)" in out
        assert version is not None, f"docs/corpus.md runs no {source} version"
        stats = json.loads(_dataflux(["stats", version, "--json"], capsys))
        assert stats["rows"] > 0 and stats["questions_per_clip"]["mean"] >= 1
        assert "sound_source" in stats["categories_per_source"][source]
        assert sum(stats["items_by_status"].values()) == len(names)  # every clip in the version or rejected
        assert not any(k.startswith("source/") for k in stats["rejects_by_reason"]), stats["rejects_by_reason"]
