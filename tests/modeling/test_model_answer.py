"""The one answering function: a checkpoint loaded once answers like the model and processor called by
hand, a batch answers each prompt as it would alone, and the model's training mode is put back."""

import numpy as np
import pytest
import torch

from modeling.answer import AudioLM, load_checkpoint
from modeling.model import EurekaAudioForCausalLM
from modeling.processor import EurekaAudioProcessor

PROMPT = "<audio>\nWhat is the approximate pitch of the tone?\n(A) 110 Hz\n(B) 220 Hz\n(C) 440 Hz\n(D) 880 Hz"


def _clip(seconds: float, freq: float) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _by_hand(path, clip: np.ndarray, prompt: str, max_new_tokens: int) -> tuple[str, int, torch.Tensor]:
    model = EurekaAudioForCausalLM.from_pretrained(path).eval()
    processor = EurekaAudioProcessor.from_pretrained(path)
    batch = processor([[{"role": "user", "content": prompt}]], [clip], add_generation_prompt=True)
    with torch.no_grad():
        new = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.decode(new[0]), int(batch["input_ids"].shape[-1]), new[0]


def test_answer_is_what_the_model_and_processor_generate_by_hand(tiny_checkpoint):
    lm = AudioLM.from_checkpoint(tiny_checkpoint, device="cpu", max_new_tokens=6)
    clip = _clip(0.5, 440.0)
    text, prompt_tokens, new = _by_hand(tiny_checkpoint, clip, PROMPT, 6)
    reply = lm.reply_batch([(clip, PROMPT)])[0]
    assert reply.text == text == lm.answer(clip, PROMPT)
    assert reply.prompt_tokens == prompt_tokens and reply.new_tokens == new.shape[-1]
    # a prompt without the placeholder gets it in front, as `dataflux generate` always did
    bare = PROMPT.removeprefix("<audio>")
    assert lm.answer(clip, bare) == _by_hand(tiny_checkpoint, clip, "<audio>" + bare, 6)[0]


def test_a_batch_answers_each_prompt_as_it_would_alone(tiny_checkpoint):
    lm = AudioLM.from_checkpoint(tiny_checkpoint, device="cpu", max_new_tokens=5)
    pairs = [(_clip(0.3, 220.0), PROMPT), (_clip(1.1, 880.0), PROMPT + "\nAnswer with a letter.")]
    together = lm.reply_batch(pairs)
    alone = [lm.reply_batch([p])[0] for p in pairs]
    assert together == alone
    assert together[0].prompt_tokens < together[1].prompt_tokens  # longer clip and prompt: more tokens
    assert lm.predict(pairs) == [r.text for r in alone]


def test_answering_puts_a_training_model_back_in_training_mode(tiny_checkpoint):
    model, processor = load_checkpoint(tiny_checkpoint, device="cpu")
    model.train()
    AudioLM(model, processor, max_new_tokens=2).answer(_clip(0.4, 440.0), PROMPT)
    assert model.training


def test_a_folder_without_a_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json.*dataflux train"):
        AudioLM.from_checkpoint(tmp_path)
