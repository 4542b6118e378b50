"""The speech and label checks on real recordings the tests fetch (Debian packages), with planted
errors: per leaf, how many planted claims are caught and how many clean clips lose their question.

    .venv/bin/python bench/bench_real_checks.py --per-language 40 --drums 120 --plant 0.1

Corpora: Asterisk prompts (es, fr, ru; one female voice each), Fish Fillets NG dialogs (nl, cs; a
male and a female voice each), Hydrogen drum kits (instrument classes). Prints the `stats` figures
as JSON and a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.helpers import real_audio as ra  # noqa: E402  (the recordings, fetched from Debian packages)

SPEECH_FIELDS = {"file": "file", "id": "id", "transcript": "transcript", "gender": "gender", "language": "language",
                 "speaker": "speaker"}
DRUM_FIELDS = {"file": "file", "id": "id", "instrument": "instrument"}


def corpora(per_language: int, drums: int) -> tuple[list[dict], list[dict]]:
    speech, _ = ra.speech_records(("es", "fr", "ru"))
    speech = ra.subset(speech, per_language * 3, seed=3)
    for lang in ("nl", "cs"):
        recs, _ = ra.fillets_records(lang)
        recs = [r for r in recs if len(r["transcript"]) <= 200]
        speech += ra.subset(recs, per_language, seed=3, key="speaker")
    kit, _ = ra.drum_records()
    return speech, ra.subset(kit, drums, seed=3, key="instrument")


def run(args) -> tuple[dict, dict]:
    speech, kit = corpora(args.per_language, args.drums)
    tmp = Path(tempfile.mkdtemp(prefix="real-checks-"))
    cfg = yaml.safe_load((ROOT / "data_catalog.yaml").read_text())
    cfg["sources"] = {
        "speech": {"kind": "manifest", "path": str(ra.write_manifest(speech, tmp / "speech.jsonl")), "fields": SPEECH_FIELDS,
                   "allow_outside_root": True, "license": "see the Debian packages", "seed": 1,
                   "taxonomy": ["spoken_text", "spoken_language", "speaker_gender"]},
        "drums": {"kind": "manifest", "path": str(ra.write_manifest(kit, tmp / "drums.jsonl")), "fields": DRUM_FIELDS,
                  "allow_outside_root": True, "license": "see the Debian package", "seed": 1,
                  "taxonomy": ["music_instrument"]}}
    if not kit:
        del cfg["sources"]["drums"]
    cfg["storage"] = {"root": str(tmp / "shards"), "catalog": str(tmp / "catalog.duckdb")}
    cfg["run"]["partitions"] = args.partitions
    cfg.pop("schedules", None)
    (tmp / "data_catalog.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {**os.environ, "DATAFLUX_HOME": str(tmp / "home")}
    cli = [sys.executable, "-m", "cli"]
    done = subprocess.run([*cli, "run", "--config", str(tmp / "data_catalog.yaml"), "--plant-errors", str(args.plant),
                           "--json", "--quiet"], cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stdout[-3000:] + done.stderr[-3000:])
    version = json.loads(done.stdout)["version"]
    stats = subprocess.run([*cli, "stats", version, "--config", str(tmp / "data_catalog.yaml"), "--json"],
                           cwd=ROOT, env=env, capture_output=True, text=True, check=True)

    def sql(query: str) -> list[dict]:
        done = subprocess.run([*cli, "sql", query, "--config", str(tmp / "data_catalog.yaml"), "--json", "--limit", "0"],
                              cwd=ROOT, env=env, capture_output=True, text=True, check=True)
        out = json.loads(done.stdout)
        return out["rows"] if isinstance(out, dict) else out

    rows = sql(f"SELECT source_id, l3, verification FROM samples WHERE version_id = '{version}'")
    items = sql(f"SELECT source_id, planted IS NOT NULL AS planted FROM items WHERE version_id = '{version}'")
    return json.loads(stats.stdout), per_corpus(speech, rows, items)


def per_corpus(speech: list[dict], rows: list, items: list) -> dict:
    """Per corpus (language): clean clips, and the share with a measured row of each speech leaf."""
    planted = {_field(i, "source_id", 0) for i in items if _field(i, "planted", 1)}
    measured = {(_field(r, "source_id", 0), _field(r, "l3", 1)) for r in rows if _field(r, "verification", 2) == "measured"}
    out: dict[str, dict] = {}
    for r in speech:
        if r["id"] in planted:
            continue
        corpus = out.setdefault(r["language"], {"clean": 0, "spoken_text": 0, "spoken_language": 0})
        corpus["clean"] += 1
        for leaf in ("spoken_text", "spoken_language"):
            corpus[leaf] += (r["id"], leaf) in measured
    return out


def _field(row, name: str, index: int):
    return row[name] if isinstance(row, dict) else row[index]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-language", type=int, default=40)
    ap.add_argument("--drums", type=int, default=120)
    ap.add_argument("--plant", type=float, default=0.1)
    ap.add_argument("--partitions", type=int, default=1)
    stats, corpora_measured = run(ap.parse_args())
    print(json.dumps({k: stats[k] for k in ("planted_by_leaf", "verification_by_leaf", "rejects_by_reason",
                                            "text_answerable") if k in stats}, indent=1))
    print("clean clips with a measured row, per corpus:")
    for lang, c in sorted(corpora_measured.items()):
        print(f"  {lang}: {c['clean']} clean; spoken_text {c['spoken_text'] / c['clean']:.0%}, "
              f"spoken_language {c['spoken_language'] / c['clean']:.0%}")


if __name__ == "__main__":
    main()
