"""Which language is spoken and which words are said, measured by Whisper over a partition's clips.

Runs once per partition, after every clip's own analysis (`dataflux.audio.facts`), because Whisper
works best in batches: clips are sorted by length and encoded 8 at a time, and one encoding serves
language identification, free decoding and claim scoring.

- `spoken_language`: language identification. A named speaker's language is pooled over the
  speaker's clips analysed together (the sum of their log-probabilities), as a voice's gender is
  (`dataflux.audio.speakers`): a single word says little about its language, a speaker's dozen
  prompts say a lot. The claim stands when the speaker's pooled language is the claimed one, or
  when the clip alone gives the claim at least `CLIP_CONFIDENT`; otherwise the measured language
  is the pooled one. Without a named speaker (or with fewer than `MIN_SPEAKER_CLIPS` clips) the
  clip decides alone: the claim stands when it keeps at least `LANGUAGE_FLOOR` of the
  probability, else the measured language is Whisper's first choice.
- `spoken_text` (non-English claims; English is pocketsphinx's, `dataflux.audio.speech`): the
  claimed transcript is scored under the decoder (teacher-forced mean log-probability per token)
  beside the question's distractors and beside Whisper's own greedy transcript of the clip. It is
  heard when it outscores every distractor and comes within `FREE_DECODE_MARGIN` of the model's
  own transcript (a likelihood ratio, so a hard clip where every text scores low is judged
  against what the model can hear at all). Otherwise the clip measures `OTHER_WORDS`.
- `spoken_word_count` and `speech_tempo` follow a confirmed transcript (`speech_facts`).

Any faster-whisper model folder can stand in for the packaged Whisper base, and so can an
OpenAI-compatible `/audio/transcriptions` endpoint (`set_recognizer`, from `recognizer` in
`data_catalog.yaml`; the pipeline hands over the endpoint's client, `dataflux.llm.transcription`).
An endpoint gives words and a detected language, no probabilities, so its evidence is read by its
own rules (`ENDPOINT_RULES`) and decided by the same steps:
- `spoken_language`: the language the endpoint detects (asked without a language); a named
  speaker's language is the one most of the speaker's clips are heard in; the claim stands when
  the speaker's language or the clip's own is the claimed one.
- `spoken_text`: the transcript the endpoint hears in the claimed language is compared with the
  claim and its distractors by word error rate (`dataflux.text_metrics.wer`): heard when the claim
  is nearer than every distractor and its WER is at most `MAX_CLAIM_WER`.
The audio embeddings of the label check (`embed`) always come from a Whisper folder.
"""

from __future__ import annotations

import math
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from dataflux.audio.embedding_cache import EmbeddingStore, embed_with_store
from dataflux.audio.speakers import MIN_SPEAKER_CLIPS, speaker_of
from dataflux.audio.speech_facts import OTHER_WORDS, PENDING, N_COMPETITORS, tempo_word
from dataflux.audio.speech import word_count_word, normalise_words
from dataflux.fields import language_code, language_name
from dataflux.packaged_weights import cache_dir
from dataflux.records import Clip
from dataflux.taxonomy import distinct_neighbours
from dataflux.text_metrics import wer

if TYPE_CHECKING:  # the model is loaded on first use (`recognizer()`): CTranslate2 stays out of start-up
    from dataflux.audio.whisper import WhisperRecognizer

BATCH = 8
WINDOW_S = 8.0  # bench/bench_measure.py: as accurate as the 30 s window on short prompts, 6x faster
CLIP_CONFIDENT = 0.5  # a clip this sure of its claimed language keeps it whatever its speaker's pool says
FREE_DECODE_MARGIN = 2.0  # nats per token the claim may fall short of the model's own transcript
# An endpoint's transcript confirms the claim when the claim is its nearest candidate by WER and
# at most half the claim's words are edited: a recognizer that hears a different phrase of a
# similar length gets most words wrong, one that hears the claim with a slip or two stays below.
MAX_CLAIM_WER = 0.5

_lock = threading.Lock()
_chosen: dict[str, Any] = {}


class Transcriber(Protocol):
    """Speech to text by a server (`dataflux.llm.transcription.TranscriptionEndpoint`)."""

    model_id: str

    def transcribe(self, clips: Sequence[np.ndarray], languages: Sequence[str | None]) -> list[tuple[str, str | None]]:
        """(text, ISO 639-1 language or None) heard in each 16 kHz clip, asked in the given
        language (None: the server detects it)."""
        ...


def set_recognizer(folder: str | None, transcriber: Transcriber | None = None, *, device: str = "cpu",
                   compute_type: str | None = None) -> None:
    """Use another faster-whisper model folder (None: the packaged Whisper base) on `device` (cpu, cuda or
    auto) at `compute_type` (CTranslate2's; default int8 on CPU, float16 on CUDA); with a `transcriber`,
    speech is heard by it, and the folder only embeds clips (`embed`)."""
    _chosen.update(folder=folder, transcriber=transcriber, device=device, compute_type=compute_type)


@lru_cache(maxsize=2)
def _load(folder: str | None, device: str, compute_type: str | None) -> WhisperRecognizer:
    from dataflux.audio.whisper import WhisperRecognizer  # lazy: CTranslate2 and faster-whisper out of start-up

    return WhisperRecognizer(folder, window_s=WINDOW_S, device=device, compute_type=compute_type)


def recognizer() -> WhisperRecognizer:
    return _load(_chosen.get("folder"), _chosen.get("device", "cpu"), _chosen.get("compute_type"))


def model_id(rec: WhisperRecognizer) -> str:
    return f"whisper:{rec.folder.name}@{WINDOW_S:g}s"


def _wants_text(clip: Clip) -> bool:
    return clip.facts.get("raw", {}).get("recognizer") == PENDING


def _wants_language(clip: Clip, leaves: Sequence[str]) -> bool:
    return "spoken_language" in leaves and language_code((clip.item.labels or {}).get("language")) is not None


def add_recognizer_facts(clips: Sequence[Clip], leaves: Sequence[str],
                         vocabularies: dict[str, list[str]] | None = None) -> None:
    """Measure `spoken_language` and the pending `spoken_text` checks of `clips`, in place."""
    todo = [c for c in clips if _wants_text(c) or _wants_language(c, leaves)]
    if not todo:
        return
    vocab = list((vocabularies or {}).get("spoken_text") or [])
    transcriber = _chosen.get("transcriber")
    if transcriber is not None:
        evidence, rules, model = _endpoint_facts(transcriber, todo, leaves, vocab), ENDPOINT_RULES, transcriber.model_id
    else:
        evidence, rules, model = _whisper_facts(todo, vocab), WHISPER_RULES, model_id(recognizer())
    if "spoken_language" in leaves:
        _decide_languages([c for c in todo if _wants_language(c, leaves)], evidence, rules, model)


def _whisper_facts(todo: Sequence[Clip], vocab: list[str]) -> dict[int, dict[str, float]]:
    """The local Whisper: each clip's language probabilities; its pending transcript checked."""
    rec = recognizer()
    probs: dict[int, dict[str, float]] = {}
    for batch in _batches(todo):
        with _lock:  # one model per process, shared by the partitions' threads
            encoded = rec.encode([c.samples for c in batch])
            found = rec.language_probabilities(None, encoded)
            states = np.array(encoded)
            texts = [k for k, clip in enumerate(batch) if _wants_text(clip)]
            heard = _own_transcripts(rec, [batch[k] for k in texts], states[texts], [found[k] for k in texts])
            for k, clip in enumerate(batch):
                probs[id(clip)] = found[k]
            _check_texts(rec, [(batch[k], k, found[k], own) for k, own in zip(texts, heard)], states, vocab)
    return probs


def _own_transcripts(rec: WhisperRecognizer, clips: Sequence[Clip], states: np.ndarray,
                     probs: Sequence[dict[str, float]]) -> list[str]:
    """Whisper's greedy transcript of each clip in its claimed language, one decoding for the batch."""
    if not clips:
        return []
    languages = [_claimed_language(c) or next(iter(p)) for c, p in zip(clips, probs)]
    # speech runs at most ~8 tokens a second: a longer decode is the decoder repeating itself
    longest = max(len(c.samples) for c in clips) / 16000
    import ctranslate2  # lazy: loaded with the model (see `_load`)

    return rec.transcribe(None, languages, ctranslate2.StorageView.from_array(np.ascontiguousarray(states)),
                          max_length=int(12 + 8 * longest))


def _endpoint_facts(transcriber: Transcriber, todo: Sequence[Clip], leaves: Sequence[str],
                    vocab: list[str]) -> dict[int, str | None]:
    """The endpoint: each clip's detected language (asked without one); its pending transcript
    checked against what the endpoint hears in the claimed language."""
    asked = [c for c in todo if _wants_language(c, leaves)]
    texts = [c for c in todo if _wants_text(c)]
    heard = transcriber.transcribe([c.samples for c in asked + texts],
                                   [None] * len(asked) + [_claimed_language(c) for c in texts])
    for clip, (text, _) in zip(texts, heard[len(asked):]):
        _check_text_by_wer(clip, text, vocab, transcriber.model_id)
    return {id(c): language for c, (_, language) in zip(asked, heard)}


def _claimed_language(clip: Clip) -> str | None:
    return language_code((clip.item.labels or {}).get("language"))


def _batches(clips: Sequence[Clip]) -> list[list[Clip]]:
    ordered = sorted(clips, key=lambda c: (len(c.samples), c.audio_sha256))
    return [ordered[i:i + BATCH] for i in range(0, len(ordered), BATCH)]


def _check_texts(rec: WhisperRecognizer, todo: list[tuple[Clip, int, dict[str, float], str]], states: np.ndarray,
                 vocab: list[str]) -> None:
    """Each claimed transcript against its distractors and the model's own transcript (one scoring
    pass for the batch): (clip, row of `states`, language probabilities, own transcript) each."""
    scored = []
    for clip, row, probs, own in todo:
        text = " ".join(str(clip.item.labels["transcript"]).split())
        language = _claimed_language(clip) or next(iter(probs))
        clip.facts["raw"].update({"recognizer": model_id(rec), "recognizer_heard": own})
        if own and wer(text, own, language) == 0.0:  # the model's own transcript says the claim's words:
            clip.facts["raw"]["recognizer_choice"] = text  # heard, and no scoring is needed
            _settle_text(clip, text, True)
            continue
        options = [text, *distinct_neighbours(vocab, text, N_COMPETITORS)]
        # each option scored as written and as Whisper writes a sentence (capital, final stop): a
        # corpus's lower-case "trabajo" must not lose to the model's own "Trabajo." on spelling
        forms = [form for option in options for form in (option, _as_sentence(option))]
        scored.append((clip, text, options, (row, [*forms, own or "."], language, len(clip.samples))))
    found = rec.claim_scores_many(states, [request for *_, request in scored]) if scored else []
    for (clip, text, options, _), scores in zip(scored, found):
        best = [max(scores[2 * i], scores[2 * i + 1]) for i in range(len(options))]
        claim, others, ceiling = best[0], best[1:], scores[-1]
        heard = all(claim > s for s in others) and claim > ceiling - FREE_DECODE_MARGIN
        clip.facts["raw"].update({"claim_score": round(claim, 3), "free_decode_score": round(ceiling, 3),
                                  "recognizer_choice": options[int(np.argmax(best))]})
        _settle_text(clip, text, heard)


def _as_sentence(text: str) -> str:
    """`text` as a transcriber writes a sentence: first letter upper-case, a final stop."""
    text = text[:1].upper() + text[1:]
    return text + "." if text[-1:].isalnum() else text


def _check_text_by_wer(clip: Clip, own: str, vocab: list[str], model: str) -> None:
    """The claim against its distractors by WER to what the endpoint heard in the claimed language."""
    text = " ".join(str(clip.item.labels["transcript"]).split())
    language = _claimed_language(clip)
    options = [text, *distinct_neighbours(vocab, text, N_COMPETITORS)]
    errors = [wer(option, own, language) for option in options]
    heard = errors[0] <= MAX_CLAIM_WER and all(errors[0] < e for e in errors[1:])
    clip.facts["raw"].update({"recognizer": model, "recognizer_heard": own, "claim_wer": round(errors[0], 3),
                              "recognizer_choice": options[int(np.argmin(errors))]})
    _settle_text(clip, text, heard)


def _settle_text(clip: Clip, text: str, heard: bool) -> None:
    """`spoken_text` is the claim when heard, else OTHER_WORDS; word count and tempo follow a heard claim."""
    raw = clip.facts["raw"]
    clip.facts["spoken_text"] = text if heard else OTHER_WORDS
    if not heard:
        return
    if "spoken_word_count" in clip.facts:
        clip.facts["spoken_word_count"] = word_count_word(text)
        raw["confirmed_words"] = len(normalise_words(text))
    if "speech_tempo" in clip.facts and raw.get("speech_s"):
        clip.facts["speech_tempo"] = tempo_word(text, raw["speech_s"], raw)


@dataclass(frozen=True)
class LanguageRules:
    """How one kind of recognizer's per-clip language evidence `E` reads."""

    top: Callable[[Any], str | None]  # E -> the clip's own first choice
    keeps: Callable[[Any, str, bool], bool]  # (E, claimed, against its speaker's pool?) -> the clip keeps the claim
    pool: Callable[[Sequence[Any]], str | None]  # a speaker's clips' E -> the speaker's language
    raw: Callable[[Any, str], dict[str, Any]]  # (E, claimed) -> what the clip's raw facts record


def _probabilities_keep(p: dict[str, float], claimed: str, against_pool: bool) -> bool:
    from dataflux.audio.whisper import LANGUAGE_FLOOR  # lazy: loaded with the model (see `_load`)

    return p.get(claimed, 0.0) >= (CLIP_CONFIDENT if against_pool else LANGUAGE_FLOOR)


def _probabilities_raw(p: dict[str, float], claimed: str) -> dict[str, Any]:
    top = next(iter(p))
    return {"language_top": top, "language_top_p": round(p[top], 3),
            "language_claimed_p": round(p.get(claimed, 0.0), 4)}


def _pooled(found: Sequence[dict[str, float]]) -> str:
    """The language with the largest summed log-probability over a speaker's clips."""
    languages = {lang for p in found for lang in p}
    floor = min((v for p in found for v in p.values() if v > 0), default=1e-9)
    total = {lang: sum(math.log(max(p.get(lang, 0.0), floor)) for p in found) for lang in languages}
    return max(sorted(total), key=total.get)


def _majority(found: Sequence[str | None]) -> str | None:
    """The language most of a speaker's clips are heard in (ties: the first by code)."""
    counts = Counter(lang for lang in found if lang)
    return max(sorted(counts), key=counts.get) if counts else None


WHISPER_RULES = LanguageRules(top=lambda p: next(iter(p)), keeps=_probabilities_keep, pool=_pooled,
                              raw=_probabilities_raw)
ENDPOINT_RULES = LanguageRules(top=lambda lang: lang, keeps=lambda lang, claimed, _: lang == claimed,
                               pool=_majority, raw=lambda lang, claimed: {"language_top": lang})


def _decide_languages(clips: Sequence[Clip], evidence: dict[int, Any], rules: LanguageRules, model: str) -> None:
    """A named speaker's pooled language decides against a clip that does not keep its claim
    alone; without one (or with fewer than MIN_SPEAKER_CLIPS clips) the clip decides alone."""
    by_speaker: dict[str, list[Clip]] = defaultdict(list)
    for clip in clips:
        name = speaker_of(clip)
        if name is not None:
            by_speaker[name].append(clip)
    pooled = {name: rules.pool([evidence[id(c)] for c in group])
              for name, group in by_speaker.items() if len(group) >= MIN_SPEAKER_CLIPS}
    for clip in clips:
        found = evidence[id(clip)]
        claimed = _claimed_language(clip)
        raw = clip.facts["raw"]
        raw.update({"language_recognizer": model, **rules.raw(found, claimed)})
        speaker_language = pooled.get(speaker_of(clip) or "")
        if speaker_language is not None:
            raw["speaker_language"] = speaker_language
            ok = speaker_language == claimed or rules.keeps(found, claimed, True)
            measured = claimed if ok else speaker_language
        else:
            measured = claimed if rules.keeps(found, claimed, False) else rules.top(found)
        if measured is not None:  # an endpoint that names no language measures nothing
            clip.facts["spoken_language"] = language_name(measured)


def embed(clips: Sequence[np.ndarray], store_root: Path | None = None) -> np.ndarray:
    """[N, d_model] audio embeddings (the encoder's pooled states), in batches; each clip's is kept in
    the home's embedding store (`store_root`: another cache folder), so it is computed once."""
    rec = recognizer()
    weights = (rec.folder / "model.bin").stat()
    identity = (f"{rec.folder.resolve()}|{weights.st_size}|{weights.st_mtime_ns}|{rec.device}|{rec.compute_type}"
                f"|{rec.window_s:g}")
    store = EmbeddingStore(store_root or cache_dir(), identity)

    def compute(todo: list[np.ndarray]) -> np.ndarray:
        with _lock:
            return np.concatenate([rec.pooled_states(todo[i:i + BATCH]) for i in range(0, len(todo), BATCH)])

    return embed_with_store(clips, store, compute)
