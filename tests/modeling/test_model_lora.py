"""LoRA on the LLM: starts as the base model, trains only the low-rank factors, merges back exactly."""

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from modeling.lora import LoRALinear, apply_lora, merge_lora


def _llm() -> Qwen3ForCausalLM:
    torch.manual_seed(0)
    return Qwen3ForCausalLM(Qwen3Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                        num_key_value_heads=1, head_dim=16, intermediate_size=64, vocab_size=50)).eval()


def test_lora_starts_as_the_base_model_and_trains_only_its_factors():
    llm = _llm()
    ids = torch.randint(0, 50, (2, 7))
    before = llm(ids).logits
    llm.requires_grad_(False)
    n = apply_lora(llm, rank=4, alpha=8)
    assert n == 2 * 7  # q k v o gate up down in each of 2 layers
    torch.testing.assert_close(llm(ids).logits, before)
    trainable = {name for name, p in llm.named_parameters() if p.requires_grad}
    assert trainable and all(name.endswith(("lora_a", "lora_b")) for name in trainable)


def test_merged_model_matches_the_lora_model_and_saves_as_plain(tmp_path):
    llm = _llm()
    apply_lora(llm, rank=4, alpha=8)
    with torch.no_grad():
        for m in llm.modules():
            if isinstance(m, LoRALinear):
                m.lora_b.normal_(0, 0.1)
    ids = torch.randint(0, 50, (2, 7))
    with_lora = llm(ids).logits
    assert merge_lora(llm) == 14
    assert not any(isinstance(m, LoRALinear) for m in llm.modules())
    torch.testing.assert_close(llm(ids).logits, with_lora, rtol=1e-5, atol=1e-5)
    llm.save_pretrained(tmp_path)
    reloaded = Qwen3ForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(reloaded(ids).logits, with_lora, rtol=1e-5, atol=1e-5)
