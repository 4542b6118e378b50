"""The tiny preset learns the demo: held-out accuracy over every category.

This is the trainer's end-to-end claim: a demo version built by the real synthesis flow, the tiny
preset (MoE adapter) trained on 2 CPU cores for its 2000 steps (or until every validation category
reaches its target), then scored on the test split (clips never seen in training) as MMAU scores it
(option text) and as exact answers (letter and text), per category, against the audio-zeroed
baseline, with the expert load checked for collapse.

The preset's 10-minute wall-clock budget is lifted here: what a budget buys depends on the machine
and its load (a busy shared machine bought 1486 steps and stopped at 94% before the cosine had
come down), so this test fixes the work and leaves the time to bench/bench_train.py (step time per
preset, side by side), as speed targets are kept out of timed tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from dataflux.config import demo_config
from dataflux.storage.catalog import Catalog

PRESET = str(Path(__file__).resolve().parents[3] / "modeling" / "configs" / "tiny.yaml")
DEMO_CLIPS = 8000  # ~20k rows: fewer epochs in the budget, so the model learns the attributes, not the clips
OVERALL_FLOOR = 0.95
CATEGORY_FLOOR = 0.88  # both scorings; runs of the preset here: worst category 95.4-96.5%, 1694-1750 steps
NO_CLOCK = ["train.max_minutes=60"]  # a safety stop only: the preset's steps decide (see above)
CHANCE = 0.25  # four options
GOAL = 0.95  # every category, both scorings: reported; met in both runs of the preset here


@pytest.fixture(scope="module")
def demo_training(tmp_path_factory):
    home = tmp_path_factory.mktemp("accuracy-home")
    mp = pytest.MonkeyPatch()
    mp.setenv("DATAFLUX_HOME", str(home))
    from flows.synthesize import run_synthesis
    from modeling.train import train

    summary = run_synthesis(demo_config(size=DEMO_CLIPS, seed=0, error_rate=0.1, partitions=8), name="demo")
    catalog = home / "catalog.duckdb"
    result = train(summary["version"], PRESET, catalog, tmp_path_factory.mktemp("run"), overrides=NO_CLOCK)
    yield summary["version"], catalog, result
    mp.undo()


@pytest.mark.slow
def test_tiny_moe_preset_learns_every_demo_category_in_its_steps(demo_training):
    version, catalog, result = demo_training
    metrics = result["metrics"]
    preset = yaml.safe_load(open(PRESET))["train"]
    assert preset["max_minutes"] <= 10 and preset["anneal"] == "budget"  # what a user's run gets
    assert metrics["stop_reason"] in ("max_steps", "validation_target"), metrics["stop_reason"]
    assert 1_000_000 <= metrics["parameters"] <= 2_000_000
    audio = metrics["audio"]
    report = json.dumps({k: metrics[k] for k in ("steps", "stop_reason", "train_minutes")}) + json.dumps(
        audio["by_category"], indent=1)
    assert set(audio["by_category"]) == {"tone_pitch", "waveform", "beep_count", "click_tempo", "noise_colour",
                                         "loudness", "duration", "speaking_rate"}, report
    # Regression floors under what the preset reaches (docs/training.md: every category, beep count
    # included, at 95-100% in two runs; 97.8-98.6% overall).
    assert audio["exact_accuracy"] >= OVERALL_FLOOR and audio["mmau_accuracy"] >= OVERALL_FLOOR, report
    for cat, m in audio["by_category"].items():
        assert m["n"] >= 20, f"too few held-out {cat} questions to score: {m['n']}"
        worst = min(m["exact_accuracy"], m["mmau_accuracy"])
        assert worst >= CATEGORY_FLOOR, f"{cat}: exact {m['exact_accuracy']:.3f} mmau {m['mmau_accuracy']:.3f}\n{report}"
    short = {c: round(min(m["exact_accuracy"], m["mmau_accuracy"]), 3) for c, m in audio["by_category"].items()
             if min(m["exact_accuracy"], m["mmau_accuracy"]) < GOAL}
    print(f"categories under the {GOAL} goal (worst of exact and MMAU-scored): {short or 'none'}")
    # Silence of each clip's own length leaves only the clip's length to go on: beep count must then
    # be at chance (a beep clip's length does not depend on its count), whatever the model learned.
    length_only = metrics["zero_audio"]["by_category"]["beep_count"]["exact_accuracy"]
    assert abs(length_only - CHANCE) <= 0.10, metrics["zero_audio"]["by_category"]
    # ... and so must every category but duration taken together (duration is the clip's length).
    blind = {c: m for c, m in metrics["zero_audio"]["by_category"].items() if c != "duration"}
    blind_accuracy = sum(m["n"] * m["exact_accuracy"] for m in blind.values()) / sum(m["n"] for m in blind.values())
    assert abs(blind_accuracy - CHANCE) <= 0.10, metrics["zero_audio"]["by_category"]
    # With one second of silence in place of every clip the model is at chance: the questions cannot
    # be answered from the text. (Silence of the clip's own length still gives away its duration.)
    assert abs(metrics["fixed_silence"]["exact_accuracy"] - CHANCE) <= 0.10, metrics["fixed_silence"]
    load = metrics["expert_load"]
    assert load["load_balance_lower_bound_ok"] and load["min_share_of_fair"] >= 0.25, load
    (record,) = Catalog(catalog, read_only=True).trainings(version)
    assert record["status"] == "completed"
