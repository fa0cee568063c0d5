"""What a generate call runs compiled: the scope and backend the settings ask for where they can serve the
model, with its compile cache and precompiled code; built once per model, backend and scope."""

import logging

import torch

from . import compile_cache, precompiled, torchair_cache
from .backends import backend_options, torchair_config
from .kv_cache import kv_cache_kind
from .regions import Regions, region_unsupported
from .scopes import CompiledLayers, PoolCopies, layers_are_indexed
from .state import CompiledModel

logger = logging.getLogger("llama_graph_patch")


def compiled_for(model, state, settings, device):
    """The model compiled as `settings` ask, for `device`: made on the first generate call of that way, made
    again for scopes whose layers the model no longer holds."""
    scope = settings.scope
    if scope == "region":
        reason = region_unsupported(model, device.type)
        if reason is not None:
            scope = "model"
            logger.info("llama-graph-patch: LLAMA_GRAPH_PATCH_COMPILE_SCOPE=region compiles the whole model: %s", reason)
    options, backend = backend_options(settings, device.type, scope, sharded=compile_cache.tensor_parallel()[0] > 1)
    if scope == "layers" and layers_are_indexed(model):
        scope = "model"
        if not state.warned_layers_scope:
            state.warned_layers_scope = True
            logger.warning(
                "llama-graph-patch: LLAMA_GRAPH_PATCH_COMPILE_SCOPE=layers compiles the whole model instead: each "
                "decoder layer of %s indexes the shared KV cache with its own layer_idx (transformers 4.36 and "
                "later), so dynamo would compile every layer apart",
                type(model).__name__,
            )
    logger.info(
        "llama-graph-patch: dynamo mode %s on %s, backend=%s, scope=%s, dynamic=True, fullgraph=True",
        settings.graph_mode,
        device.type,
        backend,
        scope,
    )
    way = (backend, scope)
    if scope != "model" and way in state.compiled and not state.compiled[way].call.is_current():
        del state.compiled[way]  # compile the layers the model holds now (dynamo reuses what fits)
    if way not in state.compiled:
        state.compiled[way] = compile_model(model, state, settings, device, options, backend, scope)
    return state.compiled[way]


def compile_model(model, state, settings, device, options, backend, scope):
    """The model compiled one way, its compile cache opened (not on an NPU: torchair compiles through GE,
    which torch's caches do not hold)."""
    kv_cache = kv_cache_kind(model, settings)
    description = {"graph_mode": settings.graph_mode, "backend": backend, "scope": scope, "kv_cache": kv_cache}
    cache = None
    if settings.compile_cache and device.type != "npu":
        cache = compile_cache.open_compile_cache(settings.cache_folder, model, device, description)
    call = compiled_call(model, state, settings, device, options, scope, cache, description)
    # transformers 4.36 and 4.37 prepare Llama's SDPA attention mask with a branch on tensor values
    # (`torch.all(attention_mask == 1)`) that fullgraph tracing cannot follow: while a compiled call runs,
    # their LlamaModel prepares the mask the eager way instead and hands it to the same SDPA attention.
    sdpa = [module for module in model.modules() if getattr(module, "_use_sdpa", False) is True]
    return CompiledModel(call, backend, scope, kv_cache, cache, sdpa)


def compiled_call(model, state, settings, device, options, scope, cache, description):
    """scope "model": the whole forward in one graph per call pattern (the guide's way). scope "region": the
    same whole-model graph, in which the decoder layer is traced once and every layer reuses it. scope
    "layers": the decoder layer compiled once, its code serving every layer; embedding, mask, final norm and
    lm_head stay eager. The whole-model graphs come precompiled where the compile cache has them
    (LLAMA_GRAPH_PATCH_PRECOMPILE), on an NPU through torchair's cache_compile."""

    def compile_module(module):
        return torch.compile(module, dynamic=True, fullgraph=True, **options)

    if scope == "layers":
        if device.type == "cuda" and options.get("mode") in ("reduce-overhead", "max-autotune"):
            return CompiledLayers(model, lambda layer: PoolCopies(compile_module(layer)))
        return CompiledLayers(model, compile_module)
    precompile = settings.precompile != "off"
    if device.type == "npu":  # scope "model" (see region_unsupported)
        if precompile and settings.compile_cache and torchair_cache.torchair_caches():
            key = compile_cache.compile_key(model, device, description)
            return torchair_cache.TorchairPhases(model, torchair_config(settings.graph_mode), key, settings.cache_folder)
        return compile_module(model)
    whole = compile_module(model)
    if precompile and cache is not None and precompiled.can_precompile(device):
        whole = cache.precompiled = precompiled.Precompiled(model, options, whole, settings.precompile == "store", cache)
    return whole if scope == "model" else Regions(model, whole, state)
