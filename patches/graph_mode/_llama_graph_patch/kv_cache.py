"""The static KV cache as a generate call gets it: the static-cache patch gives the model a method that
makes one (transformers/models/llama/_llama_graph_patch_kv_cache.py), and the generation loop hands it to
the model's prepare_inputs_for_generation in model_kwargs. One name serves both."""

import logging

logger = logging.getLogger("llama_graph_patch")

KV_CACHE_HOOK = "llama_graph_patch_kv_cache"


def kv_cache_kind(model, settings):
    """"static" where the static-cache patch gives this model its static KV cache, else "growing". Their
    graphs differ, so the compile cache keeps them in separate files rather than one replacing the other."""
    if getattr(model, KV_CACHE_HOOK, None) is None or not settings.static_kv_cache:
        return "growing"
    return "static"


def with_static_kv_cache(model, state, settings, input_ids, max_length, model_kwargs):
    """`model_kwargs` with a static KV cache of prompt + new tokens for this call, where the model offers
    one. The model holds one cache at most: its previous one, zeroed, where the call fits in it."""
    if kv_cache_kind(model, settings) != "static" or not model_kwargs.get("use_cache", True):
        return model_kwargs
    if max_length is None or model_kwargs.get("past_key_values") is not None or "inputs_embeds" in model_kwargs:
        logger.warning("llama-graph-patch: no static KV cache: it needs max_length and starts from input_ids alone")
        return model_kwargs
    rows, device = input_ids.shape[0], input_ids.device
    cache, state.static_kv_cache = state.static_kv_cache, None
    if cache is not None and cache.fits(rows, max_length, model.dtype, device):
        cache.reset()
    else:
        cache = None  # the old buffers go before new ones are taken
        cache = getattr(model, KV_CACHE_HOOK)(rows, max_length, device)
        if cache is None:
            return model_kwargs
    state.static_kv_cache = cache
    logger.info("llama-graph-patch: static KV cache %s", cache)
    return dict(model_kwargs, **{KV_CACHE_HOOK: cache})
