"""The synthesis flow with the question writer and judge behind a faulty OpenAI-compatible server.

The server (tests/helpers/fault_server.py) answers the DataFlux prompts sensibly but injects 429s with
Retry-After, 500s, timeouts, non-JSON and schema-violating replies and truncated output on a
fixed schedule. The run must complete, count every failure by reason, and lose no item: each
is in the version or rejected with a reason. A rerun makes zero model calls, and the API key
planted in the environment appears in nothing the run wrote.
"""

from __future__ import annotations

import json
import logging

import pytest

from dataflux.config import config_from_dict, write_snapshot
from dataflux.llm.counters import FAILURE_REASONS
from dataflux.llm.prompts import load_prompt
from dataflux.storage.catalog import Catalog
from tests.helpers.fault_server import FaultServer, dataflux_reply

pytestmark = pytest.mark.slow

KEY_ENV = "DATAFLUX_TEST_LLM_KEY"
KEY = "sk-planted-" + "c0ffee42" * 5
SIZE = 12


def chaos(n: int) -> str | None:
    """A fault on about one request in four, of every kind, at fixed request numbers."""
    schedule = {3: "429", 7: "500", 11: "invalid", 13: "violate", 17: "length", 19: "slow", 23: "garbage"}
    return schedule.get(n % 29) if n % 29 in schedule else None


def flow_config(base_url: str, size: int = SIZE):
    raw = {
        "version": 1,
        "sources": {"demo": {"kind": "demo", "size": size, "seed": 4, "error_rate": 0.25,
                             "license": "CC0-1.0 (synthesized)", "taxonomy": ["tone_pitch", "loudness"]}},
        "endpoints": {"faulty": {"base_url": base_url, "model": "writer-judge", "api_key_env": KEY_ENV,
                                 "structured_output": "json_object", "audio_format": "none",
                                 "concurrency": 4, "timeout_s": 1.0, "max_retries": 3,
                                 "price_per_1m_input": 0.5, "price_per_1m_output": 1.5}},
        "steps": {"generate": {"backend": "openai", "endpoint": "faulty", "temperature": 0.0, "max_tokens": 400},
                  "judge": {"backend": "openai", "endpoint": "faulty", "temperature": 0.0, "max_tokens": 300}},
        "loop": {"questions_per_category": 1, "max_rounds": 2},
        "run": {"partitions": 2},
    }
    return config_from_dict(raw, origin="<llm fault test>")


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory):
    from dataflux.backends import run_accounts
    from flows.synthesize import run_synthesis

    home = tmp_path_factory.mktemp("llm-faults-home")
    mp = pytest.MonkeyPatch()
    mp.setenv("DATAFLUX_HOME", str(home))
    mp.setenv(KEY_ENV, KEY)
    handler = _Collect()
    logging.getLogger().addHandler(handler)
    try:
        with FaultServer(reply=dataflux_reply, chaos=chaos, retry_after_s=0.2, slow_s=2.0) as srv:
            config = flow_config(srv.base_url)
            first = run_synthesis(config, name="faults")
            first_counters = run_accounts(config, first["run_id"]).counters.snapshot()
            requests_after_first = srv.stats["chat_requests"]
            # Everything again into a new version, with no partition reused: only the cache can
            # spare the calls.
            from flows.synthesize import synthesize_flow, task_runner_for
            second = synthesize_flow.with_options(task_runner=task_runner_for(config))(
                *write_snapshot(config),  # the config travels as a file and its hash
                name="faults-rerun", reuse=False)
            second_counters = run_accounts(config, second["run_id"]).counters.snapshot()
            yield {"home": home, "config": config, "first": first, "second": second, "server": srv,
                   "first_counters": first_counters, "second_counters": second_counters,
                   "requests_after_first": requests_after_first, "log": handler.text()}
    finally:
        logging.getLogger().removeHandler(handler)
        mp.undo()


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(self.format(record))

    def text(self) -> str:
        return "\n".join(self.lines)


def test_faulty_server_run_completes_and_counts_every_failure_by_reason(faulty_run):
    first, srv = faulty_run["first"], faulty_run["server"]
    assert first["status"] == "completed", first
    c = faulty_run["first_counters"]["faulty"]
    print(f"\nfaulty-server run: {first['rows']} rows, {first['rejects']} rejects; injected "
          f"{ {k: v for k, v in srv.stats.items() if k.startswith('faults:')} }; counters {c}")
    for kind in ("429", "500", "invalid", "violate", "length", "slow", "garbage"):
        assert srv.stats[f"faults:{kind}"] >= 1, f"the schedule never injected {kind}"
    events = c["events"]
    assert events.get("rate_limited", 0) == srv.stats["faults:429"]
    assert events.get("server_error", 0) == srv.stats["faults:500"] + srv.stats["faults:garbage"]
    assert events.get("timeout", 0) == srv.stats["faults:slow"]
    assert events.get("invalid_json", 0) == srv.stats["faults:invalid"]
    assert events.get("truncated", 0) == srv.stats["faults:length"]
    assert events.get("schema_violation", 0) >= srv.stats["faults:violate"]
    assert c["ok"] + sum(c["failed"].values()) + c["cache_hits"] == c["calls"]
    assert set(c["failed"]) <= set(FAILURE_REASONS)


def test_no_item_is_lost_and_failed_calls_become_rejects(faulty_run):
    config, first = faulty_run["config"], faulty_run["first"]
    cat = Catalog(config.catalog_path, read_only=True)
    v = first["version"]
    _, rows = cat.query(f"SELECT count(*) FROM items WHERE version_id = '{v}'")
    assert rows[0][0] == SIZE
    _, silent = cat.query(f"""SELECT source_id FROM items i WHERE version_id = '{v}' AND n_rows = 0
        AND NOT EXISTS (SELECT 1 FROM rejects r WHERE r.version_id = i.version_id AND r.source_id = i.source_id)""")
    # Every item without a row has a reject saying why (clips the source labels say nothing about
    # for these leaves are rejected as `no_applicable_category`).
    assert silent == []
    _, kept = cat.query(f"SELECT count(*) FROM read_parquet({_paths(cat, v)})")
    assert kept[0][0] > 0
    _, gen_reasons = cat.query(f"SELECT DISTINCT reason FROM rejects WHERE version_id = '{v}' AND stage = 'generate'")
    assert {r for (r,) in gen_reasons} <= set(FAILURE_REASONS) | {"no_applicable_category"}
    failed = faulty_run["first_counters"]["faulty"]["failed"]
    if failed:  # a call that failed for good left a trace in the rejects, with its reason
        _, traced = cat.query(f"""SELECT count(*) FROM rejects WHERE version_id = '{v}' AND
            ((stage = 'generate' AND reason != 'no_applicable_category') OR detail LIKE '%call failed%')""")
        assert traced[0][0] >= 1, failed


def test_rows_record_the_served_model_and_prompt_hashes(faulty_run):
    config, first = faulty_run["config"], faulty_run["first"]
    cat = Catalog(config.catalog_path, read_only=True)
    _, rows = cat.query(f"SELECT calls FROM read_parquet({_paths(cat, first['version'])})")
    shas = {"generate": {load_prompt("generate_v1").sha256, load_prompt("regenerate_v1").sha256},
            "judge": {load_prompt("judge_v1").sha256}}
    for (calls,) in rows:
        steps = {c["step"]: c for c in calls}
        for step in ("generate", "judge"):
            assert steps[step]["model"] == "fault-model-1.0" and steps[step]["backend"] == "openai"
            assert steps[step]["prompt_sha256"] in shas[step]


def test_rerun_makes_zero_model_calls(faulty_run):
    second, srv = faulty_run["second"], faulty_run["server"]
    assert second["status"] == "completed"
    c = faulty_run["second_counters"].get("faulty", {"requests": 0, "calls": 0, "cache_hits": 0})
    assert srv.stats["chat_requests"] == faulty_run["requests_after_first"]
    assert c["requests"] == 0 and c["cache_hits"] == c["calls"]
    # the run record in the catalog says the same, for anyone who looks later
    from dataflux.storage.catalog import Catalog

    cat = Catalog(faulty_run["config"].catalog_path, read_only=True)
    first_llm = cat.get_run(faulty_run["first"]["run_id"])["counts"]["llm"]
    second_llm = cat.get_run(second["run_id"])["counts"]["llm"]
    assert first_llm["requests"] > 0
    assert second_llm["requests"] == 0 and second_llm["cache_hits"] == second_llm["calls"] > 0


def test_planted_api_key_appears_in_nothing_the_run_wrote(faulty_run):
    srv = faulty_run["server"]
    assert all(r["headers"].get("authorization") == f"Bearer {KEY}" for r in srv.requests)
    needle = KEY.encode()
    leaks = [str(p) for p in faulty_run["home"].rglob("*") if p.is_file() and needle in p.read_bytes()]
    assert leaks == []
    assert KEY not in faulty_run["log"]
    assert KEY not in json.dumps(faulty_run["first"], default=str)
    assert KEY not in json.dumps(faulty_run["config"].data)  # what Prefect receives as flow parameters


def _paths(cat: Catalog, version: str) -> str:
    return "[" + ", ".join(f"'{p}'" for p in cat.shard_paths(version)) + "]"


def test_spent_budget_stops_cleanly_keeps_finished_partitions_and_resumes(tmp_path, monkeypatch):
    from dataflux.backends import run_accounts
    from flows.synthesize import run_synthesis

    monkeypatch.setenv("DATAFLUX_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(KEY_ENV, KEY)
    with FaultServer(reply=dataflux_reply) as srv:
        def config(max_cost_usd):
            c = flow_config(srv.base_url, size=8)
            c.data["run"]["task_runner"] = "sequential"
            if max_cost_usd is not None:
                c.data["budget"] = {"max_cost_usd": max_cost_usd}
            return c

        first = run_synthesis(config(None), name="budget", max_partitions=1, finalize=False)
        assert first["partitions_done"] == 1
        # A budget spent by the first call: the next partition stops without committing anything.
        stopped = run_synthesis(config(1e-12), name="budget")
        assert stopped["status"] == "budget_exhausted" and stopped["version"] == first["version"]
        assert stopped["partitions_done"] == 0 and stopped["budget_exhausted"] == 1
        spent = run_accounts(config(1e-12), stopped["run_id"]).budget.spent_usd
        assert spent > 0
        cat = Catalog(config(None).catalog_path, read_only=True)
        assert len(cat.committed_partitions(first["version"])) == 1
        assert cat.get_version(first["version"])["status"] == "draft"
        requests_before = srv.stats["chat_requests"]

        resumed = run_synthesis(config(None), name="budget")
        assert resumed["status"] == "completed" and resumed["version"] == first["version"]
        assert resumed["partitions_done"] == 1 and resumed["partitions_skipped"] == 1
        counters = run_accounts(config(None), resumed["run_id"]).counters.snapshot()["faulty"]
        assert counters["cache_hits"] >= 1, "calls paid for before the stop are not paid again"
        assert srv.stats["chat_requests"] - requests_before == counters["requests"]
