"""What verification buys, in miniature: a demo version and its unverified twin, the same short
training on each, both scored on the verified version's clean test questions; then the verified
run's checkpoint answers while a fresh version is built, and trains again with hard examples."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from dataflux.storage.catalog import Catalog

ROOT = Path(__file__).resolve().parents[2]
SHORT = ["--steps", "16", "--minutes", "3", "--set", "train.warmup_steps=4", "--set", "train.cache_mb=0",
         "--set", "train.batch_size=16", "--set", "train.category_stages=[]"]


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    out = tmp_path_factory.mktemp("ablation")
    mp.setenv("DATAFLUX_HOME", str(out / "home"))  # restored after the module; the bench sets it too
    try:
        report = _bench("bench_ablation").main(["--demo-size", "48", "--rates", "0.3", "--seeds", "0",
                                                "--partitions", "2", "--out-dir", str(out), *SHORT])
        yield out, report
    finally:
        mp.undo()


@pytest.mark.slow
def test_the_twin_keeps_the_planted_wrong_answers_and_both_trainings_are_scored(ablation):
    out, report = ablation
    pair = report["versions"]["0.3"]
    catalog = Catalog(out / "home" / "catalog.duckdb", read_only=True)
    verified, twin = catalog.get_version(pair["verified"]), catalog.get_version(pair["unverified"])
    assert twin["status"] == "finalized" and twin["notes"]["verified"] is False
    assert "verified" not in verified["notes"] and catalog.stats(pair["unverified"])["verified"] is False
    # the twin asserts planted values the verified version does not; same clips, same splits
    asserted = report["planted_answers"]["0.3"]
    assert asserted["unverified"] > 0 and asserted["verified"] == 0
    _, rows = catalog.query("SELECT version_id, count(DISTINCT audio_sha256), string_agg(DISTINCT audio_sha256 "
                            "|| split, ',' ORDER BY audio_sha256 || split) FROM samples GROUP BY 1")
    by_version = {v: (n, splits) for v, n, splits in rows}
    assert by_version[pair["verified"]] == by_version[pair["unverified"]]
    _, wrong = catalog.query(
        "SELECT s.answer, i.planted->>'claimed', s.verdict.final_action FROM samples s JOIN items i "
        "ON i.version_id = s.version_id AND i.source_id = s.source_id WHERE s.version_id = ? "
        "AND i.planted->>'leaf' = s.l3", [pair["unverified"]])
    assert wrong and all(answer == claimed and action == "UNVERIFIED" for answer, claimed, action in wrong)
    # both runs took the same budget and were scored on the same clean questions, with the blind baseline
    runs = {r["variant"]: r for r in report["runs"]}
    assert set(runs) == {"verified", "unverified"} and report["eval_rows"]["0.3"] > 0
    for run in runs.values():
        assert run["steps"] == 16 and run["audio"]["n"] == report["eval_rows"]["0.3"] == run["zero_audio"]["n"]
        # every scored question is in one category, and the overall score is the categories' weighted mean
        by = run["audio"]["by_category"]
        assert by and sum(c["n"] for c in by.values()) == run["audio"]["n"]
        assert run["audio"]["mmau_accuracy"] == pytest.approx(
            sum(c["n"] * c["mmau_accuracy"] for c in by.values()) / run["audio"]["n"])
    saved = json.loads((out / "ablation.json").read_text())
    assert set(saved["summary"]["0.3"]) == {"verified", "unverified", "verified_minus_unverified"}


@pytest.mark.slow
def test_a_trained_checkpoint_answers_the_next_version_and_its_misses_train_again(ablation, tmp_path, monkeypatch):
    out, _ = ablation
    monkeypatch.setenv("DATAFLUX_HOME", str(tmp_path / "home"))
    checkpoint = out / "runs" / "0.3-verified-seed0" / "final"
    report = _bench("bench_model_loop").main(
        ["--checkpoint", str(checkpoint), "--demo-size", "24", "--partitions", "2", "--steps", "4",
         "--eval-every", "2", "--target", "0.99", "--out-dir", str(tmp_path), "--set", "train.warmup_steps=2",
         "--set", "train.eval_every_rows=16", "--set", "train.batch_size=8", "--set", "train.category_stages=[]"])
    catalog = Catalog(tmp_path / "home" / "catalog.duckdb", read_only=True)
    _, rows = catalog.query("SELECT l3, model_correct, answer_index, "
                            "list_filter(answers, lambda a: a.answerer = 'ours')[1].answer_index FROM samples")
    assert rows and all(ok is not None and ok == (ours == key) for _, ok, key, ours in rows)
    model = report["model_accuracy"]
    assert model["n"] == len(rows)
    for cat, d in model["by_category"].items():
        mine = [ok for c, ok, _, _ in rows if c == cat]
        assert d["n"] == len(mine) and d["accuracy"] == pytest.approx(sum(mine) / len(mine))
    assert set(report["runs"]) == {"plain", "hard_weighted"}
    for run in report["runs"].values():
        assert run["steps"] == 4 and [p["step"] for p in run["validation"]] == [2, 4]


def test_reports_of_separate_invocations_merge_into_one_table(tmp_path, capsys):
    bench = _bench("bench_ablation")

    def run(variant: str, seed: int, mmau: float) -> dict:
        cats = {"tone_pitch": {"n": 10, "mmau_accuracy": mmau, "exact_accuracy": mmau - 0.1}}
        return {"rate": 0.3, "variant": variant, "seed": seed, "steps": 100,
                "audio": {"mmau_accuracy": mmau, "exact_accuracy": mmau - 0.1, "by_category": cats},
                "zero_audio": {"mmau_accuracy": 0.25, "exact_accuracy": 0.2, "by_category": cats}}

    def report(seed: int, runs: list[dict], version: str = "v1") -> Path:
        path = tmp_path / f"seed{seed}.json"
        path.write_text(json.dumps({
            "demo_size": 48, "steps": 100, "minutes": 1, "config": "c", "overrides": [], "rates": [0.3],
            "seeds": [seed], "versions": {"0.3": {"verified": version, "unverified": "v2"}},
            "planted_answers": {"0.3": {"verified": 0, "unverified": 9}}, "eval_rows": {"0.3": 10}, "runs": runs}))
        return path

    a = report(0, [run("verified", 0, 0.9), run("unverified", 0, 0.7)])
    b = report(1, [run("verified", 1, 0.8), run("unverified", 1, 0.7), run("verified", 0, 0.9)])
    merged = bench.main(["--merge", str(a), str(b), "--out-dir", str(tmp_path / "all")])
    assert len(merged["runs"]) == 4 and merged["seeds"] == [0, 1]  # the repeated run counted once
    verified = merged["summary"]["0.3"]["verified"]
    assert verified["mmau_accuracy"][0] == pytest.approx(0.85) and verified["mmau_accuracy"][1] == pytest.approx(0.05)
    assert json.loads((tmp_path / "all" / "ablation.json").read_text())["summary"]["0.3"]["unverified"]
    assert "planted errors 30%" in capsys.readouterr().out
    # runs scored on another version's questions do not mix
    c = report(2, [run("verified", 2, 0.9)], version="v9")
    with pytest.raises(ValueError, match="rate 0.3 has versions"):
        bench.main(["--merge", str(a), str(c), "--out-dir", str(tmp_path / "bad")])
