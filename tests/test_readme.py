"""The README's two set-up commands must stay true: they exist, CI runs the test one, and the
demo command they wrap works. Every `dataflux` command the README and docs/ show exists with its
flags, and every link between them leads to a file."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    quick = text.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", quick, re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_names_exactly_the_two_setup_commands():
    assert _readme_commands() == ["make demo", "make test"]


def test_makefile_targets_behind_the_readme_commands_exist():
    makefile = (ROOT / "Makefile").read_text()
    demo = re.search(r"^demo:.*\n((?:\t.*\n)+)", makefile, re.M)
    test = re.search(r"^test:.*setup\n((?:\t.*\n)+)", makefile, re.M)
    assert demo and "dataflux demo" in demo.group(1)
    assert test and "pytest" in test.group(1)
    assert "torch==2.13.0" in makefile  # the CPU build goes in before the project


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


@pytest.mark.slow
def test_demo_command_finalizes_a_version_and_prints_its_stats(dataflux_home):
    proc = subprocess.run([sys.executable, "-m", "cli", "demo", "--size", "24", "--partitions", "2",
                           "--quiet"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "planted_errors" in proc.stdout and "samples" in proc.stdout
    versions = subprocess.run([sys.executable, "-m", "cli", "versions", "--json"], capture_output=True,
                              text=True, timeout=120, cwd=ROOT)
    assert '"finalized"' in versions.stdout


def _documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_dataflux_command_in_the_readme_and_docs_exists_with_its_flags():
    from cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert len(re.findall(r"^\.venv/bin/dataflux (.+)$", (ROOT / "README.md").read_text(), re.M)) >= 10
    lines = [line for doc in _documents()
             for line in re.findall(r"^\.venv/bin/dataflux (.+)$", doc.read_text(), re.M)]
    for line in lines:
        words = line.split("#")[0].split()
        cmd = words[0]
        assert cmd in sub.choices, f"README names `dataflux {cmd}`, which the CLI does not have"
        p = sub.choices[cmd]
        if cmd == "llm":
            p = next(a for a in p._actions if a.choices).choices[words[1]]
        known = {opt for a in p._actions for opt in a.option_strings}
        for flag in (w.strip("[]") for w in words if w.strip("[]").startswith("--")):
            assert flag in known, f"README: `dataflux {cmd}` has no flag {flag}"


def test_readme_stays_a_five_minute_read_with_the_layout_before_the_details():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 160, "README.md grew past ~150 lines: move results and narratives to docs/"
    headings = re.findall(r"^## (.+)$", text, re.M)
    assert headings.index("Layout") < headings.index("Everyday use")
    for word in ("leaf", "claim", "planted", "partition", "draft / finalized version"):
        assert f"**{word}**" in text, f"README's glossary lacks {word!r}"


def test_links_in_the_readme_and_docs_lead_to_files():
    broken = []
    for doc in _documents():
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" not in target and not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
    assert not broken, f"links to files that do not exist: {broken}"

