"""Frozen weights on inductor, as torchair's `frozen_parameter` on an NPU: the weights are constants of the
decode graph, which lets inductor fold them and lay them out for its kernels (on a CPU it packs every linear
weight for oneDNN/MKL). Where it is safe, when it is on, and what happens when the weights change.

inductor freezes only what dynamo traced with `torch._inductor.config.freezing` set and grad off (a
compile option comes too late: dynamo has made the weights graph inputs by then), so the runner sets it
around the calls it compiles. Only decode is frozen: prefill runs once per call, and each frozen graph
holds its own packed copy of the weights. The frozen graph is guarded on the identity of each weight, so a
replaced weight compiles again; a weight changed in place is not seen by torch at all, so the runner
compares a fingerprint of the weights at every generate call (`changed`). Precompiled code is never frozen:
its weights are inputs, so that one stored artifact serves every checkpoint of the shape.
"""

import contextlib

import torch

from .backends import torch_older_than

# The oldest torch this was tried with; before 2.5 dynamo took nn.Module weights another way.
FREEZING_TORCH = (2, 5)
# The narrowest model `auto` freezes. On this project's CPU, frozen weights made decode of 4 rows 2.4x faster at
# SmolLM2-135M's width (576) and 1.2x slower at the embedded model's (128), where a step is launch overhead
# and oneDNN's calls on packed weights cost more than inductor's own (benchmarks/README.md, 2026-12-05).
FREEZE_MIN_WIDTH = 512


def unfrozen_because(settings, device_type, scope, kv_cache, sharded=False, width=None):
    """Why the weights stay graph inputs for this compiled model, or None: they are frozen into its decode graph."""
    if settings.freeze == "0":
        return "LLAMA_GRAPH_PATCH_FREEZE=0"
    if device_type == "npu":
        return "torchair's frozen_parameter serves the NPU"
    if settings.freeze == "auto" and device_type != "cpu":
        return "measured to win on a CPU only so far; LLAMA_GRAPH_PATCH_FREEZE=1 freezes on %s too" % device_type
    if settings.freeze == "auto" and width is not None and width < FREEZE_MIN_WIDTH:
        return "a hidden size of %d, below %d, decodes faster unfrozen; LLAMA_GRAPH_PATCH_FREEZE=1 freezes it" % (
            width, FREEZE_MIN_WIDTH
        )
    if settings.precompile == "store":
        return "precompiled code takes the weights as inputs, to serve every checkpoint of the shape"
    if torch_older_than(torch.__version__, FREEZING_TORCH):
        return "torch %s is older than %d.%d" % ((torch.__version__,) + FREEZING_TORCH)
    if scope == "layers":
        return "the layers scope serves every layer with one layer's code, and frozen weights would compile each apart"
    if scope == "region":
        return "inductor neither folds nor packs the weights a nested compile region takes"
    if sharded:
        return "inductor cannot freeze a sharded model's weights (torch 2.13: a FakeScriptObject where a tensor should be)"
    if kv_cache == "static":
        return "the static KV cache's buffers, marked static for graph capture, would be frozen with the weights"
    return None


def freezing(on, device_type):
    """While a frozen graph may be traced: weights become constants (grad is off inside generate). On a CPU
    the linear layers that share an input (q, k, v; gate, up) are then concatenated into one (15% of a
    SmolLM2-width decode step of 4 rows), and each is computed by inductor's own C++ GEMM template on the
    packed weight rather than by oneDNN: a decode step of 4 rows 1.5x faster at SmolLM2-135M's width and
    1.3x at TinyLlama-1.1B's (one process alternating both on this project's 2-core CPU, 2026-12-05; the
    benches with it: benchmarks/README.md, the `-template` records). The template adds one choice and no other is offered, so nothing is timed while
    compiling (inductor's max-autotune is not on for either graph mode on a CPU)."""
    if not on:
        return contextlib.nullcontext()
    options = {"freezing": True}
    if device_type == "cpu":
        options.update({"cpp.enable_concat_linear": True, "max_autotune_gemm": True, "max_autotune_gemm_backends": "CPP"})
    return torch._inductor.config.patch(options)


def fingerprint(model):
    """What changes when a weight does: each weight's identity, storage and version counter, and a sample
    of its values (an in-place change through .data passes the version counter by)."""
    weights = [(weight, getattr(weight, "_local_tensor", weight)) for weight in model.parameters()]  # a rank's shard
    with torch.no_grad():
        sample = [local.reshape(-1)[:: max(1, local.numel() // 16)].double().sum() for _, local in weights]
        values = torch.stack(sample).tolist() if sample else []
    return [(id(weight), local.data_ptr(), local._version) for weight, local in weights], values


def changed(model, state):
    """Whether the model's weights changed since they were frozen into its compiled graphs; if so, those
    graphs are dropped (torch keeps them in its code cache: torch.compiler.reset() clears it for every model
    of the process, which compiles again on its next call)."""
    if state.frozen_weights is None:
        return False
    now = fingerprint(model)
    if now == state.frozen_weights:
        return False
    torch.compiler.reset()
    state.compiled.clear()
    state.graphs = 0  # the model holds none now (LLAMA_GRAPH_PATCH_MAX_GRAPHS counts what it holds)
    state.frozen_weights = None
    return True
