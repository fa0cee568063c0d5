"""The persistent compile cache the graph-mode patch keeps under LLAMA_GRAPH_PATCH_CACHE: a second process
loads instead of compiling, and processes sharing the folder never see half a file. (Files it cannot use:
tests/test_precompiled.py spoils these and the precompiled ones together.)"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from helpers import generate, graphs_after_each_call, tokens
from patches.graph_mode import _llama_graph_patch as runtime
from patches.graph_mode._llama_graph_patch import compile_cache
from patches.graph_mode._llama_graph_patch.settings import read_settings
from patches.graph_mode._llama_graph_patch.state import describe

COMMON = ("--kv-heads", 2, "--new-tokens", 12, "--modes", "max-autotune")
# The tests that start from the `filled` cache run in one xdist worker, which fills it once.
pytestmark = pytest.mark.xdist_group("compile-cache-filled")


def generate_with_cache(site: Path, root: Path, scope: str = "model", env: dict | None = None) -> tuple[dict, str]:
    env = {"LLAMA_GRAPH_PATCH_CACHE": str(root), "LLAMA_GRAPH_PATCH_COMPILE_SCOPE": scope, **(env or {})}
    results, log = generate(site, *COMMON, env=env)
    return results["max-autotune"], log


@pytest.fixture(scope="module")
def reference(pristine_site) -> list:
    results, _ = generate(pristine_site, "--kv-heads", 2, "--new-tokens", 12, "--modes", "reference")
    return tokens(results["reference"])


@pytest.fixture(scope="module")
def filled(graph_mode_site, tmp_path_factory) -> tuple[Path, dict, str]:
    """A cache folder after one process compiled into it, with that process's result and log."""
    root = tmp_path_factory.mktemp("filled")
    run, log = generate_with_cache(graph_mode_site, root)
    return root, run, log


@pytest.mark.slow
def test_a_second_process_loads_what_the_first_saved(graph_mode_site, filled, reference, tmp_path):
    root, first, log = filled
    assert first["compile_cache"]["state"] == "cold" and tokens(first) == reference
    artifact = Path(first["compile_cache"]["path"])
    assert artifact.parent == root / "compile" / "artifacts"
    assert "saved" in log and str(artifact) in log
    header = json.loads(artifact.read_bytes().split(b"\n", 1)[0])
    assert header["format"] == "llama-graph-patch compile artifacts 1"
    assert header["key"]["scope"] == "model" and header["key"]["model"] == "LlamaForCausalLM"
    assert any((root / "compile" / "inductor").iterdir())  # inductor's own caches went there too

    second_root = tmp_path / "copy"
    shutil.copytree(root, second_root)
    second, log = generate_with_cache(graph_mode_site, second_root)
    assert second["compile_cache"]["state"] == "warm"
    assert tokens(second) == reference
    assert "WARNING" not in log and "not using the compile artifacts" not in log


@pytest.mark.slow
def test_the_region_scope_keeps_artifacts_and_precompiled_code_of_its_own(graph_mode_site, filled, reference, tmp_path):
    env = {"LLAMA_GRAPH_PATCH_PRECOMPILE": "store"}
    first, log = generate_with_cache(graph_mode_site, tmp_path, scope="region", env=env)
    assert first["compile_cache"]["state"] == "cold" and tokens(first) == reference
    artifact = Path(first["compile_cache"]["path"])
    assert json.loads(artifact.read_bytes().split(b"\n", 1)[0])["key"]["scope"] == "region"
    assert artifact.name != Path(filled[1]["compile_cache"]["path"]).name  # not the model scope's file
    (precompiled,) = (tmp_path / "compile" / "precompiled").glob("*.bin")
    assert json.loads(precompiled.read_bytes().split(b"\n", 1)[0])["key"]["scope"] == "region"
    second, log = generate_with_cache(graph_mode_site, tmp_path, scope="region")
    assert second["compile_cache"]["state"] == "precompiled" and tokens(second) == reference
    assert graphs_after_each_call(second) == [0, 0, 0]  # the regions, not traced
    assert "WARNING" not in log


CONCURRENT_SAVES = """
import os, sys, torch
from transformers.generation._llama_graph_patch import compile_cache
cache = compile_cache.CompileCacheFile(sys.argv[1], {"test": 1}, sys.argv[3])
for round in range(int(sys.argv[2])):
    payload = os.urandom(int.from_bytes(os.urandom(2), "big") * 16)  # up to 1 MB, a new length each time
    torch.compiler.save_cache_artifacts = lambda: (payload, None)
    compile_cache.save_compile_cache(cache)
"""

CONCURRENT_READS = """
import sys, time
from transformers.generation._llama_graph_patch import compile_cache
cache = compile_cache.CompileCacheFile(sys.argv[1], {"test": 1}, sys.argv[3])
deadline, reads = time.time() + float(sys.argv[2]), 0
while time.time() < deadline:
    try:
        compile_cache.read_artifacts(cache)  # raises on half a file
        reads += 1
    except FileNotFoundError:
        pass
print(reads)
"""


def test_processes_sharing_the_folder_never_see_half_a_file(graph_mode_site, tmp_path):
    import subprocess
    import sys

    from helpers import POISON, python_path

    artifact = tmp_path / "compile" / "artifacts" / "shared.bin"
    env = {**os.environ, **python_path(POISON, graph_mode_site)}
    command = [sys.executable, "-c"]
    writers = [subprocess.Popen([*command, CONCURRENT_SAVES, str(artifact), "6", str(tmp_path)], env=env) for _ in range(4)]
    reader = subprocess.Popen([*command, CONCURRENT_READS, str(artifact), "20", str(tmp_path)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    assert [writer.wait(timeout=600) for writer in writers] == [0, 0, 0, 0]
    out, err = reader.communicate(timeout=600)
    assert reader.returncode == 0, err[-3000:]
    assert int(out) > 0
    assert sorted(path.name for path in artifact.parent.iterdir()) == ["shared.bin", "shared.bin.lock"]


def open_cache_of_a_tiny_llama() -> dict | None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=99, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    model = LlamaForCausalLM(config)
    return compile_cache.open_compile_cache(read_settings().cache_folder, model, torch.device("cpu"), {"scope": "model"})


@pytest.mark.parametrize(
    "given, expected",
    [
        (None, "{root}/compile/inductor"),
        ("{tmp}/torchinductor_someone", "{root}/compile/inductor"),  # torch's own default: replaced
        ("/srv/inductor", "/srv/inductor"),  # the user's choice: kept
    ],
)
def test_inductor_caches_go_into_the_compile_cache_unless_the_user_chose(monkeypatch, tmp_path, given, expected):
    import tempfile

    root = tmp_path / "root"
    monkeypatch.setenv("LLAMA_GRAPH_PATCH_CACHE", str(root))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)  # restored after the test, as it was
    if given:
        monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", given.format(tmp=tempfile.gettempdir()))
    cache = open_cache_of_a_tiny_llama()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == expected.format(root=root)
    assert cache.path.startswith(f"{root}/compile/artifacts/") and cache.path.endswith(".bin")


def test_the_compile_cache_can_be_switched_off(monkeypatch, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    monkeypatch.setenv("LLAMA_GRAPH_PATCH_CACHE", str(tmp_path / "root"))
    monkeypatch.setenv("LLAMA_GRAPH_PATCH_COMPILE_CACHE", "0")
    monkeypatch.setenv("EXE_MODE", "dynamo")
    config = LlamaConfig(vocab_size=99, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    model = LlamaForCausalLM(config)
    runtime.compile_for_generation(model, torch.zeros(1, 3, dtype=torch.long))  # compiles lazily: nothing runs
    assert describe(model)["compile_cache"] is None and not (tmp_path / "root").exists()


def test_a_cache_folder_that_cannot_be_written_is_a_warning(monkeypatch, caplog, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: (b"artifacts", None))
    compile_cache.save_compile_cache(compile_cache.CompileCacheFile(str(blocker / "artifacts" / "x.bin"), {}, str(tmp_path)))
    (warning,) = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert "could not save compile artifacts" in warning and str(blocker) in warning
