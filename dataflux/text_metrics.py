"""Text against a reference: one normaliser, one word error rate, and caption word overlap.

* Normaliser (`words`, `normalise_text`): Unicode-aware and the same for every language. NFKC
  folds compatibility forms (full-width letters, ligatures), `str.casefold` folds case ("Straße"
  and "STRASSE" are one word), every punctuation, symbol and control character (Unicode category
  P*, S*, C*) becomes a space, except an apostrophe inside a word ("don't" stays one word; the
  typographic ’ counts as ') and a point or comma between two digits ("3.5" stays one number).
  Digits are kept as written; accents and other combining marks are kept (they tell words apart
  in Italian, Hindi or Thai). No word tables for any language: "nine" and "9" are different words.
  Scripts written without spaces need the `language` argument: for Chinese, Japanese, Thai, Lao,
  Khmer, Myanmar and Tibetan (`UNSPACED_LANGUAGES`) every character of those scripts is a word of
  its own (a character with its combining marks); runs of other scripts in the same text stay words.
* WER (`wer`, `corpus_wer`): word edits by `jiwer` (substitutions + deletions + insertions) over
  the normalised words, divided by the reference's words. The data side uses it to check a
  recognizer's transcript against a source's and to keep transcript distractors apart; the
  evaluation side to score the model's transcripts.
* Caption overlap: ROUGE-L F1 (`rouge-score`, longest common word subsequence) and corpus BLEU-4
  (`sacrebleu`), both on the same normalised text.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence

import jiwer

# ISO 639-1/-3 codes of languages written without spaces between words
UNSPACED_LANGUAGES = frozenset({"zh", "yue", "cmn", "wuu", "ja", "th", "lo", "km", "my", "bo"})
# Unicode character-name prefixes of those scripts (a character of them is a word of its own)
_UNSPACED_SCRIPTS = ("CJK", "HIRAGANA", "KATAKANA", "HALFWIDTH KATAKANA", "BOPOMOFO", "IDEOGRAPHIC",
                     "THAI", "LAO", "KHMER", "MYANMAR", "TIBETAN")
APOSTROPHES = frozenset("'\u2019\u02bc")  # ' ’ ʼ


# ASCII: an apostrophe inside a word or a point/comma inside a number is kept (no group), any other
# character but a letter, digit or space becomes a space (group 1)
_ASCII_SEPARATOR = re.compile(r"(?<=[a-z0-9])'(?=[a-z0-9])|(?<=[0-9])[.,](?=[0-9])|([^a-z0-9 ])")


def _ascii_separator(match: re.Match) -> str:
    return match.group() if match.group(1) is None else " "


def _is_word_char(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "LNM"


def _kept_inside_word(text: str, i: int) -> bool:
    """An apostrophe between two word characters, or a point or comma between two digits."""
    if i == 0 or i + 1 >= len(text):
        return False
    before, ch, after = text[i - 1], text[i], text[i + 1]
    if ch in APOSTROPHES:
        return _is_word_char(before) and _is_word_char(after)
    return ch in ".," and before.isdigit() and after.isdigit()


def _unspaced(ch: str) -> bool:
    return unicodedata.name(ch, "").startswith(_UNSPACED_SCRIPTS)


def _split_unspaced(word: str) -> list[str]:
    """A word of mixed scripts -> each unspaced-script character (with its marks) alone, other runs whole."""
    out: list[str] = []
    run = ""
    for ch in word:
        if unicodedata.category(ch)[0] == "M" and (run or out):
            if run:
                run += ch
            else:
                out[-1] += ch
        elif _unspaced(ch):
            if run:
                out.append(run)
                run = ""
            out.append(ch)
        else:
            run += ch
    return out + [run] if run else out


def _language_code(language: str | None) -> str | None:
    """The base code of a language tag: zh-Hans, ja_JP, TH -> zh, ja, th."""
    return str(language).replace("_", "-").split("-")[0].lower() if language else None


def words(text: str | None, language: str | None = None) -> list[str]:
    """The normalised words of `text` (see the module docstring); [] for None or no words.

    `language` (an ISO code such as "en", "zh", "th-TH") only matters for `UNSPACED_LANGUAGES`.
    """
    text = text or ""
    if text.isascii():  # the common case, by one regular expression (the same words as the loop below)
        return _ASCII_SEPARATOR.sub(_ascii_separator, text.lower()).split()
    text = unicodedata.normalize("NFKC", text).casefold()
    chars = []
    for i, ch in enumerate(text):
        if unicodedata.category(ch)[0] in "PSCZ" and not _kept_inside_word(text, i):
            chars.append(" ")
        else:
            chars.append("'" if ch in APOSTROPHES else ch)
    found = "".join(chars).split()
    if _language_code(language) in UNSPACED_LANGUAGES:
        found = [piece for w in found for piece in _split_unspaced(w)]
    return found


def normalise_text(text: str | None, language: str | None = None) -> str:
    """The normalised words of `text` joined by single spaces ("" for None or no words)."""
    return " ".join(words(text, language))


def word_edits(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Word-level edit distance (substitutions + deletions + insertions) between two word lists, by
    `jiwer`; an empty side costs the other side's length (jiwer refuses empty strings)."""
    if not ref or not hyp:
        return len(ref) + len(hyp)
    out = jiwer.process_words(" ".join(ref), " ".join(hyp))
    return out.substitutions + out.deletions + out.insertions


def corpus_wer(pairs: Iterable[tuple[str, str]], language: str | None = None) -> float:
    """Word error rate over (reference, hypothesis) pairs: total word edits / total reference words,
    after `words`. A reference with no words is an error (WER is undefined for it)."""
    edits = total = 0
    for i, (ref, hyp) in enumerate(pairs):
        r = words(ref, language)
        if not r:
            raise ValueError(f"pair {i}: the reference {ref!r} has no words after normalisation; WER is undefined")
        edits += word_edits(r, words(hyp, language))
        total += len(r)
    if not total:
        raise ValueError("corpus_wer: no (reference, hypothesis) pairs")
    return edits / total


def wer(ref: str, hyp: str, language: str | None = None) -> float:
    """WER of one hypothesis (see `corpus_wer`); not capped at 1 (insertions count)."""
    return corpus_wer([(ref, hyp)], language)


class _Words:
    """rouge-score's tokenizer interface over already normalised text: split at spaces (its own
    tokenizer keeps only [a-z0-9] and would drop every word in another script)."""

    @staticmethod
    def tokenize(text: str) -> list[str]:
        return text.split()


def caption_overlap(pairs: Sequence[tuple[str, str]], language: str | None = None) -> dict[str, float]:
    """{"rouge_l": mean ROUGE-L F1, "bleu": corpus BLEU-4 (0-100)} of (reference, hypothesis) captions."""
    import sacrebleu  # lazy: only evaluation scores captions, and both load slowly
    from rouge_score import rouge_scorer

    if not pairs:
        raise ValueError("caption_overlap: no (reference, hypothesis) pairs")
    refs = [normalise_text(r, language) for r, _ in pairs]
    hyps = [normalise_text(h, language) for _, h in pairs]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False, tokenizer=_Words())
    rouge = [scorer.score(r, h)["rougeL"].fmeasure for r, h in zip(refs, hyps)]
    bleu = sacrebleu.corpus_bleu(hyps, [refs], tokenize="none", force=True).score
    return {"rouge_l": float(sum(rouge) / len(rouge)), "bleu": float(bleu)}
