"""The processor: audio-token expansion that matches the model, assistant-only labels, one format for
training and inference, and save/load."""

import json

import numpy as np
import pytest
import torch

from modeling.model import EurekaAudioForCausalLM
from modeling.processor import IGNORE_INDEX, EurekaAudioProcessor
from modeling.tokenizer import CHATML_TEMPLATE, train_small_tokenizer
from tests.helpers.tiny_model import tiny_model

QUESTIONS = [
    "What is the approximate pitch of the tone in this recording?",
    "How many beeps can be heard?",
    "What colour of noise is this?",
]
CHOICES = [["110 Hz", "220 Hz", "440 Hz", "880 Hz"], ["1 beep", "2 beeps", "3 beeps", "4 beeps"],
           ["white", "pink", "brown", "blue"]]


def _conversation(i: int, answer: int = 1) -> list[dict[str, str]]:
    options = "\n".join(f"({'ABCD'[j]}) {c}" for j, c in enumerate(CHOICES[i]))
    return [{"role": "user", "content": f"<audio>{QUESTIONS[i]}\n{options}"},
            {"role": "assistant", "content": f"({'ABCD'[answer]}) {CHOICES[i][answer]}"}]


@pytest.fixture(scope="module")
def processor() -> EurekaAudioProcessor:
    texts = [m["content"] for i in range(3) for m in _conversation(i)]
    return EurekaAudioProcessor(train_small_tokenizer(texts, vocab_size=400), n_mels=16, chunk_mel_frames=100)


def _clip(seconds: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_placeholder_expands_to_the_token_count_the_model_produces(processor):
    model = tiny_model(processor)
    clips = [_clip(0.7), _clip(2.3), _clip(0.05)]  # 2.3 s spans three 1 s encoder windows
    batch = processor([_conversation(i) for i in range(3)], clips, add_generation_prompt=False)
    _, token_lengths, _ = model.encode_audio(batch["input_features"], batch["feature_lengths"])
    pad = processor.audio_ids["audio_pad_token_id"]
    assert (batch["input_ids"] == pad).sum(1).tolist() == token_lengths.tolist()
    assert token_lengths.tolist() == [processor.audio_token_count(len(c)) for c in clips]
    out = model(**batch)  # no placeholder mismatch, finite loss
    assert torch.isfinite(out.loss)


def test_labels_cover_only_the_assistant_answer_and_its_end_token(processor):
    enc = processor.encode(_conversation(0, answer=2), [5])
    labelled = [t for t in enc.labels if t != IGNORE_INDEX]
    assert processor.tokenizer.decode(labelled) == "(C) 440 Hz<|im_end|>"
    first = next(i for i, t in enumerate(enc.labels) if t != IGNORE_INDEX)
    assert processor.tokenizer.decode(enc.input_ids[:first]).endswith("<|im_start|>assistant\n")
    assert len(enc.labels) == len(enc.input_ids)


def test_inference_prompt_is_the_training_sequence_up_to_the_answer(processor):
    conv = _conversation(1, answer=3)
    train = processor.encode(conv, [7])
    prompt = processor.encode(conv[:1], [7], add_generation_prompt=True)
    assert train.input_ids[: len(prompt.input_ids)] == prompt.input_ids
    answer = train.input_ids[len(prompt.input_ids):]
    assert processor.decode(answer) == "(D) 4 beeps"


def test_rendered_text_matches_the_tokenizer_chat_template(processor):
    conv = _conversation(2)
    assert processor.tokenizer.chat_template == CHATML_TEMPLATE
    assert processor.render(conv) == processor.tokenizer.apply_chat_template(conv, tokenize=False)
    enc = processor.encode(conv, [3])
    expanded = processor.render(conv).replace("<audio>", "<|audio_start|>" + "<|audio_pad|>" * 3 + "<|audio_end|>")
    assert processor.tokenizer.decode(enc.input_ids) == expanded


def test_generation_batches_are_left_padded_and_carry_no_labels(processor):
    batch = processor([_conversation(0)[:1], _conversation(1)[:1]], [_clip(0.3), _clip(1.5)])
    assert "labels" not in batch
    assert batch["attention_mask"][:, -1].tolist() == [1, 1]
    assert batch["attention_mask"][0, 0].item() == 0  # the shorter clip's prompt is padded on the left


def test_placeholder_and_clip_counts_must_agree(processor):
    with pytest.raises(ValueError, match="more <audio> placeholders than audio clips"):
        processor.encode(_conversation(0), [])
    with pytest.raises(ValueError, match="left without an <audio> placeholder"):
        processor.encode(_conversation(0), [4, 4])


def test_saved_processor_reloads_to_the_same_encoding(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    loaded = EurekaAudioProcessor.from_pretrained(tmp_path)
    conv = _conversation(0)
    assert loaded.encode(conv, [9]) == processor.encode(conv, [9])
    assert loaded.audio_ids == processor.audio_ids
    assert (loaded.n_mels, loaded.chunk_mel_frames) == (16, 100)
    assert loaded.audio_token_count(12345) == processor.audio_token_count(12345)


def test_auto_classes_load_a_saved_checkpoint_and_expand_placeholders_as_the_original(processor, tmp_path):
    from transformers import AutoModelForCausalLM, AutoProcessor

    model = tiny_model(processor)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["processor_class"] == "EurekaAudioProcessor" and (saved["n_mels"], saved["chunk_mel_frames"]) == (16, 100)

    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is EurekaAudioProcessor and loaded.audio_ids == processor.audio_ids
    clips = [_clip(0.7), _clip(2.3)]  # 2.3 s: three encoder windows
    convs = [_conversation(0), _conversation(2)]
    for add_generation_prompt in (False, True):
        ours = processor(convs, clips, add_generation_prompt=add_generation_prompt)
        theirs = loaded(convs, clips, add_generation_prompt=add_generation_prompt)
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    pad = processor.audio_ids["audio_pad_token_id"]
    assert (theirs["input_ids"] == pad).sum(1).tolist() == [processor.audio_token_count(len(c)) for c in clips]

    auto_model = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(auto_model) is EurekaAudioForCausalLM
    with torch.no_grad():
        assert torch.equal(auto_model(**ours).logits, model(**ours).logits)


def test_whole_line_tokenizer_makes_each_option_line_one_token_and_still_reads_anything():
    texts = [m["content"].replace("<audio>", "") for i in range(3) for a in range(4) for m in _conversation(i, a)]
    tokenizer = train_small_tokenizer(texts * 5, vocab_size=2000, whole_lines=True)
    proc = EurekaAudioProcessor(tokenizer, n_mels=16, chunk_mel_frames=100)
    enc = proc.encode(_conversation(0, answer=2), [2])
    labelled = [t for t in enc.labels if t != IGNORE_INDEX]
    assert [tokenizer.decode([t]) for t in labelled] == ["(C) 440 Hz", "<|im_end|>"]
    option_ids = tokenizer.encode("(A) 110 Hz\n(B) 220 Hz", add_special_tokens=False)
    assert [tokenizer.decode([t]) for t in option_ids] == ["(A) 110 Hz", "\n", "(B) 220 Hz"]
    unseen = "An unseen question about 17 kHz? (E) none"
    assert tokenizer.decode(tokenizer.encode(unseen, add_special_tokens=False)) == unseen
