"""The trainer: refuses drafts, resumes exactly after an interruption or a SIGKILL, records its runs,
and writes a checkpoint that loads and answers."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from dataflux.storage.catalog import Catalog, VersionNotFinalized
from modeling.synthetic_version import write_tone_version
from modeling.train import TrainConfig, train
from tests.helpers.micro_config import MICRO

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def version(tmp_path_factory):
    root = tmp_path_factory.mktemp("catalog")
    catalog = root / "catalog.duckdb"
    return catalog, write_tone_version(catalog, root / "shards", n_clips=30, n_shards=2, max_seconds=0.8)


def _config(tmp_path, **train_overrides) -> Path:
    doc = json.loads(json.dumps(MICRO))
    doc["train"].update(train_overrides)
    path = tmp_path / "micro.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _losses(run_dir: Path) -> dict[int, float]:
    """Step -> loss from metrics.jsonl; a step logged twice (before a kill and after resuming) keeps its last value."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "step" in rec:
            out[rec["step"]] = rec["step_losses"][-1]
    return out


def test_training_on_a_draft_version_is_refused_and_not_recorded(tmp_path):
    catalog = tmp_path / "catalog.duckdb"
    draft = write_tone_version(catalog, tmp_path / "shards", n_clips=5, n_shards=1, finalize=False)
    with pytest.raises(VersionNotFinalized, match="draft"):
        train(draft, _config(tmp_path), catalog_path=catalog, output_dir=tmp_path / "run")
    assert Catalog(catalog).trainings(draft) == []
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides", [{}, {"cache_mb": 64, "encoder": "frozen"}], ids=["plain", "cached-frozen-encoder"])
def test_stopped_run_resumes_with_the_losses_of_an_uninterrupted_run(version, tmp_path, overrides):
    # 18 train rows, 4 batches an epoch: 7 steps cross epochs, so with the example cache the straight
    # run serves later batches from memory while the resumed process computes them afresh
    catalog, vid = version
    config = _config(tmp_path, **overrides)
    train(vid, config, catalog_path=catalog, output_dir=tmp_path / "straight", stop_after_steps=7, record=False)
    first = train(vid, config, catalog_path=catalog, output_dir=tmp_path / "resumed", stop_after_steps=3, record=False)
    assert first["status"] == "interrupted"
    train(vid, config, catalog_path=catalog, output_dir=tmp_path / "resumed", stop_after_steps=7, record=False)
    straight, resumed = _losses(tmp_path / "straight"), _losses(tmp_path / "resumed")
    assert sorted(resumed) == list(range(1, 8))
    for step in range(1, 8):
        assert resumed[step] == pytest.approx(straight[step], abs=1e-5), f"step {step}"
    assert straight[7] != straight[4]  # the losses move, so equality means something


@pytest.mark.slow
def test_sigkilled_run_resumes_with_the_losses_of_an_uninterrupted_run(version, tmp_path):
    catalog, vid = version
    config = _config(tmp_path)
    train(vid, config, catalog_path=catalog, output_dir=tmp_path / "straight", stop_after_steps=9, record=False)

    run_dir = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "modeling.train", "--version", vid, "--config", str(config), "--catalog", str(catalog),
         "--output-dir", str(run_dir), "--no-eval"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not (run_dir / "checkpoints" / "step-0000003").exists():
            assert proc.poll() is None, "training exited before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    killed_at = max(_losses(run_dir))
    assert killed_at < 40  # it really died mid-run

    train(vid, config, catalog_path=catalog, output_dir=run_dir, stop_after_steps=9, record=False)
    straight, resumed = _losses(tmp_path / "straight"), _losses(run_dir)
    for step in range(4, 10):
        assert resumed[step] == pytest.approx(straight[step], abs=1e-5), f"step {step}"


def test_a_finished_run_is_recorded_and_its_checkpoint_loads_and_answers(version, tmp_path):
    from modeling.model import EurekaAudioForCausalLM
    from modeling.processor import EurekaAudioProcessor

    catalog, vid = version
    result = train(vid, _config(tmp_path, max_steps=4, eval_max_rows=4), catalog_path=catalog,
                   output_dir=tmp_path / "run", log=lambda *_: None)
    assert result["status"] == "completed"
    records = [r for r in Catalog(catalog).trainings(vid) if r["training_id"] == result["training_id"]]
    assert len(records) == 1 and records[0]["status"] == "completed"
    assert records[0]["checkpoint"] == result["checkpoint"]
    metrics = records[0]["metrics"]
    assert metrics["steps"] == 4 and metrics["audio"]["n"] == 4 and "tone_pitch" in metrics["audio"]["by_category"]
    assert metrics["zero_audio"]["n"] == 4
    assert len(metrics["expert_load"]["tokens_per_expert"]) == 4

    model = EurekaAudioForCausalLM.from_pretrained(result["checkpoint"]).eval()
    processor = EurekaAudioProcessor.from_pretrained(result["checkpoint"])
    clip = torch.sin(torch.arange(8000) * 2 * torch.pi * 440 / 16000).numpy() * 0.3
    prompt = [{"role": "user", "content": "<audio>What is the approximate pitch of the tone in this recording?\n"
               "(A) 110 Hz\n(B) 220 Hz\n(C) 440 Hz\n(D) 880 Hz"}]
    batch = processor([prompt], [clip])
    new = model.generate(**batch, max_new_tokens=4)
    assert new.shape == (1, 4) or int(new[0, -1]) == processor.tokenizer.eos_token_id


@pytest.mark.parametrize("llm,encoder", [("frozen", "frozen"), ("lora", "train")])
def test_config_chooses_which_parts_train(version, tmp_path, llm, encoder):
    from modeling.lora import LoRALinear
    from modeling.train import build_model, build_processor, encoder_geometry, set_trainable
    from modeling.data import VersionIndex, version_shard_paths

    catalog, vid = version
    cfg = TrainConfig.load(_config(tmp_path), [f"train.llm={llm}", f"train.encoder={encoder}"])
    index = VersionIndex.build(version_shard_paths(vid, catalog))
    processor = build_processor(cfg.model, index, *encoder_geometry(cfg.model))
    model = build_model(cfg.model, processor)
    counts = set_trainable(model, cfg.train)
    assert counts["adapter"] == sum(p.numel() for p in model.adapter.parameters())
    assert (counts["encoder"] == 0) == (encoder == "frozen")
    if llm == "frozen":
        assert counts["llm"] == 0
    else:
        lora = [m for m in model.llm.modules() if isinstance(m, LoRALinear)]
        assert lora and counts["llm"] == sum(m.lora_a.numel() + m.lora_b.numel() for m in lora)


def test_unknown_config_keys_are_named(tmp_path):
    with pytest.raises(ValueError, match="train: unknown key.*learning_rate"):
        TrainConfig.load(_config(tmp_path), ["train.learning_rate=0.1"])
    with pytest.raises(ValueError, match="llm.*not one of full, lora, frozen"):
        TrainConfig.load(_config(tmp_path), ["train.llm=half"])
    weighted = TrainConfig.load(_config(tmp_path), ["train.category_weights.click_tempo=4",
                                                    "train.category_weights={click_tempo: 4, loudness: 0.5}"])
    assert weighted.train.category_weights == {"click_tempo": 4.0, "loudness": 0.5}
    with pytest.raises(ValueError, match="category_weights: weights must be numbers"):
        TrainConfig.load(_config(tmp_path), ["train.category_weights.click_tempo=fast"])
    with pytest.raises(ValueError, match="category_weights: expected a mapping"):
        TrainConfig.load(_config(tmp_path), ["train.category_weights=[1, 2]"])


@pytest.mark.slow
def test_two_process_ddp_run_under_torchrun_completes_and_records(version, tmp_path):
    catalog, vid = version
    # annealing on the budget: both processes read the slowest one's clock, so they step at one rate
    config = _config(tmp_path, max_steps=3, eval_max_rows=2, eval_zero_audio=False, anneal="budget", max_minutes=20)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "modeling.train",
         "--version", vid, "--config", str(config), "--catalog", str(catalog), "--output-dir", str(tmp_path / "ddp")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "ddp" / "final" / "model.safetensors").exists()
    assert max(_losses(tmp_path / "ddp")) == 3
    records = [r for r in Catalog(catalog).trainings(vid) if r["checkpoint"] == str(tmp_path / "ddp" / "final")]
    assert len(records) == 1 and records[0]["status"] == "completed"


def test_training_stops_once_every_validation_category_reaches_the_target(version, tmp_path):
    catalog, vid = version
    reachable = _config(tmp_path, eval_every=2, stop_at_accuracy=0.0, max_steps=40)
    result = train(vid, reachable, catalog_path=catalog, output_dir=tmp_path / "early", evaluate=False, record=False)
    assert result["metrics"]["stop_reason"] == "validation_target" and result["metrics"]["steps"] == 2
    unreachable = _config(tmp_path, eval_every=2, stop_at_accuracy=1.01, max_steps=4)
    result = train(vid, unreachable, catalog_path=catalog, output_dir=tmp_path / "full", evaluate=False, record=False)
    assert result["metrics"]["stop_reason"] == "max_steps" and result["metrics"]["steps"] == 4


@pytest.mark.parametrize("anneal", ["budget", "steps"])
def test_a_run_the_time_budget_stops_ends_at_the_floor_rate_only_when_it_anneals_on_the_budget(version, tmp_path,
                                                                                                 anneal):
    catalog, vid = version
    config = _config(tmp_path, max_steps=100_000, max_minutes=0.08, anneal=anneal, min_lr_ratio=0.05,
                     save_every=100_000)
    result = train(vid, config, catalog_path=catalog, output_dir=tmp_path / anneal, evaluate=False, record=False,
                   log=lambda *_: None)
    assert result["metrics"]["stop_reason"] == "time_budget", result["metrics"]
    lines = [json.loads(line) for line in (tmp_path / anneal / "metrics.jsonl").read_text().splitlines()]
    lrs = [rec["lr"] for rec in lines if "lr" in rec]
    peak, floor = MICRO["train"]["lr"], 0.05 * MICRO["train"]["lr"]
    assert len(lrs) > 10, "too few steps in the budget to see the schedule"
    if anneal == "budget":  # down the whole cosine within the 4.8 s, whatever the steps it bought
        assert lrs[-1] < floor + 0.05 * (peak - floor), lrs[-5:]
        assert lrs[len(lrs) // 2] < peak * 0.9 and lrs[len(lrs) // 2] > lrs[-1]
    else:  # 100k steps: still at the top of the cosine when the budget runs out
        assert lrs[-1] > 0.99 * peak, lrs[-5:]


def test_annealing_on_a_budget_without_one_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"train\.anneal: 'budget' must be steps, or budget with max_minutes set"):
        TrainConfig.load(_config(tmp_path, anneal="budget"))


# Losses of the micro preset's first steps (max_steps 8) on the 30-clip tone version, measured with torch
# 2.13 on CPU before the trainer was split into phases and its config moved to OmegaConf: a refactor
# that changes the maths (initialisation order, RNG use, schedule, batching) moves them.
PINNED_LOSSES = {"plain": [5.703848838806152, 5.623074531555176, 5.442646503448486],
                 "lora-cached-accum": [5.7014594078063965, 5.668460845947266, 5.634727716445923]}


@pytest.mark.parametrize("name,overrides", [("plain", {}),
                                            ("lora-cached-accum", {"llm": "lora", "cache_mb": 64, "grad_accum": 2})])
def test_a_fixed_seed_run_logs_the_pinned_losses(version, tmp_path, name, overrides):
    catalog, vid = version
    train(vid, _config(tmp_path, max_steps=8, **overrides), catalog_path=catalog, output_dir=tmp_path / name,
          stop_after_steps=3, record=False, log=lambda *_: None)
    lines = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    assert [rec["loss"] for rec in lines] == pytest.approx(PINNED_LOSSES[name], rel=1e-4)
