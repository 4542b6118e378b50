"""Imports run down the floors only: cli -> flows -> dataflux/modeling (DESIGN.md section 2).

Every module of `dataflux/`, `modeling/` and `flows/` is read as source (nothing is imported), and
each import is checked, those inside functions included, along with string literals that name a
module (`importlib.import_module("flows.ops")`, `"flows.ops:cmd"`). Third-party imports of every
package, `cli/` included, must be declared in pyproject.toml.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLOOR = {"dataflux": 0, "modeling": 0, "flows": 1, "cli": 2}  # a module may import its floor and those below
CHECKED = ("dataflux", "modeling", "flows")
MODULE_STRING = re.compile(r"^([A-Za-z_]\w*)(\.[A-Za-z_]\w*)*$")
IMPORTING_CALLS = {"import_module", "find_spec", "__import__"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute name of `from ... import` (relative imports resolved against `module`)."""
    if not node.level:
        return node.module or ""
    base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _named_modules(tree: ast.AST, module: str, is_package: bool):
    """(line, name) of every module `tree` imports or names in a string."""
    importing_args = {id(call.args[0]) for call in ast.walk(tree) if isinstance(call, ast.Call) and call.args
                      and getattr(call.func, "attr", getattr(call.func, "id", None)) in IMPORTING_CALLS}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield node.lineno, _absolute(node, module, is_package)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            name = node.value.split(":")[0].strip()
            if MODULE_STRING.match(name) and ("." in name or id(node) in importing_args):
                yield node.lineno, name


def upward_imports(source: str, module: str, where: str, is_package: bool = False) -> list[str]:
    """`where:line: module -> target` for each import or module-naming string that climbs a floor."""
    floor = FLOOR[module.split(".")[0]]
    found = []
    for line, name in sorted(_named_modules(ast.parse(source, filename=where), module, is_package)):
        top = name.split(".")[0]
        if top in FLOOR and FLOOR[top] > floor:
            found.append(f"{where}:{line}: {module} -> {name}")
    return found


def test_no_import_runs_up_a_floor():
    offenders = []
    for package in CHECKED:
        for path in sorted((ROOT / package).rglob("*.py")):
            offenders += upward_imports(path.read_text(), _module_name(path), str(path.relative_to(ROOT)),
                                        is_package=path.name == "__init__.py")
    assert not offenders, ("imports that run up the floors (cli -> flows -> dataflux/modeling); move the code "
                           "that needs them up, or pass what it needs down:\n" + "\n".join(offenders))


def test_the_rule_sees_imports_in_functions_relative_imports_and_module_strings():
    source = (
        "import importlib\n"
        "def f():\n"
        "    from flows.synthesize import run_synthesis\n"
        "    importlib.import_module('flows')\n"
        "    return importlib.util.find_spec('cli.main')\n"
        "ENTRY = 'flows.train:train_flow'\n"
        "from ...cli import ops\n"
        "NOTE = 'flows are thin'\n"
    )
    found = upward_imports(source, "dataflux.llm.serve", "dataflux/llm/serve.py")
    assert [f.split(": ", 1)[0] for f in found] == [f"dataflux/llm/serve.py:{n}" for n in (3, 4, 5, 6, 7)]
    assert found[-1].endswith("dataflux.llm.serve -> cli")
    assert upward_imports("from cli.main import main\n", "flows.deploy", "flows/deploy.py")
    assert not upward_imports("from flows import prefect_env\nimport dataflux\n", "flows.deploy", "x.py")


# --- dependencies declared as used --------------------------------------------------------------


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"].values()
    requirements = project["dependencies"] + [r for extra in extras for r in extra]
    return {_normal(re.match(r"[A-Za-z0-9_.-]+", r).group(0)) for r in requirements}


def _guarded_lines(tree: ast.AST) -> set[int]:
    """Lines of imports inside `try: ... except ImportError` (optional at run time)."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                for h in node.handlers):
            lines |= {n.lineno for stmt in node.body for n in ast.walk(stmt)
                      if isinstance(n, (ast.Import, ast.ImportFrom))}
    return lines


def test_every_third_party_import_is_declared_in_pyproject():
    declared, dists = _declared(), packages_distributions()
    undeclared = []
    for package in (*CHECKED, "cli"):
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            guarded = _guarded_lines(tree)
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level:
                    names = [node.module or ""]
                else:
                    continue
                for top in {n.split(".")[0] for n in names}:
                    if top in FLOOR or top in sys.stdlib_module_names or node.lineno in guarded:
                        continue
                    if not {_normal(d) for d in dists.get(top, [top])} & declared:
                        undeclared.append(f"{path.relative_to(ROOT)}:{node.lineno}: {top} "
                                          f"(distribution {'/'.join(dists.get(top, ['not installed']))})")
    assert not undeclared, ("imports whose distribution pyproject.toml does not declare; add each to "
                            "[project] dependencies, or to an extra if only an optional path uses it:\n"
                            + "\n".join(undeclared))


# The floors inside the libraries, top first, as the README's Layout lists them: a module may import its
# own room and the rooms below it. Ground-floor modules (records, fields, taxonomy, config...) are below all.
INNER_FLOORS = ("dataflux.pipeline", "dataflux.incremental", "dataflux.backends", "dataflux.llm", "dataflux.loop",
                "modeling", "dataflux.sources", "dataflux.steps", "dataflux.claims", "dataflux.audio", "dataflux.report",
                "dataflux.packaged_weights", "dataflux.storage")


def _room(module: str) -> int | None:
    return next((i for i, room in enumerate(INNER_FLOORS) if module == room or module.startswith(room + ".")), None)


def test_the_libraries_rooms_import_only_rooms_below_them():
    offenders = []
    for package in ("dataflux", "modeling"):
        for path in sorted((ROOT / package).rglob("*.py")):
            module = _module_name(path)
            here = _room(module)
            tree = ast.parse(path.read_text(), filename=str(path))
            for line, name in _named_modules(tree, module, path.name == "__init__.py"):
                there = _room(name)
                if here is not None and there is not None and there < here:
                    offenders.append(f"{path.relative_to(ROOT)}:{line}: {module} -> {name}")
                elif here is None and there is not None and name.split(".")[0] in ("dataflux", "modeling"):
                    offenders.append(f"{path.relative_to(ROOT)}:{line}: ground floor {module} -> {name}")
    assert not offenders, "imports that climb the libraries' floors (README, Layout):\n" + "\n".join(offenders)
