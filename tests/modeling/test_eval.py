"""Evaluation: MMAU's matching rules, exact (letter and text) scoring, WER, the MMAU JSON round trip,
the audio-zeroed baseline, generation with a real tiny model, and the `dataflux eval` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from dataflux.text_metrics import corpus_wer, wer
from modeling.eval import (
    UNRATED_DIFFICULTY,
    evaluate,
    exact_is_correct,
    load_mmau_items,
    mmau_audio_loader,
    mmau_is_correct,
    mmau_tokens,
    parse_lettered,
    rows_to_items,
    score,
    write_mmau_json,
)
from tests.helpers.pitch_version import finished_version, pitch_rows

PITCHES = ["110 Hz", "220 Hz", "440 Hz", "880 Hz"]


# --- MMAU matching ---------------------------------------------------------------------------------


def test_mmau_tokens_are_lowercased_word_runs():
    assert mmau_tokens("The answer: (B) 440-Hz, Café!") == {"the", "answer", "b", "440", "hz", "café"}


@pytest.mark.parametrize("output", ["440 Hz", "(C) 440 Hz", "The tone is 440 hz.", "440HZ? no: 440 Hz"])
def test_mmau_accepts_outputs_holding_the_answer_and_no_wrong_choice(output):
    assert mmau_is_correct(output, "440 Hz", PITCHES)


@pytest.mark.parametrize("output", ["440 Hz or 220 Hz", "not 880 Hz but 440 Hz", "440", "", None])
def test_mmau_rejects_a_wrong_choice_token_a_missing_answer_token_or_no_output(output):
    # 'hz' is shared by every choice, so it never counts against the output; '220' and '880' do.
    assert not mmau_is_correct(output, "440 Hz", PITCHES)


def test_mmau_letter_only_answers_are_wrong_since_the_letter_is_ignored():
    assert not mmau_is_correct("(C)", "440 Hz", PITCHES)
    assert not mmau_is_correct("C", "440 Hz", PITCHES)


def test_mmau_case_and_punctuation_do_not_matter():
    assert mmau_is_correct("  LIVE BAND!!! ", "Live band", ["Radio", "Live band", "TV", "Smartphone"])
    assert mmau_is_correct("live-band", "Live band", ["Radio", "Live band", "TV", "Smartphone"])


def test_mmau_counts_every_answer_token_including_articles():
    # From MMAU test-mini: answer "A child" among "A woman", "An adult man", "A teenager".
    choices = ["A child", "A woman", "An adult man", "A teenager"]
    assert mmau_is_correct("It is a child", "A child", choices)
    assert not mmau_is_correct("child", "A child", choices)  # 'a' is an answer token too
    # Tokens a wrong choice shares with the answer are not held against the output...
    choices = ["Woman and child", "Two men", "Two women", "A man and a child"]
    assert mmau_is_correct("woman and child", "Woman and child", choices)
    # ...but tokens only a wrong choice has are, even a harmless article.
    assert not mmau_is_correct("a woman and child", "Woman and child", choices)


def test_mmau_ignores_choices_with_the_same_tokens_as_the_answer():
    assert mmau_is_correct("man", "man", ["man", "woman", "Man", "robot"])


# --- exact scoring ---------------------------------------------------------------------------------


def test_exact_needs_the_right_letter_and_the_right_text():
    assert exact_is_correct("(C) 440 Hz", 2, PITCHES)
    assert exact_is_correct("c) 440 hz.", 2, PITCHES)
    assert not exact_is_correct("(C) 220 Hz", 2, PITCHES)
    assert not exact_is_correct("(C)", 2, PITCHES)
    assert not exact_is_correct("440 Hz", 2, PITCHES)


def test_exact_catches_the_right_word_under_the_wrong_letter_that_mmau_accepts():
    output = "(A) 440 Hz"
    assert mmau_is_correct(output, "440 Hz", PITCHES)
    assert not exact_is_correct(output, 2, PITCHES)


def test_parse_lettered_and_bad_index():
    assert parse_lettered("(b): two beeps") == ("B", "two beeps")
    assert parse_lettered("two beeps") == (None, "two beeps")
    with pytest.raises(ValueError, match="outside the 4 choices"):
        exact_is_correct("(A) x", 4, PITCHES)


def test_score_overall_per_group_and_per_item():
    items = [
        {"id": "1", "choices": PITCHES, "answer": "440 Hz", "answer_index": 2, "task": "sound", "l3": "tone_pitch",
         "model_prediction": "(C) 440 Hz"},
        {"id": "2", "choices": PITCHES, "answer": "220 Hz", "answer_index": 1, "task": "sound", "l3": "tone_pitch",
         "model_prediction": "(A) 220 Hz"},  # right word, wrong letter
        {"id": "3", "choices": ["slow", "fast"], "answer": "fast", "task": "speech", "l3": "speaking_rate",
         "model_output": "(B) fast"},  # legacy key, index from the answer's position
        {"id": "4", "choices": ["slow", "fast"], "answer": "slow", "task": "speech", "l3": "speaking_rate"},
    ]
    result = score(items)
    assert (result["n"], result["no_prediction"]) == (4, 1)
    assert result["mmau_accuracy"] == pytest.approx(3 / 4)
    assert result["exact_accuracy"] == pytest.approx(2 / 4)
    assert result["by"]["task"]["sound"] == {"n": 2, "mmau_accuracy": 1.0, "exact_accuracy": 0.5}
    assert result["by"]["l3"]["speaking_rate"]["mmau_accuracy"] == 0.5
    assert [r["exact_correct"] for r in result["items"]] == [True, False, True, False]
    with pytest.raises(ValueError, match="item 0 .*'answer'"):
        score([{"id": "x", "choices": PITCHES}])


# --- WER -------------------------------------------------------------------------------------------


def test_wer_known_values():
    assert wer("the cat sat on the mat", "the cat sat on the mat") == 0.0
    assert wer("the cat sat on the mat", "the cat sit on mat") == pytest.approx(2 / 6)  # 1 sub + 1 del
    assert wer("a b", "a x b") == pytest.approx(1 / 2)  # 1 insertion
    assert wer("Hello, world!", "hello world") == 0.0  # case and punctuation normalised
    assert wer("don't stop", "dont stop") == pytest.approx(1 / 2)  # apostrophes are part of words
    assert wer("one two", "") == 1.0
    assert wer("one", "two three four") == 3.0  # WER is not capped at 1
    assert corpus_wer([("a b c d", "a b c d"), ("e f", "e")]) == pytest.approx(1 / 6)
    with pytest.raises(ValueError, match="no words"):
        wer(" ... ", "x")


def test_the_normaliser_folds_unicode_case_and_punctuation_and_keeps_digits_and_accents():
    from dataflux.text_metrics import words

    assert words("STRASSE, Straße!") == ["strasse", "strasse"]  # casefold, not lower()
    assert words("Don\u2019t \u00abstop\u00bb \u2014 now\u2026") == ["don't", "stop", "now"]
    assert words("ｆｕｌｌ width, 3.5 s, 1,000 Hz") == ["full", "width", "3.5", "s", "1,000", "hz"]
    assert words("perché è così") == ["perché", "è", "così"]  # accents tell words apart
    assert wer("nine o'clock", "9 o'clock") == pytest.approx(1 / 2)  # no number words for any language
    assert words("नमस्ते दुनिया") == ["नमस्ते", "दुनिया"]  # combining marks stay in their word


@pytest.mark.parametrize("text", ["Don't stop, it's 3.5 s... (or 1,000)!", "a_b-c 'x' y' 'z", "tab\tand\nnew#line$",
                                  "o'clock 5'6 ,. 7,8. end.", "' ' 2.x y.3 rock'n'roll"])
def test_ascii_text_takes_the_fast_path_to_the_same_words_as_the_unicode_path(text):
    from dataflux.text_metrics import words

    assert words(text + " é") == words(text) + ["é"]  # "é" sends the text through the Unicode path


def test_scripts_without_spaces_are_scored_by_character_given_the_language():
    from dataflux.text_metrics import words

    assert words("我有3个iPhone。") == ["我有3个iphone"]  # one "word" without the language
    assert words("我有3个iPhone。", "zh-Hans") == ["我", "有", "3", "个", "iphone"]
    assert wer("我有三个苹果", "我有两个苹果", "zh") == pytest.approx(1 / 6)
    assert wer("我有三个苹果", "我有两个苹果") == 1.0
    thai = words("สวัสดีครับ", "th")
    assert "".join(thai) == "สวัสดีครับ" and len(thai) == 7  # vowel marks stay on their consonant


# --- MMAU JSON -------------------------------------------------------------------------------------

MMAU_ITEMS = [
    {"id": "3fe64f3d", "audio_id": "./test-mini-audios/3fe64f3d.wav",
     "question": "Based on the given audio, identify the source of the speaking voice.",
     "choices": ["Man", "Woman", "Child", "Robot"], "answer": "Man", "dataset": "AudioSet", "task": "sound",
     "split": "test-mini", "category": "Reasoning", "sub-category": "Acoustic Source Inference",
     "difficulty": "medium"},
    {"id": "72fb5481", "audio_id": "./test-mini-audios/72fb5481.wav",
     "question": "What is the pitch of the tone?", "choices": PITCHES, "answer": "880 Hz", "dataset": "demo",
     "task": "music", "split": "test-mini", "category": "Information Extraction", "sub-category": "Pitch",
     "difficulty": "easy"},
]


def test_mmau_json_round_trip_keeps_every_field_and_scores_the_same(tmp_path):
    answered = [dict(MMAU_ITEMS[0], model_prediction="(A) Man"), dict(MMAU_ITEMS[1], model_prediction="(C) 440 Hz")]
    path = write_mmau_json(answered, tmp_path / "out" / "mmau-test-mini-ours.json")
    loaded = load_mmau_items(path)
    assert len(loaded) == 2
    for original, back in zip(answered, loaded):
        assert {k: back[k] for k in original} == original
        assert back["model_prediction"] == back["model_output"] == original["model_prediction"]
    a, b = score(answered), score(loaded)
    assert a["mmau_accuracy"] == b["mmau_accuracy"] == 0.5
    assert a["by"] == b["by"]
    with pytest.raises(ValueError, match="no 'model_prediction'"):
        write_mmau_json(MMAU_ITEMS, tmp_path / "x.json")


def test_loading_a_file_that_is_not_mmau_names_the_item_and_field(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": "q1", "question": "?", "choices": ["a"]}]))
    with pytest.raises(ValueError, match=r"item 0 \(id 'q1'\) lacks \['audio_id'\]"):
        load_mmau_items(bad)


def test_rows_become_items_mmau_script_can_score():
    from dataflux.storage.example_row import make_example_row

    row = make_example_row("clip-1", answer_index=3)
    (item,) = rows_to_items([row])
    # MMAU's script indexes its tables by these fields: they must hold its own values.
    assert item["task"] in ("sound", "music", "speech") and item["difficulty"] == UNRATED_DIFFICULTY
    assert item["split"] == "test-mini"
    assert (item["answer"], item["answer_index"], item["sub-category"]) == ("880 Hz", 3, "tone_pitch")
    assert item["prompt"] == row["messages"][0]["content"]  # the prompt the model was trained on


# --- evaluate --------------------------------------------------------------------------------------


def tone(freq: float, seconds: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


class PitchMeter:
    """A real answerer: measures the tone's frequency (FFT peak) and names the closest choice."""

    def __init__(self):
        self.seen: list[tuple[int, float]] = []  # (samples, peak amplitude) of every clip it heard

    def predict(self, batch):
        out = []
        for audio, prompt in batch:
            self.seen.append((len(audio), float(np.abs(audio).max())))
            choices = [line[4:] for line in prompt.splitlines() if line.startswith("(")]
            spectrum = np.abs(np.fft.rfft(audio))
            freq = np.argmax(spectrum) * 16000 / len(audio)
            best = int(np.argmin([abs(float(c.split()[0]) - freq) for c in choices]))
            out.append(f"({'ABCD'[best]}) {choices[best]}")
        return out


def test_evaluate_scores_a_measuring_answerer_and_the_zeroed_baseline_falls_to_chance():
    rows = pitch_rows(8)
    meter = PitchMeter()
    with_audio = evaluate(meter, None, rows, batch_size=3)
    assert with_audio["mmau_accuracy"] == with_audio["exact_accuracy"] == 1.0
    assert with_audio["by"]["l3"]["tone_pitch"]["n"] == 8
    assert all(peak > 0.1 for _, peak in meter.seen)

    zeroed_meter = PitchMeter()
    zeroed = evaluate(zeroed_meter, None, rows, zero_audio=True, batch_size=3)
    assert zeroed["zero_audio"] and zeroed["exact_accuracy"] == pytest.approx(0.25)  # always the same option
    assert [n for n, _ in zeroed_meter.seen] == [n for n, _ in meter.seen]  # same lengths, hence same tokens
    assert all(peak == 0.0 for _, peak in zeroed_meter.seen)
    preds = zeroed["predictions"]
    assert [p["model_prediction"] for p in preds] == [r[ "model_prediction"] for r in zeroed["items"]]


def test_evaluate_mmau_items_with_audio_from_a_directory(tmp_path):
    audio_dir = tmp_path / "mmau"
    (audio_dir / "test-mini-audios").mkdir(parents=True)
    items = []
    for i, (freq, answer) in enumerate([(220.0, "220 Hz"), (880.0, "880 Hz")]):
        sf.write(audio_dir / "test-mini-audios" / f"q{i}.wav", tone(freq), 16000)
        items.append(dict(MMAU_ITEMS[1], id=f"q{i}", audio_id=f"./test-mini-audios/q{i}.wav", answer=answer))
    result = evaluate(PitchMeter(), None, items, mmau_audio_loader(audio_dir))
    assert result["mmau_accuracy"] == 1.0 and result["exact_accuracy"] == 1.0
    path = write_mmau_json(result["predictions"], tmp_path / "preds.json")
    assert "prompt" not in json.loads(path.read_text())[0]
    # MMAU's test JSON withholds the answers: items are answered for submission, not scored.
    blind = [{k: v for k, v in it.items() if k != "answer"} for it in items]
    result = evaluate(PitchMeter(), None, blind, mmau_audio_loader(audio_dir))
    assert (result["n"], result["unscored"]) == (0, 2)
    assert [p["model_prediction"] for p in result["predictions"]] == ["(B) 220 Hz", "(D) 880 Hz"]
    missing = dict(items[0], id="gone", audio_id="./test-mini-audios/gone.wav")
    with pytest.raises(FileNotFoundError, match="'gone'.*gone.wav"):
        evaluate(PitchMeter(), None, [missing], mmau_audio_loader(audio_dir))


def test_evaluate_resamples_44k_mmau_audio_to_16k(tmp_path):
    t = np.arange(int(0.5 * 44100)) / 44100
    sf.write(tmp_path / "q.wav", (0.4 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32), 44100)
    item = dict(MMAU_ITEMS[1], id="q", audio_id="q.wav", answer="440 Hz")
    meter = PitchMeter()
    assert evaluate(meter, None, [item], mmau_audio_loader(tmp_path))["mmau_accuracy"] == 1.0
    assert meter.seen[0][0] == 8000


def test_evaluate_generates_with_the_real_model_and_processor(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    rows = pitch_rows(3)
    result = evaluate(model, processor, rows, batch_size=2, max_new_tokens=4)
    assert result["n"] == 3
    texts = [p["model_prediction"] for p in result["predictions"]]
    assert all(isinstance(t, str) for t in texts)
    # Batched generation answers each row as it would alone (left padding, per-clip features).
    alone = [evaluate(model, processor, [r], max_new_tokens=4)["predictions"][0]["model_prediction"] for r in rows]
    assert texts == alone


# --- dataflux eval ---------------------------------------------------------------------------------


def test_eval_command_on_a_finished_version_writes_scores_and_mmau_predictions(dataflux_home, tiny_checkpoint,
                                                                               tiny_model_and_processor, tmp_path,
                                                                               capsys):
    from cli.main import main

    rows = pitch_rows(5, splits=("test", "test", "test", "train"))
    vid = finished_version(dataflux_home, rows)
    out = tmp_path / "results.json"
    assert main(["eval", "--checkpoint", str(tiny_checkpoint), "--version", vid, "--out", str(out),
                 "--max-new-tokens", "4", "--quiet"]) == 0
    result = json.loads(out.read_text())
    assert (result["version"], result["split"], result["n"]) == (vid, "test", 3)
    assert set(result["by"]["l3"]) == {"tone_pitch"}
    preds = json.loads((tmp_path / "results.mmau.json").read_text())
    assert [p["id"] for p in preds] == [r["sample_id"] for r in rows[:3]]
    # what the checkpoint's model answers when asked directly, scored the same way
    model, processor = tiny_model_and_processor
    direct = evaluate(model, processor, rows[:3], max_new_tokens=4)
    assert [p["model_prediction"] for p in preds] == [p["model_prediction"] for p in direct["predictions"]]
    assert (result["mmau_accuracy"], result["exact_accuracy"]) == (direct["mmau_accuracy"], direct["exact_accuracy"])
    assert "MMAU-style" in capsys.readouterr().out

    assert main(["eval", "--checkpoint", str(tiny_checkpoint), "--version", vid, "--split", "validation"]) == 2
    assert "no rows in split 'validation'" in capsys.readouterr().err


def test_eval_command_refuses_a_draft_version(dataflux_home, tiny_checkpoint, capsys):
    from cli.main import main

    vid = finished_version(dataflux_home, pitch_rows(2, splits=("test",)), finalize=False)
    assert main(["eval", "--checkpoint", str(tiny_checkpoint), "--version", vid]) == 2
    assert "draft" in capsys.readouterr().err


def test_eval_command_on_mmau_json_with_zeroed_audio(tiny_checkpoint, tmp_path, capsys):
    from cli.main import main

    (tmp_path / "audio" / "test-mini-audios").mkdir(parents=True)
    items = []
    for i in range(2):
        sf.write(tmp_path / "audio" / "test-mini-audios" / f"q{i}.wav", tone(220.0 * (i + 1)), 16000)
        items.append(dict(MMAU_ITEMS[1], id=f"q{i}", audio_id=f"./test-mini-audios/q{i}.wav"))
    mmau = tmp_path / "mmau-test-mini.json"
    mmau.write_text(json.dumps(items))
    preds = tmp_path / "answered.json"
    assert main(["eval", "--checkpoint", str(tiny_checkpoint), "--mmau", str(mmau),
                 "--audio-dir", str(tmp_path / "audio"),
                 "--predictions", str(preds), "--zero-audio", "--max-new-tokens", "4", "--quiet"]) == 0
    answered = load_mmau_items(preds)
    assert [a["id"] for a in answered] == ["q0", "q1"] and all("model_prediction" in a for a in answered)
    assert "audio zeroed" in capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(tiny_checkpoint), "--mmau", str(mmau)]) == 2
    assert "--audio-dir" in capsys.readouterr().err
