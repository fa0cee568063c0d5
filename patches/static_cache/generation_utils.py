"""Helpers the static-cache patch appends to transformers/generation/utils.py.

Same rules as graph_mode/generation_utils.py; this file may use its helpers, since the static-cache
patch requires the graph-mode patch. Nothing here knows Llama: a model takes part by offering a
`llama_graph_patch_static_cache` method (the patched LlamaForCausalLM does).
"""

# ---------------------------------------------------------------------------------------------------
# Added by llama-graph-patch (static-cache patch); `llama-graph-patch revert` removes it.
# LLAMA_GRAPH_PATCH_STATIC_CACHE=1 (default) | 0 switches the fixed-size KV cache on or off.
# ---------------------------------------------------------------------------------------------------


def _llama_graph_patch_static_cache(model, input_ids, stopping_criteria, model_kwargs):
    """Give this generate call a KV cache of fixed size (prompt + new tokens) if the model offers one."""
    import logging

    enabled = _llama_graph_patch_setting("LLAMA_GRAPH_PATCH_STATIC_CACHE", "1", ("1", "0"))
    allocate = getattr(model, "llama_graph_patch_static_cache", None)
    if enabled == "0" or allocate is None or not model_kwargs.get("use_cache", True):
        return model_kwargs
    logger = logging.getLogger("llama_graph_patch")
    max_length = stopping_criteria.max_length
    if max_length is None or model_kwargs.get("past_key_values") is not None or "inputs_embeds" in model_kwargs:
        logger.warning("llama-graph-patch: no static KV cache: it needs max_length and starts from input_ids alone")
        return model_kwargs
    cache = allocate(input_ids.shape[0], max_length, input_ids.device)
    if cache is None:
        return model_kwargs
    logger.info("llama-graph-patch: static KV cache %s", cache)
    model_kwargs = dict(model_kwargs)
    model_kwargs["llama_graph_patch_cache"] = cache
    return model_kwargs


def _llama_graph_patch_without_static_cache(model, method):
    """At the start of a beam search: if the static cache would have served this call, say that it does not."""
    import logging

    if _llama_graph_patch_kv_cache_kind(model) == "static":
        logging.getLogger("llama_graph_patch").warning(
            "llama-graph-patch: no static KV cache for %s: beams reorder the cache every step; this call uses "
            "transformers' growing cache",
            method,
        )
