"""The graph-mode runtime: generate calls inside a patched transformers 4.31.0 in child processes, whose
import path starts with modules that make `import patcher` / `import patches` fail, so the installed code
is shown to work with llama-graph-patch absent; and its parts imported here, from patches/, whose bytes
the patch copies (test_installer checks that they are the same).
"""

from __future__ import annotations

import json
import logging
import sys
from types import SimpleNamespace

import pytest
import torch

from helpers import NPU_STANDINS, WORKERS, check_two_graphs, generate, run_python, tokens
from patches.graph_mode import _llama_graph_patch as runtime
from patches.graph_mode._llama_graph_patch import backends, calls, compile_cache, compiling, regions, scopes
from patches.graph_mode._llama_graph_patch.runner import Generation, Runner
from patches.graph_mode._llama_graph_patch.settings import read_settings
from patches.graph_mode._llama_graph_patch.state import describe

MODES = ("eager", "max-autotune", "reduce-overhead")
NEW_TOKENS = 24


def check_timing(records: list, prompt_lengths: list, new_tokens: list, batch_size: int) -> None:
    """One record per step of every generate call, appended when the call returns."""
    expected_steps = [step for count in new_tokens for step in range(count)]
    assert [record["step"] for record in records] == expected_steps
    prompts = iter(prompt_lengths)
    for record in records:
        assert set(record) == {"step", "method", "phase", "ms", "batch_size", "input_len"}
        assert record["method"] == "greedy_search"
        assert record["phase"] == ("prefill" if record["step"] == 0 else "decode")
        assert record["input_len"] == (next(prompts) if record["step"] == 0 else 1)
        assert record["batch_size"] == batch_size
        assert isinstance(record["ms"], float) and record["ms"] > 0


# Grouped-query attention (Llama-2-70B's) in every scope; multi-head attention's greedy tokens are checked in
# the static cache's per-layer test, two serving sequences (tests/test_serving.py) and 4.28.1's release run.
@pytest.mark.slow
@pytest.mark.parametrize(
    "kv_heads, scope", [(2, "model"), (2, "layers"), (2, "region")],
    ids=["grouped-query-model", "grouped-query-layers", "grouped-query-region"],
)
def test_greedy_tokens_match_unpatched_transformers_in_every_mode(
    pristine_site, graph_mode_site, tmp_path, kv_heads, scope
):
    common = ("--kv-heads", kv_heads, "--new-tokens", NEW_TOKENS)
    reference, _ = generate(pristine_site, *common, "--modes", "reference")
    results, log = generate(
        graph_mode_site, *common, "--timing-dir", tmp_path, env={"LLAMA_GRAPH_PATCH_COMPILE_SCOPE": scope}
    )
    for mode in MODES:
        run = results[mode]
        assert tokens(run) == tokens(reference["reference"]), mode
        if mode == "eager":
            assert {graphs for call in run["calls"] for graphs in call["graphs_per_step"]} == {0}
        else:
            check_two_graphs(run["calls"])
        check_timing(run["timing"], [9, 9, 6], [NEW_TOKENS, NEW_TOKENS, NEW_TOKENS - 7], batch_size=3)
        assert run["layers_after"] == ["LlamaDecoderLayer"]  # the model keeps its own layers between calls

    # One log line per generate call, saying mode, backend, scope, dynamic and fullgraph.
    assert log.count("eager mode on cpu (EXE_MODE=eager), no torch.compile") == 3
    # Inductor's C++ wrapper has no code for the region's invoke_subgraph: reduce-overhead@region keeps Python's.
    reduce_overhead = "mode=reduce-overhead" if scope == "region" else "mode=default, cpp_wrapper=True"
    for mode, inductor in (("max-autotune", "mode=default"), ("reduce-overhead", reduce_overhead)):
        line = f"dynamo mode {mode} on cpu, backend=inductor ({inductor}), scope={scope}, dynamic=True, fullgraph=True"
        assert log.count(line) == 3, log


LAYER_SWAP_PROBE = """
import copy, json, os, torch
from transformers import LlamaConfig, LlamaForCausalLM
torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2)).eval()
ids = torch.tensor([[5, 6, 7, 8, 9], [9, 8, 7, 6, 5]])
def run(mode):
    os.environ["EXE_MODE"] = mode
    return model.generate(input_ids=ids, max_new_tokens=6, min_new_tokens=6, do_sample=False)[:, 5:].tolist()
before = [run("dynamo"), run("eager")]
model.model.layers[1] = copy.deepcopy(model.model.layers[0])  # an application swapping a layer, say an adapter
after = [run("dynamo"), run("eager")]
print(json.dumps({"before": before, "after": after, "layers": [type(layer).__name__ for layer in model.model.layers]}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("scope", ["layers", "region"])
def test_the_layer_scopes_follow_a_replaced_layer(graph_mode_site, scope):
    env = {"LLAMA_GRAPH_PATCH_COMPILE_SCOPE": scope}
    result = run_python(["-c", LAYER_SWAP_PROBE], graph_mode_site, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    (compiled, eager), (compiled_after, eager_after) = report["before"], report["after"]
    assert compiled == eager and compiled_after == eager_after and eager_after != eager
    assert report["layers"] == ["LlamaDecoderLayer", "LlamaDecoderLayer"]


@pytest.mark.parametrize(
    "variable, value, allowed",
    [
        ("EXE_MODE", "graph", "dynamo, eager"),
        ("GRAPH_MODE", "fast", "max-autotune, reduce-overhead"),
        ("LLAMA_GRAPH_PATCH_INDUCTOR_MODE", "turbo", "default, reduce-overhead, max-autotune"),
        ("LLAMA_GRAPH_PATCH_COMPILE_SCOPE", "blocks", "model, layers, region"),
        ("LLAMA_GRAPH_PATCH_COMPILE_CACHE", "yes", "1, 0"),
    ],
)
def test_an_unknown_setting_is_an_error_not_a_fallback(monkeypatch, tmp_path, variable, value, allowed):
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=99, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2)).eval()
    monkeypatch.setenv("LLAMA_GRAPH_PATCH_CACHE", str(tmp_path))
    monkeypatch.setenv("EXE_MODE", "dynamo")
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError) as error:
        runtime.compile_for_generation(model, torch.tensor([[5, 6, 7]]))
    assert f"{variable}='{value}' is not allowed; use one of: {allowed}" in str(error.value)


@pytest.mark.parametrize(
    "graph_mode, override, torch_version, expected",
    [
        ("max-autotune", None, "2.13.0", {"mode": "default"}),
        ("reduce-overhead", None, "2.13.0", {"options": {"cpp_wrapper": True}}),
        ("reduce-overhead", "reduce-overhead", "2.13.0", {"mode": "reduce-overhead"}),
        ("reduce-overhead", None, "2.1.0+cpu", {"mode": "reduce-overhead"}),
    ],
)
def test_on_cpu_reduce_overhead_takes_the_cpp_wrapper(monkeypatch, graph_mode, override, torch_version, expected):
    environ = {"GRAPH_MODE": graph_mode, **({"LLAMA_GRAPH_PATCH_INDUCTOR_MODE": override} if override else {})}
    monkeypatch.setattr(torch, "__version__", torch_version)
    assert backends.backend_options(read_settings(environ), "cpu")[0] == {"backend": "inductor", **expected}


REDUCE_OVERHEAD = read_settings({"GRAPH_MODE": "reduce-overhead"})


def test_reduce_overhead_at_region_keeps_python_s_wrapper_on_a_cpu():
    assert backends.backend_options(REDUCE_OVERHEAD, "cpu", "region")[0] == {"backend": "inductor", "mode": "reduce-overhead"}


def test_a_sharded_model_keeps_python_s_wrapper_on_a_cpu():
    """Inductor's C++ wrapper turns every graph input into a tensor, and a tensor-parallel graph takes its
    DeviceMesh as one (torch 2.13: `TypeError: object of type 'DeviceMesh' has no len()` on every call)."""
    options = backends.backend_options(REDUCE_OVERHEAD, "cpu", sharded=True)[0]
    assert options == {"backend": "inductor", "mode": "reduce-overhead"}


@pytest.mark.parametrize("torch_version, patched", [("2.1.0", True), ("2.3.0", True), ("2.3.1", False), ("2.6.0", False)])
def test_a_sharded_model_on_npu_gets_torchair_s_collectives_patch_before_torch_2_3_1(monkeypatch, torch_version, patched):
    asked = []
    monkeypatch.setitem(sys.modules, "torchair", SimpleNamespace(patch_for_hcom=lambda: asked.append("patch_for_hcom")))
    monkeypatch.setattr(backends, "torchair_backend", lambda graph_mode: asked.append(graph_mode) or "backend")
    monkeypatch.setattr(torch, "__version__", torch_version)
    max_autotune = read_settings({})
    backends.backend_options(max_autotune, "npu", sharded=True)
    assert asked == (["patch_for_hcom"] if patched else []) + ["max-autotune"]
    del asked[:]
    backends.backend_options(max_autotune, "npu", sharded=False)
    assert asked == ["max-autotune"]


def test_the_prefill_cache_takes_the_strides_decode_steps_hand_out():
    """One key-value head (a rank's share of a grouped-query model): contiguous() would keep the stride of
    that size-1 dimension, and dynamo compiled a third graph on the second decode step for it."""
    value = torch.arange(240.0).reshape(3, 10, 1, 8).transpose(1, 2)  # as attention makes it: (batch, heads, seq, dim)
    assert value.is_contiguous() and value.stride() == (80, 8, 8, 1)
    fixed = calls.standard_layout(value)
    assert fixed.stride() == (80, 80, 8, 1) and torch.equal(fixed, value)
    assert calls.standard_layout(fixed) is fixed  # decode steps' tensors are not copied


def test_each_rank_of_a_sharded_model_has_compile_keys_of_its_own(monkeypatch):
    model, device, description = tiny_model(), torch.device("cpu"), {"graph_mode": "max-autotune"}
    alone = compile_cache.compile_key(model, device, description)
    assert (alone["world_size"], alone["rank"]) == (1, 0)
    digests = {compile_cache.key_digest(alone)}
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    for rank in (0, 1):
        monkeypatch.setattr(torch.distributed, "get_rank", lambda: rank)
        key = compile_cache.compile_key(model, device, description)
        assert (key["world_size"], key["rank"]) == (2, rank)
        digests.add(compile_cache.key_digest(key))
    assert len(digests) == 3


def tiny_model(layers=2):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=99, hidden_size=16, intermediate_size=32, num_hidden_layers=layers, num_attention_heads=2)
    return LlamaForCausalLM(config).eval()


def test_the_region_scope_says_why_it_compiles_the_whole_model_instead(monkeypatch, caplog, tmp_path):
    model = tiny_model()
    assert regions.region_unsupported(model, "cpu") is None
    assert "torchair" in regions.region_unsupported(model, "npu")
    monkeypatch.setattr(torch, "__version__", "2.12.1")
    assert regions.region_unsupported(model, "cpu") == "torch 2.12.1 is older than 2.13, the oldest torch it was tested with"
    monkeypatch.undo()
    model.model.extra = torch.nn.ModuleList()  # a second list: which one holds the decoder layers is unknown
    assert regions.region_unsupported(model, "cpu") == "LlamaForCausalLM has no single list of decoder layers"

    monkeypatch.setenv("LLAMA_GRAPH_PATCH_CACHE", str(tmp_path))
    monkeypatch.setenv("LLAMA_GRAPH_PATCH_COMPILE_SCOPE", "region")
    monkeypatch.delenv("EXE_MODE", raising=False)
    with caplog.at_level(logging.INFO, logger="llama_graph_patch"):
        runner = runtime.compile_for_generation(model, torch.tensor([[5, 6, 7]]))
    assert "LLAMA_GRAPH_PATCH_COMPILE_SCOPE=region compiles the whole model: LlamaForCausalLM has no single" in caplog.text
    assert "scope=model, dynamic=True" in caplog.text
    seen = describe(model)
    assert (seen["compiled"], seen["backend"], seen["scope"]) == (True, "inductor (mode=default)", "model")
    assert runner.config is model.config


def test_layers_under_cuda_graphs_copy_their_outputs_out_of_the_pool():
    """Stand-in for a CUDA graph (no GPU here): outputs that live in the graph's memory are copied before the
    next layer's replay overwrites them; keys and values handed in (the static cache's buffers) stay as they are.
    Only CUDA with graph capture (inductor's reduce-overhead) pays for the copies."""
    key, value, hidden = torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3)
    pool = torch.full((2, 3), 7.0)  # stands in for a CUDA graph's output memory
    layer = scopes.PoolCopies(lambda hidden, past_key_value: (pool, past_key_value))
    out_hidden, (out_key, out_value) = layer(hidden, past_key_value=(key, value))
    pool.fill_(0.0)  # the next layer's replay of the same graph
    assert out_hidden.tolist() == [[7.0] * 3] * 2
    assert out_key is key and out_value is value

    model = torch.nn.Sequential(torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)]))
    layer_types = {}
    for device, mode in (("cuda", "reduce-overhead"), ("cuda", "default"), ("cpu", "reduce-overhead")):
        options = {"backend": "inductor", "mode": mode}
        compiled = compiling.compiled_call(model, None, read_settings({}), torch.device(device), options, "layers", None, {})
        layer_types[device + " " + mode] = sorted({type(layer).__name__ for layer in compiled.compiled.values()})
    assert layer_types == {
        "cuda reduce-overhead": ["PoolCopies"],
        "cuda default": ["OptimizedModule"],
        "cpu reduce-overhead": ["OptimizedModule"],
    }


def eager_runner(**environ) -> Runner:
    """What compile_for_generation hands the generation loop under EXE_MODE=eager, with these switches."""
    return Runner(Generation(None, None, read_settings({"EXE_MODE": "eager", **environ})), None)


def test_without_the_timing_variable_nothing_is_timed_or_written():
    assert runtime.step_timer(eager_runner(LLAMA_GRAPH_PATCH_TIMING=""), torch.zeros(2, 3), "sample") is None


def test_the_timer_writes_one_json_line_per_step(tmp_path):
    runner = eager_runner(LLAMA_GRAPH_PATCH_TIMING=str(tmp_path / "steps.jsonl"))
    timer = runtime.step_timer(runner, torch.zeros(2, 3), "sample")
    for fed in (3, 1):
        timer.start()
        timer.stop({"input_ids": torch.zeros(2, fed)})
    runtime.finish(runner, timer)
    records = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert [(r["step"], r["phase"], r["input_len"], r["batch_size"], r["method"]) for r in records] == [
        (0, "prefill", 3, 2, "sample"),
        (1, "decode", 1, 2, "sample"),
    ]
    assert all(record["ms"] >= 0 for record in records)


def test_a_method_the_patch_does_not_compile_says_it_runs_eager(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="llama_graph_patch")
    monkeypatch.setenv("EXE_MODE", "dynamo")
    runtime.runs_eager(None, "contrastive_search")
    monkeypatch.setenv("EXE_MODE", "eager")
    runtime.runs_eager(None, "contrastive_search")
    assert [record.getMessage() for record in caplog.records] == [
        "llama-graph-patch: contrastive_search runs eager: the graph-mode patch compiles greedy search, sampling and "
        "the beam searches, not contrastive_search (see the llama-graph-patch README)"
    ]


def test_npu_path_calls_torchair_as_the_guide_does(graph_mode_site):
    """Stand-in torchair / torch_npu (tests/npu_standins) record what the patch asks of them."""
    result = run_python([WORKERS / "npu_paths.py"], graph_mode_site, NPU_STANDINS)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout)
    assert report["stand_ins"] == [True, True]
    for case, mode, workaround, compiled in (
        ("max_autotune", "max-autotune", False, ["LlamaForCausalLM"]),
        ("reduce_overhead", "reduce-overhead", False, ["LlamaForCausalLM"]),
        ("reduce_overhead_torch_2_1", "reduce-overhead", True, ["LlamaForCausalLM"]),
        ("reduce_overhead_layers", "reduce-overhead", False, ["LlamaDecoderLayer", "LlamaDecoderLayer"]),
        ("max_autotune_region", "max-autotune", False, ["LlamaForCausalLM"]),  # torchair: the whole model
    ):
        asked = report[case]
        assert asked["compiled"] == compiled and asked["one_backend_for_all"] is True
        assert asked["compile_options"] == [{"dynamic": True, "fullgraph": True}] * len(compiled)
        assert asked["mode"] == mode
        assert asked["frozen_parameter"] is True
        assert asked["disable_reinplace_inplaceable_ops_pass"] is workaround
        assert asked["graphs_captured_by_backend"] >= 1 and asked["same_logits_as_eager"] is True
    # The precompiled path: one cache_compile per phase, of a method of a module, as torchair requires,
    # with the guide's config and a folder of its own under the cache root (tested with the stand-in only).
    calls = report["cache_compile"]["calls"]
    assert [call["method"] for call in calls] == ["prefill", "decode"]
    for call, phase in zip(calls, ("prefill", "decode")):
        assert call["of_a_module"] and call["dynamic"] is True and call["cache_dir_exists"]
        assert call["mode"] == "reduce-overhead" and call["frozen_parameter"] is True
        assert call["cache_dir"][:2] == ["compile", "torchair"] and call["cache_dir"][3] == f"{phase}-batch-2+"
    assert calls[0]["cache_dir"][2] == calls[1]["cache_dir"][2]  # one key: the same model and mode
    assert report["cache_compile"]["same_logits_as_eager"] is True
    assert report["timer_when_unset"] is True
    assert report["synchronize"] == {
        "npu": {"npu": 2, "cuda": 0},
        "cuda": {"npu": 0, "cuda": 2},
        "cpu": {"npu": 0, "cuda": 0},
    }


def test_npu_without_torchair_names_it_and_the_fix(monkeypatch):
    monkeypatch.setenv("EXE_MODE", "dynamo")
    monkeypatch.setitem(sys.modules, "torchair", None)  # as where torchair is not installed
    with pytest.raises(ImportError) as error:
        runtime.compile_for_generation(tiny_model(), SimpleNamespace(device=SimpleNamespace(type="npu")))
    assert "needs torchair, which could not be imported" in str(error.value)
    assert "EXE_MODE=eager" in str(error.value)
