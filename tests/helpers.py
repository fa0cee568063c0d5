"""Helpers the tests share: copies of the real transformers 4.31.0, and the real CLI in a child process."""

from __future__ import annotations

import ast
import difflib
import glob
import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path


HERE = Path(__file__).parent
REPOSITORY = HERE.parent
UTILS = "transformers/generation/utils.py"
MODELING = "transformers/models/llama/modeling_llama.py"
GRAPH_MODE_RUNTIME = "transformers/generation/_llama_graph_patch"  # a package
KV_CACHE_RUNTIME = "transformers/models/llama/_llama_graph_patch_kv_cache.py"
RUNTIME_SOURCE = REPOSITORY / "patches" / "graph_mode" / "_llama_graph_patch"
# The runtime package's files inside site-packages, as apply writes them from RUNTIME_SOURCE.
RUNTIME_FILES = [f"{GRAPH_MODE_RUNTIME}/{path.name}" for path in sorted(RUNTIME_SOURCE.glob("*.py"))]
# Stand-ins for the Ascend packages, and modules that make importing this tool fail.
NPU_STANDINS = HERE / "npu_standins"
POISON = HERE / "poison"
WORKERS = HERE / "workers"


def installed_site_packages() -> Path:
    """The site-packages holding the transformers 4.31.0 the test environment installed."""
    return Path(metadata.distribution("transformers").locate_file("")).resolve()


def copy_transformers(source_site: Path, destination: Path) -> Path:
    """A site-packages holding a copy of transformers and its dist-info (no bytecode)."""
    destination.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(source_site / "transformers", destination / "transformers", ignore=ignore)
    for info in source_site.glob("transformers-*.dist-info"):
        shutil.copytree(info, destination / info.name)
    if (source_site / ".llama-graph-patch").exists():  # e.g. `make bench` patched the venv
        shutil.copytree(source_site / ".llama-graph-patch", destination / ".llama-graph-patch")
    return destination


def console_script() -> Path:
    """The installed llama-graph-patch command, next to this interpreter."""
    return Path(sys.executable).with_name("llama-graph-patch")


def run_cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """The installed console script, as a container build would run it."""
    return subprocess.run(
        [str(console_script()), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def python_path(*entries: Path) -> dict:
    """Environment that puts `entries` first on the import path of a child interpreter."""
    return {"PYTHONPATH": os.pathsep.join(str(entry) for entry in entries)}


def run_python(arguments: list, site: Path, *first_on_path: Path, env: dict | None = None, then: tuple = ()):
    """A child interpreter that imports the transformers in `site` and cannot import this tool; `then`:
    folders to import from after `site` (a release's own tokenizers, say)."""
    path = [*first_on_path, POISON, site, *then]
    # Not inherited: a timing file, and an inductor cache folder some in-process test pointed elsewhere.
    inherited = {
        name: value for name, value in os.environ.items() if name not in ("LLAMA_GRAPH_PATCH_TIMING", "TORCHINDUCTOR_CACHE_DIR")
    }
    child_env = {**inherited, **python_path(*path), **(env or {})}
    return subprocess.run(
        [sys.executable, *map(str, arguments)], capture_output=True, text=True, env=child_env, timeout=1800
    )


def generate(site: Path, *arguments, env: dict | None = None, then: tuple = ()) -> tuple[dict, str]:
    """tests/workers/generate.py in a child interpreter: its JSON report and its log."""
    result = run_python([WORKERS / "generate.py", *arguments], site, env=env, then=then)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout), result.stderr


def other_python(version: str) -> str | None:
    """An interpreter of another Python version on this machine (pyenv's versions included), or None."""
    candidates = [shutil.which(f"python{version}")]
    pyenv = shutil.which("pyenv")
    if pyenv:
        root = subprocess.run([pyenv, "root"], capture_output=True, text=True).stdout.strip()
        candidates += sorted(glob.glob(f"{root}/versions/{version}.*/bin/python{version}"))
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return candidate
    return None


def patch_warnings(log: str) -> list[str]:
    """The WARNING lines the patched transformers logged (logger llama_graph_patch) in a worker's log."""
    return [line for line in log.splitlines() if line.startswith("WARNING llama_graph_patch")]


def graphs_after_each_call(mode_result: dict) -> list[int]:
    """Graphs dynamo had compiled after each generate call tests/workers/generate.py made in one mode."""
    return [call["graphs_per_step"][-1] for call in mode_result["calls"]]


def tokens(mode_result: dict) -> list:
    """The tokens of every generate call tests/workers/generate.py made in one mode."""
    return [call["tokens"] for call in mode_result["calls"]]


def check_two_graphs(calls: list) -> None:
    """Prefill and one decode graph on the first call; nothing new on the same batch again, nor on a batch
    with other prompt lengths and another number of new tokens."""
    first = calls[0]["graphs_per_step"]
    assert first == [1] + [2] * (len(first) - 1), first
    for later in calls[1:]:
        assert set(later["graphs_per_step"]) == {2}, later["graphs_per_step"]


def only_insertions(original: bytes, patched: bytes) -> bool:
    """Whether `patched` is `original` with lines added and none changed or removed."""
    matcher = difflib.SequenceMatcher(a=original.splitlines(), b=patched.splitlines(), autojunk=False)
    return {operation for operation, *_ in matcher.get_opcodes()} <= {"equal", "insert"}


def changed_methods(original: bytes, patched: bytes) -> tuple[set[str], list[str]]:
    """The GenerationMixin methods whose code the patch changed, and the names its added top-level
    imports bind; asserts that nothing else changed."""
    before, after = ast.parse(original).body, ast.parse(patched).body
    imports = [node for node in after if isinstance(node, ast.ImportFrom) and "llama_graph_patch" in ast.dump(node)]
    after = [node for node in after if node not in imports]
    assert len(before) == len(after), "top-level statements added or removed besides the imports"
    changed = set()
    for old, new in zip(before, after):
        if isinstance(old, ast.ClassDef) and old.name == "GenerationMixin":
            old_members = {getattr(node, "name", index): ast.dump(node) for index, node in enumerate(old.body)}
            new_members = {getattr(node, "name", index): ast.dump(node) for index, node in enumerate(new.body)}
            assert old_members.keys() == new_members.keys(), "GenerationMixin gained or lost members"
            changed = {name for name in old_members if old_members[name] != new_members[name]}
        else:
            assert ast.dump(old) == ast.dump(new), f"line {old.lineno} changed"
    return changed, [alias.asname or alias.name for node in imports for alias in node.names]


def decoding_calls(source: bytes) -> dict[str, set[str]]:
    """The decoding methods GenerationMixin.generate hands the loop to (its calls self.<...search, ...sample,
    ...decoding>()), each with the methods of self it calls in turn (a deprecated public name forwards to
    the private one)."""
    tree = ast.parse(source)
    mixin = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "GenerationMixin")
    methods = {node.name: node for node in mixin.body if isinstance(node, ast.FunctionDef)}

    def calls(function: ast.FunctionDef) -> set[str]:
        return {
            node.func.attr
            for node in ast.walk(function)
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "self"
        }

    decoding = {name for name in calls(methods["generate"]) if name.endswith(("_search", "sample", "_decoding"))}
    return {name: calls(methods[name]) for name in decoding}
