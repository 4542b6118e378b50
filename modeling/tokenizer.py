"""Tokenizer side of the audio LM: the audio special tokens, the chat format, and a small trained tokenizer.

The chat format is ChatML (what Qwen models use), one template for training and inference:

    <|im_start|>system\n{system}<|im_end|>\n          (only when a system prompt is set)
    <|im_start|>user\n{content}<|im_end|>\n
    <|im_start|>assistant\n{content}<|im_end|>\n

Tiny models for tests and the demo train their own byte-level BPE on the questions and answers
of a data version with `tokenizers`, offline. With `whole_lines=True` the BPE never merges across a
newline but may merge a whole line: a frequent option line such as "(B) 440 Hz" becomes one token,
so picking the right option is a single copy of one prompt token rather than a letter that must be
fetched from two tokens before the matching value. Rare text still falls back to bytes. With
`words=True` as well, every other line is cut at word boundaries before BPE: a transcript or a
caption becomes about one token per word (whole lines of free text would each take a vocabulary
entry, and a sentence no line was trained on would fall apart into bytes), while option lines stay
whole.
"""

from __future__ import annotations

from collections.abc import Iterable

from transformers import PreTrainedTokenizerFast

from modeling.configuration import AUDIO_END, AUDIO_PAD, AUDIO_START, AUDIO_TOKENS

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def add_audio_tokens(tokenizer) -> dict[str, int]:
    """Add `<|audio_start|>`, `<|audio_pad|>`, `<|audio_end|>` as special tokens (if missing).

    Returns the config fields {audio_start_token_id, audio_pad_token_id, audio_end_token_id}.
    Adding them to the same base tokenizer always yields the same ids.
    """
    missing = [t for t in AUDIO_TOKENS if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id)]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in (
        ("audio_start_token_id", AUDIO_START), ("audio_pad_token_id", AUDIO_PAD), ("audio_end_token_id", AUDIO_END))}
    if len(set(ids.values())) != 3 or tokenizer.unk_token_id in ids.values():
        raise ValueError(f"could not add the audio tokens to the tokenizer (got ids {ids})")
    return ids


# An option line "(B) 440 Hz" as one piece; elsewhere a newline, a word with its leading space, or spaces.
_OPTION_LINES_ELSE_WORDS = r"\([A-J]\) [^\n]*|\n| ?[^\s]+|\s+"


def train_small_tokenizer(texts: Iterable[str], vocab_size: int = 1000, whole_lines: bool = False,
                          words: bool = False) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `texts`, with the ChatML and audio special tokens and the chat template.

    Byte-level means any text still encodes (rare words fall back to bytes), so a tiny model can read
    questions it has not seen. `whole_lines`: split only at newlines before BPE; `words` (with
    `whole_lines`): split lines other than option lines at words (see the module docstring).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = [END_OF_TEXT, IM_START, IM_END, *AUDIO_TOKENS]
    tok = Tokenizer(models.BPE())
    if whole_lines:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_OPTION_LINES_ELSE_WORDS if words else "\n"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    roles = ["system\n", "user\n", "assistant\n"] * 50  # so the chat headers become whole tokens
    tok.train_from_iterator(list(texts) + roles, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=END_OF_TEXT,
        additional_special_tokens=[IM_START, *AUDIO_TOKENS],
    )
    fast.chat_template = CHATML_TEMPLATE
    add_audio_tokens(fast)
    return fast
