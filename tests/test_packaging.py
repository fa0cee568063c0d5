"""What ships: snippet files that old Pythons parse and that stand alone, and a wheel that works in a
fresh environment the way a container build uses it."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import parso
import pytest

import patches
from helpers import MODELING, UTILS, copy_transformers, other_python
from patcher.catalog import added_files, load_catalog

REPOSITORY = Path(__file__).parents[1]
PATCHES = Path(patches.__file__).parent
CATALOG = load_catalog().values()
ADDED = {addition.source for patch in CATALOG for addition in patch.adds}
# Every file of patches/ but the catalogue's own packages (the runtime package's __init__.py ships).
SNIPPETS = sorted(
    path for path in PATCHES.rglob("*.py") if path.name != "__init__.py" or path.relative_to(PATCHES).as_posix() in ADDED
)
ADDED_MODULES = {Path(addition.package or addition.file).stem for patch in CATALOG for addition in patch.adds}
IMPORTING = {edit.snippet for patch in CATALOG for edit in patch.edits if edit.codemod == "insert-imports"}


@pytest.fixture(scope="module")
def patched_files(static_site) -> list[Path]:
    return [static_site / UTILS, static_site / MODELING, *(static_site / name for name in added_files(CATALOG))]


def test_snippets_and_patched_files_parse_with_the_python_38_grammar(patched_files):
    grammar = parso.load_grammar(version="3.8")
    for path in [*SNIPPETS, *patched_files]:
        source = path.read_text(encoding="utf-8")
        errors = [f"{error.start_pos}: {error.message}" for error in grammar.iter_errors(grammar.parse(source))]
        assert errors == [], path
        ast.parse(source, filename=str(path), feature_version=(3, 8))


def test_patched_files_compile_with_a_real_python_38(patched_files):
    python38 = other_python("3.8")
    if python38 is None:
        pytest.skip("no Python 3.8 interpreter on this machine (the grammar test above still ran)")
    for path in patched_files:
        result = subprocess.run(
            [python38, "-c", "import sys; compile(open(sys.argv[1], encoding='utf-8').read(), sys.argv[1], 'exec')",
             str(path)],
            capture_output=True, text=True,
        )
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[path.relative_to(PATCHES).as_posix() for path in SNIPPETS])
def test_snippets_stand_alone(snippet):
    """Nothing imports this tool. The added modules import what they use; the hooks import nothing and use
    their patch's module, which the one import snippet per host file imports."""
    relative = snippet.relative_to(PATCHES).as_posix()
    tree = ast.parse(snippet.read_text(encoding="utf-8"))
    imports = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    for node in imports:
        names = [alias.name for alias in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
        absolute = isinstance(node, ast.Import) or node.level == 0
        assert not (absolute and any(name and name.split(".")[0] in ("patcher", "patches") for name in names)), node.lineno
    if relative in IMPORTING:
        assert imports and all(isinstance(node, ast.ImportFrom) and node.level == 1 for node in imports)
        assert {alias.name for node in imports for alias in node.names} <= ADDED_MODULES
    elif relative not in ADDED:
        assert imports == [], f"a hook snippet imports at line {imports[0].lineno}"


@pytest.mark.slow
def test_the_wheel_in_a_fresh_venv_as_a_container_build_uses_it(pristine_site, tmp_path):
    """README's Dockerfile steps: install the built wheel (not editable), apply, status --json, revert."""
    wheels = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
         str(REPOSITORY)],
        check=True,
    )
    (wheel,) = wheels.glob("llama_graph_patch-*.whl")
    python = other_python("3.9") or sys.executable  # the oldest Python the tool supports, where there is one
    venv = tmp_path / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr
    purelib = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    site = copy_transformers(pristine_site, Path(purelib))  # transformers without torch, as in a build stage
    original = (site / UTILS).read_bytes()

    tool = str(venv / "bin" / "llama-graph-patch")
    assert subprocess.run([tool, "apply"], capture_output=True).returncode == 0
    status = json.loads(subprocess.run([tool, "status", "--json"], capture_output=True, text=True).stdout)
    assert status["state"] == "patched" and status["site_packages"] == str(site.resolve())
    assert status["torch_version"] is None and status["python"] is None
    assert subprocess.run([tool, "revert"], capture_output=True).returncode == 0
    assert (site / UTILS).read_bytes() == original

    # A later stage may drop the tool: the patched file stays as it was written.
    assert subprocess.run([tool, "apply"], capture_output=True).returncode == 0
    patched = (site / UTILS).read_bytes()
    subprocess.run([str(venv / "bin" / "pip"), "uninstall", "-q", "-y", "llama-graph-patch"], check=True)
    assert (site / UTILS).read_bytes() == patched and not Path(tool).exists()
