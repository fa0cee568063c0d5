"""The static-cache patch at run time: same greedy tokens as unpatched transformers, one shape and no
compilation after the first decode step."""

from __future__ import annotations

import json

import pytest

from helpers import NPU_STANDINS, WORKERS, generate, run_python

MODES = ("eager", "max-autotune", "reduce-overhead")
NEW_TOKENS = 64
PROMPT = 9


@pytest.mark.slow
@pytest.mark.parametrize("kv_heads", [4, 2], ids=["multi-head", "grouped-query"])
def test_static_cache_matches_unpatched_transformers_without_recompiles(pristine_site, static_site, tmp_path, kv_heads):
    common = ("--kv-heads", kv_heads, "--new-tokens", NEW_TOKENS)
    reference, _ = generate(pristine_site, *common, "--modes", "reference")
    # --forbid-recompiles: torch.compiler.set_stance("fail_on_recompile") from the first decode step on.
    results, log = generate(static_site, *common, "--forbid-recompiles", "--timing-dir", tmp_path)
    length = PROMPT + NEW_TOKENS
    decode_step = {
        "input_ids": [3, 1],
        "position_ids": [3, 1],
        "attention_mask": [3, length],
        "past_key_values": [[3, kv_heads, length, 8], [1]],
    }
    for mode in MODES:
        run = results[mode]
        assert run["static_cache"], mode
        assert run["tokens"] == run["second_call_tokens"] == reference["reference"]["tokens"], mode
        assert run["input_shapes"][0]["past_key_values"] == [[3, kv_heads, length, 8], [PROMPT]]
        assert run["input_shapes"][1:] == [decode_step] * (NEW_TOKENS - 1), mode
        graphs = run["graphs_per_step"]
        if mode == "eager":
            assert set(graphs) == {0}
        else:
            # one graph for the prefill, one for every decode step, none after the first decode step
            assert graphs[:2] == [1, 2] and graphs[1:] == [2] * (NEW_TOKENS - 1), graphs
            assert run["graphs_per_step_second_call"] == [2] * NEW_TOKENS
    cache = f"static KV cache 2 layers x 2 x 3x{kv_heads}x{length}x8 float32"
    assert log.count(cache) == 2 * len(MODES), log


def test_the_static_cache_can_be_switched_off_at_run_time(pristine_site, static_site):
    reference, _ = generate(pristine_site, "--kv-heads", 2, "--modes", "reference", "--new-tokens", 8)
    results, _ = generate(
        static_site, "--kv-heads", 2, "--modes", "eager", "--new-tokens", 8,
        env={"LLAMA_GRAPH_PATCH_STATIC_CACHE": "0"},
    )
    assert results["eager"]["static_cache"] is False
    assert results["eager"]["input_shapes"][2]["attention_mask"] == [3, PROMPT + 2]  # the growing cache
    assert results["eager"]["tokens"] == reference["reference"]["tokens"]


def test_on_npu_the_cache_is_written_with_scatter_update(static_site):
    result = run_python([WORKERS / "npu_paths.py"], static_site, NPU_STANDINS)
    assert result.returncode == 0, result.stderr[-4000:]
    write = json.loads(result.stdout)["static_cache_write"]
    # one int64 start per batch row, the sequence axis of a (batch, heads, seq, dim) cache
    assert write["scatter_updates"] == [[[5, 5], 2, [2, 3, 1, 4]]]
    assert write["same_as_index_copy"] is True
