"""Text against a reference: word error rate after a standard normaliser, and caption word overlap.

* WER: `jiwer` (edit distance over words) after the Whisper English text normaliser that
  `transformers` ships (case, punctuation, numbers and spellings brought to one form), so "Nine
  o'clock." and "nine o'clock" are the same words. The data side uses it to check a recognizer's
  transcript against a source's; the evaluation side to score the model's transcripts.
* Caption overlap: ROUGE-L F1 (`rouge-score`, longest common word subsequence) and corpus BLEU-4
  (`sacrebleu`), both on the same normalised text.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence


@functools.lru_cache(maxsize=1)
def _normaliser():
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    # The British -> American spelling table ships with Whisper's tokenizer files, not with the
    # library; without it the normaliser still folds case, punctuation, numbers and contractions.
    return EnglishTextNormalizer({})


def normalise_text(text: str | None) -> str:
    """The Whisper English normalisation of `text` ("" for None)."""
    return _normaliser()(text or "").strip()


def word_edits(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Word-level edit distance (substitutions + deletions + insertions) between two word lists, by
    `jiwer`; an empty side costs the other side's length (jiwer refuses empty strings)."""
    if not ref or not hyp:
        return len(ref) + len(hyp)
    import jiwer

    out = jiwer.process_words(" ".join(ref), " ".join(hyp))
    return out.substitutions + out.deletions + out.insertions


def corpus_wer(pairs: Iterable[tuple[str, str]]) -> float:
    """Word error rate over (reference, hypothesis) pairs: total word edits / total reference words,
    after `normalise_text`. A reference that normalises to no words is an error (WER is undefined)."""
    refs, hyps = [], []
    for i, (ref, hyp) in enumerate(pairs):
        r = normalise_text(ref)
        if not r:
            raise ValueError(f"pair {i}: the reference {ref!r} has no words after normalisation; WER is undefined")
        refs.append(r)
        hyps.append(normalise_text(hyp))
    if not refs:
        raise ValueError("corpus_wer: no (reference, hypothesis) pairs")
    words = sum(len(r.split()) for r in refs)
    return sum(word_edits(r.split(), h.split()) for r, h in zip(refs, hyps)) / words


def wer(ref: str, hyp: str) -> float:
    """WER of one hypothesis (see `corpus_wer`)."""
    return corpus_wer([(ref, hyp)])


def caption_overlap(pairs: Sequence[tuple[str, str]]) -> dict[str, float]:
    """{"rouge_l": mean ROUGE-L F1, "bleu": corpus BLEU-4 (0-100)} of (reference, hypothesis) captions."""
    import sacrebleu
    from rouge_score import rouge_scorer

    if not pairs:
        raise ValueError("caption_overlap: no (reference, hypothesis) pairs")
    refs = [normalise_text(r) for r, _ in pairs]
    hyps = [normalise_text(h) for _, h in pairs]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rouge = [scorer.score(r, h)["rougeL"].fmeasure for r, h in zip(refs, hyps)]
    bleu = sacrebleu.corpus_bleu(hyps, [refs], tokenize="none", force=True).score
    return {"rouge_l": float(sum(rouge) / len(rouge)), "bleu": float(bleu)}
