"""Build the step backends a run uses from `steps:` in data_catalog.yaml.

Reference backends are the offline default; `openai` backends talk to any OpenAI-compatible
server; `local` answerers load a trained checkpoint in-process. One run shares a budget, a
set of call counters and one endpoint pool across all its partitions in a process (with
`run.task_runner: ray`, per worker process): an endpoint's concurrency limit holds across the
partitions' event loops, and each loop keeps its own kept-alive connections.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from dataflux.config import Config
from dataflux.llm.backends import build_openai_step
from dataflux.llm.budget import Budget
from dataflux.llm.client import EndpointPool
from dataflux.llm.counters import CallCounters
from dataflux.llm.text_only import text_only_panel
from dataflux.loop import Steps
from dataflux.steps.answer import CaptionReader, MeasuringAnswerer
from dataflux.steps.caption import ReferenceCaptioner
from dataflux.steps.generate import TemplateQuestionWriter
from dataflux.steps.judge import ReferenceJudge


@dataclass
class RunAccounts:
    """What every partition of one run shares in this process: the budget, the counters and the
    endpoint pool (so an endpoint's concurrency limit holds across partitions running at once;
    the pool's clients are safe across threads and event loops)."""

    budget: Any
    counters: Any
    pool: Any = None


_accounts: dict[str, RunAccounts] = {}
_lock = threading.Lock()


def run_accounts(config: Config, run_id: str) -> RunAccounts:
    with _lock:
        if run_id not in _accounts:
            _accounts[run_id] = RunAccounts(Budget(config.data["budget"].get("max_cost_usd")), CallCounters())
        return _accounts[run_id]


def uses_models(config: Config) -> bool:
    steps = config.data["steps"]
    return any(steps[s].get("backend") != "reference" for s in ("caption", "generate", "judge")) or any(
        a.get("backend") != "reference" for a in steps["answerers"])


def build_steps(config: Config, taxonomy, *, run_id: str = "adhoc", cache=None) -> tuple[Steps, Any]:
    """Returns (steps, pool); pool is None when every step is a reference backend."""
    steps_cfg = config.data["steps"]
    leaves = [c.id for c in taxonomy] if taxonomy is not None else None
    claimed_from = {c.id: c.claimed_from for c in taxonomy if c.claimed_from} if taxonomy is not None else None
    pool = None
    if uses_models(config):
        accounts = run_accounts(config, run_id)
        with _lock:
            if accounts.pool is None:
                accounts.pool = EndpointPool(config.data["endpoints"], cache=cache, budget=accounts.budget,
                                             counters=accounts.counters)
            pool = accounts.pool

    def model_step(name: str, spec: dict):
        return build_openai_step(name, spec, pool)

    caption = steps_cfg["caption"]
    generate = steps_cfg["generate"]
    judge = steps_cfg["judge"]
    answerers = []
    for spec in steps_cfg["answerers"]:
        if spec["backend"] == "reference":
            answerers.append(MeasuringAnswerer() if spec["kind"] == "measure" else CaptionReader())
            if spec["name"] != answerers[-1].name:
                answerers[-1].name = spec["name"]
        else:
            answerers.append(model_step("answer", spec))
    steps = Steps(
        captioner=ReferenceCaptioner(leaves, claimed_from) if caption["backend"] == "reference" else model_step("caption", caption),
        writer=TemplateQuestionWriter() if generate["backend"] == "reference" else model_step("generate", generate),
        answerers=answerers,
        judge=ReferenceJudge() if judge["backend"] == "reference" else model_step("judge", judge),
        text_only=text_only_panel(answerers),
    )
    return steps, pool


def merge_llm_reports(reports: list[dict]) -> dict:
    """Run totals from the partitions' counter snapshots. Snapshots are cumulative within one
    process (the pool is shared there), so keep the latest per process and add processes up."""
    latest: dict[int, dict] = {}
    for r in reports:
        pid = r["pid"]
        if pid not in latest or r["calls"] >= latest[pid]["calls"]:
            latest[pid] = r
    total: dict[str, Any] = {"requests": 0, "cache_hits": 0, "calls": 0, "spent_usd": 0.0, "endpoints": {}}
    for r in latest.values():
        for key in ("requests", "cache_hits", "calls", "spent_usd"):
            total[key] += r[key]
        for ep, counts in r["endpoints"].items():
            mine = total["endpoints"].setdefault(ep, {})
            for k, v in counts.items():
                if isinstance(v, dict):
                    sub = mine.setdefault(k, {})
                    for kk, vv in v.items():
                        sub[kk] = sub.get(kk, 0) + vv
                else:
                    mine[k] = mine.get(k, 0) + v
    return total
