"""Every decoding strategy of generate() through the patched transformers: sampling and the beam searches
compiled, with the tokens of unpatched transformers; contrastive search and assisted decoding eager, and
saying so."""

from __future__ import annotations

import pytest

from helpers import WORKERS, run_python

COMPILED = {  # strategy: rows the model sees (batch 3, times the beams)
    "greedy_search": 3,
    "sample": 3,
    "beam_search": 9,
    "beam_sample": 9,
    "group_beam_search": 12,
    "constrained_beam_search": 9,
}
EAGER = ("contrastive_search", "assisted_decoding")
NEW_TOKENS = 10


def decode(site, *arguments, env=None) -> tuple[dict, str]:
    import json

    result = run_python([WORKERS / "decoding.py", "--new-tokens", NEW_TOKENS, *arguments], site, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout), result.stderr


def by_strategy(run: dict) -> dict:
    """strategy -> [first call, second call]"""
    calls = {}
    for call in run["calls"]:
        calls.setdefault(call["strategy"], []).append(call)
    return calls


@pytest.mark.slow
# Grouped-query attention (the harder case of the two: the strategies' hooks do not depend on it) in the
# whole-model and region scopes; multi-head attention's tokens are checked in tests/test_serving.py and on 4.28.1.
@pytest.mark.parametrize("kv_heads, scope", [(2, "model"), (2, "region")], ids=["grouped-query", "region"])
def test_every_strategy_gives_the_tokens_of_unpatched_transformers(
    pristine_site, graph_mode_site, tmp_path, kv_heads, scope
):
    reference, _ = decode(pristine_site, "--kv-heads", kv_heads, "--modes", "reference")
    expected = {name: [call["tokens"] for call in calls] for name, calls in by_strategy(reference["reference"]).items()}
    env = {"LLAMA_GRAPH_PATCH_COMPILE_SCOPE": scope}
    results, log = decode(graph_mode_site, "--kv-heads", kv_heads, "--timing-dir", tmp_path, env=env)
    for mode, run in results.items():
        calls = by_strategy(run)
        assert {name: [call["tokens"] for call in pair] for name, pair in calls.items()} == expected, mode
        for name in COMPILED:
            first, second = (call["new_graphs"] for call in calls[name])
            assert first <= (0 if mode == "eager" else 2) and second == 0, (mode, name, first, second)
        assert calls["greedy_search"][0]["new_graphs"] == (0 if mode == "eager" else 2), mode
        assert all(call["new_graphs"] == 0 for name in EAGER for call in calls[name]), mode
        # one timing record per step of every compiled strategy's calls, naming it and counting its rows
        steps = [(name, rows) for name, rows in COMPILED.items() for _ in range(2 * NEW_TOKENS)]
        assert [(record["method"], record["batch_size"]) for record in run["timing"]] == steps, mode
    for name in EAGER:  # under EXE_MODE=dynamo, once per call; never under EXE_MODE=eager
        warning = f"WARNING llama_graph_patch: llama-graph-patch: {name} runs eager"
        assert log.count(warning) == 2 * 2, log


@pytest.mark.slow
def test_beam_searches_keep_the_growing_cache_under_the_static_cache_patch(pristine_site, static_site):
    reference, _ = decode(pristine_site, "--kv-heads", 2, "--modes", "reference")
    expected = {name: [call["tokens"] for call in calls] for name, calls in by_strategy(reference["reference"]).items()}
    results, log = decode(static_site, "--kv-heads", 2, "--modes", "max-autotune")
    for mode, run in results.items():
        assert {name: [call["tokens"] for call in pair] for name, pair in by_strategy(run).items()} == expected, mode
    for name in ("beam_search", "beam_sample", "group_beam_search", "constrained_beam_search"):
        warning = f"llama-graph-patch: no static KV cache for {name}: beams reorder the cache every step"
        assert log.count(warning) == 2, log  # one per call
    assert log.count("static KV cache 2 layers") == 2 * 2  # greedy_search and sample, two calls each
