"""Task rows beside the questions: what a demo clip yields, how each task is prompted and masked, how
each is scored, the per-task blocks of `dataflux eval`, the per-task counts of `stats`, and the
trainer's task mixture."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from dataflux.records import Clip, SourceItem
from dataflux.steps.task_rows import ASR_PROMPT, CAPTION_PROMPT, asr_row, check_tasks, task_messages
from dataflux.storage.row_schema import row_content_sha256
from dataflux.text_metrics import caption_overlap, corpus_wer, normalise_text, wer
from modeling.task_eval import evaluate_tasks, open_answer_correct
from tests.helpers.pitch_version import finished_version, pitch_rows

SPEECH = "We will meet again at the station on Tuesday morning at nine."


# --- rows ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_rows(tmp_path_factory):
    """One partition of 16 demo clips (one of them espeak speech) with every task, as written."""
    import os

    import pyarrow.parquet as pq

    from dataflux.config import demo_config
    from dataflux.pipeline import process_partition

    home = tmp_path_factory.mktemp("home")
    os.environ["DATAFLUX_HOME"] = str(home)
    try:
        config = demo_config(size=16, partitions=1, tasks=["mcq", "asr", "caption", "open_qa"])
        result = process_partition(config, "demo", 0, 1, "v0001-t", "run-t")
    finally:
        os.environ.pop("DATAFLUX_HOME")
    return pq.read_table(result.shard.path).to_pylist(), result


def test_a_demo_version_carries_every_task_under_the_row_contract(demo_rows):
    from dataflux.sources.demo import plan_demo_item

    rows, result = demo_rows
    by_task = Counter(r["task"] for r in rows)
    questions = [r for r in rows if r["task"] == "mcq"]
    clips = {r["audio_sha256"] for r in questions}
    assert by_task["caption"] == len(clips)  # one caption per clip that kept a question
    assert by_task["open_qa"] == len(questions)  # every demo leaf is measured
    speech = [plan_demo_item(i) for i in range(16) if plan_demo_item(i)["kind"] == "speech"]
    asr = [r for r in rows if r["task"] == "asr"]
    assert speech and sorted(r["answer"] for r in asr) == sorted(p["truth"]["transcript"] for p in speech)
    for r in rows:
        if r["task"] == "mcq":
            continue
        assert r["choices"] == [] and r["answer_index"] is None and r["checks"] and r["checks"][0]["passed"]
        assert r["messages"][-1] == {"role": "assistant", "content": r["answer"]}
        assert r["cost_usd"] == 0.0  # the clip's calls are paid for by its question rows
    same_clip = {r["audio_sha256"]: r for r in questions}
    for r in rows:
        if r["task"] == "caption":  # the verified caption, corrections included
            assert r["answer"] == same_clip[r["audio_sha256"]]["caption"]
        if r["task"] == "open_qa":
            q = next(x for x in questions if r["sample_id"] == x["sample_id"] + "-open")
            assert r["answer"] == q["answer"] == json.loads(q["facts"])[q["l3"]]
    assert not [j for j in result.rejects if j.reason.startswith("asr:")]


def test_a_question_row_hashes_as_it_did_before_the_task_column(demo_rows):
    rows, _ = demo_rows
    q = next(r for r in rows if r["task"] == "mcq")
    without = {k: v for k, v in q.items() if k != "task"}
    assert row_content_sha256(q) == row_content_sha256(without) == q["row_sha256"]
    t = next(r for r in rows if r["task"] == "caption")
    assert row_content_sha256({**t, "task": "mcq"}) != row_content_sha256(t)


def _speech_clip(transcript: str | None) -> Clip:
    item = SourceItem(source="s", source_id="c1", audio_bytes=b"", audio_path=None,
                      labels={"transcript": transcript} if transcript else {}, license="x", meta={})
    return Clip(item=item, audio_sha256="ab" * 32, samples=np.zeros(160, np.float32), sampling_rate=16000,
                original_sampling_rate=16000, quality={}, facts={})


def _base(transcript: str | None, recognizer: bool) -> dict:
    params = json.dumps({"transcription_model": "whisper-1"} if recognizer else {})
    return {"transcript": transcript, "caption": "A voice.", "calls": [{"step": "caption", "params": params},
                                                                         {"step": "judge", "params": "{}"}]}


def test_a_transcript_is_kept_where_source_and_recognizer_agree_and_rejected_where_not():
    kept = asr_row(_speech_clip(SPEECH), _base("we will meet again at the station on tuesday morning at 9", True))
    assert kept["answer"] == SPEECH and [c["name"] for c in kept["checks"]] == ["transcript_from_source",
                                                                                "recognizer_agrees"]
    assert [c["step"] for c in kept["calls"]] == ["caption"]
    alone = asr_row(_speech_clip(SPEECH), _base(SPEECH, False))  # the demo: the espeak text, exact
    assert alone["answer"] == SPEECH and len(alone["checks"]) == 1
    assert asr_row(_speech_clip(SPEECH), _base("we met at the station on monday", True)).reason == \
        "asr:transcript_disagrees"
    assert asr_row(_speech_clip(None), _base("something heard", True)).reason == "asr:unverified_transcript"
    assert asr_row(_speech_clip(None), _base(None, False)) is None


def test_a_source_must_emit_questions_and_name_known_tasks():
    assert check_tasks(["mcq", "asr", "asr"], "w") == ("mcq", "asr")
    with pytest.raises(ValueError, match="lacks mcq"):
        check_tasks(["asr"], "sources.x.tasks")
    with pytest.raises(ValueError, match="unknown task"):
        check_tasks(["mcq", "qa"], "sources.x.tasks")


# --- prompts and loss masks ------------------------------------------------------------------------


def test_each_task_has_its_prompt_and_loss_only_on_the_answer():
    from modeling.processor import IGNORE_INDEX, EurekaAudioProcessor
    from modeling.tokenizer import train_small_tokenizer

    convs = {
        "mcq": [{"role": "user", "content": "<audio>\nWhat is the pitch?\n(A) 110 Hz\n(B) 440 Hz"},
                {"role": "assistant", "content": "(B) 440 Hz"}],
        "asr": task_messages("asr", "Transcribe the speech.", SPEECH),
        "caption": task_messages("caption", "Describe the audio.", "A steady 440 Hz sine tone, at a loud level."),
        "open_qa": task_messages("open_qa", "What is the pitch?", "440 Hz"),
    }
    assert convs["asr"][0]["content"] == ASR_PROMPT and convs["caption"][0]["content"] == CAPTION_PROMPT
    assert convs["open_qa"][0]["content"] == "<audio>\nWhat is the pitch?\nAnswer in a few words."
    texts = [m["content"].replace("<audio>", "") for c in convs.values() for m in c] * 20
    tokenizer = train_small_tokenizer(texts, vocab_size=400, whole_lines=True, words=True)
    assert len(tokenizer.encode("(B) 440 Hz", add_special_tokens=False)) == 1  # option lines stay whole
    assert len(tokenizer.encode(SPEECH, add_special_tokens=False)) <= len(SPEECH.split()) + 1  # ~a token a word
    processor = EurekaAudioProcessor(tokenizer, n_mels=80)
    for task, conv in convs.items():
        enc = processor.encode(conv, [3], where=task)
        labelled = [t for t, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE_INDEX]
        assert processor.tokenizer.decode(labelled) == conv[-1]["content"] + "<|im_end|>", task
        first = enc.labels.index(labelled[0])
        assert processor.tokenizer.decode(enc.input_ids[:first]).endswith("<|im_start|>assistant\n"), task


# --- scorers -----------------------------------------------------------------------------------------


def test_wer_uses_the_one_normaliser_and_counts_word_edits():
    assert normalise_text("At NINE o’clock, please!") == normalise_text("at nine o'clock please")
    assert normalise_text("at 9 o'clock") != normalise_text("at nine o'clock")  # digits kept, no number words
    assert wer(SPEECH, SPEECH.upper().replace(".", "")) == 0.0
    assert wer("the cat sat", "the cat") == pytest.approx(1 / 3)
    assert wer("the cat sat", "") == 1.0
    assert corpus_wer([("a b c", "a x c"), ("d e", "d e f")]) == pytest.approx(2 / 5)
    with pytest.raises(ValueError, match="no words"):
        wer("!?", "x")


def test_caption_score_rewards_word_overlap():
    same = caption_overlap([("A steady 440 Hz sine tone.", "a steady 440 hz sine tone")])
    assert same["rouge_l"] == pytest.approx(1.0) and same["bleu"] == pytest.approx(100.0)
    near = caption_overlap([("A steady 440 Hz sine tone at a loud level.", "A steady 220 Hz sine tone at a loud level.")])
    far = caption_overlap([("A steady 440 Hz sine tone at a loud level.", "Brown noise.")])
    assert 0.0 <= far["rouge_l"] < near["rouge_l"] < 1.0 and far["bleu"] < near["bleu"] < 100.0


def test_open_answers_are_scored_exactly_and_by_tokens():
    assert open_answer_correct("440 Hz.", "440 Hz") == (True, True)
    assert open_answer_correct("about 440 Hz", "440 Hz") == (False, True)
    assert open_answer_correct("220 Hz", "440 Hz") == (False, False)
    assert open_answer_correct("", "440 Hz") == (False, False)


# --- evaluation --------------------------------------------------------------------------------------


def task_rows_for(mcq_rows: list[dict]) -> list[dict]:
    """asr, caption and open_qa rows about the clips of `mcq_rows` (built as the data side builds them)."""
    out = []
    for i, q in enumerate(mcq_rows):
        for task, answer in (("asr", SPEECH if i % 2 else "Turn left at the second corner."),
                             ("caption", f"A steady {q['answer']} sine tone."), ("open_qa", q["answer"])):
            out.append({**q, "sample_id": f"{q['sample_id']}-{task}", "task": task, "choices": [], "answer": answer,
                        "answer_index": None, "answers": [], "row_sha256": None,
                        "messages": task_messages(task, q["question"], answer)})
    return out


class AnswerKey:
    """A Predictor that gives each clip's reference answer for the prompt's task (a perfect model),
    except `wrong` words in place of every transcript."""

    def __init__(self, rows, wrong: str | None = None):
        self.key = {(len(r["audio"]["bytes"]), r["messages"][0]["content"]): r for r in rows}
        self.wrong = wrong

    def predict(self, batch):
        import io

        import soundfile as sf

        out = []
        for audio, prompt in batch:
            for (n, p), row in self.key.items():
                y, _ = sf.read(io.BytesIO(row["audio"]["bytes"]), dtype="float32")
                if p == prompt and len(y) == len(audio):
                    break
            else:
                raise AssertionError(f"no row for prompt {prompt!r}")
            text = row["messages"][-1]["content"]
            out.append(self.wrong if (self.wrong and row.get("task") == "asr") else text)
        return out


def test_evaluate_tasks_scores_each_task_its_own_way():
    rows = pitch_rows(4, splits=("test",))
    rows = rows + task_rows_for(rows)
    perfect = evaluate_tasks(AnswerKey(rows), None, rows, batch_size=3)
    assert list(perfect) == ["mcq", "asr", "caption", "open_qa"]
    assert perfect["mcq"]["mmau_accuracy"] == perfect["mcq"]["exact_accuracy"] == 1.0
    assert perfect["asr"]["wer"] == 0.0 and perfect["asr"]["n"] == 4
    assert perfect["caption"]["rouge_l"] == pytest.approx(1.0)
    assert perfect["open_qa"]["exact_accuracy"] == perfect["open_qa"]["token_accuracy"] == 1.0
    garbled = evaluate_tasks(AnswerKey(rows, wrong="we will meet"), None, rows, batch_size=3)
    # "turn left at the second corner" (6 words): 3 substitutions + 3 deletions; the 12 words of SPEECH
    # ("nine" normalised to "9"): the first 3 match, 9 deletions. Two of each.
    assert garbled["asr"]["wer"] == pytest.approx((2 * 6 + 2 * 9) / (2 * 6 + 2 * 12))
    assert garbled["mcq"]["exact_accuracy"] == 1.0


def test_eval_command_writes_one_json_with_a_block_per_task(dataflux_home, tiny_checkpoint, tiny_model_and_processor,
                                                            tmp_path, capsys):
    from cli.main import main

    ckpt = tiny_checkpoint
    rows = pitch_rows(3, splits=("test",))
    vid = finished_version(dataflux_home, rows + task_rows_for(rows))
    out = tmp_path / "results.json"
    assert main(["eval", "--checkpoint", str(ckpt), "--version", vid, "--out", str(out), "--max-new-tokens", "4",
                 "--max-new-tokens-text", "6", "--quiet"]) == 0
    result = json.loads(out.read_text())
    assert result["n"] == 3 and set(result["tasks"]) == {"mcq", "asr", "caption", "open_qa"}
    # the command scores what the checkpoint's model answers when asked directly, task by task
    model, processor = tiny_model_and_processor
    direct = evaluate_tasks(model, processor, rows + task_rows_for(rows), max_new_tokens=4, max_new_tokens_text=6)
    assert result["tasks"]["mcq"]["n"] == 3
    assert result["tasks"]["mcq"]["exact_accuracy"] == direct["mcq"]["exact_accuracy"]
    assert result["tasks"]["asr"]["n"] == 3 and result["tasks"]["asr"]["wer"] == pytest.approx(direct["asr"]["wer"])
    for task, keys in (("caption", ("rouge_l", "bleu")), ("open_qa", ("exact_accuracy", "token_accuracy"))):
        assert {k: result["tasks"][task][k] for k in keys} == pytest.approx({k: direct[task][k] for k in keys}), task
    printed = capsys.readouterr().out
    assert "MMAU-style" in printed and "WER" in printed and "ROUGE-L" in printed


# --- stats -------------------------------------------------------------------------------------------


def test_stats_count_rows_per_task_and_questions_per_category(dataflux_home):
    import pyarrow.parquet as pq

    from dataflux.storage.catalog import Catalog
    from dataflux.storage.shards import ShardInfo, file_sha256, rows_to_table, shard_path

    rows = pitch_rows(5, splits=("test",))
    vid = finished_version(dataflux_home, rows + task_rows_for(rows))
    catalog = Catalog(dataflux_home / "catalog.duckdb")
    s = catalog.stats(vid)
    assert s["rows"] == 20 and s["rows_per_task"] == {"asr": 5, "caption": 5, "mcq": 5, "open_qa": 5}
    assert s["samples_per_category"] == {"tone_pitch": 5}
    assert sum(s["answer_position"].values()) == 5
    from dataflux.report.facts import load_version_facts

    facts = load_version_facts(catalog, vid)  # the report: tasks are counted apart from the question categories
    assert facts.per_task == {"asr": 5, "caption": 5, "mcq": 5, "open_qa": 5}
    assert sum(facts.per_category.values()) == 5 and sum(facts.answer_position.values()) == 5

    # a shard written before the task column: every row reads as a question
    old = catalog.create_version("old")
    catalog.record_run("run-old", old)
    path = shard_path(dataflux_home / "shards", old, "p0")
    import os

    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(rows_to_table(pitch_rows(3, splits=("test",))).drop(["task"]), path)
    info = ShardInfo(path=path, rows=3, bytes=os.path.getsize(path), sha256=file_sha256(path))
    catalog.commit_partition(old, "p0", info, [], [], "run-old")
    catalog.finalize(old)
    assert catalog.stats(old)["rows_per_task"] == {"mcq": 3}
    assert load_version_facts(catalog, old).per_task == {"mcq": 3}
    from modeling.data import VersionIndex

    assert list(VersionIndex.build([path]).task_of(np.arange(3))) == ["mcq"] * 3


# --- the trainer's mixture ---------------------------------------------------------------------------


def _index(tasks: list[str], categories: list[str]):
    from modeling.data import VersionIndex

    n = len(tasks)
    return VersionIndex(paths=["a.parquet"], shard=np.zeros(n, dtype=np.int64), row=np.arange(n),
                        sample_id=np.array([f"s{i}" for i in range(n)], dtype=object),
                        split=np.array(["train"] * n, dtype=object), duration_s=np.linspace(1, 3, n),
                        l3=np.array(categories, dtype=object), task=np.array(tasks, dtype=object))


def test_task_weights_set_each_tasks_draws_per_epoch_deterministically():
    from modeling.data import BucketBatchSampler

    tasks = ["mcq"] * 60 + ["asr"] * 10 + ["caption"] * 30
    cats = ["beep_count", "loudness"] * 30 + ["transcript"] * 10 + ["caption"] * 30
    index = _index(tasks, cats)
    weights = {"asr": 3.0, "caption": 0.5}

    def drawn(epoch, seed=0, **kw):
        s = BucketBatchSampler(index, np.arange(100), 8, seed=seed, task_weights=weights, **kw)
        return np.concatenate(s.plan(epoch))

    first = drawn(0)
    got = Counter(index.task[first])
    assert got == {"mcq": 60, "asr": 30, "caption": 15}  # rows x weight; unnamed mcq at 1
    assert np.array_equal(first, drawn(0)) and not np.array_equal(first, drawn(1))  # resumable: (seed, epoch)
    staged = drawn(0, category_stages=[{"epochs": 1, "category_weights": {"beep_count": 3.0}}])
    mcq = staged[index.task[staged] == "mcq"]
    assert len(mcq) == 60 and Counter(index.l3[mcq]) == {"beep_count": 45, "loudness": 15}  # categories inside a task
    with pytest.raises(ValueError, match="no tasks"):
        BucketBatchSampler(index, np.arange(100), 8, task_weights={"speech": 1.0})


def test_a_task_weighted_zero_is_left_out_of_training_and_of_the_tokenizer_texts():
    from modeling.train import TrainConfig, trained_tasks

    cfg = TrainConfig.load("modeling/configs/tiny-multitask.yaml",
                           ["train.task_weights={asr: 0, caption: 0, open_qa: 0}"])
    assert trained_tasks(cfg.train) == ["mcq"]
    assert cfg.model.tokenizer_whole_lines and cfg.model.tokenizer_words  # from tiny.yaml and its own keys
    assert trained_tasks(TrainConfig.load("modeling/configs/tiny-multitask.yaml").train) == list(
        ("mcq", "asr", "caption", "open_qa"))
    with pytest.raises(ValueError, match="task_weights"):
        TrainConfig.load("modeling/configs/tiny-multitask.yaml", ["train.task_weights={mcq: 0, asr: 0, caption: 0, "
                                                                   "open_qa: 0}"])
    index = _index(["mcq", "asr", "mcq"], ["loudness", "transcript", "loudness"])
    assert list(index.rows_of("train", ["mcq"])) == [0, 2]
