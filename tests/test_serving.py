"""Graph mode in a long-lived process: a mix of generate calls like an application's runs with the tokens of
unpatched transformers, compiles a bounded number of graphs, and falls back to eager instead of crashing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import WORKERS, run_python
from helpers import patch_warnings as warnings
from patcher.bench import models


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    """The embedded model's folder: its slow sentencepiece tokenizer is what the pipeline needs."""
    return models.embedded_model(tmp_path_factory.mktemp("embedded"))


def serve(site: Path, tokenizer: Path, kv_heads: int, *arguments, env: dict | None = None) -> tuple[dict, str]:
    result = run_python(
        [WORKERS / "serving.py", "--kv-heads", kv_heads, "--tokenizer", tokenizer, *arguments], site, env=env
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout), result.stderr


def results(report: dict) -> list:
    return [call["result"] for call in report["calls"]]


# Graphs compiled after each call of the serving sequence: batch size 1 compiles its own prefill and decode
# graphs (torch specialises sizes 0 and 1), every larger batch shares one pair, and inference_mode,
# pipeline, streamer and output_scores calls reuse them.
SERVING_GRAPHS = [2, 4, 4, 4, 4, 4, 4, 4, 4]


@pytest.mark.slow
@pytest.mark.parametrize(
    "cache, mode, kv_heads, scope",
    [  # every cache, mode and head layout, and every pair of them, in four runs (growing max-autotune with 4
        # heads: the precompiled test below); then the region scope
        ("growing", "reduce-overhead", 2, "model"),
        ("static", "max-autotune", 2, "model"),
        ("static", "reduce-overhead", 4, "model"),
        ("static", "reduce-overhead", 2, "region"),
    ],
)
def test_a_serving_sequence_runs_with_the_tokens_of_unpatched_transformers(
    pristine_site, graph_mode_site, static_site, tokenizer, cache, mode, kv_heads, scope
):
    reference, _ = serve(pristine_site, tokenizer, kv_heads)
    site = static_site if cache == "static" else graph_mode_site
    env = {"EXE_MODE": "dynamo", "GRAPH_MODE": mode, "LLAMA_GRAPH_PATCH_COMPILE_SCOPE": scope}
    report, log = serve(site, tokenizer, kv_heads, env=env)
    assert results(report) == results(reference)
    assert [call["graphs"] for call in report["calls"]] == SERVING_GRAPHS, report["calls"]
    assert warnings(log) == []
    if cache == "static":
        assert all(call["static_cache"] for call in report["calls"])
        assert report["caches_alive"] == 1


@pytest.mark.slow
def test_the_static_cache_keeps_one_set_of_buffers_over_varied_calls(pristine_site, static_site, tokenizer):
    reference, _ = serve(pristine_site, tokenizer, 2, "--sequence", "varied")
    report, log = serve(static_site, tokenizer, 2, "--sequence", "varied", env={"EXE_MODE": "dynamo"})
    assert results(report) == results(reference)
    shapes = [call["static_cache"] for call in report["calls"]]
    # reused while a call fits (same batch, no longer), replaced otherwise: never one per shape
    assert shapes[:4] == [[3, 2, 15, 8], [3, 2, 15, 8], [2, 2, 15, 8], [2, 2, 20, 8]], shapes
    assert report["caches_allocated"] > 1 and report["caches_alive"] == 1
    assert report["calls"][-1]["graphs"] <= 4 and warnings(log) == []


@pytest.mark.slow
@pytest.mark.parametrize(
    "limit, cause",
    [
        (["--recompile-limit", "2"], "dynamo holds its limit of 2 compiled versions (torch._dynamo.config.recompile_limit)"),
        ([], "it holds 2 compiled graphs, LLAMA_GRAPH_PATCH_MAX_GRAPHS=2"),
    ],
    ids=["dynamo-recompile-limit", "graph-budget"],
)
def test_a_call_beyond_the_limit_runs_eager_with_one_warning(pristine_site, graph_mode_site, tokenizer, limit, cause):
    reference, _ = serve(pristine_site, tokenizer, 2)
    env = {"EXE_MODE": "dynamo", "GRAPH_MODE": "max-autotune"}
    if not limit:
        env["LLAMA_GRAPH_PATCH_MAX_GRAPHS"] = "2"
    report, log = serve(graph_mode_site, tokenizer, 2, *limit, env=env)
    assert results(report) == results(reference)
    assert {call["graphs"] for call in report["calls"]} == {2}  # batch 1 compiled; nothing after
    (warning,) = warnings(log)
    assert "LlamaForCausalLM runs eager for the rest of this generate call: " + cause in warning
    assert log.count("runs eager for the rest of this generate call") > 1  # later ones at INFO


@pytest.mark.slow
def test_strict_mode_raises_instead(graph_mode_site, tokenizer):
    env = {"EXE_MODE": "dynamo", "LLAMA_GRAPH_PATCH_MAX_GRAPHS": "2", "LLAMA_GRAPH_PATCH_STRICT": "1"}
    result = run_python([WORKERS / "serving.py", "--kv-heads", 2, "--tokenizer", tokenizer], graph_mode_site, env=env)
    assert result.returncode != 0
    assert "RuntimeError: Detected recompile when torch.compile stance is 'fail_on_recompile'" in result.stderr
    assert "runs eager" not in result.stderr


@pytest.mark.slow
def test_the_serving_sequence_on_precompiled_code_has_the_tokens_of_unpatched_transformers(
    pristine_site, graph_mode_site, tokenizer, tmp_path
):
    """A process that stored its code ahead (as `warm` does), then a fresh one that only loads it."""
    reference, _ = serve(pristine_site, tokenizer, 4)
    env = {"EXE_MODE": "dynamo", "LLAMA_GRAPH_PATCH_CACHE": str(tmp_path), "LLAMA_GRAPH_PATCH_PRECOMPILE": "store"}
    stored, log = serve(graph_mode_site, tokenizer, 4, env=env)
    assert results(stored) == results(reference) and warnings(log) == []
    assert [call["graphs"] for call in stored["calls"]] == SERVING_GRAPHS  # as dynamo compiles them
    report, log = serve(graph_mode_site, tokenizer, 4, env={**env, "LLAMA_GRAPH_PATCH_PRECOMPILE": "load"})
    assert results(report) == results(reference)
    assert [call["graphs"] for call in report["calls"]] == [0] * len(SERVING_GRAPHS)  # nothing traced
    assert warnings(log) == []
