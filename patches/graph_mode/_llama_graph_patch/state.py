"""What the patch keeps on each model between generate calls, and `describe`, the one view of it that
code outside the runtime (llama-graph-patch's bench, the tests, a user's own checks) reads."""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch

from .compile_cache import CompileCacheFile

KEY = "_llama_graph_patch"  # in model.__dict__: not a submodule, parameter or buffer nn.Module would register


@dataclass(eq=False)
class CompiledModel:
    """The model compiled one way, as every generate call of that way runs it."""

    call: Any = field(repr=False)  # runs a forward: torch.compile's module, Regions, CompiledLayers, Precompiled...
    backend: str  # as the INFO line names it, "inductor (mode=default)" say
    scope: str  # "model", "region" or "layers", as compiled (a scope that cannot serve the model falls back)
    kv_cache: str  # the KV cache it was compiled for: "static" (the static KV cache) or "growing" (transformers')
    frozen: bool  # the weights are constants of its decode graph (frozen.py)
    compile_cache: Optional[CompileCacheFile]  # None: switched off, refused, or on an NPU
    # modules whose SDPA mask preparation is switched off while a compiled call runs (transformers 4.36, 4.37)
    sdpa_attention: List[torch.nn.Module] = field(default_factory=list, repr=False)


@dataclass(eq=False)
class ModelState:
    """Everything the patch keeps on one model."""

    compiled: Dict[Tuple[str, str], CompiledModel] = field(default_factory=dict)  # by (backend, scope)
    graphs: int = 0  # graphs dynamo compiled during this model's compiled calls
    warned_fallback: bool = False  # a call ran eager and said so with a WARNING; later ones say it at INFO
    warned_layers_scope: bool = False  # said that scope "layers" compiles the whole model for this model
    latest: Optional[CompiledModel] = None  # what the latest generate call ran; None: it ran eager
    device: Optional[torch.device] = None  # where the latest generate call ran
    static_kv_cache: Any = None  # the latest static KV cache, reused by the next call that fits in it
    frozen_weights: Any = None  # the weights' fingerprint when they were frozen into a compiled graph (frozen.py)


def state_of(model):
    """The model's ModelState, made on first use."""
    state = model.__dict__.get(KEY)
    if state is None:
        state = model.__dict__[KEY] = ModelState()
    return state


def describe(model):
    """What the patch did for the model's latest generate call, as a dict of plain values:

    compiled             whether that call ran compiled (EXE_MODE=dynamo)
    backend, scope       how, as the INFO line says it; None when it ran eager
    kv_cache             the KV cache it was compiled for, "static" or "growing"; None when it ran eager
    frozen               whether the weights are constants of its decode graph (never in precompiled code);
                         None when it ran eager
    graphs               graphs dynamo compiled for this model so far, over all its calls
    compile_cache        "cold" (compiled anew), "warm" (torch's artifacts loaded), "precompiled" (stored code
                         ran without tracing), or None (eager, switched off, refused, on an NPU)
    compile_cache_file   the artifact file of the compile cache, or None
    precompiled_load_s   seconds loading precompiled code took, where it ran; else None
    static_kv_cache_mb   the size of the static KV cache, where the model made one; else None
    cuda_graphs          on CUDA: {"recorded": CUDA graphs inductor recorded, "skipped": compiled graphs it did
                         not capture}; else None
    """
    state = model.__dict__.get(KEY) or ModelState()
    latest = state.latest
    cache = latest.compile_cache if latest is not None else None
    kv_cache = state.static_kv_cache
    precompiled = cache is not None and cache.state == "precompiled"
    return {
        "compiled": latest is not None,
        "backend": latest.backend if latest is not None else None,
        "scope": latest.scope if latest is not None else None,
        "kv_cache": latest.kv_cache if latest is not None else None,
        "frozen": latest.frozen and not precompiled if latest is not None else None,
        "graphs": state.graphs,
        "compile_cache": cache.state if cache is not None else None,
        "compile_cache_file": cache.path if cache is not None else None,
        "precompiled_load_s": cache.load_s if precompiled else None,
        "static_kv_cache_mb": kv_cache.nbytes / 2**20 if kv_cache is not None else None,
        "cuda_graphs": cuda_graphs(state.device),
    }


def cuda_graphs(device):
    """On CUDA: CUDA graphs inductor recorded (reduce-overhead captures them) and compiled graphs it left
    uncaptured, with the reason in its log; None elsewhere."""
    if device is None or device.type != "cuda":
        return None
    from torch._dynamo.utils import counters
    from torch._inductor import cudagraph_trees

    manager = cudagraph_trees.get_manager(device.index or 0, create_if_none_exists=False)
    roots = list(manager.get_roots()) if manager is not None else []
    recorded = sum(1 + root.num_descendants() for root in roots)
    return {"recorded": recorded, "skipped": int(counters["inductor"]["cudagraph_skips"])}
