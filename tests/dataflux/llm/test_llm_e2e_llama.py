"""The synthesis flow over the wire: a real llama.cpp server (SmolLM2-135M, the model
`dataflux llm serve` uses) on 127.0.0.1 writes the questions and judges them; captions and
answerers are the reference backends.

SmolLM2-135M is tiny and often writes malformed JSON: every reply must end either valid
(possibly after one repair) or as a recorded failure with a reason, never dropped silently.
"""

from __future__ import annotations

import json
import os
import socket

import pytest

pytestmark = pytest.mark.slow

if os.environ.get("CI"):  # CI installs the `llm` extra: a missing server is a failure there, not a skip
    import llama_cpp  # noqa: F401
else:
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (pip install 'dataflux[llm]')")

from dataflux.config import config_from_dict, write_snapshot  # noqa: E402
from dataflux.llm.catalog_cache import CatalogCallCache  # noqa: E402
from dataflux.llm.counters import FAILURE_REASONS  # noqa: E402
from dataflux.llm.prompts import load_prompt  # noqa: E402
from dataflux.llm.serve import GGUF_NAME, ensure_smollm2, start_server  # noqa: E402
from dataflux.storage.catalog import Catalog  # noqa: E402

MODEL_ID = GGUF_NAME.removesuffix(".gguf")
SIZE = 2  # demo items 0 and 1 of seed 3 are steady tones with a pitch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def llama_config(base_url: str):
    raw = {
        "version": 1,
        "sources": {"demo": {"kind": "demo", "size": SIZE, "seed": 3, "error_rate": 0.0,
                             "license": "CC0-1.0 (synthesized)", "taxonomy": ["tone_pitch"]}},
        "endpoints": {"local": {"base_url": base_url, "model": MODEL_ID, "structured_output": "json_object",
                                "audio_format": "none", "concurrency": 2, "timeout_s": 300, "max_retries": 1,
                                "price_per_1m_input": 0.1, "price_per_1m_output": 0.2}},
        "steps": {"generate": {"backend": "openai", "endpoint": "local", "temperature": 0.2, "max_tokens": 384},
                  "judge": {"backend": "openai", "endpoint": "local", "temperature": 0.0, "max_tokens": 256}},
        "loop": {"questions_per_category": 1, "max_rounds": 2, "seed": 5},
        "run": {"partitions": 1},
    }
    return config_from_dict(raw, origin="<llama.cpp e2e>")


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory):
    from dataflux.backends import run_accounts
    from flows.synthesize import run_synthesis, synthesize_flow, task_runner_for

    home = tmp_path_factory.mktemp("llama-home")
    mp = pytest.MonkeyPatch()
    mp.setenv("DATAFLUX_HOME", str(home))
    model = ensure_smollm2(home)
    log = home / "llama_server.log"
    # one thread: on a shared 2-core machine a second one mostly waits
    proc, base_url = start_server(model, port=_free_port(), n_ctx=4096, n_threads=1, log_path=log)
    try:
        config = llama_config(base_url)
        # the 135M model may keep no row at all; that version is still finalized, so its rejects can be read
        first = run_synthesis(config, name="llama", allow_empty=True)
        first_counters = run_accounts(config, first["run_id"]).counters.snapshot()
        # the same sources into a new version with nothing reused: only the call cache can spare the calls
        second = synthesize_flow.with_options(task_runner=task_runner_for(config))(
            *write_snapshot(config),  # the config travels as a file and its hash
            name="llama-rerun", reuse=False, allow_empty=True)
        second_counters = run_accounts(config, second["run_id"]).counters.snapshot()
        yield {"config": config, "first": first, "second": second, "first_counters": first_counters,
               "second_counters": second_counters}
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        mp.undo()


def test_every_call_is_valid_or_a_recorded_failure_from_the_served_model(llama_run):
    first = llama_run["first"]
    assert first["status"] == "completed", first
    c = llama_run["first_counters"]["local"]
    print(f"\nllama.cpp e2e: {first['rows']} rows, {first['rejects']} rejects; counters {c}")
    assert c["requests"] > 0
    assert c["ok"] + sum(c["failed"].values()) + c["cache_hits"] == c["calls"], c
    assert set(c["failed"]) <= set(FAILURE_REASONS) and set(c["events"]) <= set(FAILURE_REASONS)
    assert c["tokens_in"] > 0 and c["cost_usd"] == pytest.approx((c["tokens_in"] * 0.1 + c["tokens_out"] * 0.2) / 1e6)
    cat = Catalog(llama_run["config"].catalog_path, read_only=True)
    _, calls = cat.query("SELECT step, model, response FROM calls")
    assert {step for step, _, _ in calls} == {"generate", "judge"}, "both model-backed steps went over the wire"
    for step, model, response in calls:
        assert model == MODEL_ID, "the model id the server reported is what the catalog records"
        failure = json.loads(response)["failure"]
        assert failure is None or failure in FAILURE_REASONS


def test_rows_record_model_and_prompt_hashes_and_failures_are_rejects(llama_run):
    config, first = llama_run["config"], llama_run["first"]
    cat = Catalog(config.catalog_path, read_only=True)
    v = first["version"]
    paths = cat.shard_paths(v)
    shas = {"generate": {load_prompt("generate_v1").sha256, load_prompt("regenerate_v1").sha256},
            "judge": {load_prompt("judge_v1").sha256}}
    if paths:
        _, rows = cat.query("SELECT calls FROM read_parquet([" + ", ".join(f"'{p}'" for p in paths) + "])")
        for (calls,) in rows:
            steps = {c["step"]: c for c in calls}
            for step in ("generate", "judge"):
                assert steps[step]["model"] == MODEL_ID and steps[step]["prompt_sha256"] in shas[step]
    _, rejects = cat.query(f"SELECT stage, reason, extra FROM rejects WHERE version_id = '{v}'")
    print(f"rejects: {rejects}")
    for stage, reason, extra in rejects:
        if stage == "generate":
            assert reason in FAILURE_REASONS or reason == "no_applicable_category"
        if stage == "verify":
            # a rejected question keeps the provenance of the calls that made and judged it
            calls = {c["step"]: c for c in json.loads(extra)["calls"]}
            for step in ("generate", "judge"):
                assert calls[step]["model"] == MODEL_ID and calls[step]["prompt_sha256"] in shas[step]


def test_an_item_without_rows_has_a_reject_saying_why(llama_run):
    config, first = llama_run["config"], llama_run["first"]
    cat = Catalog(config.catalog_path, read_only=True)
    _, items = cat.query(f"""SELECT count(*) FROM items i WHERE version_id = '{first["version"]}' AND n_rows = 0
        AND NOT EXISTS (SELECT 1 FROM rejects r WHERE r.version_id = i.version_id AND r.source_id = i.source_id)""")
    assert items[0][0] == 0


def test_rerun_over_the_catalog_cache_makes_zero_model_calls(llama_run):
    second = llama_run["second"]
    assert second["status"] == "completed"
    c = llama_run["second_counters"]["local"]
    assert c["requests"] == 0 and c["cache_hits"] == c["calls"] > 0
    assert second["rows"] == llama_run["first"]["rows"] and second["rejects"] == llama_run["first"]["rejects"]


def test_the_flows_generate_call_is_recorded_with_model_id_and_prompt_hash(llama_run):
    """Replays the flow's first generate request for demo item 0: the catalog answers it (the
    same request hash), and the provenance is the served model's id and the template's hash."""
    import asyncio

    from dataflux.audio.analyze import analyze_item
    from dataflux.llm.backends import build_openai_step
    from dataflux.llm.client import EndpointPool
    from dataflux.loop import derive_seed
    from dataflux.sources.demo import demo_item
    from dataflux.steps.caption import ReferenceCaptioner
    from dataflux.taxonomy import load_taxonomy

    config = llama_run["config"]
    leaf = load_taxonomy().leaf("tone_pitch")
    clip = analyze_item(demo_item(0, seed=3, error_rate=0.0), [leaf.id])
    pool = EndpointPool(config.data["endpoints"], cache=CatalogCallCache(config.catalog_path))
    writer = build_openai_step("generate", config.data["steps"]["generate"], pool)

    async def replay():
        caption = await ReferenceCaptioner([leaf.id]).caption(clip)
        try:
            return await writer.generate(clip, caption, leaf, 1, derive_seed(5, clip.audio_sha256, leaf.id, 1))
        finally:
            await pool.aclose()

    gen = asyncio.run(replay())
    assert gen.call.cached and pool.counters.snapshot()["local"]["requests"] == 0
    assert gen.call.model == MODEL_ID and gen.call.backend == "openai"
    assert gen.call.prompt_sha256 == load_prompt("generate_v1").sha256
    assert gen.call.failure is None or gen.call.failure in FAILURE_REASONS
    assert gen.call.tokens_in > 0
