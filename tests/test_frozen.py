"""Frozen weights on inductor and one-row decode on a CPU: where each applies, that the tokens stay eager's, and
that a change of the weights after they were frozen compiles again instead of computing with stale ones."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import WORKERS, run_python
from patches.graph_mode._llama_graph_patch import frozen, gemv
from patches.graph_mode._llama_graph_patch.settings import read_settings
from patches.graph_mode._llama_graph_patch.state import ModelState

# What inductor packs of the tiny Llama's linear layers: in each of 2 layers q, k and v as one, o, gate and up as
# one, down; and the head.
LINEARS = 2 * 4 + 1


@pytest.mark.parametrize(
    "freeze, device, scope, kv_cache, because",
    [
        ("auto", "cpu", "model", "growing", None),
        ("1", "cuda", "model", "growing", None),
        ("auto", "cuda", "model", "growing", "measured to win on a CPU only so far; LLAMA_GRAPH_PATCH_FREEZE=1"),
        ("0", "cpu", "model", "growing", "LLAMA_GRAPH_PATCH_FREEZE=0"),
        ("1", "npu", "model", "growing", "torchair's frozen_parameter"),
        ("auto", "cpu", "layers", "growing", "one layer's code"),
        ("auto", "cpu", "region", "growing", "nested compile region"),
        ("auto", "cpu", "model", "static", "static KV cache"),
        ("auto", "cpu", "model", "sharded", "sharded model's weights"),
    ],
)
def test_where_the_weights_are_frozen_and_why_not(freeze, device, scope, kv_cache, because):
    settings = read_settings({"LLAMA_GRAPH_PATCH_FREEZE": freeze})
    sharded = kv_cache == "sharded"
    reason = frozen.unfrozen_because(settings, device, scope, "growing" if sharded else kv_cache, sharded)
    assert reason == because if because is None else because in reason


@pytest.mark.parametrize(
    "freeze, width, because",
    [("auto", 128, "a hidden size of 128, below 512"), ("1", 128, None), ("auto", 576, None), ("auto", None, None)],
)
def test_auto_freezes_the_widths_it_was_measured_to_win_at(freeze, width, because):
    settings = read_settings({"LLAMA_GRAPH_PATCH_FREEZE": freeze})
    reason = frozen.unfrozen_because(settings, "cpu", "model", "growing", width=width)
    assert reason == because if because is None else because in reason


def test_code_compiled_ahead_is_not_frozen():
    settings = read_settings({"LLAMA_GRAPH_PATCH_PRECOMPILE": "store"})
    assert "every checkpoint of the shape" in frozen.unfrozen_because(settings, "cpu", "model", "growing")


def tiny_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=99, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2)
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("change", ["in place", "through .data", "a new parameter"])
def test_the_fingerprint_sees_every_kind_of_weight_change(change):
    model = tiny_model()
    before = frozen.fingerprint(model)
    assert frozen.fingerprint(model) == before
    weight = model.model.layers[1].mlp.up_proj.weight
    if change == "in place":
        with torch.no_grad():
            weight.add_(0.01)
    elif change == "through .data":
        weight.data.copy_(torch.randn_like(weight))
    else:
        model.model.layers[1].mlp.up_proj.weight = torch.nn.Parameter(weight.detach().clone())
    assert frozen.fingerprint(model) != before


def test_changed_weights_drop_the_compiled_graphs(monkeypatch):
    resets = []
    monkeypatch.setattr(torch.compiler, "reset", lambda: resets.append(True))
    model, state = tiny_model(), ModelState(compiled={("inductor (mode=default)", "model", True): object()}, graphs=2)
    assert frozen.changed(model, state) is False  # nothing frozen yet
    state.frozen_weights = frozen.fingerprint(model)
    assert frozen.changed(model, state) is False and state.compiled and resets == []
    with torch.no_grad():
        model.lm_head.weight.mul_(2)
    assert frozen.changed(model, state) is True
    assert (state.compiled, state.frozen_weights, state.graphs, resets) == ({}, None, 0, [True])


@pytest.mark.slow
def test_one_row_matmuls_become_reductions_and_the_rest_stay_matrix_products():
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    layer = torch.nn.Linear(64, 96, bias=True).eval()
    compiled = torch.compile(layer, dynamic=True, fullgraph=True)
    codes = {}
    for rows in (1, 3):
        x = torch.randn(rows, 64)
        with torch.no_grad(), gemv.one_row_matmuls():
            out, code = run_and_get_code(compiled, x)
        torch.testing.assert_close(out, layer(x))
        codes[rows] = "\n".join(code)
    products = ("extern_kernels.mm(", "extern_kernels.addmm(")
    assert not any(product in codes[1] for product in products)  # one row, a size dynamo fixes at 1
    assert any(product in codes[3] for product in products)  # rows a symbol: more than one


@pytest.mark.slow
def test_frozen_weights_give_eager_s_tokens_and_a_change_of_them_compiles_again(graph_mode_site):
    result = run_python([WORKERS / "frozen.py"], graph_mode_site, WORKERS)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout)
    assert all(case["same"] and case["frozen"] for case in report.values()), report
    # the decode graph alone packs the weights (prefill would hold a second packed copy), and inductor's GEMM
    # template multiplies with each; one row packs none: its products are reductions (gemv.py)
    compiled = {"first": LINEARS, "again": 0, "one row": 0, "in place": LINEARS, "through data": LINEARS, "swapped": LINEARS}
    assert {case: report[case]["packed"] for case in report} == compiled
    assert {case: report[case]["templates"] for case in report} == compiled
    changed = "WARNING llama_graph_patch: llama-graph-patch: the weights of LlamaForCausalLM changed since they were frozen"
    assert result.stderr.count(changed) == 3
    assert "weights frozen into the decode graph" in result.stderr
