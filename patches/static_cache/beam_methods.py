"""What the static-cache patch puts at the start of the beam searches, which reorder the KV cache every step
and so keep transformers' growing cache.

As in graph_mode/generation_loop.py, the body of `at_start` is copied, `method_name` replaced by the method's name.
"""


def at_start(self, method_name):
    # llama-graph-patch: beams reorder the KV cache every step; this method keeps the growing cache
    _llama_graph_patch.without_static_cache(self, method_name)
