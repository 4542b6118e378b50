"""Italian spelling -> the US English recognizer's phones, so the packaged English acoustic model
can tell Italian phrases apart.

Italian spelling is close to phonemic: a few dozen rules (c/g before e/i, gli, gn, sc, qu, silent
h, double consonants) give a pronunciation good enough to choose among a handful of candidate
phrases, which is all `dataflux.audio.speech.recognise_among` asks of it. It does not make
free Italian recognition possible.
"""

from __future__ import annotations

import re
import unicodedata

_UNITS = ("zero uno due tre quattro cinque sei sette otto nove dieci undici dodici tredici quattordici "
          "quindici sedici diciassette diciotto diciannove").split()
_TENS = "_ _ venti trenta quaranta cinquanta sessanta settanta ottanta novanta".split()
_VOWELS = {"a": "AA", "e": "EH", "i": "IY", "o": "OW", "u": "UW"}
_SIMPLE = {"b": "B", "d": "D", "f": "F", "l": "L", "m": "M", "n": "N", "p": "P", "r": "R", "s": "S", "t": "T",
           "v": "V", "k": "K", "w": "W", "j": "Y", "y": "IY", "x": "K S", "z": "T S"}


def spell_number_it(n: int) -> str:
    if n < 20:
        return _UNITS[n]
    if n < 100:
        tens, unit = _TENS[n // 10], n % 10
        if unit in (1, 8):
            tens = tens[:-1]  # ventuno, trentotto
        return tens + ("" if unit == 0 else _UNITS[unit])
    return " ".join(_UNITS[int(d)] for d in str(n))


def italian_words(text: str) -> list[str]:
    """Lower-cased words, accents dropped, digits spelled in Italian, apostrophes split (l'arrivo)."""
    text = re.sub(r"\d+", lambda m: f" {spell_number_it(int(m.group()))} ", text.lower())
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return re.findall(r"[a-z]+", text)


def italian_phones(word: str) -> str:
    """CMU-style phones of one Italian word ("gnocchi" -> "N Y OW K IY")."""
    w = re.sub(r"([bcdfglmnprstvz])\1", r"\1", word)  # double consonants: one phone
    out: list[str] = []
    i = 0
    while i < len(w):
        rest = w[i:]
        nxt = rest[1:2]
        if rest.startswith("gli"):
            out += ["L", "Y"] if rest[3:4] in _VOWELS else ["L", "IY"]
            i += 3 if rest[3:4] in _VOWELS else 3
            continue
        if rest.startswith("gn"):
            out += ["N", "Y"]
            i += 2
            continue
        if rest.startswith("sc") and rest[2:3] in ("e", "i"):
            out.append("SH")
            i += 3 if rest[2:3] == "i" and rest[3:4] in _VOWELS else 2
            continue
        if rest.startswith("qu"):
            out += ["K", "W"]
            i += 2
            continue
        if rest[0] in "cg":
            if nxt == "h":
                out.append("K" if rest[0] == "c" else "G")
                i += 2
            elif nxt in ("e", "i"):
                out.append("CH" if rest[0] == "c" else "JH")
                i += 2 if nxt == "i" and rest[2:3] in _VOWELS else 1
            else:
                out.append("K" if rest[0] == "c" else "G")
                i += 1
            continue
        if rest[0] == "h":
            i += 1
            continue
        if rest[0] in _VOWELS:
            out.append("Y" if rest[0] == "i" and nxt in _VOWELS and out else _VOWELS[rest[0]])
            i += 1
            continue
        if rest[0] in _SIMPLE:
            out += _SIMPLE[rest[0]].split()
        i += 1
    return " ".join(out)
