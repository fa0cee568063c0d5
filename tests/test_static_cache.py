"""The static-cache patch at run time: same greedy tokens as unpatched transformers, one shape and no
compilation after the first decode step."""

from __future__ import annotations

import json

import pytest

from helpers import NPU_STANDINS, WORKERS, check_two_graphs, generate, run_python, tokens

MODES = ("eager", "max-autotune", "reduce-overhead")
NEW_TOKENS = 64
PROMPT = 9


# Each scope once, both attention kinds among them (test time: the full product took 3.5 minutes of 2 cores).
@pytest.mark.slow
@pytest.mark.parametrize(
    "kv_heads, scope", [(2, "model"), (4, "layers"), (2, "region")],
    ids=["grouped-query-model", "multi-head-layers", "grouped-query-region"],
)
def test_static_cache_matches_unpatched_transformers_without_recompiles(
    pristine_site, static_site, tmp_path, kv_heads, scope
):
    common = ("--kv-heads", kv_heads, "--new-tokens", NEW_TOKENS)
    reference, _ = generate(pristine_site, *common, "--modes", "reference")
    # --forbid-recompiles: torch.compiler.set_stance("fail_on_recompile") from the first decode step on.
    results, log = generate(
        static_site, *common, "--forbid-recompiles", "--timing-dir", tmp_path,
        env={"LLAMA_GRAPH_PATCH_COMPILE_SCOPE": scope},
    )
    length = PROMPT + NEW_TOKENS  # the first call's; the third, shorter, reuses its cache
    decode_step = {
        "input_ids": [3, 1],
        "position_ids": [3, 1],
        "attention_mask": [3, length],
        "past_key_values": [[3, kv_heads, length, 8], [1]],
    }
    for mode in MODES:
        run = results[mode]
        assert run["static_cache"], mode
        assert tokens(run) == tokens(reference["reference"]), mode
        for call, prompt in zip(run["calls"], (PROMPT, PROMPT, 6)):
            assert call["input_shapes"][0]["past_key_values"] == [[3, kv_heads, length, 8], [prompt]]
            assert call["input_shapes"][1:] == [decode_step] * (len(call["input_shapes"]) - 1), mode
        if mode == "eager":
            assert {graphs for call in run["calls"] for graphs in call["graphs_per_step"]} == {0}
        else:
            check_two_graphs(run["calls"])
    cache = f"static KV cache 2 layers x 2 x 3x{kv_heads}x{length}x8 float32"
    assert log.count(cache) == 3 * len(MODES), log


def test_the_static_cache_can_be_switched_off_at_run_time(pristine_site, static_site):
    reference, _ = generate(pristine_site, "--kv-heads", 2, "--modes", "reference", "--new-tokens", 8)
    results, _ = generate(
        static_site, "--kv-heads", 2, "--modes", "eager", "--new-tokens", 8,
        env={"LLAMA_GRAPH_PATCH_STATIC_CACHE": "0"},
    )
    assert results["eager"]["static_cache"] is False
    assert results["eager"]["calls"][0]["input_shapes"][2]["attention_mask"] == [3, PROMPT + 2]  # the growing cache
    assert tokens(results["eager"]) == tokens(reference["reference"])


def test_on_npu_the_cache_is_written_with_scatter_update(static_site):
    result = run_python([WORKERS / "npu_paths.py"], static_site, NPU_STANDINS)
    assert result.returncode == 0, result.stderr[-4000:]
    write = json.loads(result.stdout)["static_cache_write"]
    # one int64 start per batch row, the sequence axis of a (batch, heads, seq, dim) cache
    assert write["scatter_updates"] == [[[5, 5], 2, [2, 3, 1, 4]]]
    assert write["same_as_index_copy"] is True


KV_CACHE_KEY_PROBE = """
import json, torch
from tiny import tiny_llama
from transformers.generation import _llama_graph_patch as runtime
from transformers.generation._llama_graph_patch.state import describe
model = tiny_llama(2)
runtime.compile_for_generation(model, torch.ones(1, 4, dtype=torch.long))  # opens the compile cache, compiles nothing
print(json.dumps({"kv_cache": describe(model)["kv_cache"], "file": describe(model)["compile_cache_file"]}))
"""


@pytest.mark.parametrize("site_name", ["graph_mode_site", "static_site"])
def test_the_compile_cache_keeps_static_and_growing_graphs_apart(request, site_name, tmp_path):
    """A +static mode and a growing-cache mode of one model compile different graphs: one artifact file each."""
    site = request.getfixturevalue(site_name)
    keys = {}
    for switch in ("1", "0"):
        env = {"EXE_MODE": "dynamo", "LLAMA_GRAPH_PATCH_STATIC_CACHE": switch, "LLAMA_GRAPH_PATCH_CACHE": str(tmp_path)}
        result = run_python(["-c", KV_CACHE_KEY_PROBE], site, WORKERS, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        keys[switch] = json.loads(result.stdout)
    if site_name == "static_site":
        assert (keys["1"]["kv_cache"], keys["0"]["kv_cache"]) == ("static", "growing")
        assert keys["1"]["file"] != keys["0"]["file"]
    else:  # without the static-cache patch the switch changes nothing
        assert keys["1"] == keys["0"] and keys["1"]["kv_cache"] == "growing"


SHARE_OF_A_RANK = """
import json, torch
from tiny import tiny_llama
from transformers.models.llama import _llama_graph_patch_kv_cache as kv_cache

model = tiny_llama(2)
for layer in model.model.layers:  # what tensor-parallel sharding over 2 ranks leaves each rank
    layer.self_attn.num_heads, layer.self_attn.num_key_value_heads = 2, 1
cache = kv_cache.make(model, 3, 20, torch.device("cpu"))
print(json.dumps({"shape": list(cache.shape), "layers": len(cache.keys)}))
"""


def test_the_static_cache_holds_the_heads_of_the_attention_not_of_the_config(static_site):
    """A tensor-parallel rank's attention holds its share of the heads; the config still names them all."""
    result = run_python(["-c", SHARE_OF_A_RANK], static_site, WORKERS)
    assert result.returncode == 0, result.stderr[-4000:]
    assert json.loads(result.stdout) == {"shape": [3, 1, 20, 8], "layers": 2}
