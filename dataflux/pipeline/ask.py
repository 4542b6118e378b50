"""Phase 3, ask: the closed loop (caption, generate, answer, judge) for every clip, concurrently.

Returns the rows and rejects of every clip, whether the model budget ran out, and the endpoint
pool's counters. The pool is closed here, the one place it is used.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field

from dataflux.loop import LoopStats, run_clip
from dataflux.pipeline.prepare import Prepared
from dataflux.records import Clip, Reject


@dataclass
class Asked:
    rows: list[dict] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    budget_exhausted: bool = False
    llm: dict | None = None  # the endpoint pool's counters (cumulative in this process), when models ran
    loop_counts: dict[str, int] = field(default_factory=dict)


async def ask(prepared: Prepared, clips: list[Clip]) -> Asked:
    semaphore = asyncio.Semaphore(prepared.concurrency)
    stats = LoopStats()

    async def one(clip: Clip):
        async with semaphore:
            return await run_clip(clip, prepared.categories, prepared.steps, prepared.loop_cfg, stats=stats)

    out = Asked()
    try:
        results = await asyncio.gather(*(one(c) for c in clips), return_exceptions=True)
    finally:
        if prepared.pool is not None:
            out.llm = _pool_counters(prepared.pool.report())
            await prepared.pool.aclose()
    for clip, result in zip(clips, results):
        if isinstance(result, BaseException):
            if type(result).__name__ == "BudgetExhausted":
                out.budget_exhausted = True
                continue
            out.rejects.append(Reject(clip.item.source, clip.item.source_id, "loop", "step_error",
                                      f"{type(result).__name__}: {result}", audio_sha256=clip.audio_sha256))
            continue
        clip_rows, clip_rejects = result
        if not clip_rows and not clip_rejects:
            # every category was declined as not fitting the caption: say so, never drop silently
            clip_rejects = [Reject(clip.item.source, clip.item.source_id, "generate", "no_applicable_category",
                                   f"no taxonomy leaf of {prepared.leaf_ids} fits this clip's caption",
                                   audio_sha256=clip.audio_sha256)]
        out.rows.extend(clip_rows)
        out.rejects.extend(clip_rejects)
    out.loop_counts = {f"loop_{k}": int(v) for k, v in stats.counts.items()}
    return out


def _pool_counters(report: dict) -> dict:
    return {"pid": os.getpid(), "endpoints": report["endpoints"], "spent_usd": report["spent_usd"],
            "requests": report["requests"], "cache_hits": report["cache_hits"],
            "calls": sum(v.get("calls", 0) for v in report["endpoints"].values())}
