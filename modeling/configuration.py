"""Configuration of the Eureka-Audio style model: Whisper encoder -> frame stacking -> adapter -> causal LM.

The two backbones keep their own Hugging Face configs (`encoder_config` is a `WhisperConfig`,
`llm_config` any causal-LM config resolved through `AutoConfig` by its `model_type`), so a
checkpoint of real size (whisper-large-v3 + Qwen3-1.7B) and a 1M-parameter test model differ
only in these two dicts and the adapter widths.
"""

from __future__ import annotations

from transformers import AutoConfig, PretrainedConfig, WhisperConfig
from transformers.configuration_utils import SubConfigSpec

AUDIO_START = "<|audio_start|>"
AUDIO_PAD = "<|audio_pad|>"
AUDIO_END = "<|audio_end|>"
AUDIO_TOKENS = (AUDIO_START, AUDIO_PAD, AUDIO_END)


class EurekaAudioConfig(PretrainedConfig):
    """Config of `EurekaAudioForCausalLM`.

    Adapter fields (the paper does not publish them; these are our defaults):
      adapter: "moe" (sparse mixture of SiLU experts, Eureka-Audio) or "linear" (Falcon3-Audio).
      stack_factor: encoder frames stacked into one audio token (50 Hz / 4 = 12.5 tokens per second).
      n_experts, top_k, n_shared: routed experts, experts used per token, always-on experts.
      expert_hidden: hidden width of each expert FFN (default: the stacked input width).
      aux_loss_coef: lambda in L = L_ntp + lambda * L_aux (load balancing).
      router_z_loss_coef: weight of the router z-loss (mean squared log-sum-exp of router logits).
      adapter_norm_init: initial gain of the RMSNorm after the projection W_P; it sets the scale of
        the audio embeddings relative to the LLM's text embeddings.
      audio_scale: "fixed" (audio embeddings leave the adapter at the norm's gain) or "text" (the
        normalised output is also multiplied by the current RMS of the LLM's input embeddings, not
        differentiated, so audio and text tokens enter the residual stream at the same scale however
        the text embeddings grow in training or were pretrained; the gain is then relative, 1.0 = equal).
    The three audio token ids are set once the tokenizer knows the audio special tokens.
    """

    model_type = "eureka_audio"
    sub_configs_defaults = {
        "encoder_config": SubConfigSpec(config_class=WhisperConfig),
        "llm_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen3"),
    }

    encoder_config: dict | PretrainedConfig | None = None
    llm_config: dict | PretrainedConfig | None = None
    adapter: str = "moe"
    stack_factor: int = 4
    n_experts: int = 8
    top_k: int = 2
    n_shared: int = 1
    expert_hidden: int | None = None
    aux_loss_coef: float = 0.01
    router_z_loss_coef: float = 0.0
    adapter_norm_init: float = 1.0
    adapter_norm_eps: float = 1e-6
    audio_scale: str = "fixed"
    initializer_range: float = 0.02
    audio_start_token_id: int | None = None
    audio_pad_token_id: int | None = None
    audio_end_token_id: int | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.adapter not in ("moe", "linear"):
            raise ValueError(f"EurekaAudioConfig.adapter must be 'moe' or 'linear', got {self.adapter!r}")
        if self.adapter == "moe" and not 1 <= self.top_k <= self.n_experts:
            raise ValueError(
                f"EurekaAudioConfig: top_k={self.top_k} must be between 1 and n_experts={self.n_experts}"
            )
        if self.audio_scale not in ("fixed", "text"):
            raise ValueError(f"EurekaAudioConfig.audio_scale must be 'fixed' or 'text', got {self.audio_scale!r}")
        if self.stack_factor < 1:
            raise ValueError(f"EurekaAudioConfig.stack_factor must be >= 1, got {self.stack_factor}")

    # -- derived sizes -------------------------------------------------------------------------
    @property
    def stacked_dim(self) -> int:
        """Width of one audio token before the adapter: stack_factor * encoder d_model."""
        return self.stack_factor * self.encoder_config.d_model

    @property
    def chunk_mel_frames(self) -> int:
        """Mel frames one encoder window holds (3000 = 30 s for Whisper); longer clips are chunked."""
        return 2 * self.encoder_config.max_source_positions

    @property
    def n_mels(self) -> int:
        return self.encoder_config.num_mel_bins

    def get_text_config(self, *args, **kwargs):  # noqa: D102 - generation utilities look for the LM config here
        return self.llm_config


def encoder_frames(mel_frames: int, chunk_mel_frames: int) -> int:
    """Encoder output frames for a clip of `mel_frames` mel frames cut into windows of `chunk_mel_frames`.

    Each window goes through Whisper's stride-2 conv (kernel 3, padding 1): L -> (L - 1) // 2 + 1.
    """
    if mel_frames <= 0:
        raise ValueError(f"a clip needs at least one mel frame, got {mel_frames}")
    full, rest = divmod(mel_frames, chunk_mel_frames)
    n = full * ((chunk_mel_frames - 1) // 2 + 1)
    if rest:
        n += (rest - 1) // 2 + 1
    return n


def audio_token_count(mel_frames: int, chunk_mel_frames: int, stack_factor: int) -> int:
    """Audio tokens (`<|audio_pad|>` count) for a clip of `mel_frames` mel frames: ceil(encoder frames / stack)."""
    return -(-encoder_frames(mel_frames, chunk_mel_frames) // stack_factor)


AutoConfig.register(EurekaAudioConfig.model_type, EurekaAudioConfig, exist_ok=True)
