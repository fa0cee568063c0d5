"""What a generate call runs compiled: the scope and backend the settings ask for where they can serve the
model, with its compile cache and precompiled code; built once per model, backend and scope."""

import logging

import torch

from . import compile_cache, frozen, precompiled, torchair_cache
from .backends import backend_options, torchair_config
from .kv_cache import kv_cache_kind
from .regions import Regions, region_unsupported
from .scopes import CompiledLayers, PoolCopies, layers_are_indexed
from .state import CompiledModel

logger = logging.getLogger("llama_graph_patch")


def compiled_for(model, state, settings, device):
    """The model compiled as `settings` ask, for `device`: made on the first generate call of that way, made
    again for scopes whose layers the model no longer holds, and for weights changed since they were frozen."""
    if frozen.changed(model, state):  # a WARNING: it costs every compiled model of the process a compile
        logger.warning(
            "llama-graph-patch: the weights of %s changed since they were frozen into its compiled graphs: compiling "
            "again (torch.compiler.reset(): every model of this process compiles on its next call)",
            type(model).__name__,
        )
    scope = effective_scope(model, state, settings, device)
    sharded = compile_cache.tensor_parallel()[0] > 1
    options, backend = backend_options(settings, device.type, scope, sharded)
    kv_cache = kv_cache_kind(model, settings)
    width = getattr(model.config, "hidden_size", None)
    unfrozen = frozen.unfrozen_because(settings, device.type, scope, kv_cache, sharded, width)
    logger.info(
        "llama-graph-patch: dynamo mode %s on %s, backend=%s, scope=%s, dynamic=True, fullgraph=True; %s",
        settings.graph_mode,
        device.type,
        backend,
        scope,
        "weights frozen into the decode graph" if unfrozen is None else "weights not frozen: " + unfrozen,
    )
    way = (backend, scope, unfrozen is None)
    if scope != "model" and way in state.compiled and not state.compiled[way].call.is_current():
        del state.compiled[way]  # compile the layers the model holds now (dynamo reuses what fits)
    if way not in state.compiled:
        state.compiled[way] = compile_model(
            model, state, settings, device, options, backend, scope, kv_cache, unfrozen is None
        )
    return state.compiled[way]


def effective_scope(model, state, settings, device):
    """The scope the settings ask for, or "model" where it cannot serve this model (said once, or at INFO)."""
    scope = settings.scope
    if scope == "region":
        reason = region_unsupported(model, device.type)
        if reason is not None:
            logger.info("llama-graph-patch: LLAMA_GRAPH_PATCH_COMPILE_SCOPE=region compiles the whole model: %s", reason)
            return "model"
    if scope == "layers" and layers_are_indexed(model):
        if not state.warned_layers_scope:
            state.warned_layers_scope = True
            logger.warning(
                "llama-graph-patch: LLAMA_GRAPH_PATCH_COMPILE_SCOPE=layers compiles the whole model instead: each "
                "decoder layer of %s indexes the shared KV cache with its own layer_idx (transformers 4.36 and "
                "later), so dynamo would compile every layer apart",
                type(model).__name__,
            )
        return "model"
    return scope


def compile_model(model, state, settings, device, options, backend, scope, kv_cache, frozen_weights):
    """The model compiled one way, its compile cache opened (not on an NPU: torchair compiles through GE,
    which torch's caches do not hold)."""
    description = {"graph_mode": settings.graph_mode, "backend": backend, "scope": scope, "kv_cache": kv_cache}
    if frozen_weights:
        description["frozen"] = True
        state.frozen_weights = state.frozen_weights or frozen.fingerprint(model)
    cache = None
    if settings.compile_cache and device.type != "npu":
        cache = compile_cache.open_compile_cache(settings.cache_folder, model, device, description)
    call = compiled_call(model, state, settings, device, options, scope, cache, description)
    # transformers 4.36 and 4.37 prepare Llama's SDPA attention mask with a branch on tensor values
    # (`torch.all(attention_mask == 1)`) that fullgraph tracing cannot follow: while a compiled call runs,
    # their LlamaModel prepares the mask the eager way instead and hands it to the same SDPA attention.
    sdpa = [module for module in model.modules() if getattr(module, "_use_sdpa", False) is True]
    return CompiledModel(call, backend, scope, kv_cache, frozen_weights, cache, sdpa)


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
