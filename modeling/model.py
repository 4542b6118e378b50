"""The audio LM: log-mel -> Whisper encoder (windowed, masked) -> stack 4 -> adapter -> causal LM.

Shapes: B clips, M mel bins, F mel frames (100 per second), W encoder windows, T encoder frames
(50 per second), S audio tokens (12.5 per second), L text positions, D_llm the LM width.

Whisper's encoder has 1500 learned positions (30 s) and transformers' `WhisperEncoder.forward`
insists on exactly 3000 mel frames. We keep its modules (so real checkpoints load unchanged) but
run them ourselves: clips are cut into windows of at most 3000 frames, windows are padded only to
the longest window in the batch, positions are sliced to the window length, attention masks the
padding, and each clip's valid frames are concatenated again. Padding frames are zeroed after the
first conv, so a clip encodes to the same numbers whatever it is batched with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel, WhisperConfig
from transformers import initialization as init
from transformers.modeling_outputs import ModelOutput
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from modeling.adapter import AdapterAux, LinearAdapter, MoEAdapter, RMSNorm, stack_frames
from modeling.configuration import AUDIO_PAD, EurekaAudioConfig
from modeling.tokenizer import add_audio_tokens


@dataclass
class EurekaAudioOutput(ModelOutput):
    """loss = lm_loss + aux_loss (when labels are given); logits (B, L, V); expert_counts (E,) or None."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    lm_loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    load_balance: torch.Tensor | None = None
    expert_counts: torch.Tensor | None = None
    cache: object | None = None  # the LM's KV cache (transformers 5.24 renamed past_key_values to cache)


def cut_windows(
    features: torch.Tensor, lengths: torch.Tensor, window: int
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Cut each clip's valid mel frames into windows of at most `window` frames.

    features (B, M, F), lengths (B,) -> windows (W, M, F_w) zero-padded to the longest window,
    window lengths (W,), and windows per clip (list of B ints, in order).
    """
    pieces, per_clip = [], []
    for b, n in enumerate(lengths.tolist()):
        if n <= 0:
            raise ValueError(f"clip {b} of the batch has {n} mel frames; every clip needs audio")
        starts = range(0, n, window)
        pieces += [features[b, :, s : min(s + window, n)] for s in starts]
        per_clip.append(len(starts))
    win_lengths = torch.tensor([p.shape[-1] for p in pieces], device=features.device)
    longest = int(win_lengths.max())
    windows = torch.stack([F.pad(p, (0, longest - p.shape[-1])) for p in pieces])
    return windows, win_lengths, per_clip


def encode_windows(encoder: WhisperEncoder, windows: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run Whisper's encoder modules on windows shorter than 30 s with a padding mask.

    windows (W, M, F_w) with F_w <= 2 * max_source_positions, lengths (W,) valid mel frames ->
    hidden (W, T_w, D) with frames past each valid length zeroed, and valid lengths (W,) = (lengths - 1) // 2 + 1.
    """
    frames = torch.arange(windows.shape[-1], device=windows.device)
    x = F.gelu(encoder.conv1(windows))
    x = x * (frames < lengths[:, None]).unsqueeze(1).to(x.dtype)  # pad frames as the conv's own zero padding
    x = F.gelu(encoder.conv2(x)).transpose(1, 2)  # (W, T_w, D)
    t = x.shape[1]
    if t > encoder.embed_positions.num_embeddings:
        raise ValueError(f"encoder window of {t} frames exceeds the {encoder.embed_positions.num_embeddings} positions")
    out_lengths = torch.div(lengths - 1, 2, rounding_mode="floor") + 1
    valid = torch.arange(t, device=x.device)[None, :] < out_lengths[:, None]  # (W, T_w)
    x = x + encoder.embed_positions.weight[:t].to(x.dtype)
    x = F.dropout(x, p=encoder.dropout, training=encoder.training)
    # additive key-padding mask (W, 1, 1, T_w): works for eager and sdpa attention alike
    attn_mask = torch.zeros(valid.shape, dtype=x.dtype, device=x.device)
    attn_mask = attn_mask.masked_fill(~valid, torch.finfo(x.dtype).min)[:, None, None, :]
    for layer in encoder.layers:
        x = layer(x, attn_mask)
    x = encoder.layer_norm(x)
    return x * valid.unsqueeze(-1).to(x.dtype), out_lengths


def join_windows(hidden: torch.Tensor, lengths: torch.Tensor, per_clip: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate each clip's windows back into one sequence with a single gather.

    hidden (W, T_w, D) with zeros past each window's length, lengths (W,), per_clip (B ints) ->
    frames (B, T, D) zero past each clip's length, frame lengths (B,). One gather (not a slice per
    window) keeps the backward pass linear in the batch size.
    """
    if all(n == 1 for n in per_clip):  # one window per clip: already laid out
        return hidden, lengths
    w, t_w, d = hidden.shape
    lens = lengths.tolist()
    rows, w0 = [], 0
    for n in per_clip:
        rows.append(torch.cat([torch.arange(lens[i], device=hidden.device) + i * t_w for i in range(w0, w0 + n)]))
        w0 += n
    frame_lengths = torch.tensor([len(r) for r in rows], device=hidden.device)
    zero_row = w * t_w  # index of an appended zero frame, used for padding
    index = nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=zero_row)  # (B, T)
    flat = torch.cat([hidden.reshape(w * t_w, d), hidden.new_zeros(1, d)])
    return flat[index], frame_lengths


class EurekaAudioPreTrainedModel(PreTrainedModel):
    config_class = EurekaAudioConfig
    base_model_prefix = "eureka"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["WhisperEncoderLayer"]

    def _init_weights(self, module):
        if isinstance(module, MoEAdapter):
            for name in ("w1", "w2", "shared_w1", "shared_w2"):
                p = getattr(module, name, None)
                if p is not None:
                    init.normal_(p, mean=0.0, std=p.shape[1] ** -0.5)
            for name in ("b1", "b2", "shared_b1", "shared_b2"):
                p = getattr(module, name, None)
                if p is not None:
                    init.zeros_(p)
        elif isinstance(module, RMSNorm):
            init.constant_(module.weight, module.init)
        else:
            super()._init_weights(module)


class EurekaAudioForCausalLM(EurekaAudioPreTrainedModel):
    """Whisper encoder + adapter + any causal LM, with audio embeddings spliced over `<|audio_pad|>` tokens."""

    def __init__(self, config: EurekaAudioConfig):
        super().__init__(config)
        self.encoder = WhisperEncoder(config.encoder_config)
        self.llm = AutoModelForCausalLM.from_config(config.llm_config)
        self.adapter = build_adapter(config)
        self.post_init()

    # -- audio path ------------------------------------------------------------------------------
    def encode_audio(
        self, input_features: torch.Tensor, feature_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, AdapterAux]:
        """input_features (B, M, F) log-mel, feature_lengths (B,) valid mel frames ->
        audio embeddings (B, S, D_llm) (zeros past each clip's length), token lengths (B,), adapter aux."""
        cfg = self.config
        enc_dtype = self.encoder.conv1.weight.dtype
        windows, win_lengths, per_clip = cut_windows(input_features.to(enc_dtype), feature_lengths, cfg.chunk_mel_frames)
        hidden, hid_lengths = encode_windows(self.encoder, windows, win_lengths)
        frames, frame_lengths = join_windows(hidden, hid_lengths, per_clip)
        stacked, token_lengths = stack_frames(frames, frame_lengths, cfg.stack_factor)
        mask = torch.arange(stacked.shape[1], device=stacked.device)[None, :] < token_lengths[:, None]
        adapter_dtype = next(self.adapter.parameters()).dtype
        embeds, aux = self.adapter(stacked.to(adapter_dtype), mask)
        if cfg.audio_scale == "text":
            embeds = embeds * self.text_embedding_rms().to(embeds.dtype)
        return embeds, token_lengths, aux

    @torch.no_grad()
    def text_embedding_rms(self) -> torch.Tensor:
        """RMS of the LLM's input embedding table (a 0-d tensor, no gradient)."""
        weight = self.llm.get_input_embeddings().weight
        return torch.linalg.vector_norm(weight, dtype=torch.float32) / weight.numel() ** 0.5

    def splice_audio(
        self, inputs_embeds: torch.Tensor, input_ids: torch.Tensor, audio: torch.Tensor, audio_lengths: torch.Tensor
    ) -> torch.Tensor:
        """Overwrite the `<|audio_pad|>` positions with audio embeddings, clips in row-major order.

        inputs_embeds (B, L, D), input_ids (B, L), audio (B_a, S, D), audio_lengths (B_a,) -> (B, L, D).
        Each run of consecutive pads must hold exactly one clip's tokens.
        """
        pad_mask = input_ids == self.config.audio_pad_token_id
        runs = _pad_runs(pad_mask)
        expected = audio_lengths.tolist()
        if runs != expected:
            raise ValueError(
                f"audio placeholders do not match the audio: the prompts hold runs of {runs} "
                f"{AUDIO_PAD} tokens but the clips need {expected} tokens. Build prompts with "
                "EurekaAudioProcessor so each <audio> expands to the clip's token count."
            )
        valid = torch.arange(audio.shape[1], device=audio.device)[None, :] < audio_lengths[:, None]
        flat = audio[valid].to(inputs_embeds.dtype)  # (sum S_b, D) clip by clip
        return inputs_embeds.masked_scatter(pad_mask.unsqueeze(-1), flat)

    def build_inputs_embeds(
        self,
        input_ids: torch.Tensor,
        input_features: torch.Tensor | None = None,
        feature_lengths: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, AdapterAux | None]:
        """Text embeddings with audio spliced in: (B, L) ids -> (B, L, D_llm), plus the adapter's aux."""
        pad_id = self.config.audio_pad_token_id
        if pad_id is None:
            raise ValueError("config.audio_pad_token_id is unset: add the audio tokens with EurekaAudioProcessor first")
        embed = self.llm.get_input_embeddings()
        inputs_embeds = embed(input_ids.masked_fill(input_ids == pad_id, 0))
        if input_features is None:
            if bool((input_ids == pad_id).any()):
                raise ValueError(f"input_ids hold {AUDIO_PAD} tokens but no input_features were given")
            return inputs_embeds, None
        if feature_lengths is None:
            feature_lengths = torch.full((input_features.shape[0],), input_features.shape[-1], device=input_ids.device)
        audio, lengths, aux = self.encode_audio(input_features, feature_lengths)
        return self.splice_audio(inputs_embeds, input_ids, audio, lengths), aux

    # -- LM interface ----------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        input_features: torch.Tensor | None = None,
        feature_lengths: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache=None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> EurekaAudioOutput:
        """input_ids (B, L) with `<|audio_pad|>` runs, attention_mask (B, L), input_features (B_a, M, F),
        feature_lengths (B_a,), labels (B, L) with -100 on positions that carry no loss. Packed rows pass
        position_ids that restart at 0 for each packed example and no attention_mask. `cache` is the LM's
        KV cache (its older name `past_key_values` is accepted too)."""
        cache = kwargs.pop("past_key_values", cache)
        inputs_embeds, aux = self.build_inputs_embeds(input_ids, input_features, feature_lengths)
        if use_cache is None:
            # no cache unless asked: a cache also disables the LM's detection of packed rows
            use_cache = cache is not None
        out = self.llm(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            labels=labels,
            cache=cache,
            use_cache=use_cache,
            **kwargs,
        )
        aux_loss = aux.loss if aux is not None else None
        loss = out.loss
        if loss is not None and aux_loss is not None:
            loss = loss + aux_loss
        return EurekaAudioOutput(
            loss=loss,
            logits=out.logits,
            lm_loss=out.loss,
            aux_loss=aux_loss,
            load_balance=aux.load_balance if aux is not None else None,
            expert_counts=aux.expert_counts if aux is not None else None,
            cache=getattr(out, "cache", None),
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        input_features: torch.Tensor | None = None,
        feature_lengths: torch.Tensor | None = None,
        **generate_kwargs,
    ) -> torch.Tensor:
        """Greedy (or any `generate` mode) continuation of left-padded prompts; returns only the new tokens (B, L_new)."""
        inputs_embeds, _ = self.build_inputs_embeds(input_ids, input_features, feature_lengths)
        generate_kwargs.setdefault("do_sample", False)
        gen_cfg = self.llm.generation_config
        if gen_cfg.pad_token_id is None and gen_cfg.eos_token_id is not None:
            generate_kwargs.setdefault("pad_token_id", gen_cfg.eos_token_id)
        return self.llm.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **generate_kwargs)

    def get_input_embeddings(self) -> nn.Module:
        return self.llm.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.llm.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module | None:
        return self.llm.get_output_embeddings()

    # -- building from real checkpoints ----------------------------------------------------------
    @classmethod
    def from_components(
        cls,
        encoder_path: str | Path,
        llm_path: str | Path,
        tokenizer=None,
        dtype: torch.dtype | None = None,
        **config_overrides,
    ) -> "EurekaAudioForCausalLM":
        """Build from a local Whisper checkpoint (full model or encoder only) and a local causal LM.

        The adapter is freshly initialised; `config_overrides` set adapter fields (adapter, n_experts,
        top_k, expert_hidden, ...). `tokenizer` must already hold the audio tokens (see
        `modeling.tokenizer.add_audio_tokens`); when None the LM's tokenizer is loaded and extended.
        """
        from transformers import AutoConfig, AutoTokenizer

        encoder_config = WhisperConfig.from_pretrained(encoder_path)
        llm_config = AutoConfig.from_pretrained(llm_path)
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(llm_path)
        ids = add_audio_tokens(tokenizer)
        config = EurekaAudioConfig(
            encoder_config=encoder_config.to_dict(), llm_config=llm_config.to_dict(), **ids, **config_overrides
        )
        with torch.device("meta"):
            model = cls(config)
        model.encoder = load_whisper_encoder(encoder_path, dtype=dtype)
        model.llm = AutoModelForCausalLM.from_pretrained(llm_path, dtype=dtype)
        model.adapter = build_adapter(config)
        if dtype is not None:
            model.adapter.to(dtype)
        if len(tokenizer) > model.llm.get_input_embeddings().num_embeddings:
            model.llm.resize_token_embeddings(len(tokenizer))
        model.config.llm_config = model.llm.config
        return model


def build_adapter(config: EurekaAudioConfig) -> nn.Module:
    """The adapter the config names: "moe" (MoEAdapter) or "linear" (LinearAdapter)."""
    d_out = config.llm_config.hidden_size
    if config.adapter == "linear":
        return LinearAdapter(config.stacked_dim, d_out, config.adapter_norm_eps, config.adapter_norm_init)
    return MoEAdapter(
        config.stacked_dim,
        d_out,
        n_experts=config.n_experts,
        top_k=config.top_k,
        n_shared=config.n_shared,
        expert_hidden=config.expert_hidden,
        aux_loss_coef=config.aux_loss_coef,
        router_z_loss_coef=config.router_z_loss_coef,
        norm_eps=config.adapter_norm_eps,
        norm_init=config.adapter_norm_init,
    )


def load_whisper_encoder(path: str | Path, dtype: torch.dtype | None = None) -> WhisperEncoder:
    """Load the encoder half of a local Whisper checkpoint (WhisperForConditionalGeneration, WhisperModel
    or a saved WhisperEncoder) without instantiating the decoder."""
    from safetensors.torch import load_file

    path = Path(path)
    config = WhisperConfig.from_pretrained(path)
    index = path / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (path / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json; save the Whisper checkpoint in safetensors format")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(str(path / name)))
    for prefix in ("model.encoder.", "encoder.", ""):
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and not k[len(prefix):].startswith("decoder")}
        if "conv1.weight" in sub:
            break
    else:
        raise ValueError(f"{path}: found no Whisper encoder weights (looked for model.encoder.conv1.weight, encoder.conv1.weight, conv1.weight)")
    encoder = WhisperEncoder(config)
    sub = {k: v for k, v in sub.items() if k in encoder.state_dict()}
    missing, _ = encoder.load_state_dict(sub, strict=False)
    missing = [m for m in missing if m != "embed_positions.weight" or "embed_positions.weight" in sub]
    if missing:
        raise ValueError(f"{path}: Whisper encoder weights missing: {missing[:5]}")
    return encoder.to(dtype) if dtype is not None else encoder


def _pad_runs(pad_mask: torch.Tensor) -> list[int]:
    """Lengths of maximal runs of True in each row of (B, L), rows in order."""
    m = F.pad(pad_mask.int(), (1, 1))  # (B, L+2), False borders so runs never cross rows
    edges = m[:, 1:] - m[:, :-1]
    starts = (edges == 1).nonzero()
    ends = (edges == -1).nonzero()
    return (ends[:, 1] - starts[:, 1]).tolist()


# so AutoModelForCausalLM.from_pretrained(checkpoint) loads our checkpoints (config.json model_type eureka_audio)
AutoModelForCausalLM.register(EurekaAudioConfig, EurekaAudioForCausalLM, exist_ok=True)
