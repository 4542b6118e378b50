"""The audio LM: windowed variable-length encoding, splicing, and save/load round trips."""

import pytest
import torch

from modeling.configuration import EurekaAudioConfig, audio_token_count
from modeling.model import EurekaAudioForCausalLM

START, PAD, END = 61, 62, 63


def _config(adapter="moe", tie=False, window_positions=50, audio_scale="fixed") -> EurekaAudioConfig:
    return EurekaAudioConfig(
        encoder_config=dict(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                            max_source_positions=window_positions, num_mel_bins=16,
                            decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64),
        llm_config=dict(model_type="qwen3", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        num_key_value_heads=1, head_dim=16, intermediate_size=64, vocab_size=64,
                        tie_word_embeddings=tie),
        adapter=adapter, n_experts=4, top_k=2, expert_hidden=32, audio_scale=audio_scale,
        audio_start_token_id=START, audio_pad_token_id=PAD, audio_end_token_id=END,
    )


def _model(**kw) -> EurekaAudioForCausalLM:
    torch.manual_seed(0)
    return EurekaAudioForCausalLM(_config(**kw)).eval()


def _prompts(token_counts):
    rows = [[1, 2, START] + [PAD] * n + [END, 3, 4, 5] for n in token_counts]
    longest = max(map(len, rows))
    ids = torch.tensor([r + [0] * (longest - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (longest - len(r)) for r in rows])
    return ids, mask


def _audio(lengths, n_mels=16):
    torch.manual_seed(3)
    return torch.randn(len(lengths), n_mels, max(lengths)), torch.tensor(lengths)


def test_token_count_follows_windows_conv_stride_and_stacking():
    # 100-frame windows: 250 frames -> windows 100, 100, 50 -> 50 + 50 + 25 encoder frames -> 32 tokens
    assert audio_token_count(250, 100, 4) == 32
    assert audio_token_count(3000, 3000, 4) == 375  # 30 s of Whisper audio -> 12.5 tokens per second
    assert audio_token_count(1, 3000, 4) == 1
    with pytest.raises(ValueError):
        audio_token_count(0, 3000, 4)


def test_clips_longer_than_one_encoder_window_are_chunked_not_cut():
    model = _model(window_positions=25)  # 50 mel frames per window
    feats, lengths = _audio([230, 40])
    embeds, token_lengths, _ = model.encode_audio(feats, lengths)
    expected = [audio_token_count(n, 50, 4) for n in (230, 40)]
    assert token_lengths.tolist() == expected
    assert embeds.shape == (2, expected[0], 32)
    assert torch.all(embeds[1, expected[1]:] == 0)


def test_a_clip_encodes_the_same_alone_and_inside_a_padded_batch():
    model = _model()
    feats, lengths = _audio([260, 70, 130])
    batch, token_lengths, _ = model.encode_audio(feats, lengths)
    for i, n in enumerate(lengths.tolist()):
        alone, alone_len, _ = model.encode_audio(feats[i : i + 1, :, :n], lengths[i : i + 1])
        assert alone_len.item() == token_lengths[i].item()
        torch.testing.assert_close(batch[i, : alone_len.item()], alone[0], rtol=1e-5, atol=1e-5)


def test_audio_embeddings_replace_exactly_the_pad_tokens():
    model = _model()
    feats, lengths = _audio([90, 40])
    audio, token_lengths, _ = model.encode_audio(feats, lengths)
    ids, mask = _prompts(token_lengths.tolist())
    embeds, _ = model.build_inputs_embeds(ids, feats, lengths)
    text = model.get_input_embeddings()(ids)
    for b, n in enumerate(token_lengths.tolist()):
        pads = (ids[b] == PAD).nonzero().squeeze(-1)
        torch.testing.assert_close(embeds[b, pads], audio[b, :n])
        others = ids[b] != PAD
        torch.testing.assert_close(embeds[b, others], text[b, others])


def test_mismatched_placeholder_count_is_a_clear_error():
    model = _model()
    feats, lengths = _audio([90])
    _, token_lengths, _ = model.encode_audio(feats, lengths)
    ids, mask = _prompts([token_lengths.item() - 1])
    with pytest.raises(ValueError, match="audio_pad.*EurekaAudioProcessor"):
        model(ids, attention_mask=mask, input_features=feats, feature_lengths=lengths)


def test_loss_includes_the_adapter_load_balancing_term():
    model = _model()
    feats, lengths = _audio([90, 40])
    _, token_lengths, _ = model.encode_audio(feats, lengths)
    ids, mask = _prompts(token_lengths.tolist())
    out = model(ids, attention_mask=mask, input_features=feats, feature_lengths=lengths,
                labels=ids.masked_fill(mask == 0, -100))
    assert out.aux_loss.item() > 0
    torch.testing.assert_close(out.loss, out.lm_loss + out.aux_loss)
    assert int(out.expert_counts.sum()) == int(token_lengths.sum()) * 2


def test_audio_scale_text_puts_audio_tokens_at_the_text_embeddings_rms_as_it_changes():
    model = _model(audio_scale="text")
    feats, lengths = _audio([120, 60])

    def audio_rms():
        emb, token_lengths, _ = model.encode_audio(feats, lengths)
        valid = torch.arange(emb.shape[1])[None, :] < token_lengths[:, None]
        return float(emb[valid].pow(2).mean().sqrt())

    table = model.llm.get_input_embeddings().weight
    text = float(table.pow(2).mean().sqrt())
    assert audio_rms() == pytest.approx(text, rel=1e-3)  # gain 1.0 = the text scale
    with torch.no_grad():
        table.mul_(5.0)  # the text embeddings grow (as they do in training): the audio follows
    assert audio_rms() == pytest.approx(5.0 * text, rel=1e-3)
    emb, _, _ = model.encode_audio(feats, lengths)
    emb.sum().backward()
    assert table.grad is None  # the scale is read, not trained through
    fixed = _model(audio_scale="fixed")
    emb, token_lengths, _ = fixed.encode_audio(feats, lengths)
    valid = torch.arange(emb.shape[1])[None, :] < token_lengths[:, None]
    assert float(emb[valid].pow(2).mean().sqrt()) == pytest.approx(1.0, rel=1e-3)  # the gain alone
    with pytest.raises(ValueError, match="audio_scale"):
        _config(audio_scale="loud")


@pytest.mark.parametrize("adapter,tie,audio_scale", [("moe", False, "fixed"), ("moe", True, "text"),
                                                     ("linear", True, "fixed")])
def test_save_and_from_pretrained_give_identical_logits(tmp_path, adapter, tie, audio_scale):
    model = _model(adapter=adapter, tie=tie, audio_scale=audio_scale)
    with torch.no_grad():  # move off the init so a silently re-initialised weight would show
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    feats, lengths = _audio([120, 60])
    _, token_lengths, _ = model.encode_audio(feats, lengths)
    ids, mask = _prompts(token_lengths.tolist())
    before = model(ids, attention_mask=mask, input_features=feats, feature_lengths=lengths).logits
    model.save_pretrained(tmp_path)
    loaded = EurekaAudioForCausalLM.from_pretrained(tmp_path).eval()
    after = loaded(ids, attention_mask=mask, input_features=feats, feature_lengths=lengths).logits
    assert loaded.config.adapter == adapter and loaded.config.audio_scale == audio_scale
    assert torch.equal(before, after)


def test_from_components_loads_local_whisper_and_llm_checkpoints(tmp_path):
    from transformers import Qwen3Config, Qwen3ForCausalLM, WhisperForConditionalGeneration

    from modeling.tokenizer import END_OF_TEXT, IM_END, IM_START
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    torch.manual_seed(0)
    whisper = WhisperForConditionalGeneration(_config().encoder_config)
    whisper.save_pretrained(tmp_path / "whisper")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train_from_iterator(["how many beeps are there"], trainers.BpeTrainer(
        vocab_size=300, special_tokens=[END_OF_TEXT, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=IM_END, pad_token=END_OF_TEXT)
    llm = Qwen3ForCausalLM(Qwen3Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       num_key_value_heads=1, head_dim=16, intermediate_size=64,
                                       vocab_size=len(tokenizer), tie_word_embeddings=True))
    llm.save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")

    model = EurekaAudioForCausalLM.from_components(tmp_path / "whisper", tmp_path / "llm", adapter="moe", n_experts=4)
    assert torch.equal(model.encoder.conv1.weight, whisper.model.encoder.conv1.weight)
    assert torch.equal(model.encoder.layers[1].fc2.weight, whisper.model.encoder.layers[1].fc2.weight)
    assert torch.equal(model.llm.model.layers[0].mlp.up_proj.weight, llm.model.layers[0].mlp.up_proj.weight)
    # three audio tokens were added and the embeddings grew to hold them
    assert model.config.audio_pad_token_id >= len(tokenizer)
    assert model.get_input_embeddings().num_embeddings == len(tokenizer) + 3
    assert model.config.n_experts == 4 and model.adapter.n_experts == 4
    feats, lengths = _audio([120])
    _, token_lengths, _ = model.encode_audio(feats, lengths)
    ids = torch.tensor([[1, 2, model.config.audio_start_token_id] + [model.config.audio_pad_token_id] * token_lengths.item()
                        + [model.config.audio_end_token_id, 3]])
    assert torch.isfinite(model(ids, input_features=feats, feature_lengths=lengths).logits).all()
