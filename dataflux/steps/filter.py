"""The last stage: quality thresholds, duplicate questions, answer-position balance.

Every item removed here becomes a `Reject(stage="filter", reason=...)`; nothing is dropped
silently. All functions are deterministic: the same rows in any order give the same result.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dataflux.records import Clip, Reject
from dataflux.storage.row_schema import row_content_sha256

LETTERS = "ABCD"


@dataclass(frozen=True)
class FilterConfig:
    """Thresholds from the `filters:` section of data_catalog.yaml (None disables a threshold)."""

    min_duration_s: float | None = 0.2
    max_duration_s: float | None = 600.0
    max_clipping_ratio: float | None = 0.05
    max_silence_ratio: float | None = 0.95
    min_snr_db: float | None = None
    near_duplicate_jaccard: float = 0.9
    max_position_share: float = 0.4

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> FilterConfig:
        d = dict(d or {})
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"filters: unknown keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


# --- quality ------------------------------------------------------------------------------------


def quality_reasons(quality: Mapping[str, float], cfg: FilterConfig) -> list[str]:
    """Reason codes for every threshold the clip's quality metrics break (empty: the clip passes).

    A metric that is missing or NaN fails its threshold: an unmeasurable clip is not trusted.
    """
    def val(name: str) -> float | None:
        x = quality.get(name)
        return float(x) if x is not None and not (isinstance(x, float) and math.isnan(x)) else None

    reasons = []
    tests = [
        ("too_short", "duration_s", cfg.min_duration_s, lambda x, t: x >= t),
        ("too_long", "duration_s", cfg.max_duration_s, lambda x, t: x <= t),
        ("clipping", "clipping_ratio", cfg.max_clipping_ratio, lambda x, t: x <= t),
        ("mostly_silent", "silence_ratio", cfg.max_silence_ratio, lambda x, t: x <= t),
        ("low_snr", "snr_db", cfg.min_snr_db, lambda x, t: x >= t),
    ]
    for code, metric, threshold, ok in tests:
        if threshold is None:
            continue
        x = val(metric)
        if x is None or not ok(x, threshold):
            reasons.append(code)
    return reasons


def quality_reject(clip: Clip, cfg: FilterConfig) -> Reject | None:
    reasons = quality_reasons(clip.quality, cfg)
    if not reasons:
        return None
    detail = ", ".join(f"{k}={clip.quality.get(k)!r}" for k in sorted(clip.quality))
    return Reject(clip.item.source, clip.item.source_id, stage="filter", reason="quality:" + "+".join(reasons),
                  detail=detail, audio_sha256=clip.audio_sha256)


# --- duplicates ---------------------------------------------------------------------------------


def normalize_question(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def token_jaccard(a: str, b: str) -> float:
    sa, sb = set(normalize_question(a).split()), set(normalize_question(b).split())
    if not sa and not sb:
        return 1.0
    return len(sa & sb) / len(sa | sb)


def _reject_row(row: Mapping[str, Any], reason: str, detail: str) -> Reject:
    return Reject(row["source"], row["source_id"], stage="filter", reason=reason, detail=detail,
                  sample_id=row.get("sample_id"), audio_sha256=row.get("audio_sha256"))


def dedupe(rows: list[dict[str, Any]], cfg: FilterConfig) -> tuple[list[dict[str, Any]], list[Reject]]:
    """Drop exact duplicates (same audio, same normalised question) and near duplicates (same audio,
    token-set Jaccard >= cfg.near_duplicate_jaccard). The row with the smaller sample_id stays."""
    kept: list[dict[str, Any]] = []
    rejects: list[Reject] = []
    by_audio: dict[str, list[dict[str, Any]]] = {}
    for row in sorted(rows, key=lambda r: r["sample_id"]):
        same = by_audio.setdefault(row["audio_sha256"], [])
        norm = normalize_question(row["question"])
        dup = next((r for r in same if normalize_question(r["question"]) == norm), None)
        if dup is not None:
            rejects.append(_reject_row(row, "duplicate_question", f"same question as {dup['sample_id']}"))
            continue
        near = next((r for r in same if token_jaccard(r["question"], row["question"]) >= cfg.near_duplicate_jaccard), None)
        if near is not None:
            j = token_jaccard(near["question"], row["question"])
            rejects.append(_reject_row(row, "near_duplicate_question",
                                       f"token Jaccard {j:.2f} with {near['sample_id']}"))
            continue
        same.append(row)
        kept.append(row)
    order = {id(r): i for i, r in enumerate(rows)}
    kept.sort(key=lambda r: order[id(r)])
    return kept, rejects


# --- answer-position balance --------------------------------------------------------------------


def position_counts(rows: list[Mapping[str, Any]]) -> dict[str, int]:
    """Rows per correct-answer position: {"A": n, "B": n, "C": n, "D": n}."""
    counts = {letter: 0 for letter in LETTERS}
    for r in rows:
        counts[LETTERS[int(r["answer_index"])]] += 1
    return counts


def position_report(rows: list[Mapping[str, Any]]) -> dict[str, Any]:
    counts = position_counts(rows)
    total = sum(counts.values())
    shares = {k: (v / total if total else 0.0) for k, v in counts.items()}
    return {"counts": counts, "shares": shares, "max_share": max(shares.values()) if total else 0.0, "total": total}


def user_message(question: str, choices: list[str]) -> str:
    """The training prompt: the audio placeholder, the question, then the lettered options."""
    options = "\n".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices))
    return f"<audio>\n{question}\n{options}"


def assistant_message(choices: list[str], answer_index: int) -> str:
    return f"({LETTERS[answer_index]}) {choices[answer_index]}"


def move_answer(row: dict[str, Any], target: int) -> dict[str, Any]:
    """A copy of `row` with the correct option swapped into position `target`.

    Keeps everything that refers to positions consistent: answer_index, each answerer's
    answer_index, messages; records the move in `checks`. The row's content hash, if set, is
    recomputed.
    """
    src = int(row["answer_index"])
    if src == target:
        return row
    out = dict(row)
    choices = list(row["choices"])
    choices[src], choices[target] = choices[target], choices[src]
    swap = {src: target, target: src}
    out["choices"] = choices
    out["answer_index"] = target
    out["answers"] = [
        {**a, "answer_index": swap.get(a["answer_index"], a["answer_index"]) if a.get("answer_index") is not None else None}
        for a in row.get("answers") or []
    ]
    out["messages"] = [
        {"role": "user", "content": user_message(row["question"], choices)},
        {"role": "assistant", "content": assistant_message(choices, target)},
    ]
    out["checks"] = list(row.get("checks") or []) + [
        {"name": "position_rebalanced", "passed": True, "detail": f"answer moved from {LETTERS[src]} to {LETTERS[target]}"}
    ]
    if row.get("row_sha256") is not None:
        out["row_sha256"] = row_content_sha256(out)
    return out


def rebalance_positions(rows: list[dict[str, Any]], max_share: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """If one answer position holds more than `max_share` of the rows, move answers out of the
    over-represented positions into the least-filled ones until every position holds at most
    ceil(N/4) rows. Rows to move are taken in sample_id order, so the result does not depend on
    the input order. Returns (rows in input order, report with counts before and after)."""
    before = position_report(rows)
    report = {"before": before["counts"], "moved": 0}
    if not rows or before["max_share"] <= max_share:
        report["after"] = before["counts"]
        return rows, report
    cap = math.ceil(len(rows) / len(LETTERS))
    counts = {i: before["counts"][LETTERS[i]] for i in range(len(LETTERS))}
    index = {r["sample_id"]: i for i, r in enumerate(rows)}
    out = list(rows)
    for r in sorted(rows, key=lambda r: r["sample_id"]):
        src = int(r["answer_index"])
        if counts[src] <= cap:
            continue
        target = min(range(len(LETTERS)), key=lambda i: (counts[i], i))
        if counts[target] >= cap:
            break
        out[index[r["sample_id"]]] = move_answer(r, target)
        counts[src] -= 1
        counts[target] += 1
        report["moved"] += 1
    report["after"] = position_counts(out)
    return out, report
