"""The one import the static-cache patch adds to transformers/models/llama/modeling_llama.py, after the
module's own imports: the static KV cache module its dispatches call, installed next to it."""

from . import _llama_graph_patch_kv_cache  # added by llama-graph-patch (static KV cache)
