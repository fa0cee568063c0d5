"""The runtime's architecture as the tree shows it: a module per job, each read in one sitting, and the state
it keeps on a model read from outside only through describe()."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
RUNTIME = sorted((ROOT / "patches" / "graph_mode" / "_llama_graph_patch").glob("*.py"))
KV_CACHE = ROOT / "patches" / "static_cache" / "_llama_graph_patch_kv_cache.py"
# What reads the patch's private state on a model: its key in model.__dict__, a Runner's own attributes.
PRIVATE = re.compile(r"__dict__[^\n]*llama_graph_patch|\.llama_graph_patch\b|_Runner__")
OUTSIDE = sorted(
    path for folder in ("patcher", "tests", "benchmarks") for path in (ROOT / folder).rglob("*")
    if path.suffix in (".py", ".sh") and path != Path(__file__)
)


@pytest.mark.parametrize("path", [*RUNTIME, KV_CACHE], ids=lambda path: path.name)
def test_runtime_modules_and_their_functions_are_short(path):
    source = path.read_text()
    assert len(source.splitlines()) <= 250
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno + 1 > 60
    ]
    assert long == []


def test_the_package_init_holds_the_hooks_and_nothing_else():
    tree = ast.parse((RUNTIME[0].parent / "__init__.py").read_text())
    functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    hooks = {"compile_for_generation", "step_timer", "finish", "runs_eager", "with_static_cache", "without_static_cache"}
    assert functions == hooks | {"generation_of"} and not [node for node in tree.body if isinstance(node, ast.ClassDef)]
    snippets = "".join(path.read_text() for path in (ROOT / "patches").glob("*/*.py"))
    assert {hook for hook in hooks if f"_llama_graph_patch.{hook}(" in snippets} == hooks  # every hook is called


def test_nothing_outside_the_runtime_reads_its_private_state():
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in OUTSIDE
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1)
        if PRIVATE.search(line)
    ]
    assert OUTSIDE and found == []
    assert PRIVATE.search('cache = model.__dict__.get("_llama_graph_patch", {}).get("cache")')  # what it catches
