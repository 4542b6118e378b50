"""MICRO: the smallest training config that still trains the whole model (a one-layer Whisper encoder, a
one-layer 32-wide qwen3, four experts); the trainer and train-command tests write it to YAML."""

MICRO = {
    "name": "micro",
    "model": {
        "encoder": dict(num_mel_bins=80, d_model=32, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64,
                        max_source_positions=1500, decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64),
        "llm": dict(model_type="qwen3", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                    num_attention_heads=2, num_key_value_heads=1, head_dim=16, tie_word_embeddings=True),
        "tokenizer_vocab_size": 300, "adapter": "moe", "n_experts": 4, "top_k": 2, "expert_hidden": 32,
    },
    "train": dict(batch_size=4, lr=3e-3, warmup_steps=2, max_steps=40, log_every=1, save_every=3,
                  num_threads=1, eval_batch_size=8, prefetch=1),
}

