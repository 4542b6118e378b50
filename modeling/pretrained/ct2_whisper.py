"""A CTranslate2 Whisper model (faster-whisper's `model.bin`) as our Whisper encoder's weights.

CTranslate2 writes one binary file: a version, the spec's name and revision, then named variables
(rank, shape, dtype, bytes) and aliases. We read only the encoder's variables and rename them to
transformers' `WhisperEncoder` layout; the fused attention projection (`linear_0`, q/k/v stacked)
is split in three (Whisper's key projection has no bias, so CTranslate2's is zero and dropped).
The result is a plain Whisper encoder checkpoint (config.json + model.safetensors) that
`modeling.model.load_whisper_encoder` reads like any other local Whisper folder.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import WhisperConfig

# CTranslate2's DataType enum (include/ctranslate2/types.h)
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: np.uint16}  # 5: bfloat16 bits
_BFLOAT16 = 5
_LAYER = re.compile(r"encoder/layer_(\d+)/(.+)")
_LAYER_NAMES = {
    "self_attention/layer_norm/gamma": "self_attn_layer_norm.weight",
    "self_attention/layer_norm/beta": "self_attn_layer_norm.bias",
    "self_attention/linear_1/weight": "self_attn.out_proj.weight",
    "self_attention/linear_1/bias": "self_attn.out_proj.bias",
    "ffn/layer_norm/gamma": "final_layer_norm.weight",
    "ffn/layer_norm/beta": "final_layer_norm.bias",
    "ffn/linear_0/weight": "fc1.weight",
    "ffn/linear_0/bias": "fc1.bias",
    "ffn/linear_1/weight": "fc2.weight",
    "ffn/linear_1/bias": "fc2.bias",
}
_TOP_NAMES = {
    "encoder/conv1/weight": "conv1.weight", "encoder/conv1/bias": "conv1.bias",
    "encoder/conv2/weight": "conv2.weight", "encoder/conv2/bias": "conv2.bias",
    "encoder/layer_norm/gamma": "layer_norm.weight", "encoder/layer_norm/beta": "layer_norm.bias",
    "encoder/position_encodings/encodings": "embed_positions.weight",
}


class _Reader:
    def __init__(self, path: Path):
        self.path, self.f = path, open(path, "rb")

    def unpack(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        raw = self.f.read(size)
        if len(raw) != size:
            raise ValueError(f"{self.path}: cut short at byte {self.f.tell()}; the CTranslate2 model file is "
                             "incomplete, assemble it again")
        return struct.unpack("<" + fmt, raw)[0]

    def string(self) -> str:
        return self.f.read(self.unpack("H")).rstrip(b"\0").decode()


def read_ct2_variables(model_bin: str | Path, prefix: str = "encoder/") -> dict[str, np.ndarray]:
    """The variables of a CTranslate2 `model.bin` whose names start with `prefix`, as float32 (or
    integer) numpy arrays; an int8-quantized weight is multiplied back by its `weight_scale`."""
    path = Path(model_bin)
    r = _Reader(path)
    with r.f:
        version = r.unpack("I")
        if not 5 <= version <= 6:
            raise ValueError(f"{path}: CTranslate2 binary version {version}; this reader knows versions 5 and 6")
        spec = r.string()
        r.unpack("I")  # spec revision
        if spec != "WhisperSpec":
            raise ValueError(f"{path}: a {spec}, not a Whisper model (expected WhisperSpec)")
        out: dict[str, np.ndarray] = {}
        for _ in range(r.unpack("I")):
            name = r.string()
            dims = [r.unpack("I") for _ in range(r.unpack("B"))]
            dtype, nbytes = r.unpack("B"), r.unpack("I")
            if not name.startswith(prefix):
                r.f.seek(nbytes, 1)
                continue
            data = np.frombuffer(r.f.read(nbytes), dtype=_DTYPES[dtype]).reshape(dims)
            if dtype == _BFLOAT16:
                data = (data.astype(np.uint32) << 16).view(np.float32)
            out[name] = data
    for name in [n for n in out if n.endswith("/weight_scale")]:
        scale = out.pop(name).astype(np.float32)
        weight = name.removesuffix("_scale")
        out[weight] = out[weight].astype(np.float32) / scale.reshape(-1, *[1] * (out[weight].ndim - 1))
    return out


def encoder_state_dict(variables: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """CTranslate2 encoder variables -> transformers WhisperEncoder state dict (float32)."""
    state: dict[str, torch.Tensor] = {}
    for name, value in variables.items():
        if value.dtype.kind != "f":
            continue  # num_heads and other scalars live in the config
        t = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
        if name in _TOP_NAMES:
            state[_TOP_NAMES[name]] = t
            continue
        m = _LAYER.fullmatch(name)
        if m is None:
            raise ValueError(f"CTranslate2 variable {name!r} has no place in a Whisper encoder")
        layer, rest = f"layers.{m.group(1)}.", m.group(2)
        if rest.startswith("self_attention/linear_0/"):
            q, k, v = t.chunk(3, dim=0)
            kind = rest.rsplit("/", 1)[1]
            state[layer + f"self_attn.q_proj.{kind}"] = q.clone()
            state[layer + f"self_attn.v_proj.{kind}"] = v.clone()
            if kind == "weight":
                state[layer + "self_attn.k_proj.weight"] = k.clone()
            elif bool(k.abs().max() > 0):
                raise ValueError(f"{name}: the key projection has a non-zero bias, which Whisper's encoder cannot hold")
        else:
            state[layer + _LAYER_NAMES[rest]] = t
    return state


def encoder_config(variables: dict[str, np.ndarray]) -> WhisperConfig:
    """The WhisperConfig of the encoder the variables describe (the decoder fields keep Whisper's defaults)."""
    layers = 1 + max(int(m.group(1)) for n in variables if (m := _LAYER.fullmatch(n)))
    n_mels = variables["encoder/conv1/weight"].shape[1]
    d_model = variables["encoder/conv1/weight"].shape[0]
    positions = variables["encoder/position_encodings/encodings"].shape[0]
    heads = int(variables["encoder/num_heads"]) if "encoder/num_heads" in variables else d_model // 64
    return WhisperConfig(num_mel_bins=n_mels, d_model=d_model, encoder_layers=layers, encoder_attention_heads=heads,
                         encoder_ffn_dim=variables["encoder/layer_0/ffn/linear_0/weight"].shape[0],
                         decoder_layers=layers, decoder_attention_heads=heads,
                         decoder_ffn_dim=variables["encoder/layer_0/ffn/linear_0/weight"].shape[0],
                         max_source_positions=positions)


def convert_ct2_whisper(ct2_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the encoder of the CTranslate2 Whisper model in `ct2_dir` as a Whisper encoder checkpoint
    (config.json + model.safetensors, float32) in `out_dir`; returns `out_dir`."""
    ct2_dir, out_dir = Path(ct2_dir), Path(out_dir)
    model_bin = ct2_dir / "model.bin"
    if not model_bin.is_file():
        raise FileNotFoundError(f"{ct2_dir}: no model.bin; give a faster-whisper (CTranslate2) model folder")
    variables = read_ct2_variables(model_bin)
    out_dir.mkdir(parents=True, exist_ok=True)
    encoder_config(variables).save_pretrained(out_dir)
    save_file(encoder_state_dict(variables), str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "converted_from.json").write_text(json.dumps({"ctranslate2_model": str(model_bin)}, indent=1) + "\n")
    return out_dir
